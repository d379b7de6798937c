"""The cache file format: what is stored, reading it back (also from DataLoader workers), rejection."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from advseg_cli.errors import AdvsegError, IncompatibleInputError
from advseg_cli.images import read_rgb
from advseg_cli.segcache import (
    ENTRIES,
    SCHEMA_VERSION,
    ResizePolicy,
    SegcacheConfig,
    SegmentationCache,
    SegmentationCacheDataset,
    build_segcache,
    entry_name,
    key_from_entry_name,
)
from advseg_cli.segmentation.base import uint8_to_model_range
from advseg_cli.segmentation.classes import CLASS_NAMES, IS_STUFF, IS_THING
from advseg_cli.segmentation.maps import binary_from_labels
from tests.segcache.color_segmenter import ColorSegmenter

CONFIG = SegcacheConfig(backend="test-color", device="cpu", batch_size=4, workers=0)


def expected_labels(photo_path: Path, policy: ResizePolicy) -> np.ndarray:
    """What the cache must hold: the segmenter applied to the photo resized by the policy, alone."""
    rgb = np.array(policy.apply(read_rgb(photo_path)))
    return ColorSegmenter(torch.device("cpu")).hard_labels(uint8_to_model_range(rgb))[0].numpy()


def _collate_keep(items: list) -> list:
    return items


def test_round_trip_read_only_and_from_two_dataloader_workers(crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps.h5"
    summary = build_segcache(crops, out, CONFIG)
    assert (summary.done, summary.skipped, summary.failed, summary.entries) == (8, 0, 0, 8)
    before = (out.stat().st_mtime_ns, out.read_bytes())

    cache = SegmentationCache(out)
    keys = cache.keys()
    assert keys == sorted(p.relative_to(crops).as_posix() for p in crops.rglob("*.jpg"))
    assert "sub/crop_04.jpg" in cache and Path("sub/crop_04.jpg") in cache and "nope.jpg" not in cache
    for key in keys:
        labels = cache.labels(key)
        assert labels.dtype == np.uint8
        np.testing.assert_array_equal(labels, expected_labels(crops / key, cache.metadata.resize_policy))
        info = cache.entry_info(key)
        width, height = read_rgb(crops / key).shape[1::-1]
        assert (info.source_width, info.source_height) == (width, height)
        assert (info.computed_width, info.computed_height) == (labels.shape[1], labels.shape[0])
        assert not cache.is_stale(key, crops / key)
        torch.testing.assert_close(cache.binary(key), binary_from_labels(torch.from_numpy(labels)[None])[0])

    loader = DataLoader(SegmentationCacheDataset(out, binary=True), batch_size=1, num_workers=2,
                        collate_fn=_collate_keep)
    seen = {}
    for (item,) in loader:
        seen[item["key"]] = item
    assert sorted(seen) == keys
    for key in keys:
        np.testing.assert_array_equal(seen[key]["labels"].numpy(), cache.labels(key))
        torch.testing.assert_close(seen[key]["binary"], cache.binary(key))
    cache.close()
    assert (out.stat().st_mtime_ns, out.read_bytes()) == before  # reading never writes


def test_file_attributes_describe_the_maps(crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps.h5"
    build_segcache(crops, out, SegcacheConfig(**{**CONFIG.__dict__, "square": 40}))
    with h5py.File(out, "r") as handle:
        attrs = handle.attrs
        assert attrs["format"] == "advseg-segcache" and attrs["schema_version"] == SCHEMA_VERSION
        assert attrs["backend"] == "test-color" and attrs["model_name"] == "color-thresholds-v1"
        assert attrs["weights_sha256"] == ""
        assert json.loads(attrs["thresholds"]) == {"gray": 0.08}
        assert json.loads(attrs["resize_policy"]) == {"mode": "square", "size": 40, "max_side": 0,
                                                      "interpolation": "bicubic"}
        names = [name.decode() if isinstance(name, bytes) else name for name in attrs["class_names"]]
        assert names == list(CLASS_NAMES)
        assert attrs["is_thing"].tolist() == [int(f) for f in IS_THING]
        assert attrs["is_stuff"].tolist() == [int(f) for f in IS_STUFF]
        dataset = handle[ENTRIES][entry_name("sub/crop_04.jpg")]
        assert dataset.shape == (40, 40) and dataset.dtype == np.uint8
        assert dataset.compression == "gzip" and dataset.chunks is not None
        assert set(dataset.attrs) == {"source_width", "source_height", "source_sha256", "computed_width",
                                      "computed_height"}
        assert "binary" not in handle and len(handle[ENTRIES]) == 8  # the binary map is never stored


def test_entry_names_are_flat_and_reversible() -> None:
    for key in ("a.jpg", "sub/dir/b.png", "100%/x%2Fy.jpg", "we ird/ü.jpg"):
        name = entry_name(key)
        assert "/" not in name and key_from_entry_name(name) == key


@pytest.mark.parametrize("policy, source, target", [
    (ResizePolicy.from_options(0, 0, 1024), (640, 480), (640, 480)),
    (ResizePolicy.from_options(0, 0, 100), (640, 480), (100, 75)),
    (ResizePolicy.from_options(286, 0, 1024), (640, 480), (381, 286)),
    (ResizePolicy.from_options(286, 0, 1024), (300, 900), (286, 858)),
    (ResizePolicy.from_options(286, 0, 500), (300, 900), (167, 500)),
    (ResizePolicy.from_options(0, 286, 1024), (640, 480), (286, 286)),
])
def test_resize_policy_sizes(policy: ResizePolicy, source: tuple[int, int], target: tuple[int, int]) -> None:
    assert policy.target_size(*source) == target
    assert ResizePolicy.from_json(policy.to_json()) == policy


def test_size_and_square_exclude_each_other() -> None:
    with pytest.raises(AdvsegError, match="--size and --square"):
        SegcacheConfig(size=100, square=100).validate()


def test_short_side_policy_is_what_is_stored(crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps.h5"
    build_segcache(crops, out, SegcacheConfig(**{**CONFIG.__dict__, "size": 32}))
    cache = SegmentationCache(out)
    for key in cache.keys():
        info = cache.entry_info(key)
        assert min(info.computed_width, info.computed_height) == 32
        expected = cache.metadata.resize_policy.target_size(info.source_width, info.source_height)
        assert (info.computed_width, info.computed_height) == expected
        np.testing.assert_array_equal(cache.labels(key), expected_labels(crops / key, cache.metadata.resize_policy))


def test_other_schema_version_is_rejected_with_the_fix(crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps.h5"
    build_segcache(crops, out, CONFIG)
    with h5py.File(out, "a") as handle:
        handle.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(IncompatibleInputError, match=r"schema version 2.*upgrade advseg.*--overwrite"):
        SegmentationCache(out)
    with pytest.raises(IncompatibleInputError, match="schema version"):
        build_segcache(crops, out, CONFIG)  # the build refuses it too, and leaves it alone
    with h5py.File(out, "r") as handle:
        assert handle.attrs["schema_version"] == SCHEMA_VERSION + 1
    summary = build_segcache(crops, out, SegcacheConfig(**{**CONFIG.__dict__, "overwrite": True}))
    assert summary.entries == 8 and len(SegmentationCache(out)) == 8


def test_foreign_files_are_rejected_clearly(tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle["x"] = np.zeros(3)
    with pytest.raises(IncompatibleInputError, match="not an advseg segmentation cache"):
        SegmentationCache(other)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(IncompatibleInputError, match="not an HDF5 file"):
        SegmentationCache(text)
    with pytest.raises(AdvsegError, match="no such segmentation cache"):
        SegmentationCache(tmp_path / "absent.h5")


def test_dataset_refuses_keys_without_maps(crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps.h5"
    build_segcache(crops, out, CONFIG)
    with pytest.raises(IncompatibleInputError, match="no map for 1 photos"):
        SegmentationCacheDataset(out, keys=["crop_00.jpg", "absent.jpg"])
