"""A folder of every kind of photo file a user's data set may contain, good and broken."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from tests.helpers import photo

# name -> whether advseg must decode it
EXPECTED_DECODABLE = {
    "corrupt.jpg": False,
    "empty.jpg": False,
    "text.png": False,
    "gray16.png": True,
    "rgb16.png": True,
    "rgba.png": True,
    "palette.gif": True,
    "cmyk.jpg": True,
    "one_pixel.png": True,
    "rotated.jpg": True,
    "plain.jpg": True,
}


def _jpeg_bytes(rgb: np.ndarray, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=92, **save)
    return buffer.getvalue()


def write_bad_inputs(folder: Path, size: int = 48) -> Path:
    """Write the mixed folder; sizes are small so HED on them is fast."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = photo("chelsea", size)
    good = _jpeg_bytes(rgb)
    (folder / "plain.jpg").write_bytes(good)
    (folder / "corrupt.jpg").write_bytes(good[: len(good) // 3])  # truncated mid-scan
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("this is not an image\n")
    gray16 = (photo("coffee", size)[:, :, 1].astype(np.uint16) * 257)
    Image.fromarray(gray16).save(folder / "gray16.png")
    cv2.imwrite(str(folder / "rgb16.png"), (photo("rocket", size)[:, :, ::-1].astype(np.uint16) * 257))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.gif")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=92)
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "one_pixel.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate by 90 degrees clockwise
    wide = np.ascontiguousarray(photo("astronaut", size)[: size // 2])  # landscape strip
    (folder / "rotated.jpg").write_bytes(_jpeg_bytes(wide, exif=exif.tobytes()))
    return folder
