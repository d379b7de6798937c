"""Device and numeric-precision selection, shared by every stage that runs a network."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import torch

from advseg_cli.errors import AdvsegError

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a device, failing clearly when CUDA is asked for but absent.

    Under torchrun (``LOCAL_RANK`` set), ``auto`` and ``cuda`` mean this process's own GPU, so N
    processes of one host use N GPUs instead of all crowding onto GPU 0.
    """
    name = name.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and torch.cuda.is_available() and os.environ.get("LOCAL_RANK") is not None:
        name = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AdvsegError(f"--device: unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AdvsegError("--device: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AdvsegError(
                f"--device: {name} does not exist (this machine has {torch.cuda.device_count()} GPUs)"
            )
    elif device.type != "cpu":
        raise AdvsegError(f"--device: unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def default_batch_size(device: torch.device) -> int:
    """Images per forward pass when the user did not say: 1 on a CPU, 8 on a GPU.

    Measured on 2 CPU cores (docs/benchmarks.md): HED at 512x512 ran ~6 % and Mask2Former at 286x286
    ~25 % slower per image in batches than one at a time; a CPU has no parallel hardware for a batch to
    fill, only caches for it to overflow. A GPU needs batches to be kept busy.
    """
    return 1 if device.type == "cpu" else 8


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse precisions that the device cannot run fast (fp16 on CPU is emulated and slow)."""
    if precision not in PRECISIONS:
        raise AdvsegError(f"--precision: unknown value {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise AdvsegError("--precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16_convolutions():
        warn_once(SLOW_BF16_WARNING)


SLOW_BF16_WARNING = ("advseg: --precision bf16 on this CPU: it has no bf16 convolution kernels (oneDNN needs "
                     "AVX-512 BF16 or AMX), so torch falls back to a convolution ~30x slower than fp32 "
                     "(docs/benchmarks.md); fp32 is the fast choice here")
_warned: set[str] = set()


def cpu_has_bf16_convolutions() -> bool:
    """Whether oneDNN runs bf16 convolutions on this CPU; without them autocast's bf16 convolutions take
    torch's reference kernel (measured 30x slower than fp32 on an AVX2-only EPYC)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def warn_once(message: str) -> None:
    """One line on stderr per process (a stage builds several networks; the user needs it once)."""
    if message not in _warned:
        _warned.add(message)
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Mixed precision for the forward pass only; fp32 is a no-op, so callers need no branches."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=_DTYPES[precision]):
        yield
