"""The build stage: resume, staleness, refusal of other settings, bad inputs, batching, shards + merge."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from advseg_cli.errors import AdvsegError, AllInputsFailedError, IncompatibleInputError
from advseg_cli.segcache import (
    ENTRIES,
    SegcacheConfig,
    SegmentationCache,
    build_segcache,
    entry_name,
    exclusive_writer_lock,
    merge_segcaches,
    shard_output_path,
    verify_segcache,
)
from tests.bad_inputs import EXPECTED_DECODABLE, write_bad_inputs
from tests.segcache.conftest import make_crops

CONFIG = SegcacheConfig(backend="test-color", device="cpu", batch_size=4, workers=0)


def config(**changes: object) -> SegcacheConfig:
    return dataclasses.replace(CONFIG, **changes)


def all_maps(path: Path) -> dict[str, np.ndarray]:
    with SegmentationCache(path) as cache:
        return {key: cache.labels(key) for key in cache.keys()}


def entry_attrs(path: Path) -> dict[str, dict]:
    with h5py.File(path, "r") as handle:
        return {name: dict(ds.attrs) for name, ds in handle[ENTRIES].items()}


def test_rerun_adds_only_missing_entries(crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps.h5"
    build_segcache(crops, out, config())
    first = all_maps(out)
    (crops / "crop_00.jpg").rename(tmp_path / "aside.jpg")  # the cache keeps its map
    make_crops(tmp_path / "more", 10)
    (tmp_path / "more" / "crop_08.jpg").rename(crops / "crop_08.jpg")  # one new photo

    summary = build_segcache(crops, out, config())
    assert (summary.done, summary.skipped, summary.failed) == (1, 7, 0)
    assert summary.entries == 9  # the entry of the photo set aside is kept
    second = all_maps(out)
    assert set(second) == set(first) | {"crop_08.jpg"}
    for key in first:
        np.testing.assert_array_equal(second[key], first[key])
    record = json.loads(summary.record.read_text())
    assert record["stage"] == "segcache" and record["status"] == "complete"
    assert record["counts"] == {"done": 1, "skipped": 7, "failed": 0}


def test_a_map_without_its_photo_is_stale_and_still_checked(crops: Path, tmp_path: Path) -> None:
    """A key the cache lacks is stale; the map of a removed photo is reported as extra, and a damaged one as
    corrupt too (verify reads every map it holds, not only those of the photos still there)."""
    out = tmp_path / "maps.h5"
    build_segcache(crops, out, config())
    with SegmentationCache(out) as cache:
        assert cache.is_stale("never-cached.jpg", crops / "crop_01.jpg")
    (crops / "crop_03.jpg").unlink()
    assert verify_segcache(crops, out).extra == ["crop_03.jpg"] and verify_segcache(crops, out).ok
    with h5py.File(out, "r+") as handle:
        handle[ENTRIES][entry_name("crop_03.jpg")][0, 0] = 200
    report = verify_segcache(crops, out)
    assert report.extra == ["crop_03.jpg"] and report.corrupt == [("crop_03.jpg", "label 200 outside 0..134")]
    assert not report.ok


def test_changed_photo_is_stale_and_only_it_is_redone(crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps.h5"
    build_segcache(crops, out, config())
    before, attrs_before = all_maps(out), entry_attrs(out)
    changed = crops / "crop_01.jpg"
    flipped = np.asarray(Image.open(changed))[:, ::-1, [2, 1, 0]]  # other content, same size
    Image.fromarray(np.ascontiguousarray(flipped)).save(changed, quality=92)

    with SegmentationCache(out) as cache:
        assert cache.is_stale("crop_01.jpg", changed)
        assert not cache.is_stale("crop_02.jpg", crops / "crop_02.jpg")
    report = verify_segcache(crops, out)
    assert report.stale == ["crop_01.jpg"] and not report.ok

    summary = build_segcache(crops, out, config())
    assert (summary.done, summary.skipped) == (1, 7)
    assert json.loads(summary.record.read_text())["extra"]["stale"] == ["crop_01.jpg"]
    after, attrs_after = all_maps(out), entry_attrs(out)
    assert not np.array_equal(after["crop_01.jpg"], before["crop_01.jpg"])
    name = entry_name("crop_01.jpg")
    assert attrs_after[name]["source_sha256"] != attrs_before[name]["source_sha256"]
    for key in before.keys() - {"crop_01.jpg"}:
        np.testing.assert_array_equal(after[key], before[key])
        assert attrs_after[entry_name(key)] == attrs_before[entry_name(key)]
    assert verify_segcache(crops, out).ok


def test_cache_of_other_weights_or_policy_is_refused_unless_overwrite(crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps.h5"
    build_segcache(crops, out, config())
    weights = tmp_path / "gray.json"
    weights.write_text(json.dumps({"gray": 0.5}))
    with pytest.raises(IncompatibleInputError, match=r"weights_sha256: '' -> '[0-9a-f]+.*--overwrite"):
        build_segcache(crops, out, config(weights=weights))
    with pytest.raises(IncompatibleInputError, match="resize_policy: photo's own size.*square 32x32"):
        build_segcache(crops, out, config(square=32))
    both = (rf"^{re.escape(str(out))}: made with other settings \(weights_sha256: [^;]+; thresholds: [^;]+; "
            r"resize_policy: [^;]+\); use another OUT\.h5 or --overwrite$")
    with pytest.raises(IncompatibleInputError, match=both):  # every difference named, then the two ways out
        build_segcache(crops, out, config(weights=weights, square=32))
    summary = build_segcache(crops, out, config(weights=weights, overwrite=True))
    assert summary.done == 8
    with SegmentationCache(out) as cache:
        assert len(cache.metadata.weights_sha256) == 64 and cache.metadata.thresholds == {"gray": 0.5}
    assert json.loads(summary.record.read_text())["weights"][0]["sha256"] == cache.metadata.weights_sha256


def test_undecodable_photos_are_reported_and_never_cached(tmp_path: Path) -> None:
    photos = write_bad_inputs(tmp_path / "photos")
    out = tmp_path / "maps.h5"
    summary = build_segcache(photos, out, config(workers=2))
    good = {name for name, ok in EXPECTED_DECODABLE.items() if ok}
    bad = set(EXPECTED_DECODABLE) - good
    assert set(SegmentationCache(out).keys()) == good
    record = json.loads(summary.record.read_text())
    assert {failure["input"] for failure in record["failures"]} == bad
    assert all(failure["reason"] for failure in record["failures"])
    assert (summary.done, summary.failed) == (len(good), len(bad))
    report = verify_segcache(photos, out)  # undecodable photos are listed, but are no problem
    assert report.ok and {key for key, _ in report.undecodable} == bad
    again = build_segcache(photos, out, config())  # they are tried again, and reported again
    assert (again.done, again.skipped, again.failed) == (0, len(good), len(bad))


def test_all_inputs_failing_is_an_error(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "text.png").write_text("not an image")
    with pytest.raises(AllInputsFailedError, match="all 2 inputs failed"):
        build_segcache(photos, tmp_path / "maps.h5", config())
    assert len(SegmentationCache(tmp_path / "maps.h5")) == 0


def test_batching_does_not_change_the_maps(tmp_path: Path) -> None:
    photos = make_crops(tmp_path / "photos", 9)
    single = build_segcache(photos, tmp_path / "single.h5", config(batch_size=1))
    batched = build_segcache(photos, tmp_path / "batched.h5", config(batch_size=3, workers=2))
    assert single.done == batched.done == 9
    one, many = all_maps(single.out), all_maps(batched.out)
    assert one.keys() == many.keys()
    for key in one:
        np.testing.assert_array_equal(one[key], many[key])
    assert entry_attrs(single.out) == entry_attrs(batched.out)


def test_shards_then_merge_equal_a_single_run(tmp_path: Path) -> None:
    photos = make_crops(tmp_path / "photos", 10)
    whole = build_segcache(photos, tmp_path / "whole.h5", config())
    shard_files = []
    for index in range(3):
        summary = build_segcache(photos, tmp_path / "maps.h5", config(shard=(index, 3)))
        assert summary.out == tmp_path / f"maps.shard-{index}-of-3.h5"
        assert summary.record == tmp_path / f"maps.shard-{index}-of-3.h5.run.json"
        shard_files.append(summary.out)
    assert [len(SegmentationCache(f)) for f in shard_files] == [4, 3, 3]
    merged = merge_segcaches(tmp_path / "maps.h5", shard_files)
    assert (merged.added, merged.duplicates, merged.entries) == (10, 0, 10)
    expected, got = all_maps(whole.out), all_maps(tmp_path / "maps.h5")
    assert expected.keys() == got.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    assert entry_attrs(whole.out) == entry_attrs(tmp_path / "maps.h5")
    assert SegmentationCache(whole.out).metadata == SegmentationCache(tmp_path / "maps.h5").metadata
    again = merge_segcaches(tmp_path / "maps.h5", shard_files[:1])  # merging again adds nothing
    assert (again.added, again.duplicates, again.entries) == (0, 4, 10)


def test_shard_output_names() -> None:
    assert shard_output_path(Path("d/maps.h5"), (0, 1)) == Path("d/maps.h5")
    assert shard_output_path(Path("d/maps.h5"), (2, 4)) == Path("d/maps.shard-2-of-4.h5")
    assert shard_output_path(Path("d/maps.shard-2-of-4.h5"), (2, 4)) == Path("d/maps.shard-2-of-4.h5")


def test_merge_refuses_shards_of_other_settings_and_conflicting_photos(tmp_path: Path) -> None:
    photos = make_crops(tmp_path / "photos", 4)
    a = build_segcache(photos, tmp_path / "a.h5", config()).out
    b = build_segcache(photos, tmp_path / "b.h5", config(square=32)).out
    with pytest.raises(IncompatibleInputError, match=r"b\.h5 was made with other settings.*resize_policy"):
        merge_segcaches(tmp_path / "m.h5", [a, b])
    assert not (tmp_path / "m.h5").exists()
    Image.open(photos / "crop_00.jpg").rotate(180).save(photos / "crop_00.jpg", quality=92)
    c = build_segcache(photos, tmp_path / "c.h5", config()).out
    with pytest.raises(IncompatibleInputError, match="crop_00.jpg has different photo contents"):
        merge_segcaches(tmp_path / "m2.h5", [a, c])
    with pytest.raises(AdvsegError, match="also one of the shards"):
        merge_segcaches(a, [a])


def test_out_must_name_an_h5_file(crops: Path, tmp_path: Path) -> None:
    with pytest.raises(AdvsegError, match=r"\.h5 suffix"):
        build_segcache(crops, tmp_path / "maps", config())
    (tmp_path / "folder.h5").mkdir()
    with pytest.raises(AdvsegError, match="is a folder"):
        build_segcache(crops, tmp_path / "folder.h5", config())


def test_no_work_copies_or_locks_are_left_behind(crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps.h5"
    build_segcache(crops, out, config(commit_every=0, batch_size=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.h5", "maps.h5.run.json", "photos"]
    assert json.loads((tmp_path / "maps.h5.run.json").read_text())["extra"]["commits"] >= 8


def test_a_second_writer_of_the_same_cache_is_refused(crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps.h5"
    other = build_segcache(crops, tmp_path / "other.h5", config()).out
    with exclusive_writer_lock(out):  # as if another process were building this cache
        with pytest.raises(AdvsegError, match="another advseg process is writing this cache"):
            build_segcache(crops, out, config())
        with pytest.raises(AdvsegError, match="another advseg process"):
            merge_segcaches(out, [other])
    assert build_segcache(crops, out, config()).done == 8  # released: the next run goes ahead
