"""``advseg fid`` gives the numbers of ``python -m pytorch_fid`` (the paper's tool) at --dims 2048:
from folders, through the cached statistics of the REAL folder, and in saved statistics files.

Both tools load the same random-weights Inception file from one temporary torch hub cache. Each
2048-d FID costs a 2048x2048 matrix square root (20-30 s of CPU in scipy) and each image a
299x299 Inception forward (about a second on a small CPU), so the runs are made once (module
fixture), each folder is computed once per tool, exactly two 2048-d FIDs are computed (one by
pytorch-fid, one by advseg), and pytorch-fid runs beside advseg. (Reading statistics files into FID
is tested at --dims 64 in test_fid_inputs.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import compute_statistics_of_path

from advseg_cli.files import sha256_file
from tests.fid.fid_testkit import WEIGHTS_NAME, cpu_options, run_fid

BATCH = "3"  # 5 images per side: one full and one partial batch, in both tools
REL = 1e-6


def start_pytorch_fid(*args: Path | str, torch_home: Path, cwd: Path) -> subprocess.Popen:
    """``python -m pytorch_fid`` in the background, with the test torch home.

    It gets this process's intra-op thread count (tests/conftest.py sets 1), since the convolutions'
    float roundings depend on it; a single-threaded child also runs beside this single-threaded
    process on two cores. A dead proxy makes any download attempt fail loudly.
    """
    env = {**os.environ, "TORCH_HOME": str(torch_home), "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": ""}
    command = [sys.executable, "-m", "pytorch_fid", *map(str, args), "--device", "cpu", "--batch-size", BATCH,
               "--num-workers", "0", "--dims", "2048"]
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def pytorch_fid_value(done: subprocess.CompletedProcess) -> float:
    line = [line for line in done.stdout.splitlines() if line.startswith("FID:")][-1]
    return float(line.split()[-1])


@pytest.fixture(scope="module")
def evaluation(torch_home: Path, photo_folders: tuple[Path, Path],
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    real, fake = photo_folders
    work = tmp_path_factory.mktemp("fid-eval")
    weights_file = torch_home / "hub" / "checkpoints" / WEIGHTS_NAME
    runs: dict[str, Any] = {"work": work, "weights_sha256": sha256_file(weights_file)}
    background: list[subprocess.Popen] = []
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TORCH_HOME", str(torch_home))
        env.setenv("ADVSEG_HOME", str(work / "advseg-home"))
        env.setenv("ADVSEG_OFFLINE", "1")
        try:
            background.append(start_pytorch_fid(real, fake, torch_home=torch_home, cwd=work))
            background.append(start_pytorch_fid("--save-stats", real, work / "pytorch-fid-real.npz",
                                                torch_home=torch_home, cwd=work))
            # first advseg run: REAL's statistics computed, saved to a file and cached
            runs["save_real"] = run_fid(real, "--save-stats", work / "real.npz",
                                        *cpu_options("--batch-size", BATCH))
            # second advseg run: REAL from the cache, FAKE computed from its folder
            second = run_fid(real, fake, "--kid", "--json", *cpu_options("--batch-size", BATCH))
            assert second.exit_code == 0, second.output
            runs["second"], runs["second_log"] = json.loads(second.stdout), second.stderr
            runs["pytorch_fid"], runs["pytorch_fid_save"] = (finished(process) for process in background)
        finally:
            for process in background:
                if process.poll() is None:
                    process.kill()
                    process.wait()
    runs["checkpoints_after"] = sorted(p.name for p in weights_file.parent.iterdir())
    runs["weights_sha256_after"] = sha256_file(weights_file)
    return runs


def test_fid_equals_pytorch_fids_with_real_statistics_from_the_cache(evaluation: dict[str, Any]) -> None:
    reference = pytorch_fid_value(evaluation["pytorch_fid"])
    second, log = evaluation["second"], evaluation["second_log"]
    assert reference > 1.0  # clearly different photo sets: a real distance, not rounding noise
    assert second["fid"] == pytest.approx(reference, rel=REL)
    assert f"FID: {second['fid']!r}" in log  # the one-line result (on stderr while --json owns stdout)
    assert second["real"]["source"] == "cache" and "REAL statistics from cache" in log
    assert Path(second["real"]["cache_file"]).parent == evaluation["work"] / "advseg-home" / "fid-stats"
    assert second["fake"]["source"] == "computed"
    assert (second["real"]["images"], second["fake"]["images"]) == (5, 5)
    assert (second["real"]["failed"], second["fake"]["failed"]) == (0, 0)
    assert second["settings"]["dims"] == 2048 and second["settings"]["batch_size"] == 3
    assert second["versions"]["pytorch_fid"] == "0.3.0"


def test_first_run_computed_and_cached_the_real_statistics(evaluation: dict[str, Any]) -> None:
    save = evaluation["save_real"]
    assert save.exit_code == 0, save.output
    assert "statistics cached in" in save.stderr
    cache_files = list((evaluation["work"] / "advseg-home" / "fid-stats").glob("*.npz"))
    assert [str(p) for p in cache_files] == [evaluation["second"]["real"]["cache_file"]]
    with np.load(cache_files[0]) as cached, np.load(evaluation["work"] / "real.npz") as saved:
        assert np.array_equal(cached["mu"], saved["mu"]) and np.array_equal(cached["sigma"], saved["sigma"])
        assert cached["features"].shape == (5, 2048)


def test_pytorch_fid_loaded_the_test_weights_without_downloading(evaluation: dict[str, Any]) -> None:
    """The same file for both tools (else the values could not agree), found in torch hub's cache."""
    second = evaluation["second"]
    assert "Downloading" not in evaluation["pytorch_fid"].stdout
    assert evaluation["checkpoints_after"] == [WEIGHTS_NAME]
    assert evaluation["weights_sha256_after"] == evaluation["weights_sha256"]
    assert second["weights"]["source"] == "torch-hub"
    assert second["weights"]["sha256"] == evaluation["weights_sha256"]
    assert Path(second["weights"]["path"]).name == WEIGHTS_NAME


def test_saved_statistics_are_pytorch_fids_statistics(evaluation: dict[str, Any]) -> None:
    """pytorch-fid's own reader gets from our file what its --save-stats computes for the folder."""
    work = evaluation["work"]
    ours_mu, ours_sigma = compute_statistics_of_path(str(work / "real.npz"), None, 3, 2048, "cpu")
    with np.load(work / "pytorch-fid-real.npz") as reference:
        np.testing.assert_allclose(ours_mu, reference["mu"], rtol=REL, atol=1e-9)
        np.testing.assert_allclose(ours_sigma, reference["sigma"], rtol=REL, atol=1e-9)
    with np.load(work / "real.npz") as archive:
        assert sorted(archive.files) == ["mu", "sigma"]  # pytorch-fid's format, nothing else
    record = json.loads((work / "real.npz.run.json").read_text())
    assert record["stage"] == "fid-stats" and record["status"] == "complete"
    assert record["counts"] == {"done": 5, "skipped": 0, "failed": 0}
    assert record["options"]["weights_sha256"] == evaluation["weights_sha256"]


def test_kid_of_different_photo_sets_is_positive(evaluation: dict[str, Any]) -> None:
    kid = evaluation["second"]["kid"]
    assert kid["subsets"] == 100 and kid["subset_size"] == 5  # clamped to the smaller side
    assert kid["degree"] == 3 and kid["gamma"] == "1/d" and kid["coef0"] == 1
    assert kid["mean"] > 0 and kid["mean"] > 2 * kid["std"] / np.sqrt(kid["subsets"])
    assert "KID:" in evaluation["second_log"]
