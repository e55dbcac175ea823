"""Hostile images: small files holding tens of megapixels, in the formats and pixel modes that
cost the most to decode. The tests and benchmarks/bench_abuse.py send them."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def flat_png(width: int, height: int, bit_depth: int = 8, color_type: int = 3) -> bytes:
    """A PNG of one colour, written by hand: Pillow cannot write 16-bit colour or 1-bit palettes,
    and a hostile file is exactly this (a few KiB holding tens of megapixels)."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    row = bytes(1 + (width * channels * bit_depth + 7) // 8)
    rows_per_block = max(1, (1 << 20) // len(row))
    compressor = zlib.compressobj(9)
    data, left = [], height
    while left:
        n = min(left, rows_per_block)
        data.append(compressor.compress(row * n))
        left -= n
    data.append(compressor.flush())

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    palette = chunk(b"PLTE", bytes(range(256)) * 3) if color_type == 3 else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + palette + chunk(b"IDAT", b"".join(data)) + chunk(b"IEND", b"")


def flat_webp(side: int) -> bytes:
    """A lossless WebP of one colour: libwebp decodes it into its own buffer beside Pillow's."""
    out = io.BytesIO()
    Image.new("RGB", (side, side)).save(out, format="WEBP", lossless=True)
    return out.getvalue()


def flat_tiff(side: int, mode: str) -> bytes:
    """A deflated TIFF of one colour in `mode` (F and CMYK are 4 bytes a pixel, I;16 two)."""
    out = io.BytesIO()
    Image.new(mode, (side, side)).save(out, format="TIFF", compression="tiff_adobe_deflate")
    return out.getvalue()


def progressive_jpeg(side: int) -> bytes:
    """A progressive JPEG keeps every coefficient of the full image until its last scan."""
    out = io.BytesIO()
    Image.new("RGB", (side, side)).save(out, format="JPEG", quality=10, progressive=True)
    return out.getvalue()


def worst_images(max_pixels: int) -> dict[str, bytes]:
    """The costliest image of each kind with at most `max_pixels` pixels (the service's limit)."""
    side = int(max_pixels ** 0.5)
    return {
        "tall-1bit.png": flat_png(1, max_pixels, bit_depth=1, color_type=0),
        "rgba16.png": flat_png(side, side, bit_depth=16, color_type=6),
        "palette.png": flat_png(side, side),
        "grey-alpha16.png": flat_png(side, side, bit_depth=16, color_type=4),
        "lossless.webp": flat_webp(side),
        "float.tif": flat_tiff(side, "F"),
        "progressive.jpg": progressive_jpeg(side),
        "grey16.png": flat_png(side, side, bit_depth=16, color_type=0),
    }
