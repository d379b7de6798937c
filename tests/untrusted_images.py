"""Files a stranger may hand to `advseg serve` or `advseg colorize`, each made here byte by byte.

Every refused file is within the limits the tests use (``LIMITS``) in every way but the one it is about, so
the reason in the refusal is the one the case names. The accepted files are the still images of every
allowed format, including the PNG layouts a byte count can get wrong (interlaced, 1-, 2-, 4-, 16-bit).
File names have distinct stems (colorize writes NAME.png for each).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image

from advseg_cli.images import ImageLimits

LIMITS = ImageLimits(max_side=256, max_pixels=40000)  # small, so the oversize files are small too
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def sketch_array(width: int = 40, height: int = 32) -> np.ndarray:
    """A gray sketch: white paper, a black frame (from 6 x 6 px) and a diagonal (so a result is not flat)."""
    gray = np.full((height, width), 255, np.uint8)
    if min(width, height) >= 6:
        gray[2, 2:-2] = gray[-3, 2:-2] = gray[2:-2, 2] = gray[2:-2, -3] = 0
    for i in range(min(width, height)):
        gray[i, i] = 0
    return gray


def two_colour_palette(gray: np.ndarray) -> Image.Image:
    """A palette image of a black-on-white array: index 0 white, 1 black (fits 1, 2 or 4 bits)."""
    image = Image.fromarray((gray < 128).astype(np.uint8), "P")
    image.putpalette([255, 255, 255, 0, 0, 0])
    return image


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def gray_png(width: int, height: int, raw: bytes, interlace: int = 0) -> bytes:
    """An 8-bit gray PNG whose IHDR says width x height, whatever ``raw`` (the inflated rows) holds."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(raw))
            + png_chunk(b"IEND", b""))


def rows(gray: np.ndarray) -> bytes:
    """Rows with filter byte 0 (none), as a non-interlaced 8-bit gray PNG stores them."""
    return b"".join(b"\0" + row.tobytes() for row in gray)


def interlaced_png(gray: np.ndarray) -> bytes:
    """The Adam7-interlaced PNG of an 8-bit gray image (Pillow does not write interlaced PNGs)."""
    raw = b"".join(rows(gray[y0::dy, x0::dx]) for x0, y0, dx, dy in ADAM7 if gray[y0::dy, x0::dx].size)
    return gray_png(gray.shape[1], gray.shape[0], raw, interlace=1)


def png_of(*chunks: tuple[bytes, bytes]) -> bytes:
    """A PNG made of exactly these (type, payload) chunks, each with its right CRC."""
    return b"\x89PNG\r\n\x1a\n" + b"".join(png_chunk(kind, data) for kind, data in chunks)


def sketch_ihdr(width: int = 40, height: int = 32, bit_depth: int = 8, interlace: int = 0) -> tuple[bytes, bytes]:
    return b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, interlace)


def sketch_png_chunks() -> list[tuple[bytes, bytes]]:
    """IHDR, IDAT, IEND of the 40 x 32 8-bit gray sketch."""
    return [sketch_ihdr(), (b"IDAT", zlib.compress(rows(sketch_array()))), (b"IEND", b"")]


def split_idat(parts: int) -> bytes:
    """The sketch's compressed rows spread over several IDAT chunks, as encoders of big images write them."""
    stream = zlib.compress(rows(sketch_array()))
    step = -(-len(stream) // parts)
    pieces = [(b"IDAT", stream[i:i + step]) for i in range(0, len(stream), step)]
    return png_of(sketch_ihdr(), *pieces, (b"IEND", b""))


def unfinished_stream() -> bytes:
    """Every row, but the compressed stream never ends (flushed, not finished): a cut file's IDAT."""
    compressor = zlib.compressobj()
    stream = compressor.compress(rows(sketch_array())) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return png_of(sketch_ihdr(), (b"IDAT", stream), (b"IEND", b""))


def with_bad_idat_crc() -> bytes:
    data = bytearray(png_of(*sketch_png_chunks()))
    data[len(data) - 12 - 5] ^= 0xFF  # the last byte of IDAT's payload (IEND is the last 12 bytes)
    return bytes(data)


def interlaced_one_bit_png(gray: np.ndarray) -> bytes:
    """The Adam7-interlaced 1-bit gray PNG of a black-on-white image (rows packed 8 pixels a byte)."""
    def packed(part: np.ndarray) -> bytes:
        return b"".join(b"\0" + np.packbits(row > 127).tobytes() for row in part)
    raw = b"".join(packed(gray[y0::dy, x0::dx]) for x0, y0, dx, dy in ADAM7 if gray[y0::dy, x0::dx].size)
    return png_of(sketch_ihdr(gray.shape[1], gray.shape[0], 1, 1), (b"IDAT", zlib.compress(raw)), (b"IEND", b""))


def frames(fmt: str) -> bytes:
    """Two different 40 x 32 frames in one file: an animation (GIF, WebP, APNG) or a two-page TIFF."""
    first, second = Image.fromarray(sketch_array()), Image.fromarray(255 - sketch_array())
    if fmt == "WEBP":
        first, second = first.convert("RGB"), second.convert("RGB")
    return encoded(first, fmt, save_all=True, append_images=[second])


def cut(data: bytes, keep: float) -> bytes:
    return data[:int(len(data) * keep)]


def photo_bytes(fmt: str) -> bytes:
    """A 40 x 32 noisy RGB image: its compressed data fills the file, so a cut loses pixels."""
    noise = np.random.default_rng(3).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    return encoded(Image.fromarray(noise), fmt)


_EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n"
        b"newpath 0 0 moveto 16 16 lineto stroke showpage\n%%EOF\n")

# name (the file's name, which proves nothing) -> (its bytes, a fragment of the reason it is refused)
REFUSED: dict[str, tuple[Callable[[], bytes], str]] = {
    "too-wide.png": (lambda: encoded(Image.new("L", (257, 10), 255), "PNG"), "257x10 pixels"),
    "too-tall.png": (lambda: encoded(Image.new("L", (10, 257), 255), "PNG"), "10x257 pixels"),
    "too-many-pixels.png": (lambda: encoded(Image.new("L", (201, 200), 255), "PNG"), "201x200 pixels"),
    "too-many-pixels-jpeg.jpg": (lambda: encoded(Image.new("L", (200, 201), 255), "JPEG"), "200x201 pixels"),
    "animated-gif.gif": (lambda: frames("GIF"), "a GIF with several frames (an animation or a multi-page file): "
                                                "save one frame as a still image first"),
    "animated-webp.webp": (lambda: frames("WEBP"), "several frames"),
    "animated-png.png": (lambda: frames("PNG"), "several frames"),
    "two-pages.tif": (lambda: frames("TIFF"), "several frames"),
    "short-data.png": (lambda: gray_png(40, 32, rows(sketch_array(40, 16))), "less pixel data than its declared"),
    "long-data.png": (lambda: gray_png(40, 32, rows(sketch_array(40, 48))), "more pixel data than its declared"),
    "wide-rows.png": (lambda: gray_png(40, 32, rows(sketch_array(80, 32))), "more pixel data than its declared"),
    "no-iend.png": (lambda: encoded(Image.fromarray(sketch_array()), "PNG")[:-12],
                    "truncated file: the PNG ends before its IEND chunk"),
    "cut-png.png": (lambda: cut(photo_bytes("PNG"), 0.6), "truncated"),
    "cut-jpeg.jpg": (lambda: cut(photo_bytes("JPEG"), 0.6), "truncated"),
    "cut-gif.gif": (lambda: cut(photo_bytes("GIF"), 0.6), "truncated"),
    "cut-bmp.bmp": (lambda: cut(photo_bytes("BMP"), 0.6), "truncated"),
    "cut-tiff.tif": (lambda: cut(photo_bytes("TIFF"), 0.6), "truncated"),
    "cut-webp.webp": (lambda: cut(photo_bytes("WEBP"), 0.6), "truncated"),
    "chunk-before-ihdr.png": (lambda: png_of((b"tEXt", b"a\0b"), *sketch_png_chunks()),
                              "damaged file: the PNG does not start with its IHDR header"),
    "long-ihdr.png": (lambda: png_of((b"IHDR", sketch_ihdr()[1] + b"\0"), *sketch_png_chunks()[1:]),
                      "damaged file: the PNG does not start with its IHDR header"),
    "bad-crc.png": (with_bad_idat_crc, "damaged file: the PNG's IDAT chunk fails its checksum"),
    "cut-in-crc.png": (lambda: png_of(*sketch_png_chunks()[:2])[:-2], "truncated file: the PNG ends inside its IDAT"),
    "huge-chunk.png": (lambda: png_of(*sketch_png_chunks()[:2]) + (2 ** 31 + 16).to_bytes(4, "big") + b"tEXt"
                       + b"\0" * 32, "truncated file: the PNG ends inside its tEXt chunk"),
    "unfinished-stream.png": (unfinished_stream, "truncated file: the PNG's compressed pixel data stops before"),
    "corrupt-stream.png": (lambda: png_of(sketch_ihdr(), (b"IDAT", b"\x78\x9c" + bytes(range(7, 250))),
                                          (b"IEND", b"")), "damaged file: the PNG's compressed pixel data is corrupt"),
    "empty.png": (lambda: b"", "empty file"),
    "text.png": (lambda: b"hello, this is a text file\n", "not an image"),
    "page.jpg": (lambda: b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>\n", "not an image"),
    "signature-only.png": (lambda: b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not an image"),
    "postscript.png": (lambda: _EPS, "not an image"),  # Pillow would hand an EPS to Ghostscript
    "icon.png": (lambda: encoded(Image.fromarray(sketch_array(32, 32)), "ICO"), "not an image"),
}

# name -> (its bytes, the (height, width) it decodes to); LOSSLESS: those that decode to sketch_array exactly
ACCEPTED: dict[str, tuple[Callable[[], bytes], tuple[int, int]]] = {
    "largest.png": (lambda: encoded(Image.new("L", (256, 156), 255), "PNG"), (156, 256)),
    "interlaced.png": (lambda: interlaced_png(sketch_array(37, 29)), (29, 37)),
    "one-bit.png": (lambda: encoded(Image.fromarray(sketch_array(37, 29)).convert("1"), "PNG"), (29, 37)),
    "two-bit-palette.png": (lambda: encoded(two_colour_palette(sketch_array(37, 29)), "PNG", bits=2),
                            (29, 37)),
    "four-bit-palette.png": (lambda: encoded(two_colour_palette(sketch_array(37, 29)), "PNG", bits=4),
                             (29, 37)),
    "sixteen-bit.png": (lambda: encoded(Image.fromarray(sketch_array().astype(np.uint16) * 257), "PNG"), (32, 40)),
    "rgba.png": (lambda: encoded(Image.fromarray(sketch_array()).convert("RGBA"), "PNG"), (32, 40)),
    "still-gif.gif": (lambda: encoded(Image.fromarray(sketch_array()), "GIF"), (32, 40)),
    "still-webp.webp": (lambda: encoded(Image.fromarray(sketch_array()).convert("RGB"), "WEBP", lossless=True),
                        (32, 40)),
    "one-page.tif": (lambda: encoded(Image.fromarray(sketch_array()), "TIFF"), (32, 40)),
    "plain-bmp.bmp": (lambda: encoded(Image.fromarray(sketch_array()), "BMP"), (32, 40)),
    "plain-ppm.ppm": (lambda: encoded(Image.fromarray(sketch_array()).convert("RGB"), "PPM"), (32, 40)),
    "plain-jpeg.jpg": (lambda: encoded(Image.fromarray(sketch_array()), "JPEG", quality=95), (32, 40)),
    "camera.jpg": (lambda: encoded(Image.fromarray(sketch_array()).convert("RGB"), "MPO", save_all=True,
                                   append_images=[Image.new("RGB", (40, 32))]), (32, 40)),
    "png-named.jpg": (lambda: encoded(Image.fromarray(sketch_array()), "PNG"), (32, 40)),
    "three-idat.png": (lambda: split_idat(3), (32, 40)),
    "interlaced-one-bit.png": (lambda: interlaced_one_bit_png(sketch_array(37, 29)), (29, 37)),
    # Adam7 passes without a column or a row: what the byte count must leave out
    "interlaced-1x1.png": (lambda: interlaced_png(sketch_array(1, 1)), (1, 1)),
    "interlaced-3x2.png": (lambda: interlaced_png(sketch_array(3, 2)), (2, 3)),
    "interlaced-2x7.png": (lambda: interlaced_png(sketch_array(2, 7)), (7, 2)),
    "interlaced-5x9.png": (lambda: interlaced_png(sketch_array(5, 9)), (9, 5)),
}
LOSSLESS = ("interlaced.png", "one-bit.png", "two-bit-palette.png", "four-bit-palette.png", "sixteen-bit.png",
            "rgba.png", "still-gif.gif", "still-webp.webp", "one-page.tif", "plain-bmp.bmp", "plain-ppm.ppm",
            "png-named.jpg", "three-idat.png", "interlaced-one-bit.png", "interlaced-1x1.png", "interlaced-3x2.png",
            "interlaced-2x7.png", "interlaced-5x9.png")
