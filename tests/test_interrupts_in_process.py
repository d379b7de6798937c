"""advseg_cli.interrupts in this process, with real signals sent to it: which signal becomes what, the exit
status each one leaves, and that the handlers a stage installs are gone when it ends. The real commands
under signals: tests/test_interrupts.py."""

from __future__ import annotations

import os
import shlex
import signal
import sys
from collections.abc import Iterator

import pytest

from advseg_cli.interrupts import (StageInterrupted, StopAtStepBoundary, interrupt_exit_status, same_command,
                                   signals_deferred, treat_sigterm_as_ctrl_c)


class ReachedTheOuterHandler(AssertionError):
    """A signal got past the handlers under test (without them, SIGTERM would end the test process)."""


def outer_handler(signum: int, frame: object) -> None:
    raise ReachedTheOuterHandler(signal.Signals(signum).name)


@pytest.fixture(autouse=True)
def own_handlers() -> Iterator[None]:
    """During a test a signal nothing under test handles fails it; pytest's handlers come back after it."""
    before = {signum: signal.signal(signum, outer_handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


def send(signum: int) -> None:
    os.kill(os.getpid(), signum)  # the handler runs in this (the main) thread before os.kill returns to us


def send_without_interrupting(signum: int) -> None:
    """Send a signal that must not interrupt: a KeyboardInterrupt would end pytest's session, not fail the test."""
    try:
        send(signum)
    except KeyboardInterrupt:
        pytest.fail(f"{signal.Signals(signum).name} interrupted at once")


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_each_signal_unwinds_like_ctrl_c_and_sets_its_exit_status(signum: int, status: int) -> None:
    treat_sigterm_as_ctrl_c()
    assert interrupt_exit_status() == 130  # nothing received yet: a plain KeyboardInterrupt's status
    with pytest.raises(KeyboardInterrupt):
        send(signum)
    assert interrupt_exit_status() == status == StageInterrupted("x").exit_code
    other = signal.SIGTERM if signum == signal.SIGINT else signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
        send(other)
    assert interrupt_exit_status() == status, "the first signal decides"
    treat_sigterm_as_ctrl_c()  # the next command starts afresh
    assert interrupt_exit_status() == 130


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_at_a_step_boundary_the_first_signal_asks_and_the_second_stops_at_once(
        signum: int, capsys: pytest.CaptureFixture[str]) -> None:
    treat_sigterm_as_ctrl_c()
    outside = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    with StopAtStepBoundary() as stop:
        assert stop.requested is None
        send_without_interrupting(signum)  # the step goes on
        assert stop.requested == signal.Signals(signum).name
        assert interrupt_exit_status() == (130 if signum == signal.SIGINT else 143)
        with pytest.raises(KeyboardInterrupt):
            send(signal.SIGINT if signum == signal.SIGTERM else signal.SIGTERM)
    assert f"{signal.Signals(signum).name}: stopping after the current step" in capsys.readouterr().err
    assert {number: signal.getsignal(number) for number in outside} == outside, "the stage's handlers stayed"
    with pytest.raises(KeyboardInterrupt):  # outside the stage a signal interrupts at once again
        send(signum)


def test_the_advice_repeats_the_command_line_as_a_shell_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/somewhere/bin/advseg", "edges", "my photos", "out's", "--size", "64"])
    assert same_command() == "advseg edges 'my photos' 'out'\"'\"'s' --size 64"
    assert shlex.split(same_command())[1:] == sys.argv[1:]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_deferred_signal_waits_for_the_block_then_acts_as_its_handler(signum: int) -> None:
    treat_sigterm_as_ctrl_c()
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            send_without_interrupting(signum)
            send_without_interrupting(signal.SIGINT)  # a second one while held: the first still decides
            finished.append("the block")
    assert finished == ["the block"]
    assert interrupt_exit_status() == (130 if signum == signal.SIGINT else 143)
    with signals_deferred():
        pass  # nothing arrived: nothing happens after
    with pytest.raises(KeyboardInterrupt):  # the command's own handlers are back
        send(signum)
