"""Fixtures of the FID tests: real photo crops and a random-weights Inception file.

The Inception file has the real layout (the state dict of pytorch-fid's ``fid_inception_v3()``)
with seeded random values, and lives in a temporary torch hub cache, where both ``advseg fid`` and
``python -m pytorch_fid`` look for it. FID equality does not depend on the weight values, only on
both tools using the same file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from skimage import data

from tests.fid.fid_testkit import WEIGHTS_NAME, photo_crops, random_fid_inception_state, write_folder


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torch home whose hub cache holds the random-weights Inception file."""
    home = tmp_path_factory.mktemp("torch-home")
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(random_fid_inception_state(seed=5), checkpoints / WEIGHTS_NAME)
    return home


@pytest.fixture(scope="session")
def photo_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """REAL: astronaut/coffee crops (PNG); FAKE: chelsea/rocket crops (JPEG). 5 of 64x64 each."""
    root = tmp_path_factory.mktemp("photos")
    real = write_folder(root / "real", photo_crops([data.astronaut(), data.coffee()], 5, 64, seed=1))
    fake = write_folder(root / "fake", photo_crops([data.chelsea(), data.rocket()], 5, 64, seed=2), ".jpg")
    return real, fake


@pytest.fixture()
def fid_env(torch_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Per test: the random weights in torch hub's cache, an empty $ADVSEG_HOME (returned), offline."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("ADVSEG_HOME", str(tmp_path / "advseg-home"))
    monkeypatch.setenv("ADVSEG_OFFLINE", "1")
    monkeypatch.delenv("ADVSEG_DEBUG", raising=False)
    yield tmp_path / "advseg-home"
