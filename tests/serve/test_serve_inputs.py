"""advseg serve without a browser: uploads are checked from their header before decoding, photos get the
sketch `advseg edges` makes, and a bad MODEL is refused with one line before any server starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from advseg_cli.edges import EdgesConfig, extract_edges
from advseg_cli.images import ImageLimits
from advseg_cli.serve import PhotoSketcher, UploadError, drawing_to_rgb, read_upload
from tests.helpers import invoke_advseg, photo, requires_hed_weights
from tests.serve.kit import huge_png

PAGE = ImageLimits(4096, 4096 * 4096)  # the page's default limits


def test_a_huge_image_is_refused_from_its_header_without_decoding(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    huge_png(tmp_path / "huge.png", 20000, 20000)
    Image.new("L", (5000, 100), 255).save(tmp_path / "wide.png")
    assert read_upload(str(tmp_path / "wide.png"), ImageLimits(5000, 5000 * 100)).shape == (100, 5000, 3)  # decodes when allowed

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("the pixels were decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)  # Pillow decodes pixels only in load()
    with pytest.raises(UploadError, match="too large"):
        read_upload(str(tmp_path / "huge.png"), PAGE)
    with pytest.raises(UploadError, match="5000x100 pixels; up to 4096 pixels a side"):
        read_upload(str(tmp_path / "wide.png"), PAGE)


@pytest.mark.parametrize("content,message", [(b"", "empty file"), (b"hello, not an image\n", "not an image"),
                                             (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not an image")])
def test_files_that_are_not_images_get_a_message(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "x.png").write_bytes(content)
    with pytest.raises(UploadError, match=message):
        read_upload(str(tmp_path / "x.png"), PAGE)


def test_odd_modes_become_rgb_and_an_empty_canvas_gets_a_message(tmp_path: Path) -> None:
    Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)).save(tmp_path / "16bit.png")
    Image.new("CMYK", (8, 8), (0, 0, 0, 255)).save(tmp_path / "cmyk.jpg")
    assert read_upload(str(tmp_path / "16bit.png"), PAGE).shape == (64, 64, 3)
    assert read_upload(str(tmp_path / "cmyk.jpg"), PAGE).max() < 30  # black, as CMYK (0,0,0,255) is
    with pytest.raises(UploadError, match="draw a sketch first"):
        drawing_to_rgb({"background": None, "layers": [], "composite": None})
    strokes = np.zeros((4, 4, 4), np.uint8)  # RGBA: transparent except one black stroke pixel
    strokes[1, 2] = (0, 0, 0, 255)
    rgb = drawing_to_rgb({"composite": strokes})
    assert rgb[1, 2].tolist() == [0, 0, 0] and (rgb.sum(axis=2) == 3 * 255).sum() == 15  # strokes on white


@requires_hed_weights
def test_a_photo_gets_the_sketch_advseg_edges_makes(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(photo("coffee", 64)).save(photos / "coffee.png")
    extract_edges(photos, tmp_path / "sketches", EdgesConfig(device="cpu", quiet=True))
    expected = np.asarray(Image.open(tmp_path / "sketches" / "coffee.png"))
    sketch = PhotoSketcher(None, torch.device("cpu")).sketch(read_upload(str(photos / "coffee.png"), PAGE))
    assert sketch.shape == expected.shape == (256, 256) and (expected < 128).sum() > 100
    assert np.array_equal(sketch, expected)


def test_a_bad_model_is_refused_before_a_server_starts(tmp_path: Path) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    for model, fragment in ((tmp_path / "missing", "no such run folder"),
                            (tmp_path / "broken.onnx", "not a readable ONNX")):
        result = invoke_advseg("serve", str(model), "--port", "1")
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("advseg serve: error:") and fragment in lines[0], lines


@pytest.mark.parametrize("size", [0, 32])
def test_the_page_colours_as_colorize_does_at_any_size(tmp_path: Path, size: int) -> None:
    from advseg_cli.colorize import ColorizeConfig, colorize_folder
    from advseg_cli.serve import ServeConfig, load_colorizer
    from tests.colorize.kit import CPU, result_of, save_public, tiny_generator, write_sketches

    model = save_public(tiny_generator("resnet_6blocks", "batch", seed=2), tmp_path / "latest_net_G.pth")
    sketches = write_sketches(tmp_path / "sketches", {"odd.png": ("rocket", 45, 37)})
    colorize_folder(model, sketches, tmp_path / "out", ColorizeConfig(size=size, **CPU))
    colorizer = load_colorizer(model, ServeConfig(size=size, device="cpu"))
    seen, result = colorizer.colorize(read_upload(str(sketches / "odd.png"), PAGE))
    expected = result_of(tmp_path / "out", "odd.png")
    assert result.shape == expected.shape == ((37, 45, 3) if size == 0 else (32, 32, 3))
    assert seen.shape == ((36, 44) if size == 0 else (32, 32))
    assert np.abs(result.astype(np.int16) - expected).max() <= 1
