"""The ``advseg segcache`` command group: routing, info, verify, preview, merge, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from advseg_cli.cli import main
from advseg_cli.commands.segcache import cmd
from advseg_cli.images import read_rgb
from advseg_cli.segcache import ENTRIES, SCHEMA_VERSION, SegmentationCache, entry_name, preview_path, resize_rgb
from advseg_cli.segmentation.classes import CLASS_NAMES, NUM_CLASSES
from advseg_cli.segmentation.maps import palette
from tests.segcache.conftest import make_crops

if "segcache" not in main.commands:  # until the lead registers it in cli.py
    main.add_command(cmd, "segcache")

BUILD_OPTIONS = ["--backend", "test-color", "--device", "cpu", "--workers", "0", "--quiet"]


def advseg(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def built(crops: Path, tmp_path: Path) -> Path:
    out = tmp_path / "maps.h5"
    code, stdout, _ = advseg("segcache", crops, out, *BUILD_OPTIONS)
    assert code == 0 and f"8 segmented, 0 already cached -> {out} (8 entries)" in stdout
    return out


def test_first_argument_that_is_no_subcommand_means_build(crops: Path, tmp_path: Path, built: Path) -> None:
    code, stdout, _ = advseg("segcache", crops, built, *BUILD_OPTIONS)
    assert code == 0 and "0 segmented, 8 already cached" in stdout
    code, stdout, _ = advseg("segcache", "build", crops, tmp_path / "explicit.h5", *BUILD_OPTIONS)
    assert code == 0 and "8 segmented" in stdout
    code, stdout, _ = advseg("segcache", "--backend", "test-color", "--device", "cpu", "--workers", "0",
                             crops, tmp_path / "options-first.h5")
    assert code == 0 and "8 segmented" in stdout
    code, stdout, _ = advseg("segcache", "--help")
    assert code == 0 and all(name in stdout for name in ("build", "info", "verify", "preview", "merge"))


def test_info_reports_provenance_and_the_true_class_histogram(built: Path) -> None:
    with SegmentationCache(built) as cache:
        histogram = sum(np.bincount(cache.labels(k).ravel(), minlength=NUM_CLASSES) for k in cache.keys())
    order = np.argsort(-histogram, kind="stable")
    code, stdout, _ = advseg("segcache", "info", built, "--top", "3")
    assert code == 0
    assert "entries:   8" in stdout and "backend:   test-color" in stdout and "color-thresholds-v1" in stdout
    assert "weights:   sha256 - (none)" in stdout and "photo's own size, longer side <= 1024" in stdout
    top_line = stdout.splitlines()[stdout.splitlines().index("top 3 classes by pixel share:") + 1]
    assert top_line.split()[:2] == [str(order[0]), CLASS_NAMES[order[0]]]
    assert float(top_line.split()[-2]) == pytest.approx(100 * histogram[order[0]] / histogram.sum(), abs=0.01)

    code, stdout, _ = advseg("segcache", "info", built, "--json", "--top", "200")
    report = json.loads(stdout)
    assert report["entries"] == 8 and report["schema_version"] == SCHEMA_VERSION
    assert report["pixels"] == histogram.sum()
    shares = {item["label"]: item["share"] for item in report["top_classes"]}
    assert set(shares) == set(np.flatnonzero(histogram).tolist())  # only classes that occur
    for label, share in shares.items():
        assert share == pytest.approx(histogram[label] / histogram.sum())


def test_verify_reports_missing_stale_and_corrupt_and_exits_1(crops: Path, tmp_path: Path, built: Path) -> None:
    code, stdout, _ = advseg("segcache", "verify", crops, built)
    assert code == 0 and "verify: ok: 8 photos, 0 missing, 0 stale, 0 corrupt" in stdout

    make_crops(tmp_path / "more", 10)
    (tmp_path / "more" / "crop_08.jpg").rename(crops / "crop_08.jpg")  # missing
    Image.open(crops / "crop_01.jpg").rotate(90).save(crops / "crop_01.jpg", quality=92)  # stale
    with h5py.File(built, "r+") as handle:  # corrupt: garble the compressed bytes of one map
        chunk = handle[ENTRIES][entry_name("crop_02.jpg")].id.get_chunk_info(0)
    with open(built, "r+b") as raw:
        raw.seek(chunk.byte_offset)
        raw.write(bytes(range(256))[: chunk.size])
    with h5py.File(built, "r+") as handle:  # corrupt: a label outside the layout
        handle[ENTRIES][entry_name("crop_03.jpg")][0, 0] = 200

    code, stdout, _ = advseg("segcache", "verify", crops, built)
    assert code == 1
    lines = stdout.splitlines()
    assert lines[lines.index("missing (1):") + 1] == "  crop_08.jpg"
    assert lines[lines.index("stale (1):") + 1] == "  crop_01.jpg"
    corrupt = lines[lines.index("corrupt (2):") + 1: lines.index("corrupt (2):") + 3]
    assert corrupt[0].startswith("  crop_02.jpg: unreadable")
    assert corrupt[1] == "  crop_03.jpg: label 200 outside 0..134"
    assert "verify: PROBLEMS: 9 photos, 1 missing, 1 stale, 2 corrupt" in stdout


def test_preview_colors_are_the_palette_and_blend_over_photos(crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps.h5"
    assert advseg("segcache", crops, out, *BUILD_OPTIONS, "--square", "40")[0] == 0
    code, stdout, _ = advseg("segcache", "preview", out, tmp_path / "plain")
    assert code == 0 and "8 PNGs" in stdout
    colors = palette()
    with SegmentationCache(out) as cache:
        for key in cache.keys():
            png = np.asarray(Image.open(preview_path(tmp_path / "plain", key)))
            np.testing.assert_array_equal(png, colors[cache.labels(key)])

    code, _, _ = advseg("segcache", "preview", out, tmp_path / "over", "--photos", crops, "--alpha", "0.25",
                        "--limit", "3")
    assert code == 0
    written = sorted(p.relative_to(tmp_path / "over").as_posix() for p in (tmp_path / "over").rglob("*.png"))
    with SegmentationCache(out) as cache:
        assert written == sorted(f"{key}.png" for key in cache.keys()[:3])
        for key in cache.keys()[:3]:
            png = np.asarray(Image.open(preview_path(tmp_path / "over", key))).astype(np.float64)
            photo = resize_rgb(read_rgb(crops / key), (40, 40)).astype(np.float64)
            expected = np.round(0.75 * photo + 0.25 * colors[cache.labels(key)])
            assert np.abs(png - expected).max() <= 1  # float32 rounding in the blend


def test_sharded_builds_merge_through_the_cli(crops: Path, tmp_path: Path, built: Path) -> None:
    out = tmp_path / "parts.h5"
    for index in range(2):
        code, stdout, _ = advseg("segcache", crops, out, *BUILD_OPTIONS, "--shard", f"{index}/2")
        assert code == 0 and f"parts.shard-{index}-of-2.h5 (4 entries)" in stdout
    shards = [tmp_path / f"parts.shard-{index}-of-2.h5" for index in range(2)]
    code, stdout, _ = advseg("segcache", "merge", out, *shards)
    assert code == 0 and "8 entries added from 2 files" in stdout
    with SegmentationCache(out) as merged, SegmentationCache(built) as whole:
        assert merged.keys() == whole.keys()
        for key in whole.keys():
            np.testing.assert_array_equal(merged.labels(key), whole.labels(key))


def test_user_mistakes_are_one_line_with_exit_2(crops: Path, tmp_path: Path, built: Path) -> None:
    with h5py.File(built, "r+") as handle:
        handle.attrs["schema_version"] = 99
    code, _, stderr = advseg("segcache", "info", built)
    assert code == 2 and stderr.count("\n") == 1
    assert stderr.startswith("advseg segcache: error:") and "schema version 99" in stderr and "--overwrite" in stderr
    code, _, stderr = advseg("segcache", crops, tmp_path / "x.h5", "--backend", "no-such", "--device", "cpu")
    assert code == 2 and "unknown segmentation backend 'no-such'" in stderr and "mask2former" in stderr
    code, _, stderr = advseg("segcache", crops, tmp_path / "x.h5", *BUILD_OPTIONS, "--size", "9", "--square", "9")
    assert code == 2 and "--size and --square exclude each other" in stderr


@pytest.mark.usefixtures("without_detectron2")
def test_default_backend_without_detectron2_names_the_other_backend(crops: Path, tmp_path: Path) -> None:
    code, _, stderr = advseg("segcache", crops, tmp_path / "x.h5", "--device", "cpu")
    assert code == 2 and stderr.count("\n") == 1
    assert "needs detectron2" in stderr and "--backend mask2former" in stderr and "install" in stderr
    assert not (tmp_path / "x.h5").exists()
