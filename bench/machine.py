"""A one-line description of the machine a benchmark ran on (goes next to every table)."""

from __future__ import annotations

import os
import platform

import torch


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe_machine(device: torch.device) -> str:
    """CPU model and cores, torch version, and the GPU when the benchmark used one."""
    text = f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text
