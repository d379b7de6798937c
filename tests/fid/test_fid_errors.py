"""Every user mistake of ``advseg fid`` is one line on stderr and exit status 2, found before the
expensive work where possible (no Inception forward pass in this module except at --dims 64)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from tests.fid.fid_testkit import (WEIGHTS_NAME, assert_one_line_error, cpu_options, photo_crops,
                                   run_fid, write_folder)

DIMS_64 = ("--dims", "64")


@pytest.fixture()
def small(tmp_path: Path) -> tuple[Path, Path]:
    """Two folders of 3 tiny photo crops each."""
    real = write_folder(tmp_path / "real", photo_crops([data.astronaut()], 3, 32, seed=7))
    fake = write_folder(tmp_path / "fake", photo_crops([data.chelsea()], 3, 32, seed=8))
    return real, fake


def write_stats(path: Path, dims: int, **extra: np.ndarray) -> Path:
    np.savez(path, mu=np.zeros(dims), sigma=np.eye(dims), **extra)
    return path


def test_empty_folder(fid_env: Path, small: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    assert_one_line_error(run_fid(tmp_path / "empty", small[1], *cpu_options()), "REAL", "no image files")


def test_a_single_image(fid_env: Path, small: tuple[Path, Path], tmp_path: Path) -> None:
    write_folder(tmp_path / "one", photo_crops([data.coffee()], 1, 32, seed=9))
    assert_one_line_error(run_fid(small[0], tmp_path / "one", *cpu_options()), "FAKE", "at least 2")


def test_fewer_than_two_decodable_images(fid_env: Path, small: tuple[Path, Path], tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "mostly-broken", photo_crops([data.coffee()], 1, 32, seed=9))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "empty.jpg").write_bytes(b"")
    result = run_fid(small[0], folder, *cpu_options(*DIMS_64))
    assert result.exit_code == 2, result.output
    error = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error) == 1 and "1 decodable image(s) of 3" in error[0] and "2 could not be decoded" in error[0]


def test_missing_path_and_unknown_file_kind(fid_env: Path, small: tuple[Path, Path], tmp_path: Path) -> None:
    assert_one_line_error(run_fid(tmp_path / "nope", small[1], *cpu_options()), "no such folder or file")
    (tmp_path / "stats.txt").write_text("mu sigma")
    assert_one_line_error(run_fid(small[0], tmp_path / "stats.txt", *cpu_options()), "not a folder of images")


def test_statistics_files_that_are_not(fid_env: Path, small: tuple[Path, Path], tmp_path: Path) -> None:
    np.savez(tmp_path / "mu-only.npz", mu=np.zeros(64))
    assert_one_line_error(run_fid(tmp_path / "mu-only.npz", small[1], *cpu_options()), "needs arrays mu and sigma")
    (tmp_path / "zip.npz").write_bytes(b"PK not really")
    assert_one_line_error(run_fid(tmp_path / "zip.npz", small[1], *cpu_options()), "unreadable statistics file")


def test_mismatched_dims_between_statistics_files(fid_env: Path, tmp_path: Path) -> None:
    result = run_fid(write_stats(tmp_path / "a.npz", 64), write_stats(tmp_path / "b.npz", 192), *cpu_options())
    assert_one_line_error(result, "64-d", "192-d")


def test_statistics_file_with_other_dims_than_the_folder(fid_env: Path, small: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    result = run_fid(write_stats(tmp_path / "a.npz", 64), small[1], *cpu_options())  # --dims 2048
    assert_one_line_error(result, "64-d", "--dims 64")


def test_kid_cannot_come_from_mu_and_sigma(fid_env: Path, small: tuple[Path, Path], tmp_path: Path) -> None:
    result = run_fid(write_stats(tmp_path / "a.npz", 64), small[1], "--kid", *cpu_options(*DIMS_64))
    assert_one_line_error(result, "--kid", "only mu and sigma", "KID cannot be computed")


def test_statistics_made_with_other_weights(fid_env: Path, small: tuple[Path, Path], tmp_path: Path) -> None:
    stats = write_stats(tmp_path / "other.npz", 64)
    record = {"tool": "advseg", "stage": "fid-stats", "counts": {"done": 5},
              "options": {"weights_sha256": "0" * 64, "decode": "pytorch-fid", "dims": 64}}
    (tmp_path / "other.npz.run.json").write_text(json.dumps(record))
    assert_one_line_error(run_fid(stats, small[1], *cpu_options(*DIMS_64)), "different Inception weights")


def test_offline_without_weights_says_which_file_goes_where(fid_env: Path, small: tuple[Path, Path],
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    line = assert_one_line_error(run_fid(*small, *cpu_options()), WEIGHTS_NAME, "--weights PATH",
                                 str(fid_env), str(tmp_path / "empty-torch-home" / "hub" / "checkpoints"))
    assert "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" in line


def test_weights_of_the_wrong_layout_or_kind(fid_env: Path, small: tuple[Path, Path], tmp_path: Path) -> None:
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pth")
    result = run_fid(*small, "--weights", tmp_path / "wrong.pth", *cpu_options(*DIMS_64))
    assert_one_line_error(result, "wrong.pth", "pt_inception-2015-12-05 layout")
    (tmp_path / "garbage.pth").write_bytes(b"not a pickle at all")
    result = run_fid(*small, "--weights", tmp_path / "garbage.pth", *cpu_options(*DIMS_64))
    assert_one_line_error(result, "garbage.pth", "not a loadable PyTorch state dict")


def test_command_line_misuse(fid_env: Path, small: tuple[Path, Path], tmp_path: Path) -> None:
    assert_one_line_error(run_fid(small[0], *cpu_options()), "missing FAKE")
    assert_one_line_error(run_fid(*small, "--save-stats", tmp_path / "s.npz", *cpu_options()), "one folder")
    assert_one_line_error(run_fid(small[0], "--save-stats", tmp_path / "s.txt", *cpu_options()), "end in .npz")
    (tmp_path / "exists.npz").write_bytes(b"")
    assert_one_line_error(run_fid(small[0], "--save-stats", tmp_path / "exists.npz", *cpu_options()),
                          "file exists", "--overwrite")
