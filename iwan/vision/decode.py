"""The one image decoder: every image iwan reads (a data set's file, a query, an upload) comes
through `decode_image`, whose policy is its arguments (`DecodePolicy`).

Untrusted bytes: the header is read first and the image refused before any pixel is decoded when
it is not an image of an allowed format (415) or has more pixels than the limit (413), since a
small file can hold a huge image. With `min_side`, a large image is decoded at a reduced size
whose shorter side stays >= `min_side` (JPEG's draft mode decodes at 1/2, 1/4 or 1/8 scale
directly; other formats are reduced by a whole factor), for callers that resize to a small input.
The pixels come out upright: the EXIF orientation (a phone's sideways sensor) is applied.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from iwan.config import DEFAULT_MAX_IMAGE_PIXELS

UPLOAD_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
"""Formats whose decoders are common and well-fuzzed: what the service accepts."""
SUFFIX_MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif",
                      ".webp": "image/webp", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff"}
# Everything Pillow raises on a damaged or hostile file (it uses SyntaxError for some formats).
_IMAGE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error, MemoryError,
                 Image.DecompressionBombError)


class ImageRefused(ValueError):
    """Bytes that are not an acceptable image; `status` is the HTTP answer (413 or 415)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class DecodePolicy:
    """What an image may be: the largest pixel count, the formats allowed (None: any Pillow reads)
    and, optionally, the shortest side it is decoded at."""

    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    formats: tuple[str, ...] | None = UPLOAD_FORMATS
    min_side: int | None = None


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray
    """uint8 (H, W, 3) RGB."""
    media_type: str
    """The format's media type ("application/octet-stream" for a format without one)."""


def media_type_of(path: Path) -> str:
    """A stored file's media type from its name."""
    return SUFFIX_MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")


def open_checked(source: bytes | Path, name: str, policy: DecodePolicy) -> Image.Image:
    """The image opened lazily (header only), refused when it is not one or breaks the policy."""
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
    with warnings.catch_warnings():
        # Pillow's own bomb warning; the policy's limit is the one that applies.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(stream, formats=policy.formats)
        except Image.DecompressionBombError:
            limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
            raise ImageRefused(413, f"{name}: over Pillow's own limit of {limit:,} pixels (DecompressionBombError)") from None
        except _IMAGE_ERRORS:
            what = f"this service reads ({', '.join(policy.formats)})" if policy.formats else "Pillow can read"
            raise ImageRefused(415, f"{name}: not an image {what}") from None
    width, height = image.size
    if width * height > policy.max_pixels:
        image.close()
        raise ImageRefused(
            413, f"{name}: {width}x{height} is {width * height:,} pixels ({width * height / 1e6:.1f} megapixels), over "
                 f"the limit of {policy.max_pixels:,} (IWAN_MAX_IMAGE_PIXELS): downscale the image, or raise the limit "
                 "if you trust it")
    if width < 1 or height < 1:
        image.close()
        raise ImageRefused(415, f"{name}: the image has no pixels ({width}x{height})")
    return image


def decode_image(source: bytes | Path, name: str, policy: DecodePolicy) -> Decoded:
    """The image's RGB pixels and media type; ImageRefused (a ValueError) saying why not."""
    image = open_checked(source, name, policy)
    try:
        with image, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            media_type = Image.MIME.get(image.format or "", "application/octet-stream")
            orientation = exif_orientation(image)
            return Decoded(np.asarray(upright(_pixels(image, policy.min_side), orientation)), media_type)
    except _IMAGE_ERRORS as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImageRefused(415, f"{name}: a damaged or unreadable image ({reason})") from None


def exif_orientation(image: Image.Image) -> int:
    """The image's EXIF orientation (1 to 8; 1, upright, when it has none or a damaged one),
    read from the header before decoding, so that a reduced decode can be turned after."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except _IMAGE_ERRORS:
        return 1
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def upright(image: Image.Image, orientation: int) -> Image.Image:
    """`image` (decoded, perhaps reduced) turned as its EXIF `orientation` says: what
    PIL.ImageOps.exif_transpose does, with the orientation read before the pixels were reduced and
    without rewriting the EXIF block (the pixels are what is kept)."""
    method = _TRANSPOSE.get(orientation)
    return image if method is None else image.transpose(method)


_TRANSPOSE = {  # EXIF orientation -> the transpose making the image upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _pixels(image: Image.Image, min_side: int | None) -> Image.Image:
    width, height = image.size
    short = min(width, height)
    if min_side is None or short < 2 * min_side:
        return image.convert("RGB")
    # JPEG only: decodes at the smallest scale still at least this big.
    image.draft("RGB", (width * min_side // short, height * min_side // short))
    rgb = image.convert("RGB")
    factor = min(rgb.size) // min_side
    return rgb.reduce(factor) if factor >= 2 else rgb
