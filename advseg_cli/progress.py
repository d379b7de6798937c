"""Progress bars that appear on a terminal and stay out of logs and pipes."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             quiet: bool = False, unit: str = "img", initial: int = 0) -> tqdm:
    """A tqdm bar on stderr, shown only on an interactive terminal and unless ``quiet``."""
    disabled = quiet or not sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disabled, dynamic_ncols=True,
                leave=False, initial=initial)
