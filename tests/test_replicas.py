"""Replicas in step: separate processes serving one collection converge through the change log
(LISTEN/NOTIFY), catch up after losing their connection, and a killed add leaves nothing behind."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from livedata import REPO, Replica, png, tiny_collection, tiny_encoder
from test_collections import table_counts

from iwan.collections import ingest as uploads
from iwan.config import settings
from iwan.db import collections as store

CONVERGE_SECONDS = 20
"""Generous for a loaded CI machine; bench_live.py measures the real lag (well under a second)."""


@pytest.fixture
def shared(engine, tmp_path, monkeypatch):
    tiny_collection(engine, tmp_path, monkeypatch, "shared")
    uploads.add_files(engine, "shared", [(f"{i}.png", png(i)) for i in range(5)], tiny_encoder(), settings=settings())
    return engine


def converged(replicas: list[Replica], text: str, timeout: float = CONVERGE_SECONDS) -> list[dict]:
    """Each replica's state once all hold the same images (and answer a query alike)."""
    deadline = time.monotonic() + timeout
    while True:
        states = [r.ask(do="state", text=text) for r in replicas]
        if all(s["ids"] == states[0]["ids"] and s["iwan"] == states[0]["iwan"] for s in states):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"the replicas did not converge within {timeout} s: {states}")
        time.sleep(0.1)


def query_word(engine) -> str:
    from iwan.collections.live import LiveCollection

    with LiveCollection.open(engine, "shared", follow=False) as live:
        return live.words[int(live.stored_queries(live.image_ids[:1]).word_ids[0, 0])]


def test_two_replicas_converge_after_changes_in_either(shared):
    word = query_word(shared)
    one, two = Replica("shared"), Replica("shared")
    try:
        start = converged([one, two], word)[0]
        assert len(start["ids"]) == 5

        added = one.ask(do="add", seeds=[10, 11, 12])["added"]
        after_add = converged([one, two], word)
        assert after_add[1]["ids"] == sorted(start["ids"] + added)

        two.ask(do="remove", ids=[added[0], start["ids"][0]])
        after_remove = converged([one, two], word)
        assert added[0] not in after_remove[0]["ids"] and start["ids"][0] not in after_remove[0]["ids"]

        more = two.ask(do="add", seeds=[20])["added"]
        final = converged([one, two], word)
        assert more[0] in final[0]["ids"] and final[0]["seq"] == final[1]["seq"]
        with shared.connect() as conn:
            truth = store.member_ids(conn, store.get(conn, "shared").id).tolist()
        assert final[0]["ids"] == truth, "PostgreSQL is the one source of truth"
    finally:
        one.close()
        two.close()


def test_a_replica_that_loses_its_connection_reconnects_and_catches_up(shared):
    word = query_word(shared)
    replica = Replica("shared")
    try:
        before = replica.ask(do="state", text=word)
        with shared.connect() as conn:
            killed = conn.scalar(sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        assert killed >= 1
        shared.dispose()
        # Changed while the replica is (re)connecting: it must learn of it from the log, not the NOTIFY.
        report = uploads.add_files(shared, "shared", [("new.png", png(30))], tiny_encoder(), settings=settings())
        new = report.added[0][0]
        deadline = time.monotonic() + CONVERGE_SECONDS
        while new not in (state := replica.ask(do="state", text=word))["ids"]:
            assert time.monotonic() < deadline, f"no catch-up after the connection loss: {state}"
            time.sleep(0.1)
        assert state["reconnects"] >= 1 and state["ids"] == sorted(before["ids"] + [new])
        # And it is listening again: the next change arrives by notification.
        uploads.remove(shared, "shared", [new], image_dir=settings().image_dir)
        converged([replica], word)
        deadline = time.monotonic() + CONVERGE_SECONDS
        while new in (state := replica.ask(do="state", text=word))["ids"]:
            assert time.monotonic() < deadline, f"the removal did not arrive: {state}"
            time.sleep(0.1)
        assert state["following"]
    finally:
        replica.close()


ADD = r"""
import sys
sys.path.insert(0, sys.argv[1])
import livedata
from iwan.collections import ingest as uploads
from iwan.config import settings
from iwan.db.engine import make_engine
files = [(f"{s}.png", livedata.png(s)) for s in range(100, 108)]
uploads.add_files(make_engine(), "shared", files, livedata.tiny_encoder(), settings=settings())
"""


def test_a_killed_add_leaves_the_database_as_before(shared):
    before = table_counts(shared)
    collection = store.get(shared, "shared")
    blocker = shared.connect()
    transaction = blocker.begin()
    # An uncommitted row with the bytes of the add's last file: the add's INSERT of that file waits
    # on it, inside its transaction, after its images rows are in.
    image = blocker.scalar(sa.text("INSERT INTO images (dataset, split, position, fine_label) VALUES ('blocker', 'x', 0, -1) RETURNING id"))
    blocker.execute(sa.text(
        "INSERT INTO image_files (image_id, collection_id, sha256, media_type, size, file_name) VALUES (:i, :c, :s, 'image/png', 1, 'x')"),
        {"i": image, "c": collection.id, "s": hashlib.sha256(png(107)).hexdigest()})
    adding = subprocess.Popen([sys.executable, "-c", ADD, str(Path(__file__).parent)], env={**os.environ, "PYTHONPATH": str(REPO)},
                              cwd=REPO, stderr=subprocess.PIPE)
    try:
        with shared.connect() as watcher:
            deadline = time.monotonic() + 120
            while not watcher.scalar(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")):
                watcher.rollback()  # pg_stat_activity is a snapshot per transaction
                assert adding.poll() is None, adding.stderr.read().decode()[-3000:]
                activity = "SELECT pid, state, wait_event_type, wait_event, query FROM pg_stat_activity"
                assert time.monotonic() < deadline, f"the add never blocked: {watcher.execute(sa.text(activity)).all()}"
                time.sleep(0.1)
            half_way = watcher.scalar(sa.text(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.wait_event_type = 'Lock' "
                "AND l.relation = 'images'::regclass AND l.mode = 'RowExclusiveLock'"))
            assert half_way == 1, "the add had written its images rows when it was killed"
        os.kill(adding.pid, signal.SIGKILL)
        adding.wait(10)
    finally:
        transaction.rollback()
        blocker.close()
    # The server rolls the dead client's transaction back once it notices the client is gone.
    with shared.connect() as conn:
        deadline = time.monotonic() + 30
        while conn.scalar(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                  "AND pid <> pg_backend_pid() AND state <> 'idle'")):
            assert time.monotonic() < deadline
            conn.rollback()
            time.sleep(0.1)
    assert table_counts(shared) == before
    # Nothing is left half-stored that would get in the way: the same files add now, whole.
    report = uploads.add_files(shared, "shared", [(f"{s}.png", png(s)) for s in range(100, 108)], tiny_encoder(),
                               settings=settings())
    assert len(report.added) == 8 and table_counts(shared)["collection_changes"] == before["collection_changes"] + 1
    with shared.connect() as conn:
        assert np.isin([i for i, _ in report.added], store.member_ids(conn, collection.id)).all()
