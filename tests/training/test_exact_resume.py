"""Exact resume for every model: 3 steps + ``--resume`` 3 steps leaves the checkpoint of 6 steps straight.

CUT and FastCUT add what only they have: the projection head created on the first batch and its optimizer,
the random patch positions of every step and FastCUT's flip coin.

Every tensor of the two checkpoints is compared (weights, batch-norm statistics, optimizer and scheduler
states, image pools, the gradient scaler, the RNG states). The runs are set up so that each thing a resume
can lose matters: dropout is on (a shifted global RNG changes every later mask), the pools hold 2 images
(full after 2 steps, then every query draws from the RNG), an epoch has 2 steps (both parts cross an epoch
boundary, so the resumed part continues a schedule that has already stepped) and the learning rate decays
from epoch 2 on. The epoch snapshots (one per epoch here) must be the same in both runs, taken as each epoch
ended.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from advseg_cli.training.checkpoint import load_checkpoint
from advseg_cli.training.loop import train
from tests.helpers import write_vgg16_weights
from tests.training.test_training import make_dataset, tiny_config

RESUME_SETTINGS = {"max_items": 2, "epochs": 1, "epochs_decay": 3, "save_every": 100, "save_epoch_every": 1}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("resume-data"))


@pytest.fixture(scope="module")
def shapes_segcache(data: Path, shapes_segmenters: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(Seg weights, segcache of the photos) with the shapes world's trained Seg: a real, small backend."""
    from advseg_cli.segcache import SegcacheConfig, build_segcache

    weights = shapes_segmenters / "shapes-seg.safetensors"
    cache = tmp_path_factory.mktemp("resume-seg") / "segmaps.h5"
    build_segcache(data / "trainB", cache, SegcacheConfig(backend="shapes", weights=weights, square=36,
                                                           device="cpu", quiet=True))
    return weights, cache


def assert_same_tree(a: Any, b: Any, where: str = "checkpoint") -> None:
    """Equal structure and bit-equal tensors, everywhere in a checkpoint payload."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys differ"
        for key in a:
            assert_same_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for index, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{index}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, f"{where}: tensor layout"
        assert torch.equal(a, b), f"{where}: values differ"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def straight_and_resumed(config: Any, runs: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoints after 6 steps straight, and after 3 steps then a resume to 6."""
    whole = train(dataclasses.replace(config, runs_dir=runs / "straight", max_steps=6))
    assert whole.steps == 6
    train(dataclasses.replace(config, runs_dir=runs / "resumed", max_steps=3))
    resumed = train(dataclasses.replace(config, runs_dir=runs / "resumed", max_steps=6, resume=True))
    assert resumed.steps == 6 and resumed.epoch == 3  # resumed in epoch 2, ended in epoch 3, both decaying
    snapshots = ["epoch_001.pt", "epoch_002.pt", "latest.pt"]  # epochs 1 and 2 ended (2 steps each), 3 did not
    for run in (whole, resumed):
        assert sorted(p.name for p in (run.run_dir / "checkpoints").iterdir()) == snapshots
    for epoch in (1, 2):  # each taken as its epoch ended, the same in both runs
        a, b = (load_checkpoint(run.run_dir / "checkpoints" / f"epoch_{epoch:03d}.pt") for run in (whole, resumed))
        assert a["position"] == {"step": 2 * epoch, "epoch": epoch + 1, "batch": 0}
        assert_same_tree(a["model"], b["model"], f"epoch_{epoch:03d}.model")
    a = load_checkpoint(whole.run_dir / "checkpoints" / "latest.pt")
    b = load_checkpoint(resumed.run_dir / "checkpoints" / "latest.pt")
    a.pop("train_config"), b.pop("train_config")  # the resumed run's options say resume=True
    return a, b


@pytest.mark.parametrize(("model", "workers"), [("cyclegan", 0), ("pix2pix", 0), ("autopainter", 0),
                                                ("pix2pix", 2), ("cut", 0), ("fastcut", 0)])
def test_resume_leaves_the_checkpoint_of_an_uninterrupted_run(data: Path, tmp_path: Path, model: str,
                                                             workers: int) -> None:
    extra = {"perceptual_weights": write_vgg16_weights(tmp_path / "vgg.pth")} if model == "autopainter" else {}
    config = tiny_config(data, tmp_path, model=model, workers=workers, **RESUME_SETTINGS, **extra,
                         model_options={"dropout": True, "pool_size": 2})
    a, b = straight_and_resumed(config, tmp_path)
    assert a["schedulers"]["G"]["last_epoch"] == 2 and a["pools"]  # decaying, and the pools were used
    assert_same_tree(a, b)
    if model in ("cut", "fastcut"):  # the projection head, created on the first batch, and its optimizer
        assert any(key.startswith("F.mlps.") for key in a["model"]) and a["optimizers"]["F"]["state"]
        assert a["schedulers"]["F"]["last_epoch"] == 2


@pytest.mark.parametrize(("model", "advseg"), [("cyclegan", "both"), ("pix2pix", "multi"), ("cyclegan", "binary"),
                                               ("cut", "both"), ("fastcut", "multi")])
def test_resume_is_exact_with_the_segmentation_discriminators(data: Path, shapes_segcache: tuple[Path, Path],
                                                             tmp_path: Path, model: str, advseg: str) -> None:
    weights, cache = shapes_segcache
    config = tiny_config(data, tmp_path, model=model, segcache=cache, seg_weights=weights, **RESUME_SETTINGS,
                         model_options={"dropout": True, "pool_size": 2, "advseg": advseg})
    a, b = straight_and_resumed(config, tmp_path)
    assert any(name.startswith("D_") and name != "D_A" and name != "D_B" for name in
               {key.split(".")[0] for key in a["model"]})  # the map discriminators are in the comparison
    assert_same_tree(a, b)


@pytest.mark.parametrize(("model", "variants"), [
    ("pix2pix", {"seg_real": "soft", "seg_augment": "translation,cutout,color", "seg_warmup": 5,
                 "seg_consistency": 1.0}),
    ("cyclegan", {"seg_augment": "translation,cutout", "seg_balance": 0.5, "seg_warmup": 4, "seg_features": 8}),
])
def test_resume_is_exact_with_the_segmentation_variants(data: Path, shapes_segcache: tuple[Path, Path],
                                                       tmp_path: Path, model: str, variants: dict[str, Any]) -> None:
    """The warm-up reads the step the resume restores, and the augmentations draw from the saved RNG."""
    weights, cache = shapes_segcache
    config = tiny_config(data, tmp_path, model=model, segcache=cache, seg_weights=weights, **RESUME_SETTINGS,
                         log_seg_grad_norm=True,
                         model_options={"dropout": True, "pool_size": 2, "advseg": "both", **variants})
    a, b = straight_and_resumed(config, tmp_path)
    assert_same_tree(a, b)
    straight, resumed = (list(csv.DictReader(open(tmp_path / part / "run" / "metrics.csv", newline="")))
                         for part in ("straight", "resumed"))
    gan_term = "G_GAN" if model == "pix2pix" else "G_A"
    assert {"weight/seg", "grad/G_G_M_norm", f"grad/G_{gan_term}_norm", "grad/G_seg_norm"} <= set(straight[0])
    seg_weights = [float(row["weight/seg"]) for row in straight]
    assert seg_weights[0] == 0.0 and seg_weights[-1] > 0  # the warm-up starts at 0 and rises
    assert [row["weight/seg"] for row in resumed] == [row["weight/seg"] for row in straight]
