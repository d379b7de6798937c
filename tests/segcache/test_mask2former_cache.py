"""The cache built through the real mask2former backend (transformers' classes, tiny random config)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from advseg_cli.files import sha256_file
from advseg_cli.images import read_rgb
from advseg_cli.segcache import SegcacheConfig, SegmentationCache, build_segcache
from advseg_cli.segmentation.base import build_segmenter, uint8_to_model_range
from tests.segcache.conftest import make_crops

pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                reason="transformers is not installed")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.segmentation.tiny_mask2former import save_tiny_mask2former

    return save_tiny_mask2former(tmp_path_factory.mktemp("tiny-mask2former"))


def test_batched_cache_equals_the_backend_on_each_photo_alone(tmp_path: Path, tiny_weights: Path) -> None:
    crops = make_crops(tmp_path / "photos", 4)
    config = SegcacheConfig(backend="mask2former", weights=tiny_weights, square=64, batch_size=4, device="cpu",
                            workers=0, quiet=True)
    summary = build_segcache(crops, tmp_path / "maps.h5", config)
    assert (summary.done, summary.failed) == (4, 0)
    segmenter = build_segmenter("mask2former", tiny_weights, torch.device("cpu"))
    with SegmentationCache(summary.out) as cache:
        meta = cache.metadata
        assert meta.backend == "mask2former" and meta.model_name == segmenter.model_name
        assert meta.weights_sha256 == sha256_file(tiny_weights / "model.safetensors")
        assert meta.thresholds == segmenter.thresholds == {"score": 0.5, "mask": 0.5, "overlap": 0.8}
        labels_seen: set[int] = set()
        for key in cache.keys():
            labels = cache.labels(key)
            photo = np.array(meta.resize_policy.apply(read_rgb(crops / key)))
            alone = segmenter.hard_labels(uint8_to_model_range(photo))[0].numpy()
            assert labels.shape == (64, 64)
            assert (labels == alone).mean() >= 0.999  # batch of 4 vs 1: float noise may flip a rare pixel
            labels_seen |= set(np.unique(labels).tolist())
    assert 81 not in labels_seen and labels_seen <= set(range(135))
    assert any(1 <= label <= 80 for label in labels_seen) or any(label >= 82 for label in labels_seen)
    record = json.loads(summary.record.read_text())
    assert record["weights"][0]["sha256"] == meta.weights_sha256


def test_the_same_weights_in_a_moved_folder_still_fit_the_cache(tmp_path: Path, tiny_weights: Path) -> None:
    """A --weights folder names the model by its path; moving it must not make the cache 'incompatible'
    when the weights' sha256 is the same, while other weights still are refused."""
    import shutil

    from advseg_cli.errors import IncompatibleInputError
    from tests.segmentation.tiny_mask2former import save_tiny_mask2former

    crops = make_crops(tmp_path / "photos", 3)
    options = dict(backend="mask2former", square=64, batch_size=4, device="cpu", workers=0, quiet=True)
    first = build_segcache(crops, tmp_path / "maps.h5", SegcacheConfig(weights=tiny_weights, **options))
    moved = shutil.copytree(tiny_weights, tmp_path / "elsewhere")
    (crops / "extra.png").write_bytes((crops / sorted(p.name for p in crops.iterdir())[0]).read_bytes())
    again = build_segcache(crops, first.out, SegcacheConfig(weights=moved, **options))
    assert (again.done, again.skipped) == (1, 3)
    other = save_tiny_mask2former(tmp_path / "other-weights", seed=7)
    with pytest.raises(IncompatibleInputError, match="weights_sha256"):
        build_segcache(crops, first.out, SegcacheConfig(weights=other, **options))
