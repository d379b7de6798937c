"""The shapes world: known scenes draw the right labels where they must, and a seed gives the same bytes."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from advseg_cli.cli import main
from advseg_cli.world.render import (STUFF, THINGS, WORLD_CLASS_IDS, Scene, Thing, class_id, render_scene,
                                     scene_for)
from advseg_cli.segcache import SegmentationCache
from advseg_cli.segmentation.classes import CLASS_NAMES, IS_STUFF, IS_THING
from tests.helpers import requires_hed_weights

SIZE = 96


def _at(labels: np.ndarray, x: float, y: float) -> str:
    """The class name at a point given in units of the side."""
    return CLASS_NAMES[int(labels[int(y * SIZE), int(x * SIZE)])]


def _scene(top: str, bottom: str, things: tuple[Thing, ...]) -> Scene:
    return Scene(SIZE, 0.5, top, bottom, (90, 150, 225), (60, 140, 50), things, texture_seed=3)


THING_AT = {  # kind -> (x, y): one object per quadrant, radius 0.14, unrotated
    "sports ball": (0.25, 0.25), "kite": (0.75, 0.25), "tv": (0.25, 0.75), "airplane": (0.75, 0.75)}
R = 0.14


def _things(rgb: tuple[int, int, int] = (200, 0, 0)) -> tuple[Thing, ...]:
    return tuple(Thing(kind, x, y, R, 0.0, rgb) for kind, (x, y) in THING_AT.items())


@pytest.mark.parametrize("top,bottom", [("sky-other-merged", "grass-merged"), ("wall-brick", "sand"),
                                        ("sky-other-merged", "sea")])
def test_a_known_scene_has_each_class_at_its_known_pixels(top: str, bottom: str) -> None:
    _, labels = render_scene(_scene(top, bottom, ()))
    assert _at(labels, 0.5, 0.1) == top and _at(labels, 0.5, 0.4) == top
    assert _at(labels, 0.5, 0.6) == bottom and _at(labels, 0.5, 0.95) == bottom
    _, labels = render_scene(_scene(top, bottom, _things()))
    for kind, (x, y) in THING_AT.items():
        assert _at(labels, x, y) == kind  # the centre
    # shape-specific points: inside one shape and outside another of the same extent
    ball_x, ball_y = THING_AT["sports ball"]
    assert _at(labels, ball_x + 0.6 * R, ball_y + 0.6 * R) == "sports ball"  # inside the disc (0.85 R)
    assert _at(labels, ball_x + 0.8 * R, ball_y + 0.8 * R) == top  # 1.13 R: outside the disc
    tv_x, tv_y = THING_AT["tv"]
    assert _at(labels, tv_x + 0.7 * R, tv_y + 0.7 * R) == "tv"  # the square's corner region (half side 0.8 R)
    assert _at(labels, tv_x + 0.9 * R, tv_y) == bottom
    kite_x, kite_y = THING_AT["kite"]
    assert _at(labels, kite_x, kite_y - 0.8 * R) == "kite"  # near the apex, which points up
    assert _at(labels, kite_x, kite_y + 0.7 * R) == top  # below the base (at +0.5 R)
    assert _at(labels, kite_x + 0.6 * R, kite_y - 0.6 * R) == top  # beside the apex
    plane_x, plane_y = THING_AT["airplane"]
    assert _at(labels, plane_x + 0.9 * R, plane_y) == "airplane"  # an arm of the cross
    assert _at(labels, plane_x + 0.7 * R, plane_y + 0.7 * R) == bottom  # between the arms


def test_every_world_class_is_in_the_135_layout_as_thing_or_stuff() -> None:
    assert all(IS_THING[class_id(cls.name)] for cls in THINGS)
    assert all(IS_STUFF[class_id(cls.name)] for cls in STUFF)
    assert len(set(WORLD_CLASS_IDS)) == len(THINGS) + len(STUFF)


def test_rotation_turns_the_shape_around_its_centre() -> None:
    square = Thing("tv", 0.5, 0.5, 0.3, math.pi / 4, (0, 0, 0))
    _, labels = render_scene(_scene("sky-other-merged", "sea", (square,)))
    assert _at(labels, 0.5 + 0.3, 0.5) == "tv"  # a rotated square's corner lies on the axis (0.8 R sqrt 2)
    assert _at(labels, 0.5 + 0.2, 0.5 + 0.2) != "tv"  # and its former corner is outside


def test_photos_are_antialiased_and_things_take_their_colour() -> None:
    photo, labels = render_scene(_scene("sky-other-merged", "grass-merged", _things((250, 10, 10))))
    ball = labels == class_id("sports ball")
    inner = np.zeros_like(ball)
    x, y = (int(v * SIZE) for v in THING_AT["sports ball"])
    inner[y - 3:y + 4, x - 3:x + 4] = True
    assert photo[inner][:, 0].min() > 200 and photo[inner][:, 1].max() < 30  # red, shaded
    edge_row = photo[y, x + int(R * SIZE) - 2:x + int(R * SIZE) + 3, 0]  # across the disc's right edge
    assert len(set(edge_row.tolist())) >= 3  # intermediate values: the 2x render was box-filtered


def test_scenes_depend_on_seed_split_and_index_only() -> None:
    assert scene_for(0, "train", 5, 64) == scene_for(0, "train", 5, 64)
    assert scene_for(0, "train", 5, 64) != scene_for(1, "train", 5, 64)
    assert scene_for(0, "train", 5, 64) != scene_for(0, "test", 5, 64)
    assert scene_for(0, "seg-train", 0, 64) != scene_for(0, "train", 0, 64)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def _truth(folder: Path) -> dict[str, bytes]:
    out = {}
    for split in ("trainB", "testB"):
        with SegmentationCache(folder / "truth" / f"{split}.h5") as cache:
            out.update({f"{split}/{key}": cache.labels(key).tobytes() for key in cache.keys()})
    return out


def _prepare(root: Path, seed: int) -> None:
    result = CliRunner().invoke(main, ["data", "prepare", "shapes", str(root), "--steps", "fetch,edges",
                                       "--seed", str(seed), "--world-train", "3", "--world-test", "2",
                                       "--world-size", "64", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output


@requires_hed_weights
def test_the_same_seed_gives_byte_identical_photos_truth_and_sketches(tmp_path: Path) -> None:
    _prepare(tmp_path / "a", 7)
    _prepare(tmp_path / "b", 7)
    _prepare(tmp_path / "c", 8)
    a, b, c = (tmp_path / name / "shapes" for name in "abc")
    files_a = _files(a)
    assert {name.split("/")[0] for name in files_a} == {"trainA", "trainB", "testA", "testB", "truth"}
    assert len([n for n in files_a if n.startswith("trainA/")]) == 3
    assert files_a == _files(b) and _truth(a) == _truth(b)
    assert len([n for n in files_a if n.startswith("truth/labels/trainB/")]) == 3  # truth as 8-bit PNGs, compared
    assert _files(c)["trainB/00000.png"] != files_a["trainB/00000.png"]
    with h5py.File(a / "truth" / "trainB.h5") as handle:
        assert handle.attrs["backend"] == "ground-truth"


def test_truth_matches_the_rendering_of_each_scene(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["data", "prepare", "shapes", str(tmp_path), "--steps", "fetch", "--seed", "3",
                                       "--world-train", "2", "--world-test", "1", "--world-size", "64", "--quiet"])
    assert result.exit_code == 0, result.output
    from advseg_cli.images import read_rgb

    with SegmentationCache(tmp_path / "shapes" / "truth" / "trainB.h5") as cache:
        for index in range(2):
            photo, labels = render_scene(scene_for(3, "train", index, 64))
            assert np.array_equal(cache.labels(f"{index:05d}.png"), labels)
            label_png = tmp_path / "shapes" / "truth" / "labels" / "trainB" / f"{index:05d}.png"
            assert np.array_equal(np.asarray(Image.open(label_png)), labels)
            assert np.array_equal(read_rgb(tmp_path / "shapes" / "trainB" / f"{index:05d}.png"), photo)


def test_a_world_folder_rendered_with_other_settings_is_refused(tmp_path: Path) -> None:
    args = ["data", "prepare", "shapes", str(tmp_path), "--steps", "fetch", "--world-train", "2", "--world-test", "1",
            "--world-size", "64", "--quiet"]
    assert CliRunner().invoke(main, args).exit_code == 0
    refused = CliRunner().invoke(main, args[:-1] + ["--seed", "5", "--quiet"])
    assert refused.exit_code == 2 and "rendered with other settings" in refused.output


def test_the_seg_step_is_refused_for_a_dataset_without_its_own_seg(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["data", "prepare", "elephant", str(tmp_path), "--steps", "seg"])
    assert result.exit_code == 2 and "only a generated world" in result.output
    assert not any(tmp_path.iterdir())


def test_data_list_names_the_world() -> None:
    result = CliRunner().invoke(main, ["data", "list"])
    assert result.exit_code == 0 and "shapes" in result.output and "rendered here" in result.output
