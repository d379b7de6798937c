"""Checkpoints that hold everything needed to continue a run bit for bit.

Model weights, image pools, optimizers, schedulers, the gradient scaler, the global RNG states and
the position in the data (epoch, batch) — all plain tensors and numbers, so that
``torch.load(..., weights_only=True)`` reads them and a checkpoint file can never run code.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from advseg_cli.errors import AdvsegError
from advseg_cli.files import atomic_path

CHECKPOINT_FORMAT = "advseg-checkpoint"
CHECKPOINT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Position:
    """Where training stands: the next step continues with batch ``batch`` of epoch ``epoch``."""

    step: int = 0  # optimisation steps done
    epoch: int = 1  # 1-based, as the public code counts
    batch: int = 0  # batches of this epoch already done


def rng_states(device: torch.device) -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng_states(states: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a crash mid-save leaves the previous checkpoint intact."""
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read one of our checkpoints (weights only, no code); anything else is a clear error."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AdvsegError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # unreadable, truncated or a pickle with code in it
        raise AdvsegError(f"{path}: not a readable advseg checkpoint ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise AdvsegError(f"{path}: not an advseg checkpoint (for public-code generators use --init-from)")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise AdvsegError(f"{path}: checkpoint version {payload.get('version')} is not {CHECKPOINT_VERSION}; "
                          "use the advseg version that wrote it")
    return payload
