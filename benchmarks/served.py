"""`iwan serve` in its own process for the service benchmarks: a free loopback port, ready before
the first request, stopped after the last."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def iwan_serve(collection: str, who: str, ready_within_s: float = 600) -> Iterator[tuple[subprocess.Popen, str, float]]:
    """(the server process, its base URL, seconds it took to answer /readyz 200); `who` names the
    benchmark in the exit message when the server does not come up."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "iwan", "serve", "--port", str(port), "--collection", collection,
                               "--log-level", "warning"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while True:
            if server.poll() is not None:
                sys.exit(f"{who}: iwan serve exited: {server.stderr.read() if server.stderr else ''}")
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.perf_counter() - started > ready_within_s:
                sys.exit(f"{who}: not ready after {ready_within_s:.0f} s")
            time.sleep(0.05)
        yield server, url, time.perf_counter() - started
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
