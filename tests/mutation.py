"""Mutation testing (``make mutation``): mutmut over the modules where a silent bug costs most.

Each module runs on its own, with only the tests that own it, so that a run takes minutes on a 2-core
machine (and a surviving mutant says which tests are missing something): the tree is copied to
``.mutation/NAME/`` (git-ignored), mutmut makes its ``mutants/`` copy there and runs one worker. Where
only part of a file is at stake (the training loop's checkpoint, resume and gradient averaging; the FID
statistics cache key; the segmentation cache's staleness) the mutants are limited to those functions.

    python -m tests.mutation                 # every module, then a summary table
    python -m tests.mutation images fid-key  # some of them
    python -m tests.mutation --recheck NAME  # a finished module's survivors against the current tests

Each module's survivors (with their diffs) go to ``.mutation/NAME/survivors.md``; docs/testing.md keeps
the scores and what was done about every survivor. Not run by the test suite or CI: it takes long.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from advseg_cli.optional import MissingDependencyError, require

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".mutation"
SOURCE_PACKAGES = ("advseg_cli", "hed")  # both go into mutants/, so that no test imports another tree's copy


@dataclasses.dataclass(frozen=True)
class Target:
    """One module under mutation: its file, the functions mutated (all when empty), the tests that own it."""

    name: str
    source: str
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()  # mutmut's mangled names: x_function, xǁClassǁmethod

    def mutant_globs(self) -> list[str]:
        module = self.source.removesuffix(".py").replace("/", ".")
        return [f"{module}.{function}__mutmut_*" for function in self.functions]


TRAINING_TESTS = "tests/training/test_training.py"
RESUME_TEST = "tests/training/test_exact_resume.py::test_resume_leaves_the_checkpoint_of_an_uninterrupted_run"
TARGETS = (
    Target("fid-key", "advseg_cli/fid.py", ("tests/fid/test_fid_inputs.py",),
           ("x_folder_content_digest", "x_statistics_cache_key", "x__cached_side", "x_folder_side")),
    Target("segcache-staleness", "advseg_cli/segcache.py",
           ("tests/segcache/test_build.py",
            "tests/segcache/test_cli.py::test_verify_reports_missing_stale_and_corrupt_and_exits_1"),
           ("xǁSegmentationCacheǁis_stale", "x__hash_photos", "x__existing_hashes", "x_verify_segcache")),
    Target("images", "advseg_cli/images.py", ("tests/test_images.py", "tests/test_untrusted_images.py")),
    # signals to this process: the real commands under signals (tests/test_interrupts.py) take minutes a mutant
    Target("interrupts", "advseg_cli/interrupts.py",
           ("tests/test_interrupts_in_process.py", "tests/test_interrupts_wrap_up.py",
            "tests/test_interrupts_stages.py::test_a_signal_during_a_maps_hdf5_write_lets_it_finish_and_keeps_it")),
    # what a stranger's upload meets in process; the page over HTTP (a server process mutmut cannot see
    # into) is tests/serve/test_serve_http.py, run by hand on the mutants that survive
    Target("serve", "advseg_cli/serve.py", ("tests/serve/test_serve_inputs.py",),
           ("x_read_upload", "x_drawing_to_rgb", "xǁServeConfigǁvalidate", "x_private_gradio_folder")),
    Target("segmentation-maps", "advseg_cli/segmentation/maps.py",
           ("tests/models/test_seg_grad_straight.py", "tests/segcache/test_format.py",
            "tests/segmentation/test_segmentation_layout.py")),
    Target("weights", "advseg_cli/weights.py",
           ("tests/test_weights_and_records.py", "tests/test_weights_resolution.py")),
    Target("checkpoint", "advseg_cli/training/checkpoint.py",
           ("tests/training/test_checkpoint.py", f"{RESUME_TEST}[pix2pix-0]")),
    Target("training-resume", "advseg_cli/training/loop.py",
           (f"{RESUME_TEST}[cyclegan-0]", f"{RESUME_TEST}[pix2pix-2]",
            f"{TRAINING_TESTS}::test_each_epoch_is_the_samplers_seeded_shuffle_and_a_resume_skips_the_batches_done",
            f"{TRAINING_TESTS}::test_config_json_holds_the_resolved_model_and_the_data_layout",
            f"{TRAINING_TESTS}::test_resume_equals_an_uninterrupted_run",
            f"{TRAINING_TESTS}::test_an_existing_run_is_not_overwritten_and_resume_needs_one"),
           ("x_make_loader", "x_loader_generator", "xǁTrainerǁ_prepare_start", "xǁTrainerǁ_restore",
            "xǁTrainerǁ_payload", "xǁTrainerǁsave")),
    # only a real two-process run reaches past average_gradients' one-process early return (25 s a mutant)
    Target("gradient-averaging", "advseg_cli/training/loop.py",
           (f"{TRAINING_TESTS}::test_two_process_training_equals_one_process_on_both_ranks_batches",),
           ("x_average_gradients", "x_broadcast_parameters")),
)


def copy_tree(destination: Path) -> None:
    """The working tree's files (tracked and untracked, not ignored): what the tests would run on."""
    if destination.exists():
        shutil.rmtree(destination)
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for relative in filter(None, listed):
        source = REPO / relative
        if source.is_file():
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / relative)


def write_config(folder: Path, target: Target) -> None:
    """mutmut reads setup.cfg's [mutmut] section in the folder it runs in."""
    def lines(values: list[str] | tuple[str, ...]) -> str:
        return "".join(f"\n    {value}" for value in values)

    folder.joinpath("setup.cfg").write_text(
        "[mutmut]\n"
        f"source_paths ={lines(SOURCE_PACKAGES)}\n"
        f"only_mutate ={lines([target.source])}\n"
        f"also_copy ={lines(['pytest.ini', 'data'])}\n"
        f"pytest_add_cli_args_test_selection ={lines(target.tests)}\n"
        f"pytest_add_cli_args ={lines(['-p', 'no:cacheprovider'])}\n"
        # torch is not fork-safe after it has run: fork each mutant's worker from a clean server process
        "process_isolation = forkserver\n"
        "use_git_change_detection = false\n")


def mutmut_environment() -> dict[str, str]:
    """No PYTHONPATH (the mutated copy must be the one imported), one thread, offline."""
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "MUTANT_UNDER_TEST")}
    environment.update({"ADVSEG_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return environment


def statuses(folder: Path, target: Target) -> dict[str, str]:
    """{mutant name: status} of the target's mutants (``mutmut results --all`` lists every file's)."""
    output = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=folder,
                            env=mutmut_environment(), check=True, capture_output=True, text=True).stdout
    module = target.source.removesuffix(".py").replace("/", ".") + "."
    found = dict(re.findall(r"^\s+(\S+): (.+)$", output, flags=re.MULTILINE))
    wanted = {name: status for name, status in found.items() if name.startswith(module)}
    if target.functions:
        prefixes = tuple(f"{module}{function}__mutmut_" for function in target.functions)
        wanted = {name: status for name, status in wanted.items() if name.startswith(prefixes)}
    return wanted


def changed_lines(diff: str) -> str:
    """A mutant's diff in one table cell: `- old` -> `+ new` (code only, whitespace squeezed)."""
    def code(prefix: str) -> str:
        lines = [line[1:] for line in diff.splitlines() if line.startswith(prefix) and not line.startswith(prefix * 3)]
        return " ".join(" ".join(lines).split()).replace("|", "\\|")
    return f"`{code('-')}` → `{code('+')}`"


def mutant_number(name: str) -> tuple[str, int]:
    function, _, number = name.rpartition("__mutmut_")
    return function, int(number)


def survivor_report(folder: Path, target: Target, results: dict[str, str]) -> Path:
    """Every mutant that no test killed, with its diff (survivors.md) and as table rows (survivors-table.md)
    for docs/testing.md's dispositions."""
    parts, rows = [f"# {target.name}: {target.source}\n"], []
    for name in sorted((n for n, status in results.items() if status != "killed"), key=mutant_number):
        diff = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=folder, env=mutmut_environment(),
                              capture_output=True, text=True).stdout
        parts.append(f"\n## {name}: {results[name]}\n\n```diff\n{diff.strip()}\n```\n")
        rows.append(f"| {name.rpartition('.')[2]} | {results[name]} | {changed_lines(diff)} | |")
    (folder / "survivors-table.md").write_text("\n".join(["| mutant | status | change | disposition |",
                                                          "|---|---|---|---|", *rows]) + "\n")
    report = folder / "survivors.md"
    report.write_text("".join(parts))
    return report


def run_target(target: Target) -> tuple[dict[str, str], float]:
    folder = WORK / target.name
    copy_tree(folder)
    write_config(folder, target)
    started = time.monotonic()
    with open(folder / "mutmut.log", "w") as log:
        subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", "1", *target.mutant_globs()],
                       cwd=folder, env=mutmut_environment(), stdout=log, stderr=subprocess.STDOUT, check=False)
    seconds = time.monotonic() - started
    results = statuses(folder, target)
    if not results:
        raise SystemExit(f"{target.name}: mutmut produced no results; see {folder / 'mutmut.log'}")
    survivor_report(folder, target, results)
    return results, seconds


def summary_line(target: Target, results: dict[str, str], seconds: float) -> str:
    killed = sum(status == "killed" for status in results.values())
    others = sorted({status for status in results.values() if status != "killed"})
    counts = ", ".join(f"{sum(s == status for s in results.values())} {status}" for status in others)
    return (f"| {target.name} | {target.source} | {killed}/{len(results)} ({100 * killed / len(results):.0f} %) "
            f"| {counts or '-'} | {seconds / 60:.1f} min |")


def recheck_target(target: Target) -> tuple[dict[str, str], float]:
    """Run a finished module's surviving mutants again against the current tests (``--recheck``): after
    adding tests that kill them, without the minutes a full run takes. The source must be unchanged."""
    folder = WORK / target.name
    survivors = [name for name, status in statuses(folder, target).items() if status != "killed"]
    shutil.copytree(REPO / "tests", folder / "tests", dirs_exist_ok=True)
    write_config(folder, target)  # the target's test selection may have grown since the run
    started = time.monotonic()
    if survivors:
        with open(folder / "mutmut-recheck.log", "w") as log:
            subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", "1", *survivors], cwd=folder,
                           env=mutmut_environment(), stdout=log, stderr=subprocess.STDOUT, check=False)
    seconds = time.monotonic() - started
    results = statuses(folder, target)
    survivor_report(folder, target, results)
    return results, seconds


def report_only(target: Target) -> tuple[dict[str, str], float]:
    """Re-read the results of a finished run (``--report``), e.g. after ``mutmut run NAME`` by hand."""
    folder = WORK / target.name
    results = statuses(folder, target)
    survivor_report(folder, target, results)
    return results, 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--report", action="store_true", help="only re-read finished runs' results")
    mode.add_argument("--recheck", action="store_true", help="run finished runs' survivors against the current tests")
    known = ", ".join(target.name for target in TARGETS)
    parser.add_argument("targets", nargs="*", help=f"modules to run (default: all): {known}")
    arguments = parser.parse_args(argv)
    names = arguments.targets or [target.name for target in TARGETS]
    unknown = sorted(set(names) - {target.name for target in TARGETS})
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; choose from {known}")
    try:  # every mode runs `python -m mutmut` with this interpreter: refuse before .mutation/ is touched
        require("mutmut", "make mutation (python -m tests.mutation)")
    except MissingDependencyError as error:
        print(f"mutation: error: {error}", file=sys.stderr)
        return error.exit_code
    lines = ["| module | file | killed | not killed | time |", "|---|---|---|---|---|"]
    for target in (t for t in TARGETS if t.name in names):
        print(f"mutation: {target.name} ({target.source}) ...", flush=True)
        step = report_only if arguments.report else recheck_target if arguments.recheck else run_target
        results, seconds = step(target)
        lines.append(summary_line(target, results, seconds))
        print(lines[-1], flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
