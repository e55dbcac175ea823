"""Untrusted bytes in: the request body's size, and images checked before their pixels are decoded."""

from __future__ import annotations

import io
import json
import warnings

from PIL import Image, UnidentifiedImageError

# Formats whose decoders are common and well-fuzzed; anything else Pillow could open is refused.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")


class ImageRefused(ValueError):
    """An upload that is not an acceptable image; `status` is the HTTP answer (413 or 415)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def open_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """The decoded RGB image; ImageRefused when it is not an image (415) or is too large (413).

    The size is read from the header, so an oversized image is refused before its pixels exist.
    """
    image = check_image(data, name, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, Image.DecompressionBombError) as err:
        raise ImageRefused(415, f"{name}: the image cannot be decoded ({err})") from None


def check_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """The image opened lazily (header only), refused when it is not one or has too many pixels."""
    with warnings.catch_warnings():
        # Pillow's own bomb warning; the explicit limit below is the one that counts.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except Image.DecompressionBombError:
            raise ImageRefused(413, f"{name}: the image is larger than {max_pixels:,} pixels") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
            raise ImageRefused(415, f"{name}: not an image this service reads ({', '.join(IMAGE_FORMATS)})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRefused(413, f"{name}: {width}x{height} is {width * height:,} pixels, over the limit of {max_pixels:,}")
    if width < 1 or height < 1:
        raise ImageRefused(415, f"{name}: the image has no pixels ({width}x{height})")
    return image


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 413 before the app sees it.

    The declared Content-Length is checked first; a chunked body is read up to the limit and
    handed on from memory.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                await _plain(send, 400, "the Content-Length header is not a number")
                return
            if too_large:
                await _plain(send, 413, f"the request body is over {self.max_bytes:,} bytes")
                return
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await _plain(send, 413, f"the request body is over {self.max_bytes:,} bytes")
                return
            if not message.get("more_body"):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _plain(send, status: int, detail: str) -> None:
    payload = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})
