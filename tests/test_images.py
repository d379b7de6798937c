"""Robust image reading: every format and mode of DESIGN.md, and a clear per-file error otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from advseg_cli.errors import AdvsegError, ImageDecodeError
from advseg_cli.files import atomic_path, is_temporary, remove_stale_temporaries
from advseg_cli.images import image_size, is_valid_png, list_images, read_gray, read_rgb, write_png
from tests.bad_inputs import EXPECTED_DECODABLE, write_bad_inputs
from tests.helpers import photo


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bad_inputs(tmp_path_factory.mktemp("mixed"))


@pytest.mark.parametrize("name", sorted(EXPECTED_DECODABLE))
def test_each_file_decodes_or_fails_with_a_reason(mixed: Path, name: str) -> None:
    if EXPECTED_DECODABLE[name]:
        rgb = read_rgb(mixed / name)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    else:
        with pytest.raises(ImageDecodeError) as info:
            read_rgb(mixed / name)
        assert name in str(info.value) and info.value.reason


def test_sixteen_bit_png_is_scaled_not_truncated(mixed: Path) -> None:
    expected = photo("coffee", 48)[:, :, 1]
    rgb = read_rgb(mixed / "gray16.png")
    assert np.array_equal(rgb[:, :, 0], expected)  # v*257/257 == v exactly; truncation (>>8) would differ
    assert np.abs(read_rgb(mixed / "rgb16.png").astype(int) - photo("rocket", 48)).max() <= 1


def test_transparency_is_composited_on_white(mixed: Path) -> None:
    rgb = read_rgb(mixed / "rgba.png").astype(int)
    source = photo("chelsea", 48).astype(int)
    expected = np.round(source * 128 / 255 + 255 * (1 - 128 / 255))
    assert np.abs(rgb - expected).max() <= 1


def photo_with_orientation(path: Path, orientation: int) -> Path:
    """A 13x21 crop of a real photo (no symmetry: every flip and turn changes it) stored with this EXIF
    orientation; the suffix picks PNG (lossless, eXIf chunk) or JPEG (APP1, where cameras put it)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(photo("astronaut", 48)[5:18, 9:30]).save(path, exif=exif.tobytes(), quality=95)
    return path


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_pillows_exif_transpose(tmp_path: Path, orientation: int, suffix: str) -> None:
    """All eight orientations (the mirrored 2, 4, 5, 7 too), pixel for pixel, against Pillow's own
    ``ImageOps.exif_transpose`` of the same file; the header-only size agrees with the decoded one."""
    path = photo_with_orientation(tmp_path / f"o{orientation}{suffix}", orientation)
    with Image.open(path) as stored:
        assert stored.getexif().get(0x0112) == orientation  # the tag really is in the file
        as_stored = np.asarray(stored.convert("RGB"))
        expected = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))
    assert (orientation == 1) == (expected.shape == as_stored.shape and np.array_equal(expected, as_stored))
    rgb = read_rgb(path)
    assert rgb.shape == expected.shape and np.array_equal(rgb, expected), f"orientation {orientation}"
    assert image_size(path) == (rgb.shape[1], rgb.shape[0])


def test_cmyk_and_palette_look_like_the_photo(mixed: Path) -> None:
    source = photo("chelsea", 48).astype(float)
    for name in ("cmyk.jpg", "palette.gif"):
        assert np.abs(read_rgb(mixed / name) - source).mean() < 12


def test_list_images_is_sorted_recursive_and_ignores_hidden(tmp_path: Path) -> None:
    for relative in ("b.png", "a/c.jpg", ".hidden/d.png", "notes.txt", "a/.e.png"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    assert [p.as_posix() for p in list_images(tmp_path)] == ["a/c.jpg", "b.png"]


def test_list_images_of_a_missing_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(AdvsegError, match="no such folder"):
        list_images(tmp_path / "nope")


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_png_round_trip_and_validity_check(tmp_path: Path) -> None:
    gray = photo("camera", 32)[:, :, 0]
    write_png(tmp_path / "g.png", gray)
    assert np.array_equal(read_gray(tmp_path / "g.png"), gray)
    assert is_valid_png(tmp_path / "g.png", "L") and not is_valid_png(tmp_path / "g.png", "RGB")
    data = (tmp_path / "g.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert not is_valid_png(tmp_path / "cut.png")


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / ".x.tmp-999999999-abcd.png"  # no such pid
    alive = tmp_path / f".y.tmp-{__import__('os').getpid()}-abcd.png"
    dead.write_bytes(b"1")
    alive.write_bytes(b"1")
    assert is_temporary(dead)
    assert remove_stale_temporaries(tmp_path) == 1
    assert not dead.exists() and alive.exists()
