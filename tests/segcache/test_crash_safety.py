"""Crash safety: ``kill -9`` of a real ``advseg segcache`` process at random moments.

After every kill the cache file must open as a valid cache whose entries are exactly the maps an
uninterrupted run computes (never a half-written or wrong map), entries only ever grow, and the
next run completes the cache to equal the uninterrupted one. ADVSEG_KILL_ROUNDS=N runs N rounds
instead of 6 (rounds after the cache is complete only check that it stays valid).
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from advseg_cli.segcache import ENTRIES, SegcacheConfig, SegmentationCache, build_segcache, check_entry
from tests.helpers import REPO
from tests.segcache.conftest import make_crops

PHOTOS = 30
DELAY = 0.05  # seconds per image inside the test segmenter: an uninterrupted run lasts about 2 s

# A fresh interpreter (the "zygote") imports advseg once, with the test-color backend registered,
# then forks one child per round that runs the real click command, and SIGKILLs it when the test
# says so (as its parent it kills it before reaping it, so the pid cannot belong to anything else).
# Forking saves the import time of torch in every round; the child is a separate process all the same.
ZYGOTE = """
import os, signal, sys
from tests.segcache.color_segmenter import register_color_backend
register_color_backend(delay=float(sys.argv[1]))
import advseg_cli.segcache
from advseg_cli.commands.segcache import cmd
for line in sys.stdin:
    if line.strip() != "run":
        break
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        try:
            cmd(sys.argv[2:])
        except SystemExit as done:
            os._exit(done.code or 0)
        except BaseException:
            os._exit(70)
        os._exit(0)
    print(pid, flush=True)
    sys.stdin.readline()  # "kill": the child is not reaped yet, so its pid is still its own
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
    print("killed" if killed else f"exited {os.waitstatus_to_exitcode(status)}", flush=True)
"""


class Runner:
    """The zygote process: ``run()`` starts a child and returns its pid; ``kill()`` kills it."""

    def __init__(self, photos: Path, out: Path) -> None:
        args = [sys.executable, "-c", ZYGOTE, str(DELAY), str(photos), str(out), "--backend", "test-color",
                "--device", "cpu", "--batch-size", "2", "--workers", "0", "--commit-every", "0", "--quiet"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen(args, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)

    def run(self) -> int:
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line.strip().isdigit(), self.process.stderr.read()
        return int(line)

    def kill(self) -> str:
        """SIGKILL the child (by the zygote, its parent) and say whether it was still running."""
        self.process.stdin.write("kill\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def close(self) -> None:
        """End the zygote (its stdin closes); kill it if it does not end, e.g. after a failed round."""
        self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_for_commits(out: Path, count: int, timeout: float = 30.0) -> None:
    """Return once ``out`` was replaced ``count`` times (a commit renames a new file onto it)."""
    def identity() -> tuple[int, int] | None:
        with contextlib.suppress(FileNotFoundError):
            stat = out.stat()
            return stat.st_ino, stat.st_mtime_ns
        return None

    seen, deadline = identity(), time.monotonic() + timeout
    while count and time.monotonic() < deadline:
        time.sleep(0.002)
        now = identity()
        if now != seen:
            seen, count = now, count - 1


def maps_with_attrs(path: Path) -> dict[str, tuple[np.ndarray, dict]]:
    with h5py.File(path, "r") as handle:
        return {name: (ds[()], dict(ds.attrs)) for name, ds in handle[ENTRIES].items()}


def test_kill_9_at_random_moments_leaves_a_valid_cache_that_the_next_run_completes(tmp_path: Path) -> None:
    photos = make_crops(tmp_path / "photos", PHOTOS)
    reference = build_segcache(photos, tmp_path / "reference.h5",
                               SegcacheConfig(backend="test-color", device="cpu", batch_size=2, quiet=True))
    expected = maps_with_attrs(reference.out)
    assert len(expected) == PHOTOS

    out = tmp_path / "maps.h5"
    rounds = int(os.environ.get("ADVSEG_KILL_ROUNDS", "6"))
    chance = random.Random(20210213)
    counts, killed_running, unfinished_rounds = [], 0, 0
    runner = Runner(photos, out)
    try:
        for round_index in range(rounds):
            unfinished_rounds += not counts or counts[-1] < PHOTOS
            runner.run()
            if round_index % 2 == 0:  # anywhere in the first 0.3 s: start-up, first batch, first commits
                time.sleep(chance.uniform(0.0, 0.3))
            else:  # a random moment after 1-2 more commits: mid-run, whatever the machine's speed
                wait_for_commits(out, chance.randint(1, 2))
                time.sleep(chance.uniform(0.0, 0.15))
            outcome = runner.kill()
            assert outcome in ("killed", "exited 0"), outcome
            killed_running += outcome == "killed"
            if not out.exists():  # killed before the first commit (the empty cache)
                counts.append(0)
                continue
            with SegmentationCache(out) as cache:  # opens, and is a cache of the right kind
                assert cache.metadata.backend == "test-color"
            got = maps_with_attrs(out)
            for name, (labels, attrs) in got.items():
                with h5py.File(out, "r") as handle:
                    assert check_entry(handle[ENTRIES][name]) == ""
                np.testing.assert_array_equal(labels, expected[name][0])
                assert attrs == expected[name][1]
            counts.append(len(got))
    finally:
        runner.close()
    print("entries after each kill:", counts, "killed while running:", killed_running)
    assert counts == sorted(counts), f"entries must never disappear: {counts}"
    assert killed_running >= unfinished_rounds - 1, "the kills must land while the run is going on"
    assert any(0 < count < PHOTOS for count in counts), f"no kill landed mid-run: {counts}"

    final = build_segcache(photos, out, SegcacheConfig(backend="test-color", device="cpu", batch_size=2, quiet=True))
    assert final.skipped == counts[-1] and final.done == PHOTOS - counts[-1]
    got = maps_with_attrs(out)
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name][0], expected[name][0])
        assert got[name][1] == expected[name][1]
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert leftovers == ["maps.h5", "maps.h5.run.json", "reference.h5", "reference.h5.run.json"]
