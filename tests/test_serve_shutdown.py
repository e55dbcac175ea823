"""The service's shutdown takes bounded time (Service.stop): a collection still loading, or one
whose snapshot cannot be saved in time, is left behind with a warning instead of holding the
process past what a supervisor allows, and nothing is lost."""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from livedata import png
from serving import make_collection

from iwan.collections.live import snapshot_path
from iwan.config import settings
from iwan.serve import create_app

TIMEOUT_S = 1.0
HELD_S = 30.0
"""How long a test holds what the shutdown waits for: without the bound, the shutdown lasts this."""


@pytest.fixture
def pics(engine, tmp_path, monkeypatch, one_torch_thread) -> None:
    """Collection `pics` of two images (saved, closed) in an IWAN_HOME of its own."""
    home = tmp_path / "home"
    monkeypatch.setenv("IWAN_HOME", str(home))
    make_collection(engine, home, "pics", [(f"img{i}.png", png(i)) for i in range(2)]).close()


def hold(lock, release: threading.Event) -> threading.Thread:
    """`lock` (a context manager) held by a thread of its own until `release` is set or HELD_S pass."""
    held = threading.Event()

    def holder() -> None:
        with lock:
            held.set()
            release.wait(HELD_S)

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    assert held.wait(10)
    return thread


def saved_ids() -> list[int]:
    """The ids in the saved snapshot of `pics`; none while a save replaces it (the old folder is
    moved away before the new one is renamed in: hashing.arrays.replacing_folder)."""
    try:
        return np.load(snapshot_path("pics", settings()) / "ids.npy", allow_pickle=False).tolist()
    except FileNotFoundError:
        return []


def test_a_snapshot_that_cannot_be_saved_in_time_does_not_hold_up_the_shutdown(engine, pics, caplog):
    app = create_app(engine, load=["pics"], shutdown_timeout=TIMEOUT_S)
    release = threading.Event()
    with TestClient(app) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.1)
        served = app.state.service.collections["pics"]
        [(new, _)] = served.add_files([("new.png", png(7))]).added
        assert new not in saved_ids(), "saved before the stop: the test proves nothing"
        # A search holds the collection's lock; one that never ends stands for a save that cannot
        # finish in time (a slow disk): the save waits for the lock.
        holder = hold(served._lock, release)
        stopping = time.monotonic()
    took = time.monotonic() - stopping
    release.set()
    holder.join()

    assert took < TIMEOUT_S + 5, f"the shutdown waited {took:.1f} s for the save"
    assert "collection 'pics' was not closed (its snapshot saved)" in caplog.text
    # The save left behind finishes once it can, while the process lives: nothing is lost.
    deadline = time.monotonic() + 60
    while new not in saved_ids():
        assert time.monotonic() < deadline, "the abandoned save never finished"
        time.sleep(0.1)


def test_a_shutdown_during_loading_does_not_wait_for_the_load(engine, database_url, pics, caplog):
    app = create_app(engine, load=["pics"], shutdown_timeout=TIMEOUT_S)
    service = app.state.service
    locker = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    release = threading.Event()

    @contextlib.contextmanager
    def table_locked():
        with locker.connect() as conn, conn.begin():
            conn.execute(sa.text("LOCK TABLE collections IN ACCESS EXCLUSIVE MODE"))
            yield

    try:
        # Loading reads the collection's row first: a lock on the table holds it there.
        holder = hold(table_locked(), release)
        with TestClient(app) as client:
            assert client.get("/readyz").json()["pending"] == ["pics"]
            stopping = time.monotonic()
        took = time.monotonic() - stopping
        release.set()
        holder.join()
    finally:
        release.set()
        locker.dispose()

    assert took < TIMEOUT_S + 5, f"the shutdown waited {took:.1f} s for the load"
    assert "collection 'pics' was still loading" in caplog.text
    # Let go, the load finishes and closes what it opened: no follower outlives the service.
    assert service._loader is not None
    service._loader.join(120)
    assert not service._loader.is_alive()
    assert "pics" not in service.collections and service.opened == []
    assert not [t.name for t in threading.enumerate() if t.name.startswith("iwan-follower")]
