"""The service's HTTP connections: uvicorn's httptools protocol with the limits it lacks.

uvicorn (0.55) closes a connection only after a response, when it stays idle past the keep-alive
timeout. A connection that never completes its headers, a body that never completes, a header
block of any size or number of fields: all are held and buffered without end. uvicorn's h11
parser bounds the header block but none of the rest, and other servers (Hypercorn, Granian) would
replace the signal handling and lifespan `iwan serve` relies on; so the default protocol is kept
and these limits are added where it reads (iwan.config: MAX_HEADER_BYTES, MAX_HEADER_FIELDS,
MIN_BODY_BYTES_PER_S and the settings' timeouts and connection bound).
"""

from __future__ import annotations

import asyncio
import http
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from iwan.config import MAX_HEADER_BYTES, MAX_HEADER_FIELDS, MIN_BODY_BYTES_PER_S, Settings

RETRY_AFTER_S = 1
"""What a connection refused over the bound is told: slots free as other connections end."""


class ServerConfig(uvicorn.Config):
    """uvicorn's configuration, its connections limited by `settings`: BoundedHttpProtocol, the
    idle timeout as uvicorn's keep-alive timeout, and no more requests in progress than
    connections allowed (uvicorn answers 503 beyond: requests whose client left still count)."""

    def __init__(self, app: Any, *, settings: Settings, **options: Any):
        super().__init__(app, http=BoundedHttpProtocol, timeout_keep_alive=settings.idle_timeout,
                         limit_concurrency=settings.max_connections + 1, **options)
        self.settings = settings


class HeaderLimitExceeded(Exception):
    """Raised from a parser callback, which makes httptools stop parsing at once."""


class BoundedHttpProtocol(HttpToolsProtocol):
    """One connection: idle for at most `idle_timeout` s; its request headers complete within
    `header_timeout` s of it being ready for a request, however they trickle in, and within
    MAX_HEADER_BYTES and MAX_HEADER_FIELDS (else 431); a body arriving within `body_timeout` s
    plus one per MIN_BODY_BYTES_PER_S bytes; beyond `max_connections` open, 503 at once."""

    def __init__(self, config: ServerConfig, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.settings = config.settings
        self.reading_headers = True
        self.header_bytes = 0
        self.header_fields = 0
        self.refusal: str | None = None
        self.header_deadline: asyncio.TimerHandle | None = None
        self.body_deadline: asyncio.TimerHandle | None = None
        self.body_started = 0.0
        self.body_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.settings.max_connections:
            # Answered before the request is read: reading it is what the bound saves.
            self.refuse(503, f"the server has {self.settings.max_connections} connections open, its limit; "
                             f"try again in {RETRY_AFTER_S} s", retry_after=RETRY_AFTER_S)
            return
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
        self.await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self.header_deadline, self.body_deadline):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.reading_headers:
            room = MAX_HEADER_BYTES - self.header_bytes
            if len(data) > room:
                # Only what fits is parsed: headers that do not end there are refused unbuffered.
                if room > 0:
                    self.header_bytes = MAX_HEADER_BYTES
                    super().data_received(data[:room])
                if self.reading_headers and not self.transport.is_closing():
                    self.refuse(431, f"the request's header block is over {MAX_HEADER_BYTES // 1024} KiB")
                if not self.transport.is_closing():
                    self.data_received(data[room:])  # a body, or the next request's headers
                return
            self.header_bytes += len(data)
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        if self.refusal is not None:
            self.refuse(431, self.refusal)
        else:
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        self.header_fields = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_fields += 1
        if self.header_fields > MAX_HEADER_FIELDS:
            self.refusal = f"the request has over {MAX_HEADER_FIELDS} header fields"
            raise HeaderLimitExceeded(self.refusal)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.reading_headers = False
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None
        self.body_started, self.body_bytes = self.loop.time(), 0
        self.body_deadline = self.loop.call_later(self.settings.body_timeout, self.check_body)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self.body_deadline is not None:
            self.body_deadline.cancel()
            self.body_deadline = None
        self.reading_headers, self.header_bytes = True, 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # uvicorn waits for the next request now
            self.await_headers()

    def await_headers(self) -> None:
        """The connection is ready for a request: its headers are due within the header timeout
        from now (a new connection, or a kept-alive one after a response; never while the server
        works on a request)."""
        if self.header_deadline is not None:
            self.header_deadline.cancel()
        self.header_deadline = self.loop.call_later(self.settings.header_timeout, self.transport.close)

    def check_body(self) -> None:
        """Close the connection if its request body is late; else look again when it would be."""
        self.body_deadline = None
        now = self.loop.time()
        if self.flow.read_paused:  # the server has not taken what came: that wait is not the client's
            self.body_started, self.body_bytes = now, 0
        due = self.body_started + self.settings.body_timeout + self.body_bytes / MIN_BODY_BYTES_PER_S
        if now >= due:
            self.transport.close()
        else:
            self.body_deadline = self.loop.call_later(due - now, self.check_body)

    def refuse(self, status: int, reason: str, retry_after: int | None = None) -> None:
        """Answer `status` with `reason` and close the connection, outside the app."""
        body = reason.encode()
        head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}".encode()]
        head += [name + b": " + value for name, value in self.server_state.default_headers]
        head += [b"content-type: text/plain; charset=utf-8", b"x-content-type-options: nosniff",
                 b"content-length: %d" % len(body), b"connection: close"]
        if retry_after is not None:
            head.append(b"retry-after: %d" % retry_after)
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()
