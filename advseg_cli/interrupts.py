"""Ctrl-C and SIGTERM: stop cleanly, keep every finished output, say exactly how to continue.

Two behaviours, chosen by what the stage can afford:
- per-item stages (edges, segcache, colorize, fid) let the signal interrupt them at once: their writes are
  atomic (a temporary name renamed into place), so the item being written is simply redone by the next run,
  which skips what exists. SIGTERM (sent by schedulers, ``kill``, ``timeout``) is turned into the same
  ``KeyboardInterrupt`` so both leave the same record and the same advice.
- training defers the signal to the end of the current step (``StopAtStepBoundary``): an optimisation step
  interrupted half-way cannot be saved, while one that finishes costs at most a second and lets the run save
  a checkpoint at exactly that step.

The exit status says which signal stopped the run, as a shell reports a process the signal killed
(128 + its number): 130 after Ctrl-C (SIGINT), 143 after SIGTERM; the first stop signal decides.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number
_received: list[int] = []  # the stop signals this process received since its command started, in order


def interrupt_exit_status() -> int:
    """The exit status of a stage that a signal stopped: the first stop signal's (130 when none was seen,
    as for a KeyboardInterrupt that no signal raised, or a rank that another process's signal stopped)."""
    return EXIT_STATUS[signal.Signals(_received[0])] if _received else 130  # only STOP_SIGNALS are noted


class StageInterrupted(Exception):
    """A stage stopped on a signal after saving what it had; the message says how to continue.

    Exit 130 after SIGINT, 143 after SIGTERM (``interrupt_exit_status``).
    """

    @property
    def exit_code(self) -> int:
        return interrupt_exit_status()


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def treat_sigterm_as_ctrl_c() -> None:
    """Let SIGTERM unwind like Ctrl-C (records written, temporaries removed) instead of killing the process,
    and remember which of the two came first, for the exit status. Called when a command starts."""
    _received.clear()
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, _raise_keyboard_interrupt)


def leave_stop_signals_to_the_main_process(worker_id: int = 0) -> None:
    """``worker_init_fn`` of every DataLoader: its decoding workers ignore SIGINT and SIGTERM.

    ``timeout``, SLURM, systemd and Kubernetes signal a job's whole process group, workers included. A torch
    DataLoader worker dies of a SIGTERM that does not come from its parent, and the main process then fails
    with "DataLoader worker ... is killed by signal" (a traceback, exit 1, no record, no advice). The main
    process gets the same signal and stops as documented; it ends its workers itself (they finish the item
    in hand and leave when it shuts the loader down).
    """
    _ignore_stop_signals()


def ignore_stop_signals_if_stopping() -> None:
    """Once a stop signal has stopped the command, ignore further ones while the process ends.

    The interpreter's teardown (threads, torch, atexit) takes a moment after the advice is printed; a SIGTERM
    then would kill the process by its default action (status -15 instead of the first signal's 130), which
    breaks "the first signal decides". Only for the real process (``advseg_cli.cli.run``): in process the
    handlers must be restored for whatever runs next.
    """
    if _received and threading.current_thread() is threading.main_thread():
        _ignore_stop_signals()


def _ignore_stop_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def received_signals() -> tuple[int, ...]:
    """The stop signals this process received since its command started, in order (a parent passes the
    latest on to the processes it drives)."""
    return tuple(_received)


def _note(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)


def note_stop_signals() -> None:
    """For a worker process that waits for work from a parent: a stop signal is only noted, so that one
    arriving between two pieces of work cannot kill the worker (which would break its parent's pool and
    have the pool kill the others in the middle of their step). ``interruptible`` marks the work itself."""
    _received.clear()
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, _note)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """While the block runs, a stop signal interrupts it like Ctrl-C; if one was noted before, the block
    does not start at all (a worker that was told to stop takes no more work)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_keyboard_interrupt) for signum in STOP_SIGNALS}
    try:
        if _received:
            raise KeyboardInterrupt
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT / SIGTERM while the block runs, then act on the first one as its handler would have.

    For a unit of work of milliseconds that must not stop half-way: an HDF5 entry cut in the middle makes
    the whole uncommitted copy unusable, so everything written since the last commit would be lost.
    Outside the main thread (no signal arrives there) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {signum: signal.signal(signum, lambda number, frame: arrived.append(number))
                for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if arrived:
            handler = previous[arrived[0]]
            if callable(handler):
                handler(arrived[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(arrived[0])


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
        _received.append(signum)
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


@contextlib.contextmanager
def stop_already_under_way() -> Iterator[None]:
    """Ignore further SIGINT / SIGTERM while the block runs: the stop they would ask for is being made.

    After the step boundary the work is saved and the process is writing its record on the way out; a
    second signal there would cut that record (and replace the printed advice with a generic one) without
    stopping anything sooner. Outside the main thread it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
