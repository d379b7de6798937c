"""What a run folder says and allows across its life: running, complete, re-run by mistake, resumed after its end."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import invoke_advseg
from tests.training.test_training import make_dataset

ARGS = ["--ngf", "2", "--ndf", "2", "--load-size", "36", "--crop-size", "32", "--max-steps", "3", "--workers", "0",
        "--device", "cpu", "--quiet"]


def test_a_finished_run_is_neither_overwritten_nor_retrained_and_its_record_stays(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    runs = str(tmp_path / "runs")
    assert invoke_advseg("train", str(data), "--name", "r", "--runs-dir", runs, *ARGS).returncode == 0
    record_file = tmp_path / "runs" / "r" / "advseg-run.json"
    finished = record_file.read_text()
    assert json.loads(finished)["status"] == "complete"

    again = invoke_advseg("train", str(data), "--name", "r", "--runs-dir", runs, *ARGS)
    assert again.returncode == 2
    assert "holds a complete run (3 of 3 steps)" in again.stderr and "--resume" in again.stderr

    resumed = invoke_advseg("train", "--name", "r", "--runs-dir", runs, "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "already complete (3 steps" in resumed.stdout
    assert record_file.read_text() == finished, "resuming a finished run rewrote its record"

    further = invoke_advseg("train", "--name", "r", "--runs-dir", runs, "--resume", "--max-steps", "5", "--quiet")
    assert further.returncode == 0, further.stderr
    record = json.loads(record_file.read_text())
    assert record["status"] == "complete" and record["counts"]["steps"] == 5
    assert record["extra"]["first_started"] == json.loads(finished)["started"]
