"""Splitting one folder of inputs across N processes (hosts or GPUs) without coordination."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

from advseg_cli.errors import AdvsegError

T = TypeVar("T")


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"I/N"`` -> (I, N); None -> this process's torchrun rank and world size, else (0, 1)."""
    if text is None:
        return _shard_from_torchrun()
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise AdvsegError(f"--shard: expected I/N such as 0/4, got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise AdvsegError(f"--shard: need 0 <= I < N, got {text!r}")
    return index, count


def _shard_from_torchrun() -> tuple[int, int]:
    """Under ``torchrun`` each process takes its rank's share, so no --shard is needed there."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return (rank, world) if world > 1 else (0, 1)


def select_shard(items: Sequence[T], shard: tuple[int, int]) -> list[T]:
    """Every N-th item starting at I: balanced, and stable for a fixed (sorted) input list."""
    index, count = shard
    return list(items[index::count])
