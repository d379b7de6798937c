"""Reading any photo users throw at us, and writing our PNG outputs.

Photos come from the wild: JPEG with EXIF rotation, 16-bit PNG, palettes with transparency, CMYK
JPEG, grayscale TIFF. Every stage wants the same thing from them (an upright 8-bit RGB array), and a
file that cannot be decoded must become a per-file report, never a crash of the run.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from advseg_cli.errors import AdvsegError, ImageDecodeError
from advseg_cli.files import atomic_path, is_temporary

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm"}
)

# Photos above this many pixels are almost surely a mistake (or a decompression bomb): refuse them.
MAX_PIXELS = 20000 * 20000


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` as paths relative to it, sorted so every run sees the same order.

    Hidden files and folders (and our own atomic-write leftovers) are not inputs.
    """
    if not root.exists():
        raise AdvsegError(f"{root}: no such folder; pass a folder of images")
    if not root.is_dir():
        raise AdvsegError(f"{root}: not a folder; pass a folder of images")
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or is_temporary(path):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            found.append(relative)
    return sorted(found, key=lambda p: p.as_posix())


def _sixteen_bit_to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale 16-bit (or 32-bit integer holding 16-bit) samples to 8 bits, rounding, not truncating."""
    return np.clip(np.round(array.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to an HxWx3 uint8 RGB array.

    Transparent pixels are composited on white: for photos and sketches alike, "nothing" is white
    paper, and black (Pillow's plain RGBA->RGB drop) would invent dark regions.
    """
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        gray = _sixteen_bit_to_uint8(np.asarray(image))
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        gray = np.clip(np.round(values * scale), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("P", "L", "RGB") and "transparency" in image.info:  # a palette index or a colour key (PNG tRNS)
        image = image.convert("RGBA")
    if mode in ("RGBA", "LA", "PA") or image.mode == "RGBA":
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def decode_rgb(data: bytes, name: object = "<bytes>") -> np.ndarray:
    """Decode image bytes to an upright HxWx3 uint8 RGB array, or raise ImageDecodeError."""
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise ImageDecodeError(name, f"image too large ({image.width}x{image.height})")
                image.load()
                upright = ImageOps.exif_transpose(image)
                rgb = _to_rgb(upright)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(name, "not an image Pillow can decode") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(name, f"cannot decode image ({exc})") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise ImageDecodeError(name, f"unexpected decoded shape {rgb.shape}")
    return np.ascontiguousarray(rgb)


def read_rgb(path: Path) -> np.ndarray:
    """Read a photo as an upright HxWx3 uint8 RGB array, or raise ImageDecodeError naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(path, f"cannot read file ({exc.strerror or exc})") from None
    return decode_rgb(data, path)


def read_gray(path: Path) -> np.ndarray:
    """Read an image as HxW uint8 luminance (ITU-R 601, as Pillow's "L"), e.g. a sketch."""
    rgb = read_rgb(path)
    return np.asarray(Image.fromarray(rgb).convert("L"))


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header only, upright; (0, 0) when the header cannot be read.

    Used to group equal-sized photos into batches without decoding them twice.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except Exception:  # any unreadable header just sorts first; decoding reports it properly later
        return (0, 0)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def write_png(path: Path, array: np.ndarray) -> None:
    """Write a uint8 gray (HxW) or RGB (HxWx3) array as PNG, atomically."""
    if array.dtype != np.uint8:
        raise TypeError(f"write_png expects uint8, got {array.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def is_valid_png(path: Path, mode: str | None = None) -> bool:
    """Whether ``path`` is a complete, decodable PNG (optionally of a Pillow mode): the resume check."""
    try:
        with Image.open(path) as image:
            if image.format != "PNG" or (mode is not None and image.mode != mode):
                return False
            image.load()
    except Exception:  # a file we cannot fully decode is, for resuming, simply not done
        return False
    return True
