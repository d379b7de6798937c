"""decode_rgb with limits: what `advseg serve` and `advseg colorize` do with a stranger's file, in process.

Each refused file of tests/untrusted_images.py gives its reason, and all but those whose pixel data is cut
short (only decoding can tell) are refused without Pillow decoding a pixel; every accepted file decodes to
exactly what Pillow decodes without the checks. The same files through the HTTP API: tests/serve/test_serve_http.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFile

from advseg_cli.errors import ImageDecodeError
from advseg_cli.images import ImageLimits, decode_rgb, read_rgb
from tests.untrusted_images import ACCEPTED, LIMITS, LOSSLESS, REFUSED, sketch_array

# the header is whole, the pixels are not: only decoding can tell
DECODER_REFUSES = {"cut-jpeg.jpg", "cut-gif.gif", "cut-bmp.bmp", "cut-tiff.tif"}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_bad_file_is_refused_with_its_reason(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    make, fragment = REFUSED[name]
    data = make()
    if name not in DECODER_REFUSES:
        def no_decoding(self: ImageFile.ImageFile) -> None:
            raise AssertionError("the pixels were decoded")
        monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)  # Pillow decodes pixels only in load()
    with pytest.raises(ImageDecodeError) as refusal:
        decode_rgb(data, name, LIMITS)
    assert refusal.value.path == name and fragment in refusal.value.reason, refusal.value.reason
    assert "\n" not in refusal.value.reason


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_a_still_image_of_an_allowed_format_decodes_as_without_the_checks(name: str) -> None:
    make, shape = ACCEPTED[name]
    data = make()
    checked = decode_rgb(data, name, LIMITS)
    assert checked.shape[:2] == shape
    assert np.array_equal(checked, decode_rgb(data, name))
    if name in LOSSLESS:
        assert np.array_equal(checked, np.repeat(sketch_array(shape[1], shape[0])[:, :, None], 3, axis=2))


def test_the_limits_are_inclusive_and_each_applies_alone() -> None:
    from tests.untrusted_images import encoded
    from PIL import Image

    square = encoded(Image.new("L", (200, 200), 255), "PNG")  # 40000 pixels: exactly the limit
    assert decode_rgb(square, "square", LIMITS).shape == (200, 200, 3)
    assert decode_rgb(square, "square", ImageLimits(max_side=200, max_pixels=40000)).shape == (200, 200, 3)
    for limits, fragment in ((ImageLimits(max_side=199, max_pixels=10**6), "up to 199 pixels a side"),
                             (ImageLimits(max_side=10**6, max_pixels=39999), "39999 pixels in all")):
        with pytest.raises(ImageDecodeError, match=fragment):
            decode_rgb(square, "square", limits)


def test_without_limits_the_trusted_stages_read_as_before(tmp_path: Path) -> None:
    """edges, segcache and fid read the user's own photos: an animated GIF is its first frame there."""
    animated = tmp_path / "animated-gif.gif"
    animated.write_bytes(REFUSED["animated-gif.gif"][0]())
    assert np.array_equal(read_rgb(animated)[:, :, 0], sketch_array())
    with pytest.raises(ImageDecodeError, match="several frames"):
        read_rgb(animated, LIMITS)


def test_a_large_png_is_inflated_in_steps_and_counted_whole() -> None:
    """1.1 MB of rows: more than one inflation step of the count (a step's output is bounded)."""
    from PIL import Image

    from tests.untrusted_images import encoded

    gray = np.full((1000, 1100), 255, np.uint8)
    gray[::7, ::3] = 0
    data = encoded(Image.fromarray(gray), "PNG")
    rgb = decode_rgb(data, "large", ImageLimits(max_side=2000, max_pixels=2_000_000))
    assert np.array_equal(rgb[:, :, 0], gray)


@pytest.mark.parametrize("side", [10000, 20000], ids=["over-pillows-warning", "over-pillows-error"])
def test_a_decompression_bomb_is_refused_from_its_header_even_within_the_limits(
        tmp_path: Path, side: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """100 M and 400 M pixels of 1-bit PNG in a few MB; colorize's own limits let them pass, Pillow's guard not."""
    from tests.serve.kit import huge_png

    huge_png(tmp_path / "bomb.png", side, side)

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("the pixels were decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageDecodeError) as refusal:
        read_rgb(tmp_path / "bomb.png", ImageLimits())
    assert refusal.value.reason.startswith("image too large to decode safely (") and "resize it first" in \
        refusal.value.reason


def test_a_harmless_warning_while_reading_the_header_refuses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only Pillow's decompression-bomb warning is an error in the header check (it warns about odd metadata)."""
    import warnings

    from PIL import PngImagePlugin

    make, shape = ACCEPTED["rgba.png"]
    original = PngImagePlugin.PngImageFile._open

    def warning_open(self: PngImagePlugin.PngImageFile) -> None:
        warnings.warn("harmless metadata oddity", UserWarning, stacklevel=1)
        original(self)
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "_open", warning_open)
    with warnings.catch_warnings(record=True):
        assert decode_rgb(make(), "rgba.png", LIMITS).shape[:2] == shape
