"""Robust image reading: every format and mode of DESIGN.md, and a clear per-file error otherwise."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from advseg_cli.errors import AdvsegError, ImageDecodeError
from advseg_cli.files import atomic_path, is_temporary, remove_stale_temporaries
from advseg_cli.images import decode_rgb, image_size, is_valid_png, list_images, read_gray, read_rgb, write_png
from tests.bad_inputs import EXPECTED_DECODABLE, write_bad_inputs
from tests.helpers import photo


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bad_inputs(tmp_path_factory.mktemp("mixed"))


# the undecodable files of the mixed folder -> the start of the reason reported for them
REASONS = {"corrupt.jpg": "cannot decode image (", "empty.jpg": "empty file (0 bytes)",
           "text.png": "not an image Pillow can decode"}


@pytest.mark.parametrize("name", sorted(EXPECTED_DECODABLE))
def test_each_file_decodes_or_fails_with_a_reason(mixed: Path, name: str) -> None:
    if EXPECTED_DECODABLE[name]:
        rgb = read_rgb(mixed / name)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    else:
        with pytest.raises(ImageDecodeError) as info:
            read_rgb(mixed / name)
        assert info.value.path == mixed / name and info.value.reason.startswith(REASONS[name])
        assert str(info.value) == f"{mixed / name}: {info.value.reason}"


def test_unreadable_files_and_bare_bytes_are_reported_by_name(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError) as info:
        read_rgb(tmp_path / "gone.png")
    assert info.value.path == tmp_path / "gone.png"
    assert info.value.reason == "cannot read file (No such file or directory)"
    with pytest.raises(ImageDecodeError, match=r"^<bytes>: empty file \(0 bytes\)$"):
        decode_rgb(b"")
    assert image_size(tmp_path / "gone.png") == (0, 0)  # an unreadable header sorts first, decoding reports it


def png_header_only(width: int, height: int) -> bytes:
    """A gray PNG that claims ``width`` x ``height`` but holds one row of data: enough for Pillow's size check."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(width + 1)))
            + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_before_decoding() -> None:
    """100 M pixels: past Pillow's warning limit (89 M), which decoding turns into an error, never allocating."""
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_rgb(png_header_only(10_000, 10_000), "bomb.png")


def sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    """v / 257 rounded (ties cannot occur: 257 is odd), clamped to 0..255, in integer arithmetic."""
    return np.clip((values.astype(np.int64) + 128) // 257, 0, 255).astype(np.uint8)


def gray_rgb(values: object) -> np.ndarray:
    return np.repeat(np.asarray(values, np.uint8)[:, :, None], 3, axis=2)


SIXTEEN_BIT = np.array([[0, 128, 129, 385], [65535, 65407, 257 * 7 + 129, 1000]], np.uint16)
# file -> (stored array, Pillow mode of the stored array, the mode Pillow opens it in, expected RGB)
MODE_CASES = {
    "i16.png": (SIXTEEN_BIT, None, "I;16", gray_rgb(sixteen_to_eight(SIXTEEN_BIT))),
    "i16b.tif": (SIXTEEN_BIT.astype(">u2"), None, "I;16B", gray_rgb(sixteen_to_eight(SIXTEEN_BIT))),
    "i32.tif": (np.array([[-1000, 70000], [300, 65407]], np.int32), None, "I", gray_rgb([[0, 255], [1, 255]])),
    "f_unit.tif": (np.array([[0, 0.25], [0.6, 1.0]], np.float32), None, "F", gray_rgb([[0, 64], [153, 255]])),
    "f_small.tif": (np.array([[0.2, 1.7]], np.float32), None, "F", gray_rgb([[0, 2]])),
    "f_wide.tif": (np.array([[-5, 3.4], [300, 100.6]], np.float32), None, "F", gray_rgb([[0, 3], [255, 101]])),
    "la.png": (np.array([[[10, 255], [20, 0]], [[30, 0], [40, 255]]], np.uint8), "LA", "LA",
               gray_rgb([[10, 255], [255, 40]])),
}


@pytest.mark.parametrize("name", sorted(MODE_CASES))
def test_every_mode_becomes_the_rgb_the_rules_give(tmp_path: Path, name: str) -> None:
    """16-bit and 32-bit integers scaled by 1/257, floats in 0..1 by 255 (else taken as 0..255), clamped,
    transparency composited on white: each rule computed here, on samples at its edges."""
    stored, mode, opened_as, expected = MODE_CASES[name]
    Image.fromarray(stored, mode).save(tmp_path / name)
    with Image.open(tmp_path / name) as image:
        assert image.mode == opened_as  # the decoder really produces the mode under test
    rgb = read_rgb(tmp_path / name)
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, expected)


@pytest.mark.parametrize("mode", ["P", "L", "RGB"])
def test_transparent_pixels_of_palette_and_colour_keyed_files_are_white(tmp_path: Path, mode: str) -> None:
    """A transparent palette index, or a colour key (PNG tRNS) of a gray or RGB file, is paper, not its colour."""
    rgb = photo("chelsea", 8)
    image = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).convert(mode)
    samples = np.asarray(image)
    keyed = samples[0, 0]  # the palette index, gray level or RGB colour of the top-left pixel is transparent
    image.save(tmp_path / "keyed.png", transparency=int(keyed) if mode != "RGB" else tuple(int(v) for v in keyed))
    colours = np.asarray(image.convert("RGB"))
    transparent = (samples == keyed) if mode != "RGB" else (samples == keyed).all(axis=2)
    assert 0 < transparent.sum() < transparent.size
    expected = np.where(transparent[:, :, None], np.uint8(255), colours)
    np.testing.assert_array_equal(read_rgb(tmp_path / "keyed.png"), expected)


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
    for relative in ("b.png", "a/c.jpg", "a-d.png", ".hidden/d.png", "notes.txt", "a/.e.png"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    # the order of the relative paths as strings (the keys of caches and records), where "-" < "/";
    # Path's own order compares parts and would put a/c.jpg first
    assert [p.as_posix() for p in list_images(tmp_path)] == ["a-d.png", "a/c.jpg", "b.png"]
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(AdvsegError, match="file.png: not a folder; pass a folder of images"):
        list_images(tmp_path / "file.png")


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
    with pytest.raises(TypeError, match="^write_png expects uint8, got float64$"):
        write_png(tmp_path / "f.png", gray.astype(np.float64))
    assert not (tmp_path / "f.png").exists()


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / ".x.tmp-999999999-abcd.png"  # no such pid
    alive = tmp_path / f".y.tmp-{__import__('os').getpid()}-abcd.png"
    dead.write_bytes(b"1")
    alive.write_bytes(b"1")
    assert is_temporary(dead)
    assert remove_stale_temporaries(tmp_path) == 1
    assert not dead.exists() and alive.exists()


def test_only_the_decompression_bomb_warning_is_an_error_while_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow warns about many harmless things (odd metadata, for instance): those must still decode."""
    import io
    import warnings

    buffer = io.BytesIO()
    Image.fromarray(np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)).save(buffer, format="PNG")
    expected = decode_rgb(buffer.getvalue())
    original = ImageOps.exif_transpose

    def warning_transpose(image, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        warnings.warn("harmless metadata oddity", UserWarning, stacklevel=1)
        return original(image, *args, **kwargs)

    monkeypatch.setattr(ImageOps, "exif_transpose", warning_transpose)
    with warnings.catch_warnings(record=True):
        assert np.array_equal(decode_rgb(buffer.getvalue()), expected)
