"""Training with the segmentation discriminators: the real (tiny, random) Mask2Former and a real segcache."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advseg_cli.errors import AdvsegError, IncompatibleInputError, WeightsNotFoundError
from advseg_cli.segcache import SegcacheConfig, SegmentationCache, build_segcache
from advseg_cli.training.loop import Trainer, train
from tests.helpers import write_vgg16_weights
from tests.segmentation.tiny_mask2former import save_tiny_mask2former
from tests.training.test_training import losses, make_dataset, tiny_config

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def seg_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data, seg weights folder, segcache) with the cache made at the training loader's resize."""
    root = tmp_path_factory.mktemp("advseg")
    data = make_dataset(root / "data")
    weights = save_tiny_mask2former(root / "m2f")
    cache = root / "segmaps.h5"
    build_segcache(data / "trainB", cache, SegcacheConfig(backend="mask2former", weights=weights, square=70,
                                                           device="cpu", quiet=True))
    return data, weights, cache


def _config(seg_setup: tuple[Path, Path, Path], runs: Path, **changes: object):
    data, weights, cache = seg_setup
    options = {"advseg": "both", **changes.pop("model_options", {})}  # type: ignore[dict-item]
    # 64 px: Mask2Former's deepest feature (stride 32) must be larger than 1x1 for its GroupNorm.
    changes = {"segcache": cache, "seg_weights": weights, "load_size": 70, "crop_size": 64, **changes}
    return tiny_config(data, runs, model_options=options, **changes)


@pytest.mark.parametrize(("model", "seg_grad"), [("cyclegan", "soft"), ("pix2pix", "compat"), ("autopainter", "soft")])
def test_both_segmentation_discriminators_train(seg_setup, tmp_path: Path, model: str, seg_grad: str) -> None:
    extra = {"perceptual_weights": write_vgg16_weights(tmp_path / "vgg.pth")} if model == "autopainter" else {}
    run = train(_config(seg_setup, tmp_path, model=model, max_steps=2, sample_every=2,
                        model_options={"seg_grad": seg_grad}, **extra)).run_dir
    rows = losses(run)
    assert {"loss/G_M", "loss/G_Bin", "loss/D_M", "loss/D_Bin"} <= set(rows[0])
    assert all(np.isfinite(list(row.values())).all() for row in rows)
    grid = np.asarray(Image.open(run / "samples" / "step_0000002.png"))
    assert grid.shape[1] == 5 * 64  # sketch | generated | photo | map of generated | map of real
    made_with = SegmentationCache(seg_setup[2]).metadata
    described = json.loads((run / "config.json").read_text())["segmenter"]
    assert (described["backend"], described["weights"]["sha256"]) == (made_with.backend, made_with.weights_sha256)


def test_a_photo_without_a_map_is_an_error_before_the_first_step(seg_setup, tmp_path: Path) -> None:
    data, weights, cache = seg_setup
    extra = tmp_path / "data"
    make_dataset(extra)
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(extra / "trainB" / "new.png")
    config = tiny_config(extra, tmp_path / "runs", segcache=cache, seg_weights=weights,
                         model_options={"advseg": "multi"}, max_steps=1, load_size=70, crop_size=64)
    with pytest.raises(IncompatibleInputError, match="1 photos have no map.*--segcache-missing skip"):
        Trainer(config)
    assert not (tmp_path / "runs" / "run" / "config.json").exists()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        trainer = Trainer(tiny_config(extra, tmp_path / "runs", segcache=cache, seg_weights=weights,
                                      model_options={"advseg": "multi"}, max_steps=1, segcache_missing="skip",
                                      load_size=70, crop_size=64))
    assert "new.png" not in [p.name for p in trainer.dataset.B.files]


def test_a_changed_photo_makes_its_map_stale(seg_setup, tmp_path: Path) -> None:
    data, weights, cache = seg_setup
    changed = tmp_path / "data"
    make_dataset(changed)
    photo = changed / "trainB" / "0.png"
    Image.fromarray(255 - np.asarray(Image.open(photo))).save(photo)
    with pytest.raises(IncompatibleInputError, match="maps are stale"):
        Trainer(tiny_config(changed, tmp_path / "runs", segcache=cache, seg_weights=weights,
                            model_options={"advseg": "binary"}, max_steps=1))


def test_a_cache_made_with_other_seg_weights_is_refused(seg_setup, tmp_path: Path) -> None:
    other = save_tiny_mask2former(tmp_path / "other", seed=1)
    with pytest.raises(IncompatibleInputError, match="another segmentation network"):
        Trainer(_config(seg_setup, tmp_path, seg_weights=other, max_steps=1))


def test_a_corrupt_photo_is_skipped_with_a_warning(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    (data / "trainB" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.warns(UserWarning, match="skipping undecodable image"):
        summary = train(tiny_config(data, tmp_path / "runs", model="pix2pix", max_steps=8))
    assert summary.steps == 8


def test_without_seg_weights_the_training_takes_the_ones_the_cache_was_made_with(
        seg_setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`advseg segcache --weights X` then `advseg train` needs no --seg-weights: the cache's record names X."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # no real weights
    data, weights, cache = seg_setup
    trainer = Trainer(_config(seg_setup, tmp_path / "a", seg_weights=None, max_steps=1))
    assert trainer.model.seg.weights_record["path"] == str(weights.resolve())
    copy = tmp_path / "cache-elsewhere.h5"  # a cache without its run record: nothing to go on
    copy.write_bytes(cache.read_bytes())
    with pytest.raises(WeightsNotFoundError, match="--seg-weights"):  # the message names train's option
        Trainer(_config(seg_setup, tmp_path / "b", seg_weights=None, segcache=copy, max_steps=1))


def test_a_crop_the_training_seg_cannot_segment_is_refused_before_the_run_folder(seg_setup, tmp_path: Path) -> None:
    """Mask2Former's stride-32 GroupNorm has nothing to normalise at 32 px: the first step would fail."""
    config = _config(seg_setup, tmp_path / "runs", load_size=36, crop_size=32, max_steps=1)
    with pytest.raises(AdvsegError, match="--crop-size 32: the mask2former segmentation network cannot segment"):
        Trainer(config)
    assert not (tmp_path / "runs").exists()
