"""Fixtures for every test: an isolated weights cache, no downloads, small real photo folders."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import HiddenPackage, make_photo_folder

# One intra-op thread: tests run tiny networks, where thread start-up and spinning cost more than they
# save, and a busy 2-core machine (CI, subprocesses of other tests) would otherwise oversubscribe.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.gpu`` is the one way a test says it needs CUDA: it is skipped without a device, and
    ``pytest -m gpu`` (what ``make gpu-check`` runs) selects exactly the CUDA-only tests."""
    no_cuda = not torch.cuda.is_available()
    skip = pytest.mark.skipif(no_cuda, reason="needs a CUDA device (marked gpu)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's caches (ours and torch hub's), and nothing is downloaded."""
    monkeypatch.setenv("ADVSEG_HOME", str(tmp_path_factory.mktemp("advseg-home")))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch-home")))
    monkeypatch.setenv("ADVSEG_OFFLINE", "1")


@pytest.fixture
def without_detectron2(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """detectron2 cannot be imported inside the test, whether or not it is installed (modules already
    imported are taken out of sys.modules for the test's duration, and put back after)."""
    for name in [n for n in sys.modules if n == "detectron2" or n.startswith("detectron2.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [HiddenPackage("detectron2"), *sys.meta_path])
    with pytest.raises(ImportError):
        importlib.import_module("detectron2.modeling")
    yield


@pytest.fixture
def small_photos(tmp_path: Path) -> Path:
    """The four real test photos (scikit-image) at 64 px, one in a subfolder."""
    return make_photo_folder(tmp_path / "photos", 64)


@pytest.fixture(scope="session")
def shapes_segmenters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the shapes world's two segmenters trained briefly (seconds), in the real file layout."""
    from advseg_cli.world.seg import world_segmenter_path
    from advseg_cli.world.seg_training import SegTrainingConfig, train_role

    folder = tmp_path_factory.mktemp("shapes-seg")
    config = SegTrainingConfig(epochs=3, photos=96, validation_photos=32, size=64, batch_size=8, quiet=True)
    for role in ("seg", "eval"):
        train_role(role, world_segmenter_path(role, folder), config)
    return folder
