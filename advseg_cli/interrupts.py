"""Ctrl-C and SIGTERM: stop cleanly, keep every finished output, say exactly how to continue.

Two behaviours, chosen by what the stage can afford:
- per-item stages (edges, segcache, colorize, fid) let the signal interrupt them at once: their writes are
  atomic (a temporary name renamed into place), so the item being written is simply redone by the next run,
  which skips what exists. SIGTERM (sent by schedulers, ``kill``, ``timeout``) is turned into the same
  ``KeyboardInterrupt`` so both leave the same record and the same advice.
- training defers the signal to the end of the current step (``StopAtStepBoundary``): an optimisation step
  interrupted half-way cannot be saved, while one that finishes costs at most a second and lets the run save
  a checkpoint at exactly that step.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StageInterrupted(Exception):
    """A stage stopped on a signal after saving what it had; the message says how to continue. Exit 130."""

    exit_code = 130


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def treat_sigterm_as_ctrl_c() -> None:
    """Let SIGTERM unwind like Ctrl-C (records written, temporaries removed) instead of killing the process."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def same_command() -> str:
    """The command line of this process as the user would type it again (``advseg`` plus its arguments)."""
    return shlex.join(["advseg", *sys.argv[1:]])


class StopAtStepBoundary:
    """While active, the first SIGINT / SIGTERM only asks to stop; a second one interrupts at once.

    The loop polls ``requested`` after each step. Outside the main thread (signals cannot be caught there)
    it does nothing, and the usual ``KeyboardInterrupt`` applies.
    """

    def __init__(self) -> None:
        self.requested: str | None = None  # the signal's name once one arrived
        self._previous: dict[int, Any] = {}

    def _ask_to_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested}: stopping after the current step and saving it (again: stop at once)",
              file=sys.stderr, flush=True)

    def __enter__(self) -> StopAtStepBoundary:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._ask_to_stop)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
