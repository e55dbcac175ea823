"""Faults: PostgreSQL unreachable (searches answer from memory, writes 503 + Retry-After, nothing
lost once it is back), an embedded PostgreSQL that stops under a running server (started again,
nothing lost), and two `iwan serve` processes on one database converging."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from conftest import private_folder
from fastapi.testclient import TestClient
from livedata import REPO, png
from serving import free_port, make_collection, running

from iwan.config import settings
from iwan.db import embedded, migrate
from iwan.db.engine import make_engine
from iwan.serve import create_app

KEY = "fault-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONVERGE_SECONDS = 20
"""Generous for a loaded CI machine; the follower applies a change well within a second."""
BACK_SECONDS = 15
"""How soon an embedded server that stopped must serve writes again (it takes about a second;
the README promises seconds)."""


def set_connections(url: str, allowed: bool) -> None:
    """Open or shut the database to new connections; shutting it also ends the open ones."""
    database = sa.make_url(url).database
    admin = sa.create_engine(sa.make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allowed).lower()}'))
        if not allowed:
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                         {"d": database})
    admin.dispose()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("IWAN_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_database_down_searches_answer_and_writes_wait(database_url, home, one_torch_thread):
    engine = sa.create_engine(database_url, pool_pre_ping=True)
    collection = make_collection(engine, home, "pics", [(f"img{i}.png", png(i)) for i in range(6)], label="before")
    first = int(collection.image_ids[0])
    app = create_app(engine, [collection], settings=dataclasses.replace(settings(), api_key=KEY))
    try:
        with TestClient(app) as client:
            seen = client.post("/v1/collections/pics/search", json={"image_id": first}).json()["results"]
            set_connections(database_url, False)
            try:
                by_id = client.post("/v1/collections/pics/search", json={"image_id": first})
                assert by_id.status_code == 200 and by_id.json()["results"] == seen
                by_image = client.post("/v1/collections/pics/search", files={"image": ("q.png", png(1), "image/png")})
                assert by_image.status_code == 200 and by_image.json()["results"]
                assert {r["label"] for r in by_image.json()["results"]} == {"before"}  # labels from memory too
                assert client.get("/readyz").status_code == 200
                for write in (
                    lambda: client.post("/v1/collections/pics/images", files=[("images", ("new.png", png(50), "image/png"))],
                                        headers=AUTH),
                    lambda: client.delete(f"/v1/images/{first}", headers=AUTH),
                ):
                    answer = write()
                    assert answer.status_code == 503, answer.text
                    assert int(answer.headers["retry-after"]) > 0 and "database" in answer.json()["detail"]
            finally:
                set_connections(database_url, True)
            added = client.post("/v1/collections/pics/images", files=[("images", ("new.png", png(50), "image/png"))],
                                headers=AUTH)
            assert added.status_code == 201, added.text
            new = added.json()["added"][0]["image_id"]
            assert client.get("/v1/collections").json()[0]["size"] == 7
            again = client.post("/v1/collections/pics/search", json={"image_id": new})
            assert again.status_code == 200 and {r["image_id"] for r in again.json()["results"]} == {
                int(i) for i in collection.image_ids if i != new}
    finally:
        collection.close()
        engine.dispose()


def add(url: str, seed: int) -> httpx.Response:
    return httpx.post(f"{url}/v1/collections/pics/images", files=[("images", (f"n{seed}.png", png(seed), "image/png"))],
                      headers=AUTH, timeout=60)


def stored_images(engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(sa.text("SELECT count(*) FROM images"))


@pytest.mark.parametrize("deep", [False, True], ids=["socket-in-pgdata", "long-path-private-socket-dir"])
def test_an_embedded_server_that_stops_is_started_again(deep, monkeypatch, one_torch_thread):
    """A clean stop (pg_ctl stop, as an operator would) and a crash (kill -9 of the postmaster)
    under a running server: writes succeed again within seconds, nothing written before is lost,
    and the server keeps its address (its socket's folder)."""
    home = private_folder("iwan-test-") / ("l" * 90 if deep else "") / "home"
    monkeypatch.setenv("IWAN_HOME", str(home))
    served = dataclasses.replace(settings(), api_key=KEY)
    pgdata = served.pgdata
    engine = make_engine(settings=served)
    try:
        migrate.upgrade(engine)
        collection = make_collection(engine, home, "pics", [(f"img{i}.png", png(i)) for i in range(3)])
        app = create_app(engine, [collection], settings=served)
        socket_dir = Path(engine.url.query["host"])
        assert (socket_dir == pgdata) is not deep
        with running(app) as url:
            assert add(url, 60).status_code == 201

            first = embedded.server_pid(pgdata)
            embedded._run_as(embedded._server_user(),
                             [embedded._pg("pg_ctl"), "-D", str(pgdata.resolve()), "-w", "-m", "fast", "stop"])
            assert embedded.server_pid(pgdata) is None
            stopped = time.monotonic()
            assert eventually(lambda: add(url, 61).status_code == 201, BACK_SECONDS), "writes never came back"
            assert time.monotonic() - stopped < BACK_SECONDS
            assert embedded.server_pid(pgdata) not in (None, first)
            assert stored_images(engine) == 5

            # A crash, and no request meanwhile: the collection's follower finds the server gone.
            second = embedded.server_pid(pgdata)
            os.kill(second, signal.SIGKILL)
            assert eventually(lambda: embedded.server_pid(pgdata) not in (None, second), BACK_SECONDS), \
                "the killed server was not started again"
            assert eventually(lambda: add(url, 62).status_code == 201, BACK_SECONDS)
            assert stored_images(engine) == 6
            assert httpx.get(f"{url}/v1/collections").json()[0]["size"] == 6
            assert (pgdata / "postmaster.pid").read_text().splitlines()[4] == str(socket_dir)
            assert eventually(lambda: collection.following, BACK_SECONDS), "the follower did not reconnect"
        collection.close()
    finally:
        engine.dispose()
        embedded.stop(pgdata)


class Server:
    """`iwan serve` as its own process on a loopback port."""

    def __init__(self, database_url: str, home, name: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "IWAN_DATABASE_URL": database_url, "IWAN_HOME": str(home),
               "IWAN_API_KEY": KEY}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "iwan", "serve", "--port", str(self.port), "--collection", name, "--log-level", "warning"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"iwan serve exited {self.process.returncode}: {self.process.stderr.read()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("iwan serve was not ready in time")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def ids_of(server: Server, image_id: int) -> int:
    """The status of a search by `image_id` on `server` (200 once it holds the image, 404 before)."""
    return httpx.post(f"{server.url}/v1/collections/pics/search", json={"image_id": image_id}, timeout=30).status_code


def eventually(condition, timeout: float = CONVERGE_SECONDS) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_two_servers_on_one_database_converge(database_url, home):
    engine = sa.create_engine(database_url)
    make_collection(engine, home, "pics", [(f"img{i}.png", png(i)) for i in range(4)], hash_model=None).close()
    engine.dispose()
    servers = [Server(database_url, home, "pics") for _ in range(2)]
    try:
        for server in servers:
            server.wait_ready()
        one, two = servers
        assert httpx.get(one.url + "/healthz").json() == {"status": "ok"}
        added = httpx.post(f"{one.url}/v1/collections/pics/images", files=[("images", ("a.png", png(70), "image/png"))],
                           headers=AUTH, timeout=120)
        assert added.status_code == 201, added.text
        new = added.json()["added"][0]["image_id"]
        assert ids_of(one, new) == 200
        assert eventually(lambda: ids_of(two, new) == 200), "the second server never saw the image added to the first"
        assert httpx.get(two.url + "/v1/collections").json()[0]["size"] == 5
        assert httpx.delete(f"{two.url}/v1/images/{new}", headers=AUTH).status_code == 204
        assert ids_of(two, new) == 404
        assert eventually(lambda: ids_of(one, new) == 404), "the first server never saw the removal made on the second"
        assert httpx.get(one.url + "/v1/collections").json()[0]["size"] == 4
    finally:
        for server in servers:
            server.stop()


def test_serve_refuses_an_unknown_collection(database_url, home):
    engine = sa.create_engine(database_url)
    make_collection(engine, home, "pics", [], hash_model=None).close()
    engine.dispose()
    run = subprocess.run([sys.executable, "-m", "iwan", "serve", "--collection", "nope"], check=False, cwd=REPO, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "iwan: error: unknown collection 'nope': the database holds pics; create one with `iwan collection create`"]
