"""A real signal to a real ``advseg`` process: the advice it prints, run as printed, finishes the work exactly.

The reference is the same work done without an interruption: bit-equal weights at the same step for
``train``, byte-equal sketches for ``edges``.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import REPO
from tests.training.test_training import make_dataset

ADVSEG = str(Path(sys.executable).with_name("advseg"))


def start_advseg(args: list[str], cwd: Path, env: dict[str, str] | None = None,
                 own_session: bool = False) -> subprocess.Popen:
    """``own_session``: the command leads its own process group, as a shell's foreground job does, so
    ``os.killpg`` reaches it the way a Ctrl-C at the terminal does (and not the test's own process)."""
    return subprocess.Popen([ADVSEG, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "ADVSEG_OFFLINE": "1", **(env or {})}, start_new_session=own_session)


# A ``sitecustomize`` on the child's path: imports what the test registers (a test backend), then makes one
# function (module:attribute.path) sleep before each call and leave a mark file after it, so the test sees
# the real command's progress from outside and signals it mid-run.
COUNT_CALLS_HOOK = """
import importlib, itertools, os, time
from pathlib import Path

for name in filter(None, os.environ.get("ADVSEG_TEST_IMPORTS", "").split(",")):
    importlib.import_module(name)
_module, _path = os.environ["ADVSEG_TEST_COUNT_CALLS"].split(":")
_owner = importlib.import_module(_module)
*_parents, _attribute = _path.split(".")
for _parent in _parents:
    _owner = getattr(_owner, _parent)
_original, _calls = getattr(_owner, _attribute), itertools.count()


def _counted(*args, **options):
    time.sleep(float(os.environ["ADVSEG_TEST_CALL_SECONDS"]))
    result = _original(*args, **options)
    Path(os.environ["ADVSEG_TEST_CALL_MARKS"], f"{os.getpid()}-{next(_calls)}").touch()
    return result


setattr(_owner, _attribute, _counted)
"""


def start_advseg_counting_calls(args: list[str], cwd: Path, function: str, seconds: float,
                                imports: tuple[str, ...] = ()) -> tuple[subprocess.Popen, Any]:
    """The real ``advseg`` command with ``function`` (``module:attribute``) slowed to ``seconds`` a call and
    counted; returns the process and a function giving the calls finished so far."""
    hook, marks = cwd / "hook", cwd / "call-marks"
    hook.mkdir()
    marks.mkdir()
    (hook / "sitecustomize.py").write_text(COUNT_CALLS_HOOK)
    path = os.pathsep.join(filter(None, [str(hook), str(REPO), os.environ.get("PYTHONPATH", "")]))
    env = {"PYTHONPATH": path, "ADVSEG_TEST_IMPORTS": ",".join(imports), "ADVSEG_TEST_COUNT_CALLS": function,
           "ADVSEG_TEST_CALL_SECONDS": str(seconds), "ADVSEG_TEST_CALL_MARKS": str(marks)}
    return start_advseg(args, cwd, env), lambda: len(list(marks.iterdir()))


def wait_until(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"finished before the signal: {process.communicate()}"
        assert time.monotonic() < deadline, "the process made no progress"
        time.sleep(0.05)


def run_advice(stderr: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the command after 'continue with:' exactly as printed (the ``advseg`` on this interpreter's PATH)."""
    advice = stderr.rsplit("continue with: ", 1)[1].strip().splitlines()[0]
    words = shlex.split(advice)
    assert words[0] == "advseg", advice
    return subprocess.run([ADVSEG, *words[1:]], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "ADVSEG_OFFLINE": "1"})


def metric_rows(run: Path) -> int:
    path = run / "metrics.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


TRAIN_ARGS = ["--model", "pix2pix", "--ngf", "4", "--ndf", "4", "--load-size", "36", "--crop-size", "32",
              "--max-steps", "30", "--log-every", "1", "--workers", "0", "--device", "cpu", "--quiet"]
EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number, as docs/training.md says


@pytest.fixture(scope="module")
def train_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("train-data") / "data")


@pytest.fixture(scope="module")
def straight_run(train_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The uninterrupted run's last checkpoint: what every interrupted and continued run must end at."""
    cwd = tmp_path_factory.mktemp("straight")
    straight = subprocess.run([ADVSEG, "train", str(train_data), "--name", "straight", "--runs-dir", "runs",
                               *TRAIN_ARGS], cwd=cwd, capture_output=True, text=True,
                              env={**os.environ, "ADVSEG_OFFLINE": "1"})
    assert straight.returncode == 0, straight.stderr
    return torch.load(cwd / "runs" / "straight" / "checkpoints" / "latest.pt", weights_only=True)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_train_stops_at_a_step_saves_it_and_the_printed_command_ends_bit_equal(
        train_data: Path, straight_run: dict, tmp_path: Path, signum: int) -> None:
    process = start_advseg(["train", str(train_data), "--name", "cut", "--runs-dir", "runs", *TRAIN_ARGS], tmp_path)
    wait_until(lambda: metric_rows(tmp_path / "runs" / "cut") >= 5, process)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_STATUS[signum], stderr
    assert "Traceback" not in stderr
    assert f"{signal.Signals(signum).name}: stopping after the current step" in stderr
    assert "continue with: advseg train --name cut --runs-dir runs --resume" in stderr
    record = json.loads((tmp_path / "runs" / "cut" / "advseg-run.json").read_text())
    stopped_at = record["counts"]["steps"]
    assert record["status"] == "interrupted" and 5 <= stopped_at < 30
    assert record["extra"]["continue_with"] == "advseg train --name cut --runs-dir runs --resume"
    assert f"at step {stopped_at} of 30" in stderr
    assert metric_rows(tmp_path / "runs" / "cut") == stopped_at, "a finished step's metrics row is missing"
    saved = torch.load(tmp_path / "runs" / "cut" / "checkpoints" / "latest.pt", weights_only=True)
    assert saved["position"]["step"] == stopped_at, "the checkpoint is not the step the run stopped at"

    resumed = run_advice(stderr, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a, b = torch.load(tmp_path / "runs" / "cut" / "checkpoints" / "latest.pt", weights_only=True), straight_run
    assert a["position"] == b["position"] and a["position"]["step"] == 30
    differing = [name for name in b["model"] if not torch.equal(a["model"][name], b["model"][name])]
    assert not differing, f"resumed weights differ from an uninterrupted run: {differing[:5]}"
    assert json.loads((tmp_path / "runs" / "cut" / "advseg-run.json").read_text())["status"] == "complete"


def test_sigterm_to_the_whole_process_group_stops_train_with_data_workers_at_a_step(
        train_data: Path, tmp_path: Path) -> None:
    """``timeout`` and schedulers signal the job's process group: the DataLoader workers got the SIGTERM too,
    died of it, and the run failed inside its step ("DataLoader worker ... is killed by signal", record
    "running", no checkpoint where it stopped), as a new user saw. The workers leave it to the main process."""
    args = ["train", str(train_data), "--name", "group", "--runs-dir", "runs", *TRAIN_ARGS]
    args[args.index("--workers") + 1] = "2"
    process = start_advseg(args, tmp_path, own_session=True)
    wait_until(lambda: metric_rows(tmp_path / "runs" / "group") >= 5, process)
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143 and "Traceback" not in stderr, stderr
    record = json.loads((tmp_path / "runs" / "group" / "advseg-run.json").read_text())
    saved = torch.load(tmp_path / "runs" / "group" / "checkpoints" / "latest.pt", weights_only=True)
    assert record["status"] == "interrupted" and saved["position"]["step"] == record["counts"]["steps"] < 30
    resumed = run_advice(stderr, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "runs" / "group" / "advseg-run.json").read_text())["status"] == "complete"


class LineReader:
    """Collects a process's stderr lines on a thread, so a test can wait for one while the process runs."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, "")), daemon=True)
        self._thread.start()

    def text(self) -> str:
        self._thread.join(120)
        return "".join(self.lines)


SLOW_TRAIN_ARGS = ["--model", "pix2pix", "--ngf", "16", "--ndf", "16", "--load-size", "260", "--crop-size", "256",
                   "--max-steps", "40", "--save-every", "3", "--log-every", "1", "--workers", "0", "--device", "cpu",
                   "--quiet"]  # about a second a step on 2 busy CPU cores: a second signal lands inside a step
#                              (at half a second, a CI machine under load once let the step end first)


def test_a_second_signal_stops_train_inside_the_step_and_keeps_the_last_saved_checkpoint(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    process = start_advseg(["train", str(data), "--name", "twice", "--runs-dir", "runs", *SLOW_TRAIN_ARGS], tmp_path)
    stderr = LineReader(process.stderr)
    run = tmp_path / "runs" / "twice"
    wait_until(lambda: metric_rows(run) >= 4, process)  # inside step 5: after the save at 3, before the one at 6
    process.send_signal(signal.SIGINT)
    wait_until(lambda: any("SIGINT: stopping after the current step" in line for line in stderr.lines), process, 30)
    process.send_signal(signal.SIGTERM)  # at once: the step the first signal let finish is still running
    process.wait(60)
    text = stderr.text()
    assert process.returncode == 130, text  # the first signal decides the status
    assert "Traceback" not in text
    assert "interrupted before the end of a step; continue with: advseg train --name twice --runs-dir runs --resume" \
        in text, text
    record = json.loads((run / "advseg-run.json").read_text())
    steps = record["counts"]["steps"]
    assert record["status"] == "interrupted" and 4 <= steps < 40
    assert metric_rows(run) == steps, "the step the second signal cut was logged as finished"
    saved = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)  # whole, and the last periodic one
    assert saved["position"]["step"] == steps - steps % 3


def write_photos(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        canvas = np.full((96, 96, 3), 235, np.uint8)
        top, left = rng.integers(8, 40, size=2)
        canvas[top:top + 40, left:left + 40] = rng.integers(0, 120, size=3)
        Image.fromarray(canvas).save(folder / f"p{index:02d}.png")


EDGES_ARGS = ["--size", "64", "--pad", "16", "--device", "cpu", "--workers", "0", "--quiet"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_edges_keeps_finished_sketches_and_the_printed_command_completes_them(tmp_path: Path, signum: int) -> None:
    write_photos(tmp_path / "photos", 16)
    process = start_advseg(["edges", "photos", "sketches", *EDGES_ARGS], tmp_path)
    wait_until(lambda: len(list((tmp_path / "sketches").glob("*.png"))) >= 2, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_STATUS[signum], stderr
    assert "Traceback" not in stderr
    record = json.loads((tmp_path / "sketches" / "advseg-run.json").read_text())
    finished = record["extra"]["items_finished_before_the_interrupt"]
    assert record["status"] == "interrupted" and 2 <= finished < 16
    assert sorted(p.name for p in (tmp_path / "sketches").iterdir() if p.name.startswith(".")) == [], \
        "a temporary file of the interrupted write was left behind"
    assert f"continue with: {shlex.join(['advseg', 'edges', 'photos', 'sketches', *EDGES_ARGS])}" in stderr

    resumed = run_advice(stderr, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{16 - finished} written, {finished} already done" in resumed.stdout
    straight = subprocess.run([ADVSEG, "edges", "photos", "reference", *EDGES_ARGS], cwd=tmp_path,
                              capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    for reference in sorted((tmp_path / "reference").glob("*.png")):
        assert (tmp_path / "sketches" / reference.name).read_bytes() == reference.read_bytes(), reference.name


DDP_ARGS = ["--model", "pix2pix", "--ngf", "4", "--ndf", "4", "--load-size", "36", "--crop-size", "32",
            "--max-steps", "12", "--log-every", "1", "--workers", "0", "--device", "cpu", "--quiet"]


def torchrun(*args: str) -> list[str]:
    """``torchrun ARGS`` with this interpreter."""
    return [sys.executable, "-m", "torch.distributed.run", *args]


def two_process_training(data: Path, name: str) -> list[str]:
    return torchrun("--standalone", "--nproc_per_node", "2", "-m", "advseg_cli.cli", "train", str(data), "--name",
                    name, "--runs-dir", "runs", *DDP_ARGS)


def torchrun_env() -> dict[str, str]:
    return {**os.environ, "ADVSEG_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def straight_torchrun(train_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The uninterrupted two-process run's last checkpoint, shared by the SIGINT and the SIGTERM case."""
    cwd = tmp_path_factory.mktemp("straight-torchrun")
    straight = subprocess.run(two_process_training(train_data, "straight"), cwd=cwd, capture_output=True,
                              text=True, env=torchrun_env(), timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]
    return torch.load(cwd / "runs" / "straight" / "checkpoints" / "latest.pt", weights_only=True)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_a_torchrun_job_stops_every_rank_after_one_step_and_its_command_ends_bit_equal(
        train_data: Path, straight_torchrun: dict, tmp_path: Path, signum: int) -> None:
    """A scheduler signals the launcher (SIGTERM), or Ctrl-C does (SIGINT); torchrun passes the signal on to
    its processes, which agree on the step, and the printed command is a torchrun command of as many
    processes (one would take other batches)."""
    env = torchrun_env()
    name = signal.Signals(signum).name
    process = subprocess.Popen(two_process_training(train_data, "cut"), cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    wait_until(lambda: metric_rows(tmp_path / "runs" / "cut") >= 3, process, 180)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=180)
    assert str(REPO / "advseg_cli") not in stderr, stderr[-3000:]  # no traceback through our code (torchrun has one)
    record = json.loads((tmp_path / "runs" / "cut" / "advseg-run.json").read_text())
    steps = record["counts"]["steps"]
    assert record["status"] == "interrupted" and 3 <= steps < 12
    assert stderr.count(f"interrupted ({name}) at step {steps} of 12") == 2, stderr[-3000:]  # both ranks
    advice = "torchrun --standalone --nproc_per_node 2 -m advseg_cli.cli train --name cut --runs-dir runs --resume"
    assert record["extra"]["continue_with"] == advice and f"continue with: {advice}" in stderr
    saved = torch.load(tmp_path / "runs" / "cut" / "checkpoints" / "latest.pt", weights_only=True)
    assert saved["position"]["step"] == steps and metric_rows(tmp_path / "runs" / "cut") == steps

    resumed = subprocess.run(torchrun(*shlex.split(advice)[1:]), cwd=tmp_path, capture_output=True, text=True,
                             env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = torch.load(tmp_path / "runs" / "cut" / "checkpoints" / "latest.pt", weights_only=True), straight_torchrun
    assert a["position"] == b["position"] and a["position"]["step"] == 12
    differing = [name for name in b["model"] if not torch.equal(a["model"][name], b["model"][name])]
    assert not differing, f"the continued torchrun job differs from an uninterrupted one: {differing[:5]}"
    assert process.returncode != 0  # torchrun reports its stopped job as failed (its own status, not ours)


# ----------------------------------------------------------------------------- data prepare (the shapes world)
WORLD_ARGS = ["--steps", "fetch", "--world-train", "120", "--world-test", "12", "--world-size", "64", "--quiet"]
WORLD_PHOTOS = 132  # about 3 s of rendering on 2 busy cores: a signal lands in the middle


def world_files(folder: Path) -> dict[str, bytes]:
    """Every photo and truth PNG of a rendered world, by relative path (the HDF5 truth files carry creation
    times, so they are compared by their maps)."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*.png"))}


def truth_maps(folder: Path) -> dict[str, np.ndarray]:
    from advseg_cli.segcache import SegmentationCache

    maps = {}
    for split in ("trainB", "testB"):
        with SegmentationCache(folder / "truth" / f"{split}.h5") as cache:
            maps.update({f"{split}/{key}": cache.labels(key) for key in cache.keys()})
    return maps


@pytest.fixture(scope="module")
def straight_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same world rendered without an interruption, by the function the command calls."""
    from advseg_cli.datasets.prepare import PrepareConfig, prepare_dataset
    from advseg_cli.world.render import WorldConfig

    root = tmp_path_factory.mktemp("straight-world")
    prepare_dataset("shapes", root, PrepareConfig(steps=("fetch",), world=WorldConfig(train=120, test=12, size=64),
                                                  quiet=True))
    return root / "shapes"


def photos_in(folder: Path) -> int:
    return len([path for path in folder.glob("*.png") if not path.name.startswith(".")])


@pytest.mark.parametrize("signals", [(signal.SIGINT,), (signal.SIGTERM,), (signal.SIGINT, signal.SIGTERM)],
                         ids=["SIGINT", "SIGTERM", "SIGINT-then-SIGTERM"])
def test_data_prepare_keeps_its_photos_records_the_interruption_apart_and_continues_byte_equal(
        straight_world: Path, tmp_path: Path, signals: tuple[int, ...]) -> None:
    """The world's record means "rendered": an interrupted render leaves its own record, and the printed
    command continues it to the bytes of an uninterrupted render. A second signal at once changes nothing:
    the first decides the status, and the interruption record is still written whole."""
    from advseg_cli.datasets.prepare import DATA_RECORD, INTERRUPTED_RECORD

    args = ["data", "prepare", "shapes", "root", *WORLD_ARGS]
    process = start_advseg(args, tmp_path)
    world = tmp_path / "root" / "shapes"
    wait_until(lambda: photos_in(world / "trainB") >= 10, process)
    for signum in signals:
        process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_STATUS[signals[0]], stderr
    assert "Traceback" not in stderr
    assert f"continue with: {shlex.join(['advseg', *args])}" in stderr
    assert not (world / DATA_RECORD).exists(), "an interrupted render looks fetched"
    record = json.loads((world / INTERRUPTED_RECORD).read_text())
    kept = photos_in(world / "trainB") + photos_in(world / "testB")
    assert record["status"] == "interrupted" and 10 <= record["counts"]["done"] == kept < WORLD_PHOTOS
    assert record["extra"]["continue_with"] == shlex.join(["advseg", *args])
    assert record["options"]["world"] == {"seed": 0, "train": 120, "test": 12, "size": 64}
    assert [p for p in world.rglob(".*") if p.is_file()] == [], "a temporary file was left behind"

    resumed = run_advice(stderr, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((world / DATA_RECORD).read_text())["status"] == "complete"
    assert not (world / INTERRUPTED_RECORD).exists(), "the interruption record outlived the finished render"
    continued, reference = world_files(world), world_files(straight_world)
    assert sorted(continued) == sorted(reference) and len(reference) == 3 * WORLD_PHOTOS
    assert [name for name in reference if continued[name] != reference[name]] == []
    continued_maps, reference_maps = truth_maps(world), truth_maps(straight_world)
    assert sorted(continued_maps) == sorted(reference_maps) and len(reference_maps) == WORLD_PHOTOS
    assert all(np.array_equal(continued_maps[key], reference_maps[key]) for key in reference_maps)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_a_download_keeps_the_photos_and_the_part_and_the_command_finishes_them(
        tmp_path: Path, signum: int) -> None:
    """A signal lands while a photo is half downloaded (the host stalls it): the finished photos stay, the
    half-received bytes stay as the ``.part`` the next run resumes with a Range request, the dataset's
    record is not written (it would mean "fetched"), the interruption has its own record, and the printed
    command brings every listed photo, each with its listed sha256."""
    import hashlib

    from advseg_cli.datasets.prepare import DATA_RECORD, INTERRUPTED_RECORD
    from advseg_cli.download import part_path
    from tests.datasets.fixture_server import serve
    from tests.datasets.kit import build_mirror, write_lists

    entries = build_mirror(tmp_path / "host")
    lists = write_lists(tmp_path / "lists", "elephant", entries)
    stalled = entries[2]  # after two whole photos
    with serve(tmp_path / "host") as server:
        server.fail_next(stalled.source, "stall")
        args = ["data", "prepare", "elephant", "data", "--steps", "fetch", "--lists", str(lists),
                "--mirror", server.url, "--quiet"]
        process = start_advseg(args, tmp_path)
        wait_until(server.stalled.is_set, process)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
        server.release()
        assert process.returncode == EXIT_STATUS[signum], stderr
        assert "Traceback" not in stderr
        assert f"continue with: {shlex.join(['advseg', *args])}" in stderr
        folder = tmp_path / "data" / "elephant"
        assert not (folder / DATA_RECORD).exists(), "an interrupted fetch looks fetched"
        record = json.loads((folder / INTERRUPTED_RECORD).read_text())
        assert record["status"] == "interrupted" and record["counts"]["done"] == 2
        destination = folder / f"{stalled.split}B" / stalled.file
        assert not destination.exists(), "a half-received photo under its final name"
        received = part_path(destination).stat().st_size
        assert 0 < received < stalled.size

        resumed = run_advice(stderr, tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert server.requests_of(stalled.source)[-1] == f"bytes={received}-", "not resumed from the part"
    assert json.loads((folder / DATA_RECORD).read_text())["status"] == "complete"
    assert not (folder / INTERRUPTED_RECORD).exists()
    for entry in entries:
        path = folder / f"{entry.split}B" / entry.file
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256, entry.file
    assert [p.name for p in folder.rglob("*.part")] == []
