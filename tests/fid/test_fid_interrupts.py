"""`advseg fid --save-stats` under SIGINT and SIGTERM (the real command in its own process, signalled from
outside, as in tests/test_interrupts_stages.py): no statistics file is left half made, the record says
"interrupted", the exit status is 130 / 143, and the printed command writes statistics equal to an
uninterrupted run's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from skimage import data

from tests.fid.fid_testkit import photo_crops, write_folder
from tests.test_interrupts import start_advseg_counting_calls
from tests.test_interrupts_stages import SIGNALS, advseg, interrupted_process, own_handlers  # noqa: F401

IMAGES = 8


@SIGNALS
def test_fid_save_stats_leaves_no_statistics_and_the_printed_command_writes_them_equal(
        fid_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int) -> None:
    folder = write_folder(tmp_path / "photos", photo_crops([data.astronaut(), data.coffee()], IMAGES, 64, seed=3))
    out = tmp_path / "stats.npz"
    args = ["fid", str(folder), "--save-stats", str(out), "--dims", "64", "--batch-size", "1", "--workers", "0",
            "--device", "cpu", "--no-cache", "--quiet"]
    process, forwards = start_advseg_counting_calls(args, tmp_path, "advseg_cli.fid:inception_features", 0.2)
    interrupted_process(process, forwards, 2, signum, args)
    assert forwards() < IMAGES, "the signal came after the last image"
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    record = json.loads(Path(f"{out}.run.json").read_text())
    assert record["status"] == "interrupted"

    resumed = advseg(args, monkeypatch)
    assert resumed.exit_code == 0, resumed.stderr
    straight = tmp_path / "straight.npz"
    assert advseg([*args[:3], str(straight), *args[4:]], monkeypatch).exit_code == 0
    with np.load(out) as continued, np.load(straight) as reference:
        assert sorted(continued.files) == sorted(reference.files)
        assert all(np.array_equal(continued[name], reference[name]) for name in reference.files)
    assert json.loads(Path(f"{out}.run.json").read_text())["status"] == "complete"
