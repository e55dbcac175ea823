"""Untrusted bytes in: the request body's size, strict JSON, and error answers that can always be
written (images are checked by the one decoder, iwan.vision.decode)."""

from __future__ import annotations

import json
import math
import re


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


MAX_JSON_DEPTH = 64
"""How deeply a JSON body may nest arrays and objects (a search body needs 1)."""

_STRUCTURE = re.compile(r'"(?:[^"\\]++|\\.)*+"?|[\[\]{}]', re.DOTALL)
"""A JSON string (skipped whole; possessive, so an unterminated one costs one pass) or a bracket."""
_SURROGATE = re.compile("[\ud800-\udfff]")


class JsonRefused(ValueError):
    """A JSON body that is malformed, nests too deeply, or holds a value that is not plain JSON."""


def strict_json(body: bytes, max_depth: int = MAX_JSON_DEPTH):
    """The value of a JSON body (RFC 8259, UTF-8), or JsonRefused saying why not.

    Stricter than `json.loads`: NaN, Infinity and numbers that overflow a float are refused, as
    are strings holding a lone UTF-16 surrogate ("\\ud800"), and nesting deeper than `max_depth`
    is refused before the parser sees it (the parser recurses once per level). Whatever is
    accepted can be written back as JSON, so no answer that echoes it can fail."""
    try:
        text = body.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise JsonRefused("the body is not UTF-8") from None
    _check_depth(text, max_depth)
    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_finite_float)
    except JsonRefused:
        raise
    except RecursionError:
        raise JsonRefused(f"the body nests more than {max_depth} levels deep") from None
    except ValueError as err:
        raise JsonRefused(f"the body is not valid JSON ({_first_line(err)})") from None
    _check_strings(value)
    return value


def _check_depth(text: str, max_depth: int) -> None:
    depth = 0
    for match in _STRUCTURE.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > max_depth:
                raise JsonRefused(f"the body nests more than {max_depth} levels deep")
        elif token in ("]", "}"):
            depth -= 1
            if depth < 0:  # a closing bracket with nothing open: the parser stops there anyway
                raise JsonRefused(f"the body is not valid JSON (an unmatched {token!r})")


def _constant(name: str):
    raise JsonRefused(f"the body is not valid JSON ({name} is not a JSON number)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonRefused(f"the body is not valid JSON (the number {text[:40]} is out of range)")
    return value


def _check_strings(value) -> None:
    """No string (key or value) holds a lone surrogate: it could not be written as UTF-8."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise JsonRefused("the body is not valid JSON (a string holds a lone UTF-16 surrogate)")
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def json_safe(value, depth: int = 0, max_depth: int = 16):
    """`value` as something JSON can always write, UTF-8 included: lone surrogates in strings
    become their escapes as text, non-finite floats their names, other objects their text,
    anything nested deeper than `max_depth` "...". For error answers that echo what was sent."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    if depth >= max_depth:
        return "..."
    if isinstance(value, dict):
        return {json_safe(str(k)): json_safe(v, depth + 1, max_depth) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v, depth + 1, max_depth) for v in value]
    return json_safe(str(value))
