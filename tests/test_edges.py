"""``advseg edges`` as a user runs it: real photos, real HED weights, real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advseg_cli.edges import EdgesConfig, extract_edges
from tests.bad_inputs import EXPECTED_DECODABLE, write_bad_inputs
from tests.helpers import REPO, invoke_advseg, make_photo_folder, photo, requires_hed_weights, run_advseg

FAST = ["--size", "64", "--pad", "32", "--workers", "0", "--quiet"]


def _sketches(folder: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))}


@requires_hed_weights
def test_hed_sketches_keep_relative_paths_and_resume(small_photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "sketches"
    first = run_advseg("edges", str(small_photos), str(out), *FAST)
    assert first.returncode == 0, first.stderr
    assert "4 written, 0 already done" in first.stdout
    sketches = _sketches(out)
    assert sorted(sketches) == ["astronaut.png", "chelsea.png", "coffee.png", "sub/rocket.png"]
    for sketch in sketches.values():
        assert sketch.shape == (64, 64) and sketch.dtype == np.uint8
        assert set(np.unique(sketch)) <= {0, 255} and 0.005 < (sketch == 0).mean() < 0.4
    record = json.loads((out / "advseg-run.json").read_text())
    assert record["status"] == "complete" and record["counts"] == {"done": 4, "skipped": 0, "failed": 0}
    assert record["weights"][0]["sha256"].startswith("4502df9d")

    again = invoke_advseg("edges", str(small_photos), str(out), *FAST)
    assert again.returncode == 0 and "0 written, 4 already done" in again.stdout
    redo = invoke_advseg("edges", str(small_photos), str(out), *FAST, "--overwrite")
    assert "4 written" in redo.stdout and _sketches(out).keys() == sketches.keys()
    assert all(np.array_equal(_sketches(out)[k], v) for k, v in sketches.items())  # deterministic


@requires_hed_weights
def test_batching_does_not_change_the_sketches(tmp_path: Path) -> None:
    photos = make_photo_folder(tmp_path / "p", 48)
    for name in ("astronaut", "coffee"):  # same-sized photos, so batches of 3 really form
        Image.fromarray(photo(name, 48)[:48, :48]).save(photos / f"sq_{name}.png")
    Image.fromarray(photo("rocket", 48)[:48, :48]).save(photos / "sq_rocket.png")
    single = extract_edges(photos, tmp_path / "b1", EdgesConfig(size=0, pad=16, batch_size=1, quiet=True))
    batched = extract_edges(photos, tmp_path / "b3", EdgesConfig(size=0, pad=16, batch_size=3, quiet=True))
    assert single.done == batched.done == 7
    one, three = _sketches(tmp_path / "b1"), _sketches(tmp_path / "b3")
    assert one.keys() == three.keys()
    for key in one:
        assert one[key].shape == three[key].shape
        assert (one[key] != three[key]).mean() < 0.002, key  # same up to float summation order


@requires_hed_weights
def test_size_zero_keeps_each_photos_size(small_photos: Path, tmp_path: Path) -> None:
    summary = extract_edges(small_photos, tmp_path / "o", EdgesConfig(size=0, pad=16, quiet=True))
    assert summary.done == 4
    for relative in ("astronaut", "chelsea", "coffee", "sub/rocket"):
        source = Image.open(next(small_photos.glob(f"{relative}.*")))
        assert Image.open(tmp_path / "o" / f"{relative}.png").size == source.size


@requires_hed_weights
def test_mixed_folder_reports_bad_files_and_keeps_the_good(tmp_path: Path) -> None:
    photos = write_bad_inputs(tmp_path / "mixed")
    out = tmp_path / "out"
    result = run_advseg("edges", str(photos), str(out), *FAST)
    assert result.returncode == 0, result.stderr
    bad = sorted(n for n, ok in EXPECTED_DECODABLE.items() if not ok)
    good = sorted(n for n, ok in EXPECTED_DECODABLE.items() if ok)
    assert f"{len(bad)} failed" in result.stdout
    assert sorted(p.name for p in out.glob("*.png")) == sorted(Path(n).with_suffix(".png").name for n in good)
    record = json.loads((out / "advseg-run.json").read_text())
    assert sorted(f["input"] for f in record["failures"]) == bad
    assert all(f["reason"] for f in record["failures"])
    assert not list(out.glob(".*"))  # no temporaries left


def test_folder_where_nothing_decodes_exits_nonzero(tmp_path: Path) -> None:
    photos = tmp_path / "broken"
    photos.mkdir()
    (photos / "a.png").write_text("not a png")
    (photos / "b.jpg").write_bytes(b"")
    result = invoke_advseg("edges", str(photos), str(tmp_path / "out"), *FAST, "--method", "canny")
    assert result.returncode == 1
    assert "all 2 inputs failed" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["edges", "{tmp}/missing", "{tmp}/out"], "no such folder"),
        (["edges", "{photos}", "{tmp}/out", "--weights", "{tmp}/nope.h5"], "no such file"),
        (["edges", "{photos}", "{tmp}/out", "--weights", "{text}"], "--weights"),
        (["edges", "{photos}", "{tmp}/out", "--device", "cuda:7"], "--device"),
        (["edges", "{photos}", "{tmp}/out", "--precision", "fp16", "--device", "cpu"], "fp16"),
        (["edges", "{photos}", "{tmp}/out", "--shard", "3/2"], "--shard"),
        (["edges", "{photos}", "{photos}/inside"], "inside PHOTOS"),
    ],
)
def test_user_mistakes_are_one_line_exit_2(small_photos: Path, tmp_path: Path, args: list[str], expected: str) -> None:
    text = tmp_path / "weights.h5"
    text.write_text("not weights")
    filled = [a.format(tmp=tmp_path, photos=small_photos, text=text) for a in args]
    result = invoke_advseg(*filled)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr


def test_a_real_process_prints_one_line_and_debug_the_traceback(tmp_path: Path) -> None:
    plain = run_advseg("edges", str(tmp_path / "missing"), str(tmp_path / "o"))
    assert plain.returncode == 2 and plain.stderr.strip().count("\n") == 0 and "no such folder" in plain.stderr
    debug = run_advseg("--debug", "edges", str(tmp_path / "missing"), str(tmp_path / "o"))
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@requires_hed_weights
def test_resuming_with_other_settings_is_refused(small_photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert invoke_advseg("edges", str(small_photos), str(out), *FAST).returncode == 0
    result = invoke_advseg("edges", str(small_photos), str(out), *FAST, "--postprocess", "none")
    assert result.returncode == 2 and "postprocess" in result.stderr and "--overwrite" in result.stderr


def test_xdog_and_canny_draw_black_lines_on_white(tmp_path: Path) -> None:
    photos = tmp_path / "p"
    photos.mkdir()
    square = np.full((64, 64, 3), 230, np.uint8)
    square[16:48, 16:48] = 30
    Image.fromarray(square).save(photos / "square.png")
    for method in ("xdog", "canny"):
        extract_edges(photos, tmp_path / method, EdgesConfig(method=method, size=64, quiet=True))
        sketch = np.asarray(Image.open(tmp_path / method / "square.png"))
        line = sketch == 0
        assert line.any() and line.mean() < 0.2, method
        assert line[10:54, 10:54].sum() == line.sum(), method  # lines only around the square's border
        assert not line[24:40, 24:40].any(), method  # flat interior has no lines


@requires_hed_weights
def test_shards_together_cover_the_folder(small_photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    for shard in ("0/2", "1/2"):
        assert invoke_advseg("edges", str(small_photos), str(out), *FAST, "--shard", shard).returncode == 0
    assert len(_sketches(out)) == 4
    assert (out / "advseg-run.shard-0-of-2.json").exists() and (out / "advseg-run.shard-1-of-2.json").exists()


@requires_hed_weights
def test_killed_run_resumes_and_every_output_is_valid(tmp_path: Path) -> None:
    photos = tmp_path / "p"
    photos.mkdir()
    for index in range(12):
        name = ("astronaut", "chelsea", "coffee", "rocket")[index % 4]
        Image.fromarray(np.roll(photo(name, 96), index * 7, axis=1)).save(photos / f"{index:02d}.png")
    out = tmp_path / "o"
    args = [sys.executable, "-m", "advseg_cli.cli", "edges", str(photos), str(out), "--size", "96",
            "--batch-size", "1", "--workers", "0", "--quiet"]
    process = subprocess.Popen(args, cwd=REPO, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(out.glob("[0-9]*.png"))) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written_before = len(list(out.glob("[0-9]*.png")))
    assert 0 < written_before < 12, "the run must be killed mid-way for this test to mean anything"
    for sketch in out.glob("[0-9]*.png"):
        Image.open(sketch).load()  # every file under a final name is complete
    result = run_advseg("edges", str(photos), str(out), "--size", "96", "--batch-size", "1", "--workers", "0")
    assert result.returncode == 0, result.stderr
    assert f"{12 - written_before} written, {written_before} already done" in result.stdout
    assert len(_sketches(out)) == 12 and not list(out.glob(".*tmp*"))


def test_automatic_batch_and_workers_follow_the_device() -> None:
    """HED on a CPU runs one photo per pass with no decoding processes (measured faster, see
    docs/benchmarks.md); a GPU gets batches and workers; an explicit choice always wins."""
    from advseg_cli.devices import default_batch_size as auto_batch_size
    from advseg_cli.edges import auto_workers

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert (auto_batch_size(cpu), auto_batch_size(gpu)) == (1, 8)
    assert auto_workers(EdgesConfig(workers=-1), cpu) == 0
    assert auto_workers(EdgesConfig(workers=-1), gpu) == min(4, os.cpu_count() or 1)
    assert auto_workers(EdgesConfig(method="xdog", workers=-1), cpu) == min(4, os.cpu_count() or 1)
    assert auto_workers(EdgesConfig(workers=3), cpu) == 3
