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


def test_the_limits_and_the_port_are_checked_before_anything_starts() -> None:
    from advseg_cli.errors import AdvsegError
    from advseg_cli.serve import ServeConfig

    assert ServeConfig().limits == PAGE and ServeConfig(max_side=7, max_pixels=9).limits == ImageLimits(7, 9)
    assert ServeConfig(port=0, max_side=1, max_pixels=1).validate().port == 0
    assert ServeConfig(port=65535).validate().port == 65535
    for options, message in (({"port": -1}, "--port -1: use 0..65535"), ({"port": 65536}, "--port 65536: use 0..65535"),
                             ({"max_side": 0}, "--max-side 0: must be >= 1"),
                             ({"max_pixels": 0}, "--max-pixels 0: must be >= 1")):
        with pytest.raises(AdvsegError) as refusal:
            ServeConfig(**options).validate()
        assert str(refusal.value) == message


@pytest.mark.parametrize("earlier", [None, "/somewhere/else"])
def test_gradio_and_matplotlib_write_only_into_a_private_folder_that_is_removed_after(
        monkeypatch: pytest.MonkeyPatch, earlier: str | None) -> None:
    import os

    from advseg_cli.serve import private_gradio_folder

    names = ("GRADIO_TEMP_DIR", "GRADIO_ANALYTICS_ENABLED", "MPLCONFIGDIR")
    for name in names:
        if earlier is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, earlier)
    with private_gradio_folder() as folder:
        assert folder.is_dir() and folder.name.startswith("advseg-serve-") and not any(folder.iterdir())
        assert os.environ["GRADIO_TEMP_DIR"] == str(folder) and os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
        assert Path(os.environ["MPLCONFIGDIR"]).parent == folder
        (folder / "upload.png").write_bytes(b"x")
    assert not folder.exists()
    assert [os.environ.get(name) for name in names] == [earlier] * 3


def test_the_canvas_becomes_rgb_strokes_composited_on_white_paper() -> None:
    for empty in (None, {}, {"composite": None}, "not a canvas"):
        with pytest.raises(UploadError) as refusal:
            drawing_to_rgb(empty)  # type: ignore[arg-type]
        assert str(refusal.value) == "the canvas is empty: draw a sketch first"
    gray = np.array([[0, 128], [255, 7]], np.uint8)
    rgb = drawing_to_rgb({"composite": gray})
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3) and rgb.flags["C_CONTIGUOUS"]
    assert np.array_equal(rgb, np.repeat(gray[:, :, None], 3, axis=2))
    rgba = np.array([[[0, 0, 0, 255], [10, 20, 30, 0]], [[100, 0, 200, 128], [60, 60, 60, 64]]], np.uint8)
    alpha = rgba[:, :, 3:4] / 255.0
    expected = np.round(rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)  # "over" on white
    composited = drawing_to_rgb({"composite": rgba})
    assert composited.dtype == np.uint8 and composited.shape == (2, 2, 3)
    assert np.array_equal(composited, expected) and composited[1].tolist() == [[177, 127, 227], [206, 206, 206]]
    assert np.array_equal(drawing_to_rgb({"composite": rgba[:, :, :3]}), rgba[:, :, :3])


def test_no_file_gets_a_message(tmp_path: Path) -> None:
    for nothing in (None, ""):
        with pytest.raises(UploadError) as refusal:
            read_upload(nothing, PAGE)
        assert str(refusal.value) == "no file: choose an image to upload first"


@requires_hed_weights
def test_a_stop_before_gradios_own_wait_ends_the_server_as_that_wait_does(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGTERM right after "Running on" (before Gradio's wait loop takes KeyboardInterrupt itself) reached
    the command line as a stage's interruption: exit 130 and "finished outputs are kept ... continue with",
    which means nothing for a server (seen by a new user). Now it ends as the wait does: closed, exit 0."""
    import gradio

    from tests.colorize.kit import save_public, tiny_generator

    model = save_public(tiny_generator("resnet_6blocks", "batch", seed=2), tmp_path / "latest_net_G.pth")
    closed = []

    def launch_then_stop(self: gradio.Blocks, *args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # what serve's SIGTERM handler raises

    monkeypatch.setattr(gradio.Blocks, "launch", launch_then_stop)
    monkeypatch.setattr(gradio.Blocks, "close", lambda self, verbose=True: closed.append(self))
    import signal

    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = invoke_advseg("serve", str(model), "--device", "cpu", "--port", "7999")
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert result.returncode == 0, result.stderr
    assert "advseg serve: stopped" in result.stderr and "continue with" not in result.stderr
    assert len(closed) == 1
