"""SIGINT and SIGTERM to the per-item stages colorize, segcache and fid (tests/fid/test_fid_interrupts.py).

Each runs as its own ``advseg`` process, signalled from outside once it has finished a few items (segcache
and fid see their progress through a ``sitecustomize`` that counts one function's calls). Each stage must
keep its finished outputs, record "interrupted", print the command that continues (the interrupted one),
exit 130 / 143, and that command, run next (here in this process, where a test backend is registered),
must end with outputs equal to those of an uninterrupted run. The signals sent from inside a write (the
other tests here) run the real click command in this process.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from advseg_cli.cli import main
from tests.colorize.kit import save_public, tiny_generator

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}
SIGNALS = pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])


@pytest.fixture(autouse=True)
def own_handlers() -> Iterator[None]:
    """The command installs its handlers in this process: put pytest's back afterwards."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


def advseg(args: list[str], monkeypatch: pytest.MonkeyPatch) -> Result:
    """``advseg ARGS`` through the real click group, with the command line the advice repeats."""
    monkeypatch.setattr(sys, "argv", ["advseg", *args])
    return CliRunner().invoke(main, args, catch_exceptions=False)


def advice(result: Result, args: list[str]) -> list[str]:
    """The command after 'continue with:', which must be the command that was interrupted."""
    line = result.stderr.rsplit("continue with: ", 1)[1].strip().splitlines()[0]
    assert line == shlex.join(["advseg", *args]), line
    return shlex.split(line)[1:]


def valid_pngs(folder: Path) -> list[Path]:
    found = []
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as image:
            image.load()
        found.append(path)
    return found


# ----------------------------------------------------------------------------- colorize
SKETCHES = 48


@pytest.fixture(scope="module")
def colorize_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny generator, SKETCHES different sketches, and their uninterrupted colorize output."""
    root = tmp_path_factory.mktemp("colorize-interrupts")
    model = save_public(tiny_generator("resnet_6blocks", "instance", seed=4), root / "latest_net_G.pth")
    rng = np.random.default_rng(0)
    (root / "sketches").mkdir()
    for index in range(SKETCHES):
        gray = np.full((64, 64), 255, np.uint8)
        for _ in range(6):
            top, left = rng.integers(0, 56, size=2)
            gray[top, left:left + 8] = gray[top:top + 8, left] = 0
        Image.fromarray(gray).save(root / "sketches" / f"s{index:02d}.png")
    return {"root": root, "model": model, "sketches": root / "sketches"}


def colorize_args(inputs: dict[str, Path], out: Path) -> list[str]:
    return ["colorize", str(inputs["model"]), str(inputs["sketches"]), str(out), "--size", "256", "--batch-size",
            "1", "--workers", "0", "--device", "cpu", "--quiet"]


@SIGNALS
def test_colorize_keeps_its_results_and_the_printed_command_completes_them_equal(
        colorize_inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int) -> None:
    """The real command in its own process, signalled as a scheduler (SIGTERM) or Ctrl-C (SIGINT) does."""
    from tests.test_interrupts import run_advice, start_advseg, wait_until

    out = tmp_path / "out"
    args = colorize_args(colorize_inputs, out)
    process = start_advseg(args, tmp_path)
    wait_until(lambda: len(list(out.glob("*.png"))) >= 3, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_STATUS[signum], stderr
    assert "Traceback" not in stderr
    assert f"continue with: {shlex.join(['advseg', *args])}" in stderr
    record = json.loads((out / "advseg-run.json").read_text())
    kept = valid_pngs(out)
    assert record["status"] == "interrupted" and 3 <= len(kept) < SKETCHES
    assert record["extra"]["items_finished_before_the_interrupt"] <= len(kept)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [], "a temporary file was left behind"

    resumed = run_advice(stderr, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{SKETCHES - len(kept)} written, {len(kept)} already done" in resumed.stdout
    straight = colorize_inputs["root"] / "straight"
    if not straight.exists():
        assert advseg(colorize_args(colorize_inputs, straight), monkeypatch).exit_code == 0
    assert [p.name for p in valid_pngs(out)] == [p.name for p in valid_pngs(straight)]
    for reference in valid_pngs(straight):
        assert (out / reference.name).read_bytes() == reference.read_bytes(), reference.name
    assert json.loads((out / "advseg-run.json").read_text())["status"] == "complete"


# ----------------------------------------------------------------------------- segcache
PHOTOS = 24


def segcache_args(photos: Path, out: Path) -> list[str]:
    return ["segcache", str(photos), str(out), "--backend", "test-color", "--device", "cpu", "--workers", "0",
            "--batch-size", "1", "--quiet"]


def cache_maps(path: Path) -> dict[str, np.ndarray]:
    from advseg_cli.segcache import SegmentationCache

    with SegmentationCache(path) as cache:
        return {key: cache.labels(key) for key in cache.keys()}


def interrupted_process(process: subprocess.Popen, calls_done: Callable[[], int], calls: int, signum: int,
                        args: list[str]) -> str:
    """Signal the real command once it has finished ``calls`` calls; its stderr, after checking the exit
    status and that the printed command is the interrupted one."""
    from tests.test_interrupts import wait_until

    wait_until(lambda: calls_done() >= calls, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_STATUS[signum], stderr
    assert "Traceback" not in stderr
    assert f"continue with: {shlex.join(['advseg', *args])}" in stderr
    return stderr


@SIGNALS
def test_segcache_keeps_its_maps_and_the_printed_command_completes_them_equal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int) -> None:
    """The real command in its own process (the test-color Seg registered by a ``sitecustomize`` and slowed
    to 50 ms an image), signalled from outside; the printed command then runs here."""
    from tests.segcache.conftest import make_crops
    from tests.test_interrupts import start_advseg_counting_calls

    photos = make_crops(tmp_path / "photos", PHOTOS)
    out = tmp_path / "maps.h5"
    args = segcache_args(photos, out)
    process, segmented = start_advseg_counting_calls(
        args, tmp_path, "tests.segcache.color_segmenter:ColorSegmenter.hard_labels", 0.05,
        imports=("tests.segcache.color_segmenter",))
    interrupted_process(process, segmented, 4, signum, args)
    record = json.loads(Path(f"{out}.run.json").read_text())
    kept = cache_maps(out)  # a valid cache, holding what was segmented before the signal
    assert record["status"] == "interrupted" and 4 <= len(kept) < PHOTOS
    assert record["extra"]["items_finished_before_the_interrupt"] == len(kept)

    resumed = advseg(args, monkeypatch)
    assert resumed.exit_code == 0, resumed.stderr
    assert f"{PHOTOS - len(kept)} segmented, {len(kept)} already cached" in resumed.stdout
    straight = advseg(segcache_args(photos, tmp_path / "straight.h5"), monkeypatch)
    assert straight.exit_code == 0, straight.stderr
    continued, reference = cache_maps(out), cache_maps(tmp_path / "straight.h5")
    assert sorted(continued) == sorted(reference) and len(reference) == PHOTOS
    assert all(np.array_equal(continued[key], reference[key]) for key in reference)
    assert json.loads(Path(f"{out}.run.json").read_text())["status"] == "complete"


def test_a_signal_during_a_maps_hdf5_write_lets_it_finish_and_keeps_it(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut inside an entry's write, the work copy could not be committed and every map of the run would be
    lost; the signal waits until the entry is written and counted."""
    import h5py

    from tests.segcache.conftest import make_crops

    create, calls = h5py.Group.create_dataset, []

    def signal_inside(self: h5py.Group, name: str, *args: object, **options: object) -> h5py.Dataset:
        calls.append(name)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of the 4th entry's write
        return create(self, name, *args, **options)
    monkeypatch.setattr(h5py.Group, "create_dataset", signal_inside)
    photos, out = make_crops(tmp_path / "photos", 8), tmp_path / "maps.h5"
    result = advseg(segcache_args(photos, out), monkeypatch)
    assert result.exit_code == 143 and "Traceback" not in result.stderr, result.stderr
    record = json.loads(Path(f"{out}.run.json").read_text())
    assert record["status"] == "interrupted" and len(calls) == 4
    assert len(cache_maps(out)) == 4 == record["extra"]["items_finished_before_the_interrupt"]


# ----------------------------------------------------------------------------- data prepare (the shapes world)
WORLD = ["--steps", "fetch", "--world-train", "8", "--world-test", "2", "--world-size", "32", "--quiet"]


def rendered(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*.png"))}


def test_a_signal_between_a_photos_truth_and_the_photo_leaves_no_photo_without_its_truth(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The signal arrives right after the first file of the 6th photo is written: the next render must still
    give that photo its label map and preview (it skips a photo that is in place)."""
    import advseg_cli.images

    write, calls = advseg_cli.images.write_png, []

    def signal_after(path: Path, array: np.ndarray) -> None:
        write(path, array)
        calls.append(path)
        if len(calls) == 3 * 5 + 1:
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(advseg_cli.images, "write_png", signal_after)
    args = ["data", "prepare", "shapes", str(tmp_path / "cut"), *WORLD]
    result = advseg(args, monkeypatch)
    assert result.exit_code == 143 and "Traceback" not in result.stderr, result.stderr
    monkeypatch.setattr(advseg_cli.images, "write_png", write)
    assert advseg(advice(result, args), monkeypatch).exit_code == 0
    assert advseg(["data", "prepare", "shapes", str(tmp_path / "straight"), *WORLD], monkeypatch).exit_code == 0
    continued, reference = rendered(tmp_path / "cut" / "shapes"), rendered(tmp_path / "straight" / "shapes")
    assert sorted(continued) == sorted(reference) and len(reference) == 3 * 10
    assert [name for name in reference if continued[name] != reference[name]] == []


def test_an_interrupted_render_over_a_finished_one_keeps_its_whole_truth_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-running a finished render rewrites its truth file; cut half-way, the old whole file must stay,
    since the dataset's record still says the world is complete."""
    import advseg_cli.world.render as render
    from advseg_cli.datasets.prepare import DATA_RECORD
    from tests.test_interrupts import truth_maps

    args = ["data", "prepare", "shapes", str(tmp_path / "root"), *WORLD]
    assert advseg(args, monkeypatch).exit_code == 0
    world = tmp_path / "root" / "shapes"
    before = truth_maps(world)
    scene, calls = render.render_scene, []

    def signal_at_the_fourth(*scene_args: object) -> object:
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return scene(*scene_args)
    monkeypatch.setattr(render, "render_scene", signal_at_the_fourth)
    result = advseg(args, monkeypatch)
    assert result.exit_code == 130 and len(calls) == 4, result.stderr
    assert json.loads((world / DATA_RECORD).read_text())["status"] == "complete"
    after = truth_maps(world)
    assert sorted(after) == sorted(before) and len(before) == 10, "the truth file lost maps of a finished world"
    assert all(np.array_equal(after[key], before[key]) for key in before)


def test_sigterm_to_the_whole_process_group_stops_colorize_and_its_decoding_workers_cleanly(
        colorize_inputs: dict[str, Path], tmp_path: Path) -> None:
    """``timeout`` and batch schedulers signal the job's process group, DataLoader workers included: a torch
    worker killed by that SIGTERM made the command fail with "DataLoader worker ... is killed by signal"
    (traceback, exit 1, record "running"). The workers leave the signal to the main process."""
    from tests.test_interrupts import start_advseg, wait_until

    out = tmp_path / "out"
    args = colorize_args(colorize_inputs, out)
    args[args.index("--workers") + 1] = "2"  # decoding in two worker processes of the command's group
    args.remove("--quiet")  # with the progress bar the worker's death showed in every try (without: 1 in 3)
    process = start_advseg(args, tmp_path, own_session=True)
    wait_until(lambda: len(list(out.glob("*.png"))) >= 3, process)
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143 and "Traceback" not in stderr, stderr
    assert f"continue with: {shlex.join(['advseg', *args])}" in stderr
    assert json.loads((out / "advseg-run.json").read_text())["status"] == "interrupted"
    assert 3 <= len(valid_pngs(out)) < SKETCHES  # (the printed command's continuation: the test above)


SLOW_TEARDOWN_HOOK = """
import atexit, time
atexit.register(time.sleep, 3.0)  # the interpreter's teardown, made long enough to be hit by a signal
"""


def test_a_signal_while_the_stopped_command_ends_does_not_change_its_exit_status(
        colorize_inputs: dict[str, Path], tmp_path: Path) -> None:
    """The first signal decides: a SIGTERM after a SIGINT's advice, while the process tears down, used to kill
    it by the default action (status -15, as the new user who sent them 0.3 s apart saw)."""
    from tests.test_interrupts import LineReader, start_advseg, wait_until

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_TEARDOWN_HOOK)
    out = tmp_path / "out"
    process = start_advseg(colorize_args(colorize_inputs, out), tmp_path, env={"PYTHONPATH": str(hook)})
    wait_until(lambda: len(list(out.glob("*.png"))) >= 3, process)
    reader = LineReader(process.stderr)
    process.send_signal(signal.SIGINT)
    wait_until(lambda: any("continue with:" in line for line in reader.lines), process)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    stderr = reader.text()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
