"""bench/gpu_check.py (``make gpu-check``) on the CPU: the one-line skip without a GPU, the dry run's report,
the per-part timeouts, failure isolation and time budget, the plan's commands against the benches' own
options, the reading of the benches' and pytest's output, and the ``gpu`` marker that selects the
CUDA-only tests. No GPU is needed: that is the point, the check must be ready before a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench import gpu_check
from bench.gpu_check import Part, check_arguments, markdown_tables, plan, pytest_counts, run_check

REPO = Path(__file__).resolve().parents[1]
PLANNED = ["cuda-tests", "train-b1", "edges", "segcache", "fid", "colorize-torch", "colorize-onnx", "train-bf16-max",
           "torchrun-2gpu"]
MACHINE = {"gpus": [], "driver_version": None, "torch": "x", "torch_cuda": None, "cudnn": None, "cpu": "cpu",
           "cpus": 1}


def make_gpu_check(out: Path, options: str = "") -> subprocess.CompletedProcess:
    """``make gpu-check`` as a user types it (with this interpreter, nothing installed), CUDA hidden."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(["make", "-s", "gpu-check", "NEED_INSTALL=", f"PY={sys.executable}", f"GPU_CHECK_OUT={out}",
                           f"GPU_CHECK_ARGS={options}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def python_part(name: str, code: str, timeout: float = 30, kind: str = "bench") -> Part:
    return Part(name, (sys.executable, "-c", textwrap.dedent(code)), timeout, kind=kind, headline="v")


TABLE = 'print("| run | v |"); print("|---|---:|"); print("| a | 2.50 |")'


def report(out: Path) -> dict:
    return json.loads((out / "gpu-check.json").read_text())


# ----------------------------------------------------------------------------- the command
def test_without_a_gpu_it_prints_one_line_exits_0_and_writes_nothing(tmp_path: Path) -> None:
    result = make_gpu_check(tmp_path / "out")
    assert result.returncode == 0, result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: skipped: no CUDA device"), lines
    assert not (tmp_path / "out").exists()


def test_torchs_warning_about_a_missing_driver_goes_into_the_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    import torch

    def no_driver() -> bool:
        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old (found version 11040).\n"
                      "Please update your GPU driver.", UserWarning)
        return False

    monkeypatch.setattr(torch.cuda, "is_available", no_driver)
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and len(captured.out.splitlines()) == 1
    assert "skipped: no CUDA device" in captured.out and "driver on your system is too old" in captured.out


def test_dry_run_reports_every_planned_part_with_the_real_commands_and_their_numbers(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = make_gpu_check(out, "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    data = report(out)
    assert data["mode"] == "dry-run" and data["schema_version"] == 1
    assert {"gpus", "driver_version", "torch", "torch_cuda", "cudnn"} <= set(data["machine"])
    parts = {p["name"]: p for p in data["parts"]}
    assert [p["name"] for p in data["parts"]] == PLANNED  # planned as for 2 GPUs: torchrun and ONNX CUDA too
    assert all(p["status"] == "passed" for p in data["parts"]), [(p["name"], p["reason"]) for p in data["parts"]]
    assert data["summary"] == {"passed": len(PLANNED), "failed": 0, "skipped": 0}
    # the report names the GPU command; the stand-in that ran instead is recorded beside it
    assert parts["train-b1"]["command"][1:4] == ["bench/bench_train.py", "--device", "cuda"]
    assert parts["train-b1"]["ran"][1] == "-c"
    assert parts["cuda-tests"]["command"][1:] == ["-m", "pytest", "-q", "-rs", "-m", "gpu", "-p", "no:cacheprovider",
                                                  "--continue-on-collection-errors", "tests"]
    assert parts["cuda-tests"]["numbers"]["counts"]["passed"] == 1
    assert parts["edges"]["numbers"]["tables"][0]["rows"] == [["edges", "cpu", 1.0]]
    assert (out / parts["edges"]["log"]).is_file()
    table = (out / "gpu-check.md").read_text()
    assert "DRY RUN" in table
    for name in PLANNED:
        assert f"| {name} | passed |" in table
    assert "| torchrun-2gpu | passed | " in table and "scaling 1.00" in table


@pytest.mark.parametrize("options, says", [
    (["--budget", "0"], "--budget"),
    (["--only", "edges,nosuch"], "nosuch"),
    (["--bogus"], "--bogus"),
    (["--cpu"], "not allowed with argument --cpu"),  # with the --dry-run added below: one way at a time
])
def test_bad_options_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, options: list[str],
                                             says: str) -> None:
    assert gpu_check.main([*options, "--dry-run", "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1 and says in captured.err, captured.err
    assert not (tmp_path / "out").exists()


def test_only_runs_the_named_parts_in_plan_order(tmp_path: Path) -> None:
    assert gpu_check.main(["--dry-run", "--only", "fid,edges", "--out", str(tmp_path)]) == 0
    assert [p["name"] for p in report(tmp_path)["parts"]] == ["edges", "fid"]


# ----------------------------------------------------------------------------- orchestration
def test_a_part_past_its_timeout_is_killed_with_its_children_and_the_rest_continue(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    hang = python_part("hang", f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # like torchrun's workers
        open({str(pids)!r}, "w").write(f"{{child.pid}}")
        print("| run | v |"); print("|---|---:|"); print("| half | 1.0 |", flush=True)
        time.sleep(600)
    """, timeout=3)
    status = run_check([hang, python_part("after", TABLE)], tmp_path / "out", 300, MACHINE)
    assert status == 1
    first, second = report(tmp_path / "out")["parts"]
    assert first["status"] == "failed" and "timed out after 3 s" in first["reason"]
    assert first["returncode"] is None
    assert first["numbers"]["tables"][0]["rows"] == [["half", 1.0]]  # what it printed before it was killed
    assert second["status"] == "passed" and second["numbers"]["tables"][0]["rows"] == [["a", 2.5]]
    child = int(pids.read_text())
    for _ in range(50):  # the grandchild may take a moment to be reaped by init
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{child}/stat").is_file() and Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail("the timed-out part's child process is still running")


def test_a_failing_part_is_recorded_with_its_reason_and_the_exit_status_is_1(tmp_path: Path) -> None:
    parts = [python_part("broken", 'import sys; print("CUDA error: no kernel image"); sys.exit(3)'),
             python_part("fine", TABLE)]
    assert run_check(parts, tmp_path, 300, MACHINE) == 1
    broken, fine = report(tmp_path)["parts"]
    assert broken["status"] == "failed" and broken["returncode"] == 3
    assert "exit status 3: CUDA error: no kernel image" in broken["reason"]
    assert "no kernel image" in broken["log_tail"]
    assert fine["status"] == "passed" and fine["headline"] == "v 2.50"
    assert report(tmp_path)["summary"] == {"passed": 1, "failed": 1, "skipped": 0}
    assert "| broken | failed |" in (tmp_path / "gpu-check.md").read_text()


def test_when_every_part_passes_or_is_skipped_the_exit_status_is_0(tmp_path: Path) -> None:
    parts = [python_part("fine", TABLE), Part("two-gpus", ("false",), 10, skip="1 visible GPU")]
    assert run_check(parts, tmp_path, 300, MACHINE) == 0
    assert [p["status"] for p in report(tmp_path)["parts"]] == ["passed", "skipped"]
    assert report(tmp_path)["parts"][1]["reason"] == "1 visible GPU"


def test_a_bench_without_a_table_and_a_test_run_without_a_passed_test_fail(tmp_path: Path) -> None:
    parts = [python_part("silent", 'print("done")'),
             python_part("tests", 'print("5 skipped, 700 deselected in 3.21s")', kind="pytest")]
    assert run_check(parts, tmp_path, 300, MACHINE) == 1
    silent, tests = report(tmp_path)["parts"]
    assert silent["status"] == "failed" and "no table" in silent["reason"]
    assert tests["status"] == "failed" and "no CUDA-only test ran" in tests["reason"]
    assert tests["numbers"]["counts"]["skipped"] == 5


def test_the_budget_caps_each_timeout_and_skips_parts_once_it_is_spent(tmp_path: Path) -> None:
    now = [0.0]
    parts = [python_part("first", TABLE, timeout=500), python_part("second", TABLE, timeout=500),
             python_part("third", TABLE, timeout=5)]

    def clock() -> float:  # each reading 50 s later: "first" gets 50 s, then the 100 are gone
        now[0] += 50
        return now[0]

    assert run_check(parts, tmp_path, 100, MACHINE, clock=clock) == 0
    first, second, third = report(tmp_path)["parts"]
    assert first["status"] == "passed" and first["timeout"] == 50  # min(500, 100 - 50)
    assert second["status"] == "skipped" and "budget" in second["reason"]  # 100 - 100 < MIN_PART_S
    assert third["status"] == "skipped"


def test_the_report_is_rewritten_after_every_part(tmp_path: Path) -> None:
    """A lease that ends mid-way leaves the parts that ran: the second part sees the first one's report."""
    reader = python_part("reader", f"""
        import json
        parts = json.load(open({str(tmp_path / "gpu-check.json")!r}))["parts"]
        print("| run | v |"); print("|---|---:|"); print(f"| {{parts[0]['name']}} | {{len(parts)}} |")
    """)
    run_check([python_part("first", TABLE), reader], tmp_path, 300, MACHINE)
    assert report(tmp_path)["parts"][1]["numbers"]["tables"][0]["rows"] == [["first", 1.0]]


# ----------------------------------------------------------------------------- the plan against the benches
def test_every_planned_bench_command_is_accepted_by_that_bench(tmp_path: Path) -> None:
    parts = plan(sys.executable, gpus=2, onnx_cuda=True)
    assert [p.name for p in parts] == PLANNED
    for part in parts:
        assert check_arguments(part) is None, part.name
        if part.bench:
            assert (REPO / part.command[1]).is_file() and "--device" in part.command


def test_options_a_bench_does_not_take_fail_the_part_before_it_runs(tmp_path: Path) -> None:
    edges = next(p for p in plan(sys.executable, 2, True) if p.name == "edges")
    renamed = Part(edges.name, (*edges.command, "--rows", "1"), 60, bench="bench_edges")
    badly_typed = Part(edges.name, (*edges.command, "--count", "many"), 60, bench="bench_edges")
    assert "--rows" in check_arguments(renamed)
    assert "--count" in check_arguments(badly_typed) and "many" in check_arguments(badly_typed)
    assert run_check([renamed], tmp_path, 300, MACHINE) == 1
    (outcome,) = report(tmp_path)["parts"]
    assert outcome["status"] == "failed" and "--rows" in outcome["reason"] and outcome["log"] is None  # never ran


def test_the_cpu_smoke_plan_runs_every_bench_on_the_cpu_at_sizes_its_options_accept() -> None:
    parts = gpu_check.on_the_cpu(plan(sys.executable, gpus=0, onnx_cuda=False))  # as on this CPU machine
    assert [p.name for p in parts] == PLANNED
    assert "need CUDA" in parts[0].skip  # the CUDA-only tests
    for part in parts[1:]:
        assert part.skip is None and "cuda" not in part.command, part.name
        assert part.command[part.command.index("--device") + 1] == "cpu"
        assert check_arguments(part) is None, part.name
    fid = next(p for p in parts if p.name == "fid")
    parsed = __import__("bench.bench_fid", fromlist=["x"]).build_parser().parse_args(list(fid.command[2:]))
    assert (parsed.images, parsed.device) == (2, "cpu")  # the smallest size wins over the GPU row's 50
    assert fid.timeout == gpu_check.CPU_TIMEOUTS["fid"] > next(p for p in plan("p", 2, True) if p.name == "fid").timeout


def test_one_gpu_skips_torchrun_and_onnx_runtime_without_cuda_skips_its_row() -> None:
    parts = {p.name: p for p in plan(sys.executable, gpus=1, onnx_cuda=False)}
    assert "2" in parts["torchrun-2gpu"].skip and "onnxruntime-gpu" in parts["colorize-onnx"].skip
    assert all(p.skip is None for name, p in parts.items() if name not in ("torchrun-2gpu", "colorize-onnx"))


# ----------------------------------------------------------------------------- reading output
def test_markdown_tables_are_read_with_numbers_as_numbers() -> None:
    text = """Machine: x
| model | s/step | ratio | note |
|---|---:|---:|---|
| pix2pix | 0.075 | **1.99** | +3.5 |
| cut | 0.73x | - | 12 % |

not a table | here
| path | images/s |
|---|---|
| torch | 0.38 |
"""
    first, second = markdown_tables(text)
    assert first["columns"] == ["model", "s/step", "ratio", "note"]
    assert first["rows"] == [["pix2pix", 0.075, 1.99, 3.5], ["cut", 0.73, "-", 12.0]]
    assert second["rows"] == [["torch", 0.38]] and second["markdown"].splitlines()[-1] == "| torch | 0.38 |"


@pytest.mark.parametrize("line, counts", [
    ("3 passed, 2 skipped, 700 deselected in 9.12s", {"passed": 3, "skipped": 2, "deselected": 700, "failed": 0}),
    ("1 failed, 4 passed, 1 error in 20.00s", {"passed": 4, "failed": 1, "errors": 1}),
    ("====== 9 deselected, 1 warning in 0.50s ======", {"passed": 0, "deselected": 9, "warnings": 1}),
    ("no tests ran in 0.01s", {"passed": 0, "failed": 0}),
])
def test_pytest_summary_lines_become_counts(line: str, counts: dict[str, int]) -> None:
    found = pytest_counts(f"SKIPPED [1] x.py: needs a CUDA device\n{line}\n")
    assert {key: found.get(key) for key in counts} == counts


# ----------------------------------------------------------------------------- the gpu marker
def test_gpu_marked_tests_are_skipped_without_cuda_and_selected_by_the_marker() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu", "-p", "no:cacheprovider",
                             "tests/training/test_checkpoint.py", "tests/segmentation/test_segmentation_layout.py"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "2 skipped" in result.stdout and "deselected" in result.stdout and "passed" not in result.stdout
    assert result.stdout.count("needs a CUDA device (marked gpu)") == 2


def test_cuda_only_tests_use_the_gpu_marker_not_a_skipif_of_their_own() -> None:
    """A CUDA-only test marked only by its own skipif would be left out of ``pytest -m gpu``, so the GPU check
    would never run it."""
    own_skipif = "skipif(not torch.cuda" + ".is_available()"  # split: this file must not match itself
    offenders = [str(path.relative_to(REPO)) for path in (REPO / "tests").rglob("*.py")
                 if own_skipif in path.read_text(encoding="utf-8")]
    assert offenders == [], f"mark these with @pytest.mark.gpu instead: {offenders}"
    tests = gpu_check.plan(sys.executable, 1, True)[0].command
    assert tests[tests.index("gpu") - 1] == "-m"  # and the check selects them by that marker


# ----------------------------------------------------------------------------- the options the check added to benches
def test_colorize_paths_take_a_subset_of_torch_and_onnx_in_a_fixed_order() -> None:
    from bench.bench_colorize import build_parser, paths_option

    assert paths_option("onnx,torch") == ("torch", "onnx") and paths_option("onnx") == ("onnx",)
    assert build_parser().parse_args([]).paths == ("torch", "onnx") and build_parser().parse_args([]).device == "cpu"
    for bad in ("", "cuda", "torch,torch"):
        with pytest.raises(Exception, match="subset of torch,onnx"):
            paths_option(bad)


def test_colorize_bench_with_one_path_prints_its_row_alone(tmp_path: Path) -> None:
    """The GPU check's colorize-torch part: PyTorch alone, one row, no ratio (CPU here, tiny network)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "bench/bench_colorize.py", "--paths", "torch", "--count", "2", "--size",
                             "32", "--ngf", "4", "--repeat", "1", "--threads", "1", "--device", "cpu"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    (table,) = markdown_tables(result.stdout)
    assert table["columns"] == ["path", "images/s", "ratio"]
    assert [row[0] for row in table["rows"]] == ["`advseg colorize RUN` (PyTorch)"] and table["rows"][0][2] == "-"
    assert table["rows"][0][1] > 0 and "no ratio" in result.stdout


def test_ddp_bench_times_steps_without_the_warm_up_row_and_launches_torchrun_for_several(tmp_path: Path) -> None:
    from bench.bench_ddp import build_parser, seconds_per_step, train_command

    metrics = tmp_path / "metrics.csv"
    metrics.write_text("step,loss/G,time/seconds_per_step\n10,1.0,9.0\n20,1.0,0.5\n30,1.0,0.3\n")
    assert seconds_per_step(metrics) == pytest.approx(0.4)  # the first row (warm-up) is left out
    metrics.write_text("step,loss/G,time/seconds_per_step\n10,1.0,9.0\n")
    with pytest.raises(SystemExit, match="--log-every"):
        seconds_per_step(metrics)
    args = build_parser().parse_args(["--steps", "6", "--log-every", "2"])
    one, two = train_command(1, tmp_path, tmp_path / "runs", "a", args), train_command(2, tmp_path, tmp_path, "b", args)
    assert one[1:4] == ["-m", "advseg_cli.cli", "train"] and "torch.distributed.run" not in one
    assert two[1:3] == ["-m", "torch.distributed.run"] and two[two.index("--nproc_per_node") + 1] == "2"
    assert one[one.index("--max-steps") + 1] == "6" and two[two.index("--device") + 1] == "cuda"
