"""The first line of a run says how many steps it plans and how long they will take on this machine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from advseg_cli.training.loop import CPU_WARNING_HOURS, PlanAnnouncer, Trainer, format_duration
from tests.helpers import invoke_advseg
from tests.training.test_training import make_dataset, tiny_config


def test_the_plan_line_names_the_planned_steps_and_a_measured_estimate(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    result = invoke_advseg("train", str(data), "--name", "r", "--runs-dir", str(tmp_path / "runs"), "--ngf", "2",
                           "--ndf", "2", "--load-size", "36", "--crop-size", "32", "--epochs", "3",
                           "--epochs-decay", "2", "--workers", "0", "--device", "cpu", "--max-steps", "9")
    assert result.returncode == 0, result.stderr
    # 8 pairs a epoch x 5 epochs = 40, cut to 9 by --max-steps; announced after the warm-up step + 3 timed ones
    match = re.search(r"train r: step 4 of 9 planned \(8 per epoch x 5 epochs, --max-steps 9\); "
                      r"([\d.e+-]+) s/step on cpu, about (\d+) s left", result.stderr)
    assert match, result.stderr
    assert float(match.group(1)) > 0
    assert "would take" not in result.stderr


@pytest.mark.parametrize(("seconds_per_step", "warned"), [(CPU_WARNING_HOURS * 3600 / 10 * 1.01, True),
                                                          (CPU_WARNING_HOURS * 3600 / 10 * 0.99, False)])
def test_a_cpu_run_predicted_longer_than_a_few_hours_names_what_shrinks_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], seconds_per_step: float, warned: bool) -> None:
    trainer = Trainer(tiny_config(make_dataset(tmp_path / "data"), tmp_path / "runs", max_steps=11))
    PlanAnnouncer(trainer, quiet=True)._announce(step=1, per_step=seconds_per_step)  # 10 steps left
    stderr = capsys.readouterr().err
    assert ("would take about" in stderr) == warned, stderr
    if warned:
        assert all(option in stderr for option in ("--max-steps", "--crop-size", "--ngf", "--epochs"))


def test_durations_read_as_people_say_them() -> None:
    assert [format_duration(s) for s in (40, 12 * 60, 3.5 * 3600, 2.1 * 86400)] == ["40 s", "12 min", "3.5 h",
                                                                                       "2.1 days"]
