"""A second signal after the step boundary: the stop is under way, so the record is still written whole.

In this process, with real signals sent to it: the first asks ``advseg train`` to stop after its step, the
second arrives while the interrupted run writes its record (the moment a loaded machine once gave a CI run).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import advseg_cli.training.loop as loop
from advseg_cli.interrupts import stop_already_under_way
from tests.training.test_training import make_dataset, tiny_config


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # what the command line's handlers do with both signals


@pytest.fixture(autouse=True)
def ctrl_c_handlers() -> Iterator[None]:
    before = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


def test_signals_are_ignored_inside_and_handled_again_after() -> None:
    with stop_already_under_way():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_second_signal_while_the_interrupted_run_writes_its_record_leaves_the_record_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_dataset(tmp_path / "data")
    original_step, original_record = loop.Trainer.step, loop._record_interruption

    def step(self: loop.Trainer, batch: dict) -> dict:
        if self.position.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the first: stop after this step
        return original_step(self, batch)

    def record_under_a_second_signal(*args: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        original_record(*args)

    monkeypatch.setattr(loop.Trainer, "step", step)
    monkeypatch.setattr(loop, "_record_interruption", record_under_a_second_signal)
    try:
        with pytest.raises(loop.TrainingInterrupted, match="at step 3 of 6"):
            loop.train(tiny_config(data, tmp_path / "runs", model="pix2pix", max_steps=6))
    except KeyboardInterrupt:  # (left to itself it would end pytest's session instead of failing this test)
        pytest.fail("the second signal cut the interrupted run's wrap-up")
    record = json.loads((tmp_path / "runs" / "run" / "advseg-run.json").read_text())
    assert record["status"] == "interrupted" and record["counts"]["steps"] == 3


def test_a_signal_while_the_command_line_reports_an_interruption_keeps_its_status(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The cli prints the advice on the way out; a signal landing there must not turn 130 into click's
    "Aborted!" and status 1."""
    import click
    from click.testing import CliRunner

    import advseg_cli.cli as cli

    @click.command("stopped-stage")
    def stopped_stage() -> None:
        raise KeyboardInterrupt  # as a stage's Ctrl-C reaches the cli

    def advice_under_a_signal() -> str:
        os.kill(os.getpid(), signal.SIGTERM)
        return "advseg stopped-stage"

    monkeypatch.setattr(cli, "same_command", advice_under_a_signal)
    cli.main.add_command(stopped_stage)
    try:
        result = CliRunner().invoke(cli.main, ["stopped-stage"])
    finally:
        cli.main.commands.pop("stopped-stage")
    assert result.exit_code == 130, result.output
    assert "continue with: advseg stopped-stage" in result.output and "Aborted" not in result.output


def test_a_pool_worker_notes_signals_between_runs_and_refuses_the_next_run() -> None:
    """The experiment's workers: between two runs a stop signal must not kill the worker (the pool would
    then kill the others mid-step), only be remembered, in order; a run asked for after it does not start,
    and inside a run a signal interrupts like Ctrl-C."""
    from advseg_cli.interrupts import interruptible, note_stop_signals, received_signals

    note_stop_signals()
    try:
        with interruptible():  # nothing noted yet: the run starts, and a signal inside interrupts it
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)  # between runs: noted only
        os.kill(os.getpid(), signal.SIGINT)
        assert received_signals()[-2:] == (signal.SIGTERM, signal.SIGINT)
        started = False
        with pytest.raises(KeyboardInterrupt):
            with interruptible():
                started = True
        assert not started
    finally:
        note_stop_signals()  # clears what was noted (the autouse fixture restores the handlers)


def test_a_signal_just_after_the_steps_stop_decision_stops_after_the_next_step_with_its_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The signal lands after the step boundary decided "go on" (in a torchrun job: during the ranks'
    agreement, seen on a fast machine). The save and the stop must follow the same decision: the run goes on
    to the next step, then saves and stops there, never stopping with no checkpoint of the step it names."""
    import torch

    data = make_dataset(tmp_path / "data")
    original_agreed = loop.Trainer._stop_agreed

    def agreed_then_signalled(self: loop.Trainer, stop: object) -> bool:
        decided = original_agreed(self, stop)
        if self.position.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # right after step 2's decision
        return decided

    monkeypatch.setattr(loop.Trainer, "_stop_agreed", agreed_then_signalled)
    with pytest.raises(loop.TrainingInterrupted, match="at step 3 of 6"):
        loop.train(tiny_config(data, tmp_path / "runs", model="pix2pix", max_steps=6))
    record = json.loads((tmp_path / "runs" / "run" / "advseg-run.json").read_text())
    assert record["status"] == "interrupted" and record["counts"]["steps"] == 3
    saved = torch.load(tmp_path / "runs" / "run" / "checkpoints" / "latest.pt", weights_only=True)
    assert saved["position"]["step"] == 3
