"""`advseg data prepare`: lists, selection rules, fetching from a local host, user folders."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advseg_cli.datasets import catalog
from advseg_cli.datasets.catalog import Archive, DatasetSpec
from advseg_cli.datasets.lists import read_list
from advseg_cli.datasets.prepare import DATA_RECORD, PrepareConfig, prepare_dataset
from advseg_cli.datasets.selection import CocoRule, SceneRule, select_coco, select_scenes
from tests.datasets.fixture_server import closed_port_url, serve
from tests.datasets.kit import build_mirror, write_lists
from advseg_cli.segcache import SegmentationCache
from tests.helpers import invoke_advseg, photo, requires_hed_weights

FETCH = PrepareConfig(steps=("fetch",), quiet=True)


@pytest.fixture()
def coco_host(tmp_path: Path):
    entries = build_mirror(tmp_path / "host")
    lists = write_lists(tmp_path / "lists", "elephant", entries)
    with serve(tmp_path / "host") as server:
        yield server, lists, entries


def fetch_config(server, lists: Path) -> PrepareConfig:
    return PrepareConfig(steps=("fetch",), lists=lists, mirror=server.url, quiet=True)


def test_fetch_puts_every_listed_photo_in_place_and_a_rerun_downloads_nothing(coco_host, tmp_path: Path) -> None:
    server, lists, entries = coco_host
    summary = prepare_dataset("elephant", tmp_path / "data", fetch_config(server, lists))
    folder = tmp_path / "data" / "elephant"
    assert summary.counts["trainB"] == 4 and summary.counts["testB"] == 3
    for entry in entries:
        assert hashlib.sha256((folder / f"{entry.split}B" / entry.file).read_bytes()).hexdigest() == entry.sha256
    record = json.loads((folder / DATA_RECORD).read_text())
    assert record["status"] == "complete" and record["counts"]["done"] == 7
    served = len(server.requests)
    prepare_dataset("elephant", tmp_path / "data", fetch_config(server, lists))
    assert len(server.requests) == served  # everything verified in place
    assert json.loads((folder / DATA_RECORD).read_text())["counts"]["skipped"] == 7


def test_truncated_and_corrupt_photos_are_fetched_again(coco_host, tmp_path: Path) -> None:
    server, lists, entries = coco_host
    first, second = entries[0].source, entries[4].source
    server.fail_next(first, "truncate")
    server.fail_next(second, "corrupt")
    prepare_dataset("elephant", tmp_path / "data", fetch_config(server, lists))
    folder = tmp_path / "data" / "elephant"
    assert server.requests_of(first)[1] is not None  # resumed with a Range request
    assert len(server.requests_of(second)) == 2
    for entry in (entries[0], entries[4]):
        assert hashlib.sha256((folder / f"{entry.split}B" / entry.file).read_bytes()).hexdigest() == entry.sha256


def test_a_photo_the_host_lacks_is_reported_and_the_rest_fetched(coco_host, tmp_path: Path) -> None:
    server, lists, entries = coco_host
    server.fail_next(entries[1].source, "missing")
    result = invoke_advseg("data", "prepare", "elephant", str(tmp_path / "data"), "--steps", "fetch",
                           "--lists", str(lists), "--mirror", server.url, "--quiet")
    assert result.returncode == 0, result.stderr
    assert "1 failed" in result.stdout
    record = json.loads((tmp_path / "data" / "elephant" / DATA_RECORD).read_text())
    assert record["status"] == "complete-with-failures"
    assert record["failures"][0]["input"] == f"train/{entries[1].file}" and "404" in record["failures"][0]["reason"]


def test_a_host_that_is_down_is_one_line_exit_2_and_nothing_looks_complete(coco_host, tmp_path: Path) -> None:
    _, lists, _ = coco_host
    result = invoke_advseg("data", "prepare", "elephant", str(tmp_path / "data"), "--steps", "fetch",
                           "--lists", str(lists), "--mirror", closed_port_url(), "--quiet")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "cannot reach 127.0.0.1" in result.stderr
    folder = tmp_path / "data" / "elephant"
    assert not (folder / DATA_RECORD).exists()
    assert [p for p in folder.rglob("*") if p.is_file()] == []


def test_coco_rule_keeps_photos_the_category_fills_without_crowds() -> None:
    instances = {
        "categories": [{"id": 22, "name": "elephant"}, {"id": 1, "name": "person"}],
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": 100, "height": 100} for i in (5, 3, 9, 7)],
        "annotations": [
            {"image_id": 3, "category_id": 22, "area": 600.0, "iscrowd": 0},
            {"image_id": 3, "category_id": 22, "area": 500.0, "iscrowd": 0},  # 11 % together: kept
            {"image_id": 5, "category_id": 22, "area": 900.0, "iscrowd": 0},  # 9 %: too small
            {"image_id": 7, "category_id": 22, "area": 5000.0, "iscrowd": 0},
            {"image_id": 7, "category_id": 22, "area": 800.0, "iscrowd": 1},  # a crowd: dropped
            {"image_id": 9, "category_id": 1, "area": 9000.0, "iscrowd": 0},  # no elephant
        ]}
    entries = select_coco(instances, CocoRule("elephant", 0.10), "train", "train2017")
    assert [(e.file, e.source) for e in entries] == [("000000000003.jpg", "train2017/000000000003.jpg")]


def _ade_archive(path: Path) -> dict[str, bytes]:
    """A miniature ADEChallengeData2016.zip: three bedrooms among other scenes, and the scene list."""
    scenes = {"ADE_train_00000001": "bathroom", "ADE_train_00000002": "bedroom", "ADE_train_00000003": "bedroom",
              "ADE_val_00000001": "bedroom", "ADE_val_00000002": "kitchen"}
    photos = {}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ADEChallengeData2016/sceneCategories.txt",
                         "".join(f"{name} {scene}\n" for name, scene in scenes.items()))
        for index, name in enumerate(scenes):
            folder = "training" if "train" in name else "validation"
            buffer = io.BytesIO()
            Image.fromarray(photo(("astronaut", "chelsea", "coffee", "rocket", "astronaut")[index], 48)).save(
                buffer, "JPEG")
            photos[name] = buffer.getvalue()
            archive.writestr(f"ADEChallengeData2016/images/{folder}/{name}.jpg", photos[name])
    return photos


def test_bedroom_list_comes_from_the_verified_archive_and_only_bedrooms_are_extracted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = tmp_path / "host" / "places" / "ADEchallenge"
    host.mkdir(parents=True)
    photos = _ade_archive(host / "ADEChallengeData2016.zip")
    digest = hashlib.sha1((host / "ADEChallengeData2016.zip").read_bytes()).hexdigest()
    archive = Archive("http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
                      "ADEChallengeData2016.zip", sha1=digest)
    spec = DatasetSpec("bedroom", "ADE20K bedroom scenes", "archive", "1355 / 135", rule=SceneRule("bedroom"),
                       metadata=archive)
    monkeypatch.setitem(catalog.DATASETS, "bedroom", spec)
    monkeypatch.setattr(catalog, "SHIPPED_LISTS", tmp_path / "no-shipped-lists")
    with serve(tmp_path / "host") as server:
        server.fail_next("places/ADEchallenge/ADEChallengeData2016.zip", "truncate")
        prepare_dataset("bedroom", tmp_path / "data", PrepareConfig(steps=("fetch",), mirror=server.url, quiet=True))
    folder = tmp_path / "data" / "bedroom"
    assert sorted(p.name for p in (folder / "trainB").iterdir()) == ["ADE_train_00000002.jpg", "ADE_train_00000003.jpg"]
    assert sorted(p.name for p in (folder / "testB").iterdir()) == ["ADE_val_00000001.jpg"]
    assert (folder / "trainB" / "ADE_train_00000002.jpg").read_bytes() == photos["ADE_train_00000002"]
    derived = read_list(folder / "list.tsv")
    assert [(e.split, e.file) for e in derived] == [("train", "ADE_train_00000002.jpg"),
                                                    ("train", "ADE_train_00000003.jpg"), ("test", "ADE_val_00000001.jpg")]
    assert "sceneCategories.txt label is 'bedroom'" in (folder / "list.tsv").read_text()


def test_an_archive_with_the_wrong_digest_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = tmp_path / "host" / "places" / "ADEchallenge"
    host.mkdir(parents=True)
    _ade_archive(host / "ADEChallengeData2016.zip")
    monkeypatch.setattr(catalog, "SHIPPED_LISTS", tmp_path / "no-shipped-lists")
    with serve(tmp_path / "host") as server:
        result = invoke_advseg("data", "prepare", "bedroom", str(tmp_path / "data"), "--steps", "fetch",
                               "--mirror", server.url, "--quiet")
    assert result.returncode != 0
    assert "still not intact" in (result.stderr + result.stdout) and "sha1" in (result.stderr + result.stdout)
    assert not (tmp_path / "data" / "downloads" / "ADEChallengeData2016.zip").exists()


def test_scene_rule_splits_training_and_validation() -> None:
    lines = ["ADE_val_00000002 bedroom", "ADE_train_00000009 bedroom", "ADE_train_00000001 bedroom_x",
             "ADE_train_00000004 bedroom"]
    entries = select_scenes(lines, SceneRule("bedroom"))
    assert [(e.split, e.file) for e in entries] == [
        ("train", "ADE_train_00000004.jpg"), ("train", "ADE_train_00000009.jpg"), ("test", "ADE_val_00000002.jpg")]


def _write_photos(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        Image.fromarray(photo(("astronaut", "chelsea", "coffee", "rocket")[index % 4], 32)).save(folder / name)


def test_user_folders_keep_their_own_split_or_get_every_tenth_photo_as_test(tmp_path: Path) -> None:
    plain = tmp_path / "scheffler"
    _write_photos(plain, [f"page{i:02d}.png" for i in range(20)])
    prepare_dataset("illustration", tmp_path / "data", PrepareConfig(steps=("fetch",), source=plain, quiet=True))
    assert sorted(p.name for p in (tmp_path / "data" / "illustration" / "testB").iterdir()) == ["page09.png", "page19.png"]
    city = tmp_path / "cityscapes"
    _write_photos(city / "leftImg8bit" / "train" / "aachen", ["aachen_000000_000019_leftImg8bit.png"])
    _write_photos(city / "leftImg8bit" / "val" / "lindau", ["lindau_000000_000019_leftImg8bit.png"])
    prepare_dataset("cityscapes", tmp_path / "data", PrepareConfig(steps=("fetch",), source=city, quiet=True))
    assert [p.name for p in (tmp_path / "data" / "cityscapes" / "testB").iterdir()] == ["lindau_000000_000019_leftImg8bit.png"]


def test_user_datasets_without_source_say_where_to_request_them(tmp_path: Path) -> None:
    result = invoke_advseg("data", "prepare", "cityscapes", str(tmp_path / "data"))
    assert result.returncode == 2 and "cityscapes-dataset.com" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_freeze_writes_sizes_and_hashes_that_a_new_prepare_verifies(coco_host, tmp_path: Path) -> None:
    server, lists, entries = coco_host
    prepare_dataset("elephant", tmp_path / "data", fetch_config(server, lists))
    frozen = tmp_path / "frozen"
    result = invoke_advseg("data", "freeze", "elephant", str(tmp_path / "data"), "--out", str(frozen / "elephant.tsv"))
    assert result.returncode == 0, result.stderr
    assert [(e.file, e.size, e.sha256) for e in read_list(frozen / "elephant.tsv")] == \
        [(e.file, e.size, e.sha256) for e in entries]


@requires_hed_weights
def test_one_prepare_command_makes_the_whole_dataset_folder(coco_host, tmp_path: Path) -> None:
    from tests.segmentation.tiny_mask2former import save_tiny_mask2former

    server, lists, _ = coco_host
    seg = save_tiny_mask2former(tmp_path / "seg")
    result = invoke_advseg("data", "prepare", "elephant", str(tmp_path / "data"), "--lists", str(lists),
                           "--mirror", server.url, "--edges-size", "64", "--seg-backend", "mask2former",
                           "--seg-weights", str(seg), "--seg-square", "64", "--device", "cpu", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "trainA 4, trainB 4, testA 3, testB 3" in result.stdout
    folder = tmp_path / "data" / "elephant"
    for record in ("advseg-data.json", "trainA/advseg-run.json", "testA/advseg-run.json", "segmaps.h5.run.json"):
        assert json.loads((folder / record).read_text())["status"].startswith("complete"), record
    sketch = np.asarray(Image.open(folder / "trainA" / "000000000001.png"))
    assert sketch.shape == (64, 64) and set(np.unique(sketch)) <= {0, 255} and (sketch == 0).any()
    with SegmentationCache(folder / "segmaps.h5") as cache:
        assert sorted(cache.keys()) == sorted(p.name for p in (folder / "trainB").iterdir())
