"""The service's socket limits, measured over loopback against a real server in its own process.

Runs the service (no collections: only the HTTP layer is measured, no request reaches the
database) under the uvicorn configuration `iwan serve` uses, with the settings in force
(IWAN_IDLE_TIMEOUT, IWAN_HEADER_TIMEOUT, IWAN_BODY_TIMEOUT, IWAN_MAX_CONNECTIONS), and measures:
when an idle connection, headers sent a byte a second, a half-sent request and a body sent a
byte a second are cut off; the answers to a 16 MiB header line, 20,000 header lines and 4 x 64 MiB
headers in parallel, with the server's peak resident memory; a health request's answer with the
connection bound less one held by slow clients; and the next connection's answer. Every wait is
bounded (65 s); about 35 s with the default timeouts; the last line is JSON.

    python benchmarks/bench_sockets.py
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
LIMIT_S = 65.0
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
UPLOAD = (b"POST /v1/collections/any/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
          b"Content-Length: 100000\r\n\r\n")


def serve() -> None:
    """The child: the service on a free loopback port (printed), until its parent kills it."""
    sys.path.insert(0, str(REPO))
    import sqlalchemy as sa
    import uvicorn

    from iwan.config import settings
    from iwan.serve import create_app
    from iwan.serve.app import server_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(sa.create_engine("postgresql://"), [], settings=settings())  # never connected
    print(port, app.state.service.settings.max_connections, flush=True)
    uvicorn.Server(server_config(app, "127.0.0.1", port, log_level="error")).run()


def closed_after(sock: socket.socket, trickle: bytes = b"") -> float:
    """Seconds until the server ends the connection, `trickle` sent a byte a second meanwhile
    (LIMIT_S when it does not)."""
    start = time.monotonic()
    while time.monotonic() - start < LIMIT_S:
        readable, _, _ = select.select([sock], [], [], 1.0)
        try:
            if readable:
                if not sock.recv(65536):
                    break
            elif trickle:
                sock.send(trickle[:1])
                trickle = trickle[1:] or trickle
        except OSError:
            break
    return round(time.monotonic() - start, 2)


def answer(port: int, request: bytes) -> tuple[str, float]:
    """The status line the server answers `request` with ('closed' where it closed instead), and
    the seconds it took."""
    with socket.create_connection(("127.0.0.1", port), timeout=LIMIT_S) as sock:
        start = time.monotonic()
        with contextlib.suppress(OSError):
            sock.sendall(request)
        got = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                got += chunk
        return got.split(b"\r\n", 1)[0].decode() or "closed", round(time.monotonic() - start, 3)


def main() -> None:
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        port, bound = map(int, server.stdout.readline().split())
        deadline = time.monotonic() + 30
        while True:  # until the server listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.05)
        measure(port, bound, psutil.Process(server.pid))
    finally:
        server.kill()
        server.wait()


def measure(port: int, bound: int, process: psutil.Process) -> None:
    def connect() -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=LIMIT_S)

    result: dict = {"rss_idle_mib": process.memory_info().rss >> 20}
    slow = {
        "idle_closed_s": (connect(), b"", b""),
        "half_sent_request_closed_s": (connect(), HEALTH, b""),
        "headers_1_byte_per_s_closed_s": (connect(), HEALTH, b"X-Slow: b\r\n" * 100),
        "body_1_byte_per_s_closed_s": (connect(), UPLOAD, b" " * 1000),
    }

    def cut_off(name: str, sock: socket.socket, first: bytes, trickle: bytes) -> None:
        with sock:
            sock.sendall(first)
            result[name] = closed_after(sock, trickle)

    watchers = [threading.Thread(target=cut_off, args=(name, *case)) for name, case in slow.items()]
    for watcher in watchers:
        watcher.start()
    result["header_16_mib"] = answer(port, HEALTH + b"X-Big: " + b"a" * (16 << 20) + b"\r\nConnection: close\r\n\r\n")
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(20_000))
    result["header_20000_fields"] = answer(port, HEALTH + fields + b"Connection: close\r\n\r\n")

    huge = HEALTH + b"X-Big: " + b"a" * (64 << 20) + b"\r\nConnection: close\r\n\r\n"
    answers: list = []
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    senders = [threading.Thread(target=lambda: answers.append(answer(port, huge))) for _ in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    done.set()
    sampler.join()
    result["header_4x64_mib_parallel"] = answers
    result["rss_peak_4x64_mib_mib"] = peak[0] >> 20

    # The connection bound less one, counting the slow connections above that are still open.
    held = [connect() for _ in range(bound - 1 - sum(w.is_alive() for w in watchers))]
    for i, sock in enumerate(held):
        sock.sendall(UPLOAD if i < 32 else HEALTH)
    time.sleep(0.5)
    result["health_with_bound_less_one_open"] = answer(port, HEALTH + b"Connection: close\r\n\r\n")
    extra = connect()
    time.sleep(0.2)
    with connect() as over:
        over.settimeout(10)
        try:
            result["connection_over_bound"] = over.recv(65536).split(b"\r\n", 1)[0].decode() or "closed"
        except TimeoutError:
            result["connection_over_bound"] = "no answer in 10 s"
    for sock in [*held, extra]:
        sock.close()
    for watcher in watchers:
        watcher.join()

    for name, value in result.items():
        print(f"{name}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        main()
