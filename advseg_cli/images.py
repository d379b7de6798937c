"""Reading any photo users throw at us, and writing our PNG outputs.

Photos come from the wild: JPEG with EXIF rotation, 16-bit PNG, palettes with transparency, CMYK
JPEG, grayscale TIFF. Every stage wants the same thing from them (an upright 8-bit RGB array), and a
file that cannot be decoded must become a per-file report, never a crash of the run.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import warnings
import zlib
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
MAX_SIDE = 20000  # longest side of an untrusted image (a 1 x 400 M pixel strip is no sketch either)

# What an untrusted input may be: the formats of IMAGE_EXTENSIONS. Pillow opens many more (EPS runs
# Ghostscript, ICO/DDS/PSD/... are attack surface nobody needs here), and the file's name proves nothing.
UNTRUSTED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "PPM")
_UNTRUSTED_NAMES = "PNG, JPEG, BMP, TIFF, WebP, GIF or PPM"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_INFLATE_STEP = 1 << 20  # bytes of PNG pixel data inflated at a time while counting them


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    """The largest image an input from a stranger may be; checked from its header, before decoding.

    A side limit and a pixel limit both: a 1 x 100 M strip passes any pixel budget a photo needs,
    and a 9000 x 9000 square passes any side limit a panorama needs.
    """

    max_side: int = MAX_SIDE  # width and height each
    max_pixels: int = MAX_PIXELS  # width x height


class _Refused(Exception):
    """Why an untrusted image is refused (the reason only; the caller adds the file's name)."""


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


def _png_pixel_bytes(width: int, height: int, bit_depth: int, colour_type: int, interlace: int) -> int:
    """How many bytes the inflated pixel data of a PNG with this header holds (filter bytes included)."""
    bits = _PNG_CHANNELS[colour_type] * bit_depth
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and rows > 0:
            total += rows * (1 + (columns * bits + 7) // 8)
    return total


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk up to IEND, checking lengths and CRCs: a cut or damaged file is refused."""
    chunks, offset = [], len(_PNG_SIGNATURE)
    while True:
        if offset + 12 > len(data):
            raise _Refused("truncated file: the PNG ends before its IEND chunk")
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        end = offset + 8 + length
        if end + 4 > len(data):
            raise _Refused(f"truncated file: the PNG ends inside its {kind.decode('latin-1')} chunk")
        payload = data[offset + 8:end]
        if zlib.crc32(kind + payload) != int.from_bytes(data[end:end + 4], "big"):
            raise _Refused(f"damaged file: the PNG's {kind.decode('latin-1')} chunk fails its checksum")
        chunks.append((kind, payload))
        if kind == b"IEND":
            return chunks
        offset = end + 4


def _check_png_data(data: bytes) -> None:
    """Refuse a PNG whose pixel data is not exactly what its header declares.

    Pillow decodes a PNG whose compressed stream ends early without complaint (the missing rows come out
    black, which in a sketch are lines) and ignores extra rows; inflating and counting, without keeping
    the pixels, catches both. The header's size was checked first, so the count is bounded.
    """
    chunks = _png_chunks(data)
    if chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise _Refused("damaged file: the PNG does not start with its IHDR header")
    width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if colour_type not in _PNG_CHANNELS:
        raise _Refused(f"damaged file: unknown PNG colour type {colour_type}")
    expected = _png_pixel_bytes(width, height, bit_depth, colour_type, interlace)
    inflater, found = zlib.decompressobj(), 0
    try:
        for kind, payload in chunks:
            if kind != b"IDAT":
                continue
            pending = payload
            while pending and not inflater.eof:
                found += len(inflater.decompress(pending, _INFLATE_STEP))
                pending = inflater.unconsumed_tail
                if found > expected:
                    raise _Refused(f"the PNG holds more pixel data than its declared {width}x{height} pixels")
    except zlib.error:
        raise _Refused("damaged file: the PNG's compressed pixel data is corrupt") from None
    if not inflater.eof:
        raise _Refused("truncated file: the PNG's compressed pixel data stops before its end")
    if found != expected:
        raise _Refused(f"the PNG holds less pixel data than its declared {width}x{height} pixels "
                       f"({found} of {expected} bytes): truncated or forged")


def _check_untrusted(data: bytes, limits: ImageLimits) -> None:
    """Refuse, from the header and without decoding pixels: other formats, oversize images, animations,
    PNGs whose data is not their declared size. Decoding afterwards refuses truncated pixel data."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=UNTRUSTED_FORMATS) as image:
                width, height, kind = image.width, image.height, image.format
                # MPO (opened by the JPEG plugin): a camera JPEG with extra pictures (depth, preview); its
                # first picture is the photo
                animated = bool(getattr(image, "is_animated", False)) and kind != "MPO"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise _Refused(f"image too large to decode safely ({error}); resize it first") from None
    except UnidentifiedImageError:
        raise _Refused(f"not an image: the data is not {_UNTRUSTED_NAMES}, whatever the file's name") from None
    except Exception as error:  # noqa: BLE001 - an allowed format whose header its plugin cannot read
        raise _Refused(f"damaged or truncated file: its header cannot be read ({error})") from None
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise _Refused(f"image too large: {width}x{height} pixels; up to {limits.max_side} pixels a side and "
                       f"{limits.max_pixels} pixels in all are taken: resize it first")
    if animated:
        raise _Refused(f"a {kind} with several frames (an animation or a multi-page file): save one frame "
                       "as a still image first")
    if kind == "PNG":
        _check_png_data(data)


def decode_rgb(data: bytes, name: object = "<bytes>", limits: ImageLimits | None = None) -> np.ndarray:
    """Decode image bytes to an upright HxWx3 uint8 RGB array, or raise ImageDecodeError.

    ``limits``: the bytes come from a stranger (a web upload, someone's sketch folder): refuse what is not
    one still image of an allowed format within the limits before decoding it (see ``_check_untrusted``).
    """
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    if limits is not None:
        try:
            _check_untrusted(data, limits)
        except _Refused as refused:
            raise ImageDecodeError(name, str(refused)) from None
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


def read_rgb(path: Path, limits: ImageLimits | None = None) -> np.ndarray:
    """Read a photo as an upright HxWx3 uint8 RGB array, or raise ImageDecodeError naming the file.

    ``limits``: the file comes from a stranger; see ``decode_rgb``.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(path, f"cannot read file ({exc.strerror or exc})") from None
    return decode_rgb(data, path, limits)


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
