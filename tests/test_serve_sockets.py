"""Socket limits of `iwan serve` (issue 16): idle, slow and oversized requests are cut off, and a
bound on connections keeps a search answering. Raw sockets against a real server on loopback,
with timeouts of a second or two so that each case takes seconds."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import select
import socket
import time

import httpx
import pytest
from serving import blob_collection, running

from iwan.config import MAX_HEADER_BYTES, MAX_HEADER_FIELDS, settings
from iwan.serve import create_app

pytestmark = pytest.mark.usefixtures("in_module_home")

SHORT = {"idle_timeout": 1, "header_timeout": 2, "body_timeout": 1}
GRACE = 2.0
"""Seconds a close may come after its deadline on a loaded machine."""
HEAD = b"Host: 127.0.0.1\r\n"
SEARCH = b"POST /v1/collections/pics/search HTTP/1.1\r\n" + HEAD + b"Content-Type: application/json\r\n"


@pytest.fixture(scope="module")
def engine(module_engine):
    return module_engine


@pytest.fixture(scope="module")
def collection(engine, module_home, one_torch_thread):
    with blob_collection(engine, module_home, "pics", 4) as live:
        yield live


@contextlib.contextmanager
def serving(engine, collection, module_home, **limits):
    app = create_app(engine, [collection], settings=dataclasses.replace(settings(), home=module_home, **limits))
    with running(app) as base:
        yield int(base.rsplit(":", 1)[1])


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def closed_after(sock: socket.socket, trickle: bytes = b"", every: float = 0.2, limit: float = 10.0) -> float:
    """Seconds until the server ends the connection, sending `trickle` a byte at a time meanwhile;
    fails after `limit` seconds. What the server answered first must not be a success."""
    start, answer = time.monotonic(), b""
    while time.monotonic() - start < limit:
        readable, _, _ = select.select([sock], [], [], every)
        try:
            if readable:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            elif trickle:
                sock.send(trickle[:1])
                trickle = trickle[1:] or trickle
        except (ConnectionResetError, BrokenPipeError):
            break
    else:
        pytest.fail(f"the connection was still open after {limit} s")
    assert not answer.startswith(b"HTTP/1.1 2"), answer[:200]
    return time.monotonic() - start


def answer_to(sock: socket.socket, request: bytes) -> bytes:
    """The server's answer to `request` (which must ask for `Connection: close`), or b"" where the
    server closed the connection instead, before or while the request was sent."""
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        sock.sendall(request)
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@contextlib.contextmanager
def server_errors():
    """The errors the server logs meanwhile (uvicorn's logger does not reach pytest's caplog)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def healthy(port: int) -> None:
    with httpx.Client(timeout=5) as http:
        answer = http.get(f"http://127.0.0.1:{port}/healthz")
        assert answer.status_code == 200, answer.text


def test_an_idle_connection_is_closed(engine, collection, module_home):
    with serving(engine, collection, module_home, **SHORT) as port:
        with connect(port) as silent:
            assert closed_after(silent) < 1 + GRACE
        with connect(port) as kept_alive:  # after an answer, waiting for the next request
            kept_alive.sendall(b"GET /healthz HTTP/1.1\r\n" + HEAD + b"\r\n")
            assert kept_alive.recv(65536).startswith(b"HTTP/1.1 200")
            assert closed_after(kept_alive) < 1 + GRACE


@pytest.mark.parametrize("trickle", [
    pytest.param(b"GET /healthz HTTP/1.1\r\n" + HEAD + b"X-Slow: " + b"a" * 100, id="a header a byte at a time"),
    pytest.param(b"\r\n" * 100, id="blank lines before a request"),
])
def test_headers_that_trickle_are_cut_off_at_the_deadline(engine, collection, module_home, trickle):
    with serving(engine, collection, module_home, **SHORT) as port, connect(port) as slow:
        # A byte every 0.2 s keeps the 1 s idle timeout from firing: the 2 s header deadline must.
        assert 2 - 0.5 < closed_after(slow, trickle) < 2 + GRACE
        healthy(port)


def test_the_header_deadline_runs_from_the_last_answer(engine, collection, module_home):
    with serving(engine, collection, module_home, **SHORT) as port, connect(port) as slow:
        for _ in range(3):  # each answer gives the next request its own 2 s
            slow.sendall(b"GET /healthz HTTP/1.1\r\n" + HEAD)
            time.sleep(0.6)
            slow.sendall(b"\r\n")
            assert slow.recv(65536).startswith(b"HTTP/1.1 200")
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert closed_after(slow, HEAD * 100) < 2 + GRACE


@pytest.mark.parametrize("sent", [b"{", b""], ids=["half a body, then silence", "a body a byte at a time"])
def test_a_body_that_does_not_arrive_is_cut_off(engine, collection, module_home, sent):
    request = SEARCH + b"Content-Length: 1000\r\n\r\n" + sent
    with serving(engine, collection, module_home, **SHORT) as port, server_errors() as errors:
        with connect(port) as slow:
            slow.sendall(request)
            assert closed_after(slow, b'"' * 1000 if not sent else b"") < 1 + GRACE
        healthy(port)  # and the cut-off is no error of the server's: no traceback in its log
    assert [record.getMessage() for record in errors] == []


def test_a_large_body_sent_at_once_is_read(engine, collection, module_home):
    """The header bound counts header bytes only: a body in the same reads is not refused."""
    body = b'{"text": "goldfish"' + b" " * (1024 * 1024) + b"}"
    with serving(engine, collection, module_home, **SHORT) as port, connect(port) as sock:
        answer = answer_to(sock, SEARCH + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


@pytest.mark.parametrize("size", [128 * 1024, 16 * 1024 * 1024], ids=["128 KiB", "16 MiB"])
def test_an_oversized_header_block_is_refused(engine, collection, module_home, size):
    request = b"GET /healthz HTTP/1.1\r\n" + HEAD + b"X-Big: " + b"a" * size + b"\r\nConnection: close\r\n\r\n"
    with serving(engine, collection, module_home, **SHORT) as port:
        with connect(port) as sock:
            answer = answer_to(sock, request)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:300]
        with connect(port) as sock:  # just under the bound is fine
            fits = b"X-Big: " + b"a" * (MAX_HEADER_BYTES - 200) + b"\r\n"
            assert answer_to(sock, b"GET /healthz HTTP/1.1\r\n" + HEAD + fits + b"Connection: close\r\n\r\n") \
                .startswith(b"HTTP/1.1 200")
        healthy(port)


def test_too_many_header_fields_are_refused(engine, collection, module_home):
    def fields(n: int) -> bytes:
        return b"GET /healthz HTTP/1.1\r\n" + HEAD + b"".join(b"X-F%d: 1\r\n" % i for i in range(n - 2)) \
            + b"Connection: close\r\n\r\n"

    with serving(engine, collection, module_home, **SHORT) as port:
        for n in (MAX_HEADER_FIELDS + 1, 20_000):
            with connect(port) as sock:
                answer = answer_to(sock, fields(n))
            # The small request is read whole, so its answer arrives; the large one may be cut short by a reset.
            assert answer.startswith(b"HTTP/1.1 431") or (n > MAX_HEADER_FIELDS + 1 and answer == b""), (n, answer[:300])
        with connect(port) as sock:
            assert answer_to(sock, fields(MAX_HEADER_FIELDS)).startswith(b"HTTP/1.1 200")
        healthy(port)


def test_slow_connections_up_to_the_bound_do_not_lock_out_a_search(engine, collection, module_home):
    bound = settings().max_connections
    assert bound >= 64
    with serving(engine, collection, module_home) as port, contextlib.ExitStack() as held:
        slow = [held.enter_context(connect(port)) for _ in range(bound - 1)]
        for i, sock in enumerate(slow):  # 32 uploads under way, the rest half-way through their headers
            sock.sendall(SEARCH + b"Content-Length: 100000\r\n\r\n{" if i < 32 else b"GET /healthz HTTP/1.1\r\n")
        time.sleep(0.5)
        started = time.monotonic()
        with connect(port) as sock:
            answer = answer_to(sock, SEARCH + b'Connection: close\r\nContent-Length: 20\r\n\r\n{"text": "goldfish"}')
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert time.monotonic() - started < 1
        extra = held.enter_context(connect(port))  # the bound is reached: one more is turned away
        with connect(port) as over:
            refused = over.recv(65536)
            assert refused.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in refused.lower(), refused
            assert over.recv(65536) == b""
        extra.close()
        deadline = time.monotonic() + 5  # once a connection ends, its place is free again
        while True:
            with connect(port) as sock:
                answer = answer_to(sock, b"GET /healthz HTTP/1.1\r\n" + HEAD + b"Connection: close\r\n\r\n")
            if answer.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
