"""``advseg experiment seg-effect --quick`` end to end: the real stages in the shapes world, in minutes.

The quick preset's numbers mean nothing (4 steps, a Seg trained for seconds); what is checked is that
every metric is what it claims to be: in range, exactly 0 where no gradient can flow, and the
evaluation segmenter's own sanity (near its validation mIoU on the real test photos, near chance on grey).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from advseg_cli.cli import main
from advseg_cli.experiments.seg_effect import BASE_MODES, METRICS, MODES, PRESETS, VARIANT_MODES, mean_and_spread
from tests.helpers import requires_hed_weights

QUICK = PRESETS["quick"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("seg-effect")
    result = CliRunner().invoke(main, ["experiment", "seg-effect", str(out), "--quick", "--device", "cpu", "--quiet",
                                       "--jobs", "2"])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "results.json").read_text()), result.output


@requires_hed_weights
def test_every_run_is_scored_at_every_evaluation_step(quick_run: tuple[Path, dict, str]) -> None:
    out, results, printed = quick_run
    rows = results["rows"]
    expected = {(m, mode, s, step) for m in QUICK.models for mode in QUICK.modes for s in QUICK.seeds
                for step in QUICK.eval_steps_for(m)}
    assert {(r["model"], r["mode"], r["seed"], r["step"]) for r in rows} == expected
    assert all(len(QUICK.eval_steps_for(m)) >= 2 for m in QUICK.models)  # the plots have a curve, not a point
    assert QUICK.steps_for("cyclegan") != QUICK.steps_for("pix2pix")  # per-model budgets are exercised
    for row in rows:
        assert 0.0 <= row["miou"] <= 1.0 and 0.0 <= row["mae"] <= 255.0
        assert math.isfinite(row["frechet"]) and row["frechet"] >= -1e-9
    assert "| pix2pix | straight |" in printed and "References:" in printed  # the table, printed and in table.md
    assert (out / "table.md").read_text() in printed


@requires_hed_weights
def test_the_segmentation_gradient_is_exactly_zero_in_compat_only(quick_run: tuple[Path, dict, str]) -> None:
    _, results, _ = quick_run
    for row in results["rows"]:
        if row["mode"] == "none":
            assert row["seg_grad_norm"] is None  # no segmentation term at all
        elif row["mode"] == "compat":
            assert row["seg_grad_norm"] == 0.0  # the public code's defect, measured
        else:
            assert row["seg_grad_norm"] > 0.0


@requires_hed_weights
def test_the_evaluation_segmenter_is_sane_and_not_the_training_one(quick_run: tuple[Path, dict, str]) -> None:
    _, results, _ = quick_run
    references = results["references"]
    eval_record = json.loads(Path(results["eval_weights"] + ".run.json").read_text())
    validation = eval_record["extra"]["validation"]["miou"]
    assert abs(references["miou_test_photos"] - validation) < 0.15  # same world, other photos
    assert references["miou_grey"] < 0.12  # one class everywhere: about chance
    assert references["miou_grey"] < references["miou_test_photos"] / 3
    assert results["seg_weights"] != results["eval_weights"]
    seg_record = json.loads(Path(results["seg_weights"] + ".run.json").read_text())
    assert seg_record["options"]["arch"] != eval_record["options"]["arch"]
    assert seg_record["options"]["seed"] != eval_record["options"]["seed"]


@requires_hed_weights
def test_the_table_is_the_mean_and_spread_of_the_last_step(quick_run: tuple[Path, dict, str]) -> None:
    _, results, _ = quick_run
    for line in results["table"]:
        last = QUICK.eval_steps_for(line["model"])[-1]
        assert line["step"] == last
        cell = [r for r in results["rows"] if r["model"] == line["model"] and r["mode"] == line["mode"]
                and r["step"] == last]
        assert line["seeds"] == len(QUICK.seeds) == len(cell)
        values = [r["mae"] for r in cell]
        mean = sum(values) / len(values)
        spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        assert line["mae"] == pytest.approx([mean, spread])


@requires_hed_weights
def test_plots_are_written_per_metric(quick_run: tuple[Path, dict, str]) -> None:
    out, _, _ = quick_run
    for metric in METRICS:
        with Image.open(out / "plots" / f"{metric}.png") as image:
            assert image.format == "PNG" and image.width > 300


@requires_hed_weights
def test_a_second_run_continues_instead_of_training_again(quick_run: tuple[Path, dict, str]) -> None:
    out, results, _ = quick_run
    checkpoint = out / "runs" / "cyclegan-soft-s0" / "checkpoints" / "latest.pt"
    before = checkpoint.stat().st_mtime_ns
    result = CliRunner().invoke(main, ["experiment", "seg-effect", str(out), "--quick", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert checkpoint.stat().st_mtime_ns == before
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]


def test_spread_of_one_seed_is_zero_and_of_none_is_nothing() -> None:
    assert mean_and_spread([2.0]) == (2.0, 0.0)
    assert mean_and_spread([None, None]) is None
    assert mean_and_spread([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))


def test_unknown_modes_are_refused_before_any_work(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["experiment", "seg-effect", str(tmp_path / "x"), "--quick", "--modes", "sharp"])
    assert result.exit_code == 2 and "--modes" in result.output and not (tmp_path / "x").exists()


@requires_hed_weights
def test_cut_and_fastcut_are_models_of_the_experiment(quick_run: tuple[Path, dict, str], tmp_path: Path) -> None:
    """--models cut,fastcut on a copy of the prepared world: their runs are scored like the others', and the
    soft maps' gradient reaches their generator. The default model list (and so its runtime) is unchanged."""
    import shutil

    out, _, _ = quick_run
    copy = tmp_path / "cut"
    for part in ("world", "seg"):
        shutil.copytree(out / part, copy / part)
    result = CliRunner().invoke(main, ["experiment", "seg-effect", str(copy), "--quick", "--device", "cpu", "--quiet",
                                       "--models", "cut,fastcut", "--modes", "none,soft", "--seeds", "0"])
    assert result.exit_code == 0, result.output
    rows = json.loads((copy / "results.json").read_text())["rows"]
    assert {(r["model"], r["mode"], r["step"]) for r in rows} == {
        (m, mode, step) for m in ("cut", "fastcut") for mode in ("none", "soft") for step in QUICK.eval_steps_for(m)}
    for row in rows:
        assert 0.0 <= row["miou"] <= 1.0 and math.isfinite(row["frechet"])
        assert (row["seg_grad_norm"] is None) if row["mode"] == "none" else row["seg_grad_norm"] > 0.0
    assert "| fastcut | soft |" in result.output and QUICK.models == ("cyclegan", "pix2pix")


@requires_hed_weights
def test_differences_are_paired_by_seed_against_none_at_the_last_step(quick_run: tuple[Path, dict, str]) -> None:
    """Every non-baseline mode and metric has its paired difference, recomputed here from the rows."""
    _, results, printed = quick_run
    rows = results["rows"]
    expected = {(m, mode, metric) for m in QUICK.models for mode in QUICK.modes if mode != "none"
                for metric in ("miou", "mae", "frechet")}
    assert {(d["model"], d["mode"], d["metric"]) for d in results["differences"]} == expected
    for d in results["differences"]:
        last = QUICK.eval_steps_for(d["model"])[-1]
        value = {(r["mode"], r["seed"]): r[d["metric"]] for r in rows if r["model"] == d["model"] and r["step"] == last}
        assert d["seeds"] == list(QUICK.seeds)
        assert d["differences"] == pytest.approx([value[(d["mode"], s)] - value[("none", s)] for s in QUICK.seeds])
        assert d["low"] <= d["mean"] <= d["high"]
        assert d["verdict"] in ("better", "worse", "no difference")
    assert "Paired differences to `none`" in printed and "| pix2pix | compat |" in printed


@requires_hed_weights
def test_learning_curves_and_their_convergence_are_recorded(quick_run: tuple[Path, dict, str]) -> None:
    _, results, _ = quick_run
    for curve in results["learning_curves"]:
        steps = QUICK.eval_steps_for(curve["model"])
        means = [sum(r[curve["metric"]] for r in results["rows"] if r["model"] == curve["model"]
                     and r["mode"] == curve["mode"] and r["step"] == step) / len(QUICK.seeds) for step in steps]
        assert curve["curve"] == pytest.approx(means)
        assert curve["converged"] == (abs(means[-1] - means[-2]) < curve["last_spread"])


@requires_hed_weights
def test_the_grid_shows_the_same_sketches_for_every_mode(quick_run: tuple[Path, dict, str]) -> None:
    """Per model: rows of photo, sketch, truth, then one colorization per mode, at the crop size, 3x."""
    import numpy as np

    out, _, _ = quick_run
    side = QUICK.crop_size * 3
    for model in QUICK.models:
        with Image.open(out / "plots" / f"grid_{model}.png") as image:
            grid = np.asarray(image.convert("RGB"))
        rows = min(QUICK.world_test, 8)
        assert grid.shape == (rows * side, (3 + len(QUICK.modes)) * side, 3)
        last = QUICK.eval_steps_for(model)[-1]
        first = out / "colorized" / f"{model}-soft-s{QUICK.seeds[0]}" / f"step_{last:07d}"
        name = sorted(p.name for p in first.glob("*.png"))[0]
        with Image.open(first / name) as result:
            expected = np.asarray(result.convert("RGB").resize((side, side), Image.NEAREST))
        column = 3 + list(QUICK.modes).index("soft")
        assert np.array_equal(grid[:side, column * side:(column + 1) * side], expected)


def test_the_presets_run_the_four_base_modes_and_every_variant_is_a_mode() -> None:
    assert all(preset.modes == BASE_MODES for preset in PRESETS.values())
    assert set(VARIANT_MODES) == set(MODES) - set(BASE_MODES) and "consistency" in VARIANT_MODES


def test_a_paired_only_variant_with_an_unpaired_model_is_refused_before_any_work(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["experiment", "seg-effect", str(tmp_path / "x"), "--quick", "--models",
                                       "cyclegan,pix2pix", "--modes", "none,consistency"])
    assert result.exit_code == 2 and "--modes consistency" in result.output and "pix2pix" in result.output
    assert not (tmp_path / "x").exists() and len(result.output.strip().splitlines()) == 1


@requires_hed_weights
def test_variant_modes_are_scored_against_the_same_none_runs(quick_run: tuple[Path, dict, str],
                                                             tmp_path: Path) -> None:
    """--modes none,consistency,soft-all on a copy of the finished quick run: none is reused, not retrained,
    the variants are paired with it, and every generator term's gradient norm is recorded per row."""
    import shutil

    out, before, _ = quick_run
    copy = tmp_path / "variants"
    shutil.copytree(out, copy)
    result = CliRunner().invoke(main, ["experiment", "seg-effect", str(copy), "--quick", "--device", "cpu", "--quiet",
                                       "--models", "pix2pix", "--modes", "none,consistency,soft-all"])
    assert result.exit_code == 0, result.output
    results = json.loads((copy / "results.json").read_text())
    none_before = [r for r in before["rows"] if r["model"] == "pix2pix" and r["mode"] == "none"]
    assert [r for r in results["rows"] if r["mode"] == "none"] == none_before  # reused
    by_mode = {mode: [r for r in results["rows"] if r["mode"] == mode] for mode in ("consistency", "soft-all")}
    assert all(len(rows) == len(QUICK.seeds) * len(QUICK.eval_steps_for("pix2pix")) for rows in by_mode.values())
    for row in by_mode["consistency"]:
        assert row["seg_grad_norm"] is None and row["term_grad_norms"]["G_SegCE"] > 0
        assert set(row["term_grad_norms"]) == {"G_GAN", "G_L1", "G_SegCE"}
    for row in by_mode["soft-all"]:
        assert row["term_grad_norms"]["G_M"] > 0 and row["term_grad_norms"]["G_GAN"] > 0
    differences = {(d["mode"], d["metric"]) for d in results["differences"]}
    assert {("consistency", "miou"), ("soft-all", "miou")} <= differences


# ----------------------------------------------------------------------------- stop signals
INTERRUPT_ARGS = ["--quick", "--device", "cpu", "--quiet", "--models", "pix2pix", "--modes", "none,soft", "--seeds",
                  "0,1", "--threads", "1"]  # 4 runs of 2 evaluations; one thread each, as quick_run's workers


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (from /proc: the experiment's pool workers, its resource
    tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pool_workers(pids: list[int]) -> list[int]:
    """The pool's worker processes among ``pids`` (not its resource tracker, which ends when it reads the
    end of its pipe, a moment after the experiment's process)."""
    def command(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return ""
    return [pid for pid in pids if "spawn_main" in command(pid)]


def tree_state(folder: Path) -> dict[str, int]:
    return {path.relative_to(folder).as_posix(): path.stat().st_mtime_ns for path in folder.rglob("*")
            if path.is_file()}


@requires_hed_weights
@pytest.mark.parametrize("signum,jobs", [(signal.SIGINT, 1), (signal.SIGTERM, 1), (signal.SIGTERM, 2)],
                         ids=["SIGINT-one-process", "SIGTERM-one-process", "SIGTERM-two-workers"])
def test_a_signal_stops_the_experiment_with_its_own_advice_and_its_command_continues_it_equal(
        quick_run: tuple[Path, dict, str], tmp_path: Path, signum: int, jobs: int) -> None:
    """The signal reaches the experiment's process only, as from ``kill`` or a scheduler: every run in
    progress stops (in the workers too), no queued run starts, no worker outlives the command, the record
    says "interrupted", the advice is the experiment's command (not the inner run's ``advseg train``), and
    that command continues to the numbers of an uninterrupted experiment."""
    import shutil

    from tests.test_interrupts import EXIT_STATUS, run_advice, start_advseg, wait_until

    quick_out, quick_results, _ = quick_run
    out = tmp_path / "exp"
    for part in ("world", "seg"):  # the prepared world and its Seg: only the runs are left to do
        shutil.copytree(quick_out / part, out / part)
    args = ["experiment", "seg-effect", "exp", *INTERRUPT_ARGS, "--jobs", str(jobs)]
    process = start_advseg(args, tmp_path)
    wait_until(lambda: len(list((out / "runs").glob("*/advseg-run.json"))) >= jobs, process, 240)  # each trains
    workers, started = pool_workers(children_of(process.pid)), sorted(p.name for p in (out / "runs").iterdir())
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == EXIT_STATUS[signum], stderr
    assert "Traceback" not in stderr
    advice = shlex.join(["advseg", *args])
    assert f"continue with: {advice}" in stderr and "advseg train" not in stderr, stderr
    assert not [pid for pid in workers if alive(pid)], "a worker outlived the command"
    assert len(workers) == (jobs if jobs > 1 else 0), workers
    assert sorted(p.name for p in (out / "runs").iterdir()) == started, "a queued run started after the signal"
    record = json.loads((out / "advseg-run.json").read_text())
    assert record["status"] == "interrupted" and record["extra"]["continue_with"] == advice
    finished = len(list((out / "evals").glob("*/*.json"))) if (out / "evals").exists() else 0
    assert record["counts"] == {"evaluations": finished, "planned_evaluations": 8} and finished < 8
    before = tree_state(out)
    time.sleep(1.0)
    assert tree_state(out) == before, "files still change after the command ended"

    resumed = run_advice(stderr, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "advseg-run.json").read_text())["status"] == "complete"
    untimed = [{key: value for key, value in row.items() if key != "train_seconds"}
               for row in json.loads((out / "results.json").read_text())["rows"]]
    reference = [{key: value for key, value in row.items() if key != "train_seconds"}
                 for row in quick_results["rows"] if row["model"] == "pix2pix" and row["mode"] in ("none", "soft")]
    assert sorted(untimed, key=repr) == sorted(reference, key=repr)


SLOW_STEP_HOOK = """
import os, time
from pathlib import Path
from advseg_cli.training import loop

_step = loop.Trainer.step


def _slow_step(self, batch):
    Path(os.environ["ADVSEG_TEST_STEP_MARKS"], str(os.getpid())).touch()  # this worker is inside a step
    time.sleep(float(os.environ["ADVSEG_TEST_STEP_SECONDS"]))
    return _step(self, batch)


loop.Trainer.step = _slow_step
"""
SLOW_STEP_S = 40.0  # long enough that a step finished after the second signal shows in the time to exit


def start_with_slow_steps(quick_out: Path, tmp_path: Path, seconds: float, own_session: bool = False) -> Any:
    """The quick experiment (its world and Seg copied) with every training step lasting ``seconds``: a
    ``sitecustomize`` on the workers' path slows ``Trainer.step`` and marks each worker inside one.
    Returns the process once both workers are inside their first step, and their pids."""
    import shutil

    from tests.test_interrupts import start_advseg, wait_until

    out = tmp_path / "exp"
    for part in ("world", "seg"):
        shutil.copytree(quick_out / part, out / part)
    hook, marks = tmp_path / "hook", tmp_path / "marks"
    hook.mkdir()
    marks.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_STEP_HOOK)
    path = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH", "")]))
    env = {"PYTHONPATH": path, "ADVSEG_TEST_STEP_MARKS": str(marks), "ADVSEG_TEST_STEP_SECONDS": str(seconds)}
    process = start_advseg(["experiment", "seg-effect", "exp", *INTERRUPT_ARGS, "--jobs", "2"], tmp_path, env,
                           own_session)
    wait_until(lambda: len(list(marks.iterdir())) >= 2, process, 240)
    workers = pool_workers(children_of(process.pid))
    assert sorted(workers) == sorted(int(mark.name) for mark in marks.iterdir())
    return process, workers


def assert_every_run_interrupted_at(out: Path, workers: list[int], steps: int) -> None:
    """No worker left, the experiment's record and each run's own record "interrupted", each after ``steps``."""
    assert not [pid for pid in workers if alive(pid)], "a worker outlived the command"
    assert json.loads((out / "advseg-run.json").read_text())["status"] == "interrupted"
    records = [json.loads(record.read_text()) for record in sorted((out / "runs").glob("*/advseg-run.json"))]
    assert [(r["status"], r["counts"].get("steps")) for r in records] == [("interrupted", steps)] * 2, records


@requires_hed_weights
@pytest.mark.parametrize("signals", [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGTERM)],
                         ids=["SIGTERM-twice", "SIGINT-then-SIGTERM"])
def test_a_second_signal_stops_the_experiments_workers_inside_their_step(
        quick_run: tuple[Path, dict, str], tmp_path: Path, signals: tuple[int, int]) -> None:
    """The first signal lets each worker finish its step; a second one, passed on by the parent, stops
    them inside it, and each records its own interruption (at step 0: the step was cut). Each step here
    lasts 40 s, so a command that ends within 20 s of the second signal did not wait for it; one whose
    workers were killed after the parent's grace instead would leave their records saying "running"."""
    from tests.test_interrupts import EXIT_STATUS

    process, workers = start_with_slow_steps(quick_run[0], tmp_path, SLOW_STEP_S)
    process.send_signal(signals[0])
    time.sleep(1.0)
    process.send_signal(signals[1])
    second = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    took = time.monotonic() - second
    assert process.returncode == EXIT_STATUS[signals[0]], stderr  # the first signal decides
    assert took < SLOW_STEP_S / 2, f"{took:.0f} s after the second signal: the workers finished their step"
    assert "stopping the runs at once" in stderr and "Traceback" not in stderr, stderr
    assert_every_run_interrupted_at(tmp_path / "exp", workers, steps=0)


@requires_hed_weights
def test_ctrl_c_at_the_terminal_lets_each_worker_finish_its_step(
        quick_run: tuple[Path, dict, str], tmp_path: Path) -> None:
    """A Ctrl-C at the terminal goes to the whole foreground process group. The workers have a group of
    their own, so each hears it once, from the parent, and finishes its step (one that heard it twice, from
    the terminal too, would take it for a second signal and cut the step); the pool's resource tracker, in
    the parent's group, ignores it. Steps of 5 s: each run's record says interrupted after step 1."""
    from tests.test_interrupts import EXIT_STATUS

    process, workers = start_with_slow_steps(quick_run[0], tmp_path, 5.0, own_session=True)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_STATUS[signal.SIGINT], stderr
    assert "Traceback" not in stderr and "stopping the runs at once" not in stderr, stderr
    assert_every_run_interrupted_at(tmp_path / "exp", workers, steps=1)


@requires_hed_weights
def test_the_results_name_the_machine_their_numbers_depend_on(quick_run: tuple[Path, dict, str]) -> None:
    """Runs of an AVX2 and an AVX-512 CPU differ as much as an effect: results.json must say which it was."""
    import os

    import torch

    machine = quick_run[1]["machine"]
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and machine["cpus"] == os.cpu_count()
    assert machine["torch"] == torch.__version__


FAILING_COLORIZE_HOOK = """
from advseg_cli import colorize

def _fail(*args, **kwargs):
    raise RuntimeError("colorize broke (planted by the test)")

colorize.colorize_folder = _fail
"""


@requires_hed_weights
def test_a_run_that_fails_in_a_worker_stops_the_experiment_with_its_error_and_starts_no_queued_run(
        quick_run: tuple[Path, dict, str], tmp_path: Path) -> None:
    """A run's error used to surface only after the pool's shutdown had run every queued run to its own end
    (and a signal in that wait printed the advice but left the workers training): seen when a worker failed
    on an import while the code was edited under a running experiment."""
    import shutil

    from tests.test_interrupts import start_advseg

    out = tmp_path / "exp"
    for part in ("world", "seg"):
        shutil.copytree(quick_run[0] / part, out / part)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAILING_COLORIZE_HOOK)
    path = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH", "")]))
    process = start_advseg(["experiment", "seg-effect", "exp", *INTERRUPT_ARGS, "--jobs", "2"], tmp_path,
                           {"PYTHONPATH": path})
    _, stderr = process.communicate(timeout=240)
    assert process.returncode != 0 and "colorize broke" in stderr, stderr
    started = sorted(p.name for p in (out / "runs").iterdir())
    assert len(started) == 2, f"a queued run started after the first failure: {started}"
    assert json.loads((out / "advseg-run.json").read_text())["status"].startswith("failed")
    assert not pool_workers(children_of(process.pid))
