"""The one image decoder: every image iwan reads (a data set's file, a query, an upload) comes
through `decode_image`, whose policy is its arguments (`DecodePolicy`).

Untrusted bytes: the header is read first and the image refused before any pixel is decoded when
it is not an image of an allowed format (415) or has more pixels than the limit (413), since a
small file can hold a huge image. With `min_side`, a large image is decoded small (`Shrink`):
JPEG's draft mode decodes at 1/2, 1/4 or 1/8 scale directly, and every image is reduced in its own
pixel mode by a whole factor while its shorter side stays >= `min_side`, before it is converted to
RGB; a long side over MAX_SIDE_RATIO times the short one is reduced further (a 1 x 39,000,000 line
becomes 1 x 4,096 here, not a 468 MB float copy in a model). The pixels come out upright: the EXIF
orientation is applied.

What a decode costs is known from the header (`decode_cost`: the decoded pixels in Pillow's
storage, a conversion when the mode cannot be reduced, the format decoder's own buffers, measured
by benchmarks/bench_abuse.py); with a `MemoryBudget`, concurrent decodes and model passes hold
reservations of their cost, and one that does not fit waits, then is refused with `ImageBusy`.
"""

from __future__ import annotations

import io
import struct
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from iwan.config import DECODE_MIN_SIDE, DECODE_WAIT_S, DEFAULT_MAX_IMAGE_PIXELS

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


class ImageBusy(RuntimeError):
    """Concurrent image work holds the whole memory budget; the same request may succeed after
    `retry_after` seconds (HTTP 503 with Retry-After)."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class MemoryBudget:
    """Bytes that concurrent image work (decodes, model passes) may hold together. A reservation
    that does not fit waits up to `wait_s` for others to end, then raises ImageBusy; one larger
    than the whole budget can never fit and is refused at once (ImageRefused, 413)."""

    def __init__(self, limit: int, wait_s: float = DECODE_WAIT_S):
        if limit < 1:
            raise ValueError(f"a memory budget of {limit} bytes holds nothing; give at least one MiB")
        self.limit = limit
        self.wait_s = wait_s
        self._used = 0
        self._free = threading.Condition()

    @property
    def used(self) -> int:
        return self._used

    @contextmanager
    def reserve(self, nbytes: int, what: str) -> Iterator[None]:
        if nbytes > self.limit:
            raise ImageRefused(
                413, f"{what}: decoding it needs about {_mib(nbytes)} MiB, over the image memory budget of "
                     f"{_mib(self.limit)} MiB (IWAN_DECODE_MEMORY): send a smaller image, or raise the budget")
        deadline = time.monotonic() + self.wait_s
        with self._free:
            while self._used + nbytes > self.limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ImageBusy(f"{what}: the server is busy with other images (its image memory budget of "
                                    f"{_mib(self.limit)} MiB is in use); retry shortly", retry_after=max(1, round(self.wait_s / 4)))
                self._free.wait(left)
            self._used += nbytes
        try:
            yield
        finally:
            with self._free:
                self._used -= nbytes
                self._free.notify_all()


def reserved(budget: MemoryBudget | None, nbytes: int, what: str):
    """`budget.reserve(nbytes, what)`, or nothing to hold without a budget (the CLI's own process)."""
    return budget.reserve(nbytes, what) if budget is not None else nullcontext()


def _mib(nbytes: int) -> int:
    return -(-nbytes // (1 << 20))


@dataclass(frozen=True)
class DecodePolicy:
    """What an image may be: the largest pixel count, the formats allowed (None: any Pillow reads)
    and the shortest side it is decoded at (None: full size)."""

    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    formats: tuple[str, ...] | None = UPLOAD_FORMATS
    min_side: int | None = DECODE_MIN_SIDE


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


def decode_image(source: bytes | Path, name: str, policy: DecodePolicy, budget: MemoryBudget | None = None) -> Decoded:
    """The image's RGB pixels and media type; ImageRefused (a ValueError) saying why not;
    ImageBusy when `budget` stays full."""
    image = open_checked(source, name, policy)
    try:
        with image, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            media_type = Image.MIME.get(image.format or "", "application/octet-stream")
            shrink = Shrink(min_side=policy.min_side)
            with reserved(budget, decode_cost(image, shrink), name):
                # Inside the reservation: Pillow decodes a whole PNG to find an EXIF chunk after its pixels.
                orientation = exif_orientation(image)
                return Decoded(np.asarray(upright(_pixels(image, shrink), orientation)), media_type)
    except ImageRefused:
        raise
    except _IMAGE_ERRORS as err:
        raise ImageRefused(415, f"{name}: a damaged or unreadable image ({_reason(err)})") from None


def decode_thumbnail(data: bytes, name: str, policy: DecodePolicy, side: int,
                     budget: MemoryBudget | None = None) -> tuple[bytes, str]:
    """The image as a JPEG at most `side` pixels a side, upright (or its own bytes when it is a
    JPEG or PNG already that small and upright): never the full image of a huge one."""
    image = open_checked(data, name, policy)
    try:
        with image, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            width, height = image.size
            if image.format in ("JPEG", "PNG") and max(width, height) <= side and exif_orientation(image) == 1:
                return data, Image.MIME[image.format]
            scale = min(1.0, side / max(width, height))
            target = (max(1, round(width * scale)), max(1, round(height * scale)))
            shrink = Shrink(box=target)
            with reserved(budget, decode_cost(image, shrink), name):
                orientation = exif_orientation(image)  # a PNG's may need its pixels decoded
                small = _pixels(image, shrink).resize(target, Image.Resampling.BICUBIC)
                out = io.BytesIO()
                upright(small, orientation).save(out, format="JPEG", quality=85)
                return out.getvalue(), "image/jpeg"
    except ImageRefused:
        raise
    except _IMAGE_ERRORS as err:
        raise ImageRefused(415, f"{name}: a damaged or unreadable image ({_reason(err)})") from None


def decode_cost(image: Image.Image, shrink: Shrink) -> int:
    """Bytes that decoding `image` (opened, header read) made small by `shrink` holds at its peak, from the header alone: the decoded pixels in Pillow's storage (1, 2 or 4 bytes a pixel,
    and a row pointer per row), a conversion when the mode cannot be reduced in place, the
    premultiplied copy of an image with alpha, the format decoder's own buffers, and the small
    result. JPEG's draft is planned here, so the size is the one that will be decoded."""
    full_width, full_height = image.size
    shrink.draft(image)
    width, height = image.size
    pixels = width * height
    cost = pixels * _storage_bytes(image.mode) + height * 8
    factor_x, factor_y = shrink.factors(width, height)
    out_width, out_height = -(-width // factor_x), -(-height // factor_y)  # Image.reduce keeps a partial box
    if (out_width, out_height) != (width, height):
        reduced_mode = _REDUCE_AS.get(image.mode, image.mode)
        if reduced_mode != image.mode:
            cost += pixels * _storage_bytes(reduced_mode) + height * 8
        if reduced_mode in _PREMULTIPLIED:
            cost += pixels * 4 + height * 8
    else:
        cost += pixels * 4 + height * 8  # the RGB conversion at full size
    cost += int(full_width * full_height * _FORMAT_BUFFERS.get(_format_key(image), 0.0))
    cost += out_width * out_height * 8 + out_height * 16
    return int(cost * 1.02) + (4 << 20)  # the codecs' own working buffers (libjpeg's, zlib's)


def _reason(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


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


MAX_SIDE_RATIO = 8
"""A decode for the models keeps the aspect up to this ratio of the long side to the short one."""
# Pillow keeps 1 byte a pixel for these modes, 2 for 16-bit grey, 4 for every other mode
# (3-band pixels are stored in 4 bytes).
_ONE_BYTE_MODES = ("1", "L", "P")
# Modes Image.reduce cannot average (palette indices, bits, 16-bit grey), and the mode they are
# reduced in instead.
_REDUCE_AS = {"1": "L", "P": "RGB", "PA": "RGBA", "I;16": "I", "I;16L": "I", "I;16B": "I", "I;16N": "I"}
# Image.reduce averages these modes' colours weighted by alpha, in a premultiplied full-size copy.
_PREMULTIPLIED = ("RGBA", "LA")
# Buffers a format's decoder holds beside Pillow's image, in bytes per pixel of the full image
# (measured by benchmarks/bench_abuse.py, rounded up): libwebp decodes into its own RGBA buffer
# that Pillow then copies; a progressive JPEG keeps every coefficient until the last scan.
_FORMAT_BUFFERS = {"WEBP": 12.0, "JPEG-progressive": 3.5}


def _storage_bytes(mode: str) -> int:
    if mode in _ONE_BYTE_MODES:
        return 1
    return 2 if mode.startswith("I;16") else 4


def _format_key(image: Image.Image) -> str:
    if image.format == "JPEG" and image.info.get("progressive"):
        return "JPEG-progressive"
    return image.format or ""


@dataclass(frozen=True)
class Shrink:
    """How an image is made small while it is decoded: JPEG's draft (1/2, 1/4 or 1/8 scale), then
    Image.reduce by whole factors. For the models (`min_side`): the shorter side kept >= min_side
    and the aspect kept (the predictor crops the centre square), except that a long side over
    MAX_SIDE_RATIO times the short one is reduced further (a 1 x 39,000,000 line). For a thumbnail
    (`box`): at least the box's size a side."""

    min_side: int | None = None
    box: tuple[int, int] | None = None

    def draft(self, image: Image.Image) -> None:
        if image.format != "JPEG":
            return
        width, height = image.size
        if self.box is not None:
            image.draft("RGB", self.box)
        elif self.min_side is not None and min(width, height) >= 2 * self.min_side:
            short = min(width, height)
            image.draft("RGB", (width * self.min_side // short, height * self.min_side // short))

    def factors(self, width: int, height: int) -> tuple[int, int]:
        if self.box is not None:
            return max(1, width // self.box[0]), max(1, height // self.box[1])
        if self.min_side is None:
            return 1, 1
        short = min(width, height)
        factor = max(1, short // self.min_side)
        longest = MAX_SIDE_RATIO * max(self.min_side, short // factor)
        return max(factor, -(-width // longest)), max(factor, -(-height // longest))


def _pixels(image: Image.Image, shrink: Shrink) -> Image.Image:
    """The RGB image, reduced first in its own mode so that no full-size RGB copy is made of a
    large image."""
    shrink.draft(image)
    factors = shrink.factors(*image.size)
    if factors == (1, 1):
        return image.convert("RGB")
    reducible = image.convert(_REDUCE_AS[image.mode]) if image.mode in _REDUCE_AS else image
    return reducible.reduce(factors).convert("RGB")
