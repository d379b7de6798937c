"""``make gpu-check``: every CUDA-only test and one row of each benchmark on a GPU, in one command.

Why it exists: a GPU is lent to this project rarely, for minutes. So this command must run cold and
bring back everything a lease can tell us in one go, inside a hard time budget: each part (the
``gpu``-marked tests, then one short run of each ``bench/bench_*.py`` with ``--device cuda``, a
2-process torchrun where two GPUs are visible) runs in its own process group with its own timeout;
a part that fails or overruns is recorded (and its processes killed) and the rest continue. The
report is rewritten after every part, so a lease that ends mid-way still leaves what ran:

* ``OUT/gpu-check.json``: the machine (GPU names, driver, torch's CUDA build, cuDNN, torch version)
  and per part its command, status (passed / failed / skipped), seconds, timeout, the reason of a
  failure or skip, and its numbers (the Markdown tables the bench printed, or pytest's counts);
* ``OUT/gpu-check.md``: one summary table, then each part's own tables;
* ``OUT/logs/PART.log``: each part's whole output.

Without a CUDA device it prints one line and exits 0 (so ``make gpu-check`` is harmless anywhere).
``--dry-run`` runs the same orchestration on the CPU: the plan is made as for two GPUs, every bench
command is checked against that bench's own options (``build_parser()``), and each part is realised by
a stand-in process that prints output of the part's shape; the report is written as on a GPU.
``--cpu`` runs the real bench commands on the CPU at their smallest sizes (minutes): a bench that a
change broke is found there, before a lease, not in one.

    python bench/gpu_check.py                  # on a GPU machine: at most --budget (420 s) for the parts
    python bench/gpu_check.py --dry-run --out /tmp/gpu-check
    python bench/gpu_check.py --cpu --out /tmp/gpu-check-cpu
    python bench/gpu_check.py --only train-b1,edges
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCHEMA_VERSION = 1
DEFAULT_BUDGET_S = 420.0  # all parts together: with start-up and the report, under the 8 minutes
CPU_BUDGET_S = 600.0  # --cpu: the smallest sizes took about 5 minutes on a busy 2-core machine
MIN_PART_S = 15.0  # a part that would get less than this is skipped: starting it only to kill it says nothing
KILL_GRACE_S = 5.0  # after SIGTERM to a part's process group, before SIGKILL
TRAIN_VARIANT = "pix2pix-both-soft"  # both segmentation discriminators: every piece of a training step on the GPU
MAX_BF16_BATCH = 64  # the batch search's cap: throughput at 256 px saturates well below it; keeps the search short
LOG_TAIL_CHARS = 2000  # of a failed part's output, kept in the JSON


@dataclasses.dataclass(frozen=True)
class Part:
    """One step of the check: a command run in its own process group, killed after ``timeout`` seconds."""

    name: str  # the row of the table and the key of the JSON
    command: tuple[str, ...]
    timeout: float  # seconds; the part is recorded failed past it (less when the budget has less left)
    kind: str = "bench"  # bench: its numbers are the Markdown tables it prints; pytest: the counts it prints
    bench: str | None = None  # module under bench/ whose build_parser() must accept the command's options
    headline: str | None = None  # the column of its tables that the summary shows
    skip: str | None = None  # why it cannot run on this machine (then it is recorded as skipped)


@dataclasses.dataclass
class Outcome:
    """What one part did; ``asdict`` of it is the part's entry in gpu-check.json."""

    name: str
    command: list[str]
    status: str  # passed | failed | skipped
    seconds: float
    timeout: float
    numbers: dict[str, Any]
    reason: str | None = None  # why it failed or was skipped
    returncode: int | None = None
    log: str | None = None  # relative to OUT
    ran: list[str] | None = None  # the stand-in that a dry run ran instead of ``command``
    headline: str | None = None
    log_tail: str | None = None  # the end of a failed part's output


class OptionError(Exception):
    """A bad command-line option: one line on stderr, exit status 2."""


# ----------------------------------------------------------------------------- the plan
def plan(python: str, gpus: int, onnx_cuda: bool) -> list[Part]:
    """The parts in the order they run: correctness first, then one row of each bench, the
    costliest (the bf16 batch search) and the multi-GPU run last, so a short budget loses those first."""
    def bench(script: str, *options: str) -> tuple[str, ...]:
        return (python, f"bench/{script}", *options)  # parts run in the repository's root

    one_row = ("--repeat", "1")
    return [
        # a test module that cannot be imported on that machine must not hide the CUDA-only tests of the others
        Part("cuda-tests", (python, "-m", "pytest", "-q", "-rs", "-m", "gpu", "-p", "no:cacheprovider",
                            "--continue-on-collection-errors", "tests"), 150, kind="pytest"),
        Part("train-b1", bench("bench_train.py", "--device", "cuda", "--only", TRAIN_VARIANT, "--batch-size", "1",
                               "--steps", "8", "--warmup", "2"), 90, bench="bench_train", headline="img/s"),
        Part("edges", bench("bench_edges.py", "--device", "cuda", "--count", "16", *one_row), 60,
             bench="bench_edges", headline="images/s"),
        Part("segcache", bench("bench_segcache.py", "--device", "cuda", "--count", "16", "--batch-size", "8",
                               "--class-gain", "15", *one_row), 90, bench="bench_segcache", headline="photos/s"),
        Part("fid", bench("bench_fid.py", "--device", "cuda", "--images", "50"), 120, bench="bench_fid",
             headline="images/s"),
        Part("colorize-torch", bench("bench_colorize.py", "--device", "cuda", "--paths", "torch", "--count", "16",
                                     *one_row), 60, bench="bench_colorize", headline="images/s"),
        Part("colorize-onnx", bench("bench_colorize.py", "--device", "cuda", "--paths", "onnx", "--count", "16",
                                    *one_row), 60, bench="bench_colorize", headline="images/s",
             skip=None if onnx_cuda else "onnxruntime has no CUDAExecutionProvider here (it needs the "
                                         "onnxruntime-gpu build)"),
        Part("train-bf16-max", bench("bench_train.py", "--device", "cuda", "--only", TRAIN_VARIANT, "--precision",
                                     "bf16", "--batch-size", "max", "--max-batch", str(MAX_BF16_BATCH),
                                     "--steps", "4", "--warmup", "1"), 150, bench="bench_train", headline="img/s"),
        Part("torchrun-2gpu", bench("bench_ddp.py", "--device", "cuda", "--gpus", "2", "--steps", "30"), 120,
             bench="bench_ddp", headline="scaling",
             skip=None if gpus >= 2 else f"{gpus} visible GPU: the 2-process torchrun needs 2"),
    ]


# --cpu: the same benches at their smallest sizes (appended options win: argparse keeps the last one)
_TINY_TRAIN = ("--size", "32", "--ngf", "8", "--ndf", "8", "--steps", "2", "--warmup", "1", "--workers", "0",
               "--threads", "1")
_TINY_COLORIZE = ("--count", "2", "--size", "32", "--ngf", "4", "--threads", "1")
CPU_SMALLEST: dict[str, tuple[str, ...]] = {
    "train-b1": _TINY_TRAIN,
    "edges": ("--count", "2", "--size", "64", "--workers", "0"),
    "segcache": ("--count", "2", "--square", "64", "--batch-size", "2", "--workers", "0", "--threads", "1"),
    "fid": ("--images", "2", "--size", "64", "--batch-size", "2", "--workers", "0"),
    "colorize-torch": _TINY_COLORIZE,
    "colorize-onnx": _TINY_COLORIZE,
    "train-bf16-max": (*_TINY_TRAIN, "--batch-size", "2"),  # no memory to search on a CPU: batch 2
    "torchrun-2gpu": ("--size", "32", "--ngf", "4", "--ndf", "4", "--steps", "4", "--log-every", "2",
                      "--workers", "0"),
}

CPU_TIMEOUTS = {"fid": 360.0}  # its 2048-d matrix square roots alone took 46 s each on a busy 2-core CPU


def on_the_cpu(parts: Sequence[Part]) -> list[Part]:
    """The GPU plan realised on the CPU at the smallest sizes (``--cpu``): every bench script runs end to
    end before a GPU is lent, so a bench broken by a change is found here and not in a lease. The
    CUDA-only tests cannot run on a CPU and are skipped; the 2-process torchrun uses gloo."""
    realised = []
    for part in parts:
        if part.kind == "pytest":
            realised.append(dataclasses.replace(part, skip="the CUDA-only tests need CUDA (--cpu)"))
            continue
        command = tuple("cpu" if index > 0 and part.command[index - 1] == "--device" else word
                        for index, word in enumerate(part.command))
        # no skips: ONNX Runtime's CPU provider is always there, and gloo runs 2 processes on one CPU
        realised.append(dataclasses.replace(part, command=(*command, *CPU_SMALLEST[part.name]), skip=None,
                                            timeout=CPU_TIMEOUTS.get(part.name, part.timeout)))
    return realised


def check_arguments(part: Part) -> str | None:
    """None when the part's bench accepts its options, else one line saying why not. Checked before
    anything runs, so that a renamed option costs no GPU minutes (and a dry run finds it on a CPU)."""
    if part.bench is None:
        return None
    try:
        module = importlib.import_module(f"bench.{part.bench}")
    except Exception as error:  # a missing dependency of that bench: the part cannot run here
        return f"cannot import bench/{part.bench}.py: {type(error).__name__}: {error}"
    parser = module.build_parser()
    messages = io.StringIO()
    try:
        with contextlib.redirect_stderr(messages), contextlib.redirect_stdout(messages):
            _, unknown = parser.parse_known_args(list(part.command[2:]))
    except SystemExit:
        lines = messages.getvalue().strip().splitlines()
        return f"bench/{part.bench}.py refuses the options: {lines[-1] if lines else 'exit'}"
    if unknown:
        return f"bench/{part.bench}.py has no option {' '.join(unknown)}"
    return None


STAND_IN = """import sys
kind, name, column = sys.argv[1:4]
if kind == "pytest":
    print("1 passed in 0.01s")
else:
    print(f"| part | device | {column} |")
    print("|---|---|---:|")
    print(f"| {name} | cpu | 1.00 |")
"""


def stand_in(part: Part, python: str) -> tuple[str, ...]:
    """The dry run's command for a part: a CPU process printing output of the part's shape (a pytest
    summary line, or a one-row table with the part's headline column)."""
    return (python, "-c", STAND_IN, part.kind, part.name, part.headline or "value")


# ----------------------------------------------------------------------------- reading a part's output
def as_number(cell: str) -> float | str:
    """A table cell as a number where it is one ("**1.99**", "0.73x", "+3.5" -> floats), else the text."""
    text = cell.strip().strip("*`").strip()
    text = text[:-1] if text.endswith(("x", "%")) else text
    try:
        return float(text)
    except ValueError:
        return cell.strip()


def markdown_tables(text: str) -> list[dict[str, Any]]:
    """Every Markdown table in a bench's output: a header row, a rule (|---|), then rows."""
    tables: list[dict[str, Any]] = []
    lines = [line.strip() for line in text.splitlines()]
    index = 0
    while index < len(lines) - 1:
        if lines[index].startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[index + 1]):
            columns = [cell.strip() for cell in lines[index].strip("|").split("|")]
            first, index = index, index + 2
            while index < len(lines) and lines[index].startswith("|"):
                index += 1
            rows = [[as_number(cell) for cell in line.strip("|").split("|")] for line in lines[first + 2:index]]
            tables.append({"columns": columns, "rows": rows, "markdown": "\n".join(lines[first:index])})
        else:
            index += 1
    return tables


PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed|warnings?)")


def pytest_counts(text: str) -> dict[str, int]:
    """pytest's last summary line ("3 passed, 2 skipped, 700 deselected in 9.1s") as counts."""
    for line in reversed(text.splitlines()):
        if re.search(r"\bin [\d.]+s\b", line) and (PYTEST_COUNT.search(line) or "no tests ran" in line):
            counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
            for number, word in PYTEST_COUNT.findall(line):
                key = {"error": "errors", "warning": "warnings"}.get(word, word)
                counts[key] = counts.get(key, 0) + int(number)
            return counts
    return {}


def numbers_of(part: Part, text: str) -> dict[str, Any]:
    """The part's numbers for the JSON: pytest's counts, or the bench's tables."""
    return {"counts": pytest_counts(text)} if part.kind == "pytest" else {"tables": markdown_tables(text)}


def headline_of(part: Part, numbers: dict[str, Any]) -> str | None:
    """The values of the part's headline column in the first table that has it ("3.78 / 12.10")."""
    if part.kind == "pytest":
        counts = numbers.get("counts") or {}
        return ", ".join(f"{counts.get(k, 0)} {k}" for k in ("passed", "failed", "skipped")) if counts else None
    for table in numbers.get("tables", []):
        if part.headline in table["columns"]:
            column = table["columns"].index(part.headline)
            printed = [[cell.strip() for cell in line.strip("|").split("|")]  # as the bench wrote them
                       for line in table["markdown"].splitlines()[2:]]
            return f"{part.headline} " + " / ".join(row[column] for row in printed if column < len(row))
    return None


def verdict(part: Part, returncode: int | None, timeout: float, numbers: dict[str, Any], text: str
            ) -> tuple[str, str | None]:
    """(status, reason) of a part that ran. A test part in which no test ran has not passed: on a GPU
    every gpu-marked test should run, and none running means the selection or the machine is wrong."""
    if returncode is None:
        return "failed", f"timed out after {timeout:.0f} s (its processes were killed)"
    if returncode != 0:
        last = next((line for line in reversed(text.strip().splitlines()) if line.strip()), "")
        return "failed", f"exit status {returncode}: {last.strip()[:300]}"
    if part.kind == "pytest" and not (numbers.get("counts") or {}).get("passed"):
        return "failed", "no CUDA-only test ran (all skipped or none selected)"
    if part.kind == "bench" and not numbers.get("tables"):
        return "failed", "it printed no table"
    return "passed", None


# ----------------------------------------------------------------------------- running
def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the part's whole process group (torchrun's workers, DataLoader processes), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            if sig == signal.SIGTERM:  # the leader is gone; make sure no member outlives it
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue


def part_environment() -> dict[str, str]:
    """The repository on the path, unbuffered output (a killed part's log ends where it stopped), and no
    downloads: the GPU machine reaches no network, and a download would hang until the part's timeout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("ADVSEG_OFFLINE", "1")
    return env


def run_part(part: Part, command: Sequence[str], timeout: float, log: Path) -> Outcome:
    """Run one part to its end or its timeout; its output goes to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "w", encoding="utf-8") as handle:
        handle.write(f"$ {shlex.join(command)}\n")
        handle.flush()
        try:
            process = subprocess.Popen(list(command), cwd=REPO, env=part_environment(), stdout=handle,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as error:
            return Outcome(part.name, list(part.command), "failed", 0.0, timeout, {}, f"could not start: {error}")
        try:
            returncode: int | None = process.wait(timeout=timeout)
            with contextlib.suppress(ProcessLookupError):  # what it left running in its group goes too
                os.killpg(process.pid, signal.SIGKILL)
        except subprocess.TimeoutExpired:
            stop_group(process)
            returncode = None
        except BaseException:  # Ctrl-C: take the part's processes down with us
            stop_group(process)
            raise
    seconds = time.monotonic() - start
    text = log.read_text(encoding="utf-8", errors="replace")
    numbers = numbers_of(part, text)
    status, reason = verdict(part, returncode, timeout, numbers, text)
    return Outcome(part.name, list(part.command), status, round(seconds, 2), round(timeout, 1), numbers, reason,
                   returncode, headline=headline_of(part, numbers),
                   log_tail=text[-LOG_TAIL_CHARS:] if status == "failed" else None)


MODES = {"gpu": "", "dry-run": " (DRY RUN on the CPU: stand-in parts, no GPU numbers)",
         "cpu": " (CPU SMOKE RUN: the real benches at their smallest sizes on the CPU, no GPU numbers)"}


def run_check(parts: Sequence[Part], out: Path, budget: float, machine: dict[str, Any], mode: str = "gpu",
              python: str = sys.executable, clock: Callable[[], float] = time.monotonic) -> int:
    """Run the parts in order inside ``budget`` seconds, rewriting the report after each; the exit
    status is 1 when any part failed, else 0. A part gets min(its timeout, what is left of the budget),
    or is skipped when that is under MIN_PART_S; a part whose options its bench refuses fails at once."""
    out.mkdir(parents=True, exist_ok=True)
    started, begin = datetime.now(timezone.utc), clock()
    outcomes: list[Outcome] = []
    for part in parts:
        left = budget - (clock() - begin)
        skip = part.skip or (f"the time budget was spent (--budget {budget:.0f} s; {max(left, 0):.0f} s left)"
                             if left < MIN_PART_S else None)
        refused = None if skip else check_arguments(part)
        if skip or refused:
            outcomes.append(Outcome(part.name, list(part.command), "skipped" if skip else "failed", 0.0,
                                    part.timeout, {}, skip or refused))
        else:
            dry_run = mode == "dry-run"
            command = stand_in(part, python) if dry_run else part.command
            outcome = run_part(part, command, min(part.timeout, left), out / "logs" / f"{part.name}.log")
            outcome.log = f"logs/{part.name}.log"
            outcome.ran = list(command) if dry_run else None
            outcomes.append(outcome)
        write_report(out, machine, outcomes, started, budget, mode)
        print(f"gpu-check: {part.name}: {outcomes[-1].status} ({outcomes[-1].seconds:.0f} s)"
              + (f": {outcomes[-1].reason}" if outcomes[-1].reason else ""), flush=True)
    write_report(out, machine, outcomes, started, budget, mode)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


# ----------------------------------------------------------------------------- the machine
def nvidia_smi() -> list[dict[str, str]]:
    """name, driver_version, memory.total per GPU from nvidia-smi, or [] where it is absent."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    rows = [[cell.strip() for cell in line.split(",")] for line in done.stdout.splitlines() if line.count(",") == 2]
    return [{"name": n, "driver_version": d, "memory_total": m} for n, d, m in rows] if done.returncode == 0 else []


def describe(mode: str) -> dict[str, Any]:
    """The machine of the report: torch's view of the GPUs and its CUDA build, nvidia-smi's driver."""
    import torch

    cuda = torch.cuda.is_available()
    gpus = [{"index": i, "name": torch.cuda.get_device_name(i),
             "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
             "capability": ".".join(map(str, torch.cuda.get_device_capability(i)))}
            for i in range(torch.cuda.device_count())] if cuda else []
    smi = nvidia_smi()
    try:
        import onnxruntime
        onnx = {"version": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}
    except ImportError:
        onnx = None
    return {"gpus": gpus, "gpu_count": len(gpus),
            "driver_version": smi[0]["driver_version"] if smi else None, "nvidia_smi": smi,
            "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "onnxruntime": onnx, "python": platform.python_version(), "cpu": _cpu_model(), "cpus": os.cpu_count(),
            "planned_as": "2 GPUs with ONNX Runtime's CUDA provider (dry run)" if mode == "dry-run" else None}


def _cpu_model() -> str:
    """The benches' own CPU description (imported late: this module must start without the benches)."""
    from bench.machine import cpu_model

    return cpu_model()


# ----------------------------------------------------------------------------- the report
def _atomic_write(path: Path, text: str) -> None:
    """Write beside, then rename: a report read (or a lease ended) mid-write is the old one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def machine_line(machine: dict[str, Any]) -> str:
    """The one-line machine description that goes next to every table (docs/benchmarks.md's rule)."""
    gpus = ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in machine["gpus"]) or "no GPU"
    return (f"{gpus}; driver {machine['driver_version'] or 'unknown'}; torch {machine['torch']} "
            f"(CUDA {machine['torch_cuda'] or 'none'}, cuDNN {machine['cudnn'] or '-'}); {machine['cpu']}, "
            f"{machine['cpus']} CPUs")


def markdown(machine: dict[str, Any], outcomes: Sequence[Outcome], started: datetime, mode: str) -> str:
    """gpu-check.md: the summary table, then each part's own tables as it printed them."""
    lines = ["# GPU check" + MODES[mode], "",
             f"{started:%Y-%m-%d %H:%M} UTC. Machine: {machine_line(machine)}.", "",
             "| part | status | seconds | timeout s | numbers | note |", "|---|---|---:|---:|---|---|"]
    for o in outcomes:
        note = (o.reason or "").replace("|", "\\|")
        lines.append(f"| {o.name} | {o.status} | {o.seconds:.1f} | {o.timeout:.0f} | {o.headline or '-'} | {note} |")
    for o in outcomes:
        lines += ["", f"## {o.name}: {o.status}", "", f"`{shlex.join(o.command)}`"]
        for table in o.numbers.get("tables", []):
            lines += ["", table["markdown"]]
        if o.numbers.get("counts"):
            lines += ["", ", ".join(f"{v} {k}" for k, v in o.numbers["counts"].items())]
        if o.reason:
            lines += ["", o.reason]
    return "\n".join(lines) + "\n"


def write_report(out: Path, machine: dict[str, Any], outcomes: Sequence[Outcome], started: datetime,
                 budget: float, mode: str) -> None:
    """gpu-check.json and gpu-check.md, written atomically (read while the check still runs, they are whole)."""
    summary = {status: sum(o.status == status for o in outcomes) for status in ("passed", "failed", "skipped")}
    report = {"schema_version": SCHEMA_VERSION, "tool": "bench/gpu_check.py", "mode": mode,
              "started": started.isoformat(timespec="seconds"),
              "written": datetime.now(timezone.utc).isoformat(timespec="seconds"), "budget_s": budget,
              "command": shlex.join(sys.argv), "machine": machine, "summary": summary,
              "parts": [dataclasses.asdict(o) for o in outcomes]}
    _atomic_write(out / "gpu-check.json", json.dumps(report, indent=2) + "\n")
    _atomic_write(out / "gpu-check.md", markdown(machine, outcomes, started, mode))


# ----------------------------------------------------------------------------- the command
class _Parser(argparse.ArgumentParser):
    """argparse whose errors are our one-line OptionError (its own prints the usage as well)."""

    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own prints the usage too)
        raise OptionError(message)


def build_parser() -> argparse.ArgumentParser:
    """The command's options; every error in them is one line and exit status 2."""
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check-out"),
                        help="folder of gpu-check.json, gpu-check.md and logs/ (default gpu-check-out)")
    parser.add_argument("--budget", type=float, help=f"seconds for all parts together (default "
                                                     f"{DEFAULT_BUDGET_S:.0f}; --cpu {CPU_BUDGET_S:.0f})")
    parser.add_argument("--only", default="", help="comma-separated parts to run (default all)")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--dry-run", action="store_true",
                     help="on the CPU, in seconds: the plan as for 2 GPUs, every bench command checked against "
                          "its options, stand-ins run through the same orchestration and report")
    how.add_argument("--cpu", action="store_true",
                     help="on the CPU, in minutes: the real benches at their smallest sizes (the CUDA-only tests "
                          "are skipped), to find a broken bench before a GPU is lent")
    parser.add_argument("--python", default=sys.executable, help="the interpreter of the parts (default this one)")
    return parser


def select(parts: list[Part], only: str) -> list[Part]:
    """The parts named by --only, in plan order; an unknown name is an option error naming the valid ones."""
    if not only:
        return parts
    wanted = [name for name in only.split(",") if name]
    known = [part.name for part in parts]
    unknown = [name for name in wanted if name not in known]
    if unknown or not wanted:
        raise OptionError(f"--only {only}: unknown part(s) {', '.join(unknown) or '(none named)'}; "
                          f"the parts are {', '.join(known)}")
    return [part for part in parts if part.name in wanted]


def onnx_has_cuda() -> bool:
    """Whether this onnxruntime can run on the GPU (the onnxruntime-gpu build): else colorize-onnx is skipped."""
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def cuda_devices() -> tuple[int, str | None]:
    """The CUDA devices torch sees, and the first line of the warning torch gives when it finds none
    (a driver too old for its CUDA build...): caught, so that the skip stays one line, and said in it."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return count, (str(caught[0].message).strip().splitlines()[0] if caught and not count else None)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, plan, and run the check (or print the one-line skip without CUDA); returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        if args.budget is None:
            args.budget = CPU_BUDGET_S if args.cpu else DEFAULT_BUDGET_S
        if not args.budget > 0:
            raise OptionError(f"--budget {args.budget:g}: give a number of seconds above 0")
        import torch

        gpus, why_none = cuda_devices()
        mode = "dry-run" if args.dry_run else "cpu" if args.cpu else "gpu"
        planned = plan(args.python, 2 if mode == "dry-run" else gpus, mode == "dry-run" or onnx_has_cuda())
        parts = select(on_the_cpu(planned) if mode == "cpu" else planned, args.only)
    except OptionError as error:
        print(f"gpu-check: error: {error}", file=sys.stderr)
        return 2
    if not gpus and mode == "gpu":
        print(f"gpu-check: skipped: no CUDA device here (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda or 'none'}{'; ' + why_none if why_none else ''}); nothing was run")
        return 0
    machine = describe(mode)
    print(f"gpu-check: {len(parts)} parts, budget {args.budget:.0f} s, report in {args.out}/{MODES[mode]}", flush=True)
    status = run_check(parts, args.out, args.budget, machine, mode=mode, python=args.python)
    print(f"gpu-check: {'FAILED' if status else 'passed'}; {args.out / 'gpu-check.md'}")
    return status


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
