"""Fixtures of the colorize tests: sketch folders, public-code generator files, a real tiny run."""

from __future__ import annotations

from pathlib import Path

import pytest

from advseg_cli.training.loop import train
from tests.colorize.kit import save_public, tiny_generator, write_sketches
from tests.training.test_training import make_dataset, tiny_config


@pytest.fixture
def sketches(tmp_path: Path) -> Path:
    """Three 32x32 sketches of real photos: gray PNG, RGB JPEG in a subfolder, gray PNG."""
    return write_sketches(tmp_path / "sketches", {"astronaut.png": ("astronaut", 32, 32),
                                                  "sub/chelsea.jpg": ("chelsea", 32, 32),
                                                  "coffee.png": ("coffee", 32, 32)})


@pytest.fixture
def public_resnet(tmp_path: Path) -> Path:
    """A tiny ResNet generator saved as the CycleGAN code base's latest_net_G_A.pth."""
    return save_public(tiny_generator("resnet_6blocks", "instance", seed=3), tmp_path / "latest_net_G_A.pth")


@pytest.fixture(scope="session")
def pix2pix_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run folder of `advseg train`: Pix2Pix (batch norm, dropout), 2 steps, trained at crop 32
    from load 36; epoch 1 has one step, so it leaves checkpoints/epoch_001.pt (step 1) and latest.pt
    (step 2)."""
    root = tmp_path_factory.mktemp("train")
    data = make_dataset(root / "data")
    # Kaiming init and a large rate: outputs far from the constant a 0.02-init tiny network gives,
    # and a second step that visibly changes them.
    summary = train(tiny_config(data, root / "runs", model="pix2pix", max_steps=2, max_items=1, lr=0.01,
                                save_epoch_every=1, sample_every=100, model_options={"init_type": "kaiming"}))
    assert (summary.run_dir / "checkpoints" / "epoch_001.pt").is_file()
    return summary.run_dir
