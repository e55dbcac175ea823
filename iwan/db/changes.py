"""Following a collection's change log: LISTEN for NOTIFY, apply what has not been seen, catch up
after every (re)connect.

Writers log each change in the change's own transaction and `pg_notify` it (iwan.db.collections), so a
notification arrives only once the change is visible. The follower does not trust notifications
to carry anything: on each one, on every reconnect and every `poll_seconds`, it calls `catch_up`,
which reads the log after the last sequence number applied. Lost notifications (a dropped
connection, a restart of the server) thus cost latency, never changes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from iwan.db.collections import CHANNEL

log = logging.getLogger(__name__)

RECONNECT_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0)
"""Seconds between reconnection attempts, the last repeated while the server stays away."""
POLL_SECONDS = 30.0
"""A catch-up even without notifications: a safety net, not the path changes normally take."""
WAKE_SECONDS = 0.25
"""How often the listening loop checks whether it should stop."""


def listening_connection(engine: Engine) -> psycopg.Connection:
    """A connection of its own for LISTEN (autocommit, out of the engine's pool), made as the
    engine makes its connections: through its connect step, which starts an embedded server
    again that stopped, and with its timeout."""
    pooled = engine.raw_connection()
    conn = pooled.driver_connection
    if not isinstance(conn, psycopg.Connection):
        pooled.close()
        raise TypeError(f"following changes needs the psycopg driver, not {engine.dialect.driver}")
    pooled.detach()
    conn.rollback()
    conn.autocommit = True
    return conn


class Follower(threading.Thread):
    """A daemon thread that calls `catch_up()` whenever collection `collection_id` may have changed."""

    def __init__(self, engine: Engine, collection_id: int, catch_up: Callable[[], object], poll_seconds: float = POLL_SECONDS):
        super().__init__(name=f"iwan-follower-{collection_id}", daemon=True)
        self.engine = engine
        self.collection_id = collection_id
        self.catch_up = catch_up
        self.poll_seconds = poll_seconds
        self.connected = threading.Event()
        """Set while LISTENing (after the catch-up that follows each connect)."""
        self.reconnects = 0
        self._halt = threading.Event()
        self._conn: psycopg.Connection | None = None

    def stop(self, timeout: float = 5.0) -> None:
        self._halt.set()
        self.join(timeout)

    def run(self) -> None:
        failures = 0
        while not self._halt.is_set():
            try:
                with listening_connection(self.engine) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._safe_catch_up()
                    self.connected.set()
                    failures = 0
                    self._listen(conn)
            except (psycopg.OperationalError, sa.exc.OperationalError) as err:
                if self._halt.is_set():
                    break
                if self.connected.is_set():
                    self.reconnects += 1
                    log.warning("collection %d: lost the database connection (%s); reconnecting", self.collection_id,
                                str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
                self.connected.clear()
                self._halt.wait(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)])
                failures += 1
        self.connected.clear()

    def _listen(self, conn: psycopg.Connection) -> None:
        mine = f"{self.collection_id}:"
        last_poll = time.monotonic()
        while not self._halt.is_set():
            wanted = False
            for notify in conn.notifies(timeout=WAKE_SECONDS, stop_after=1):
                wanted |= notify.channel == CHANNEL and notify.payload.startswith(mine)
            # A quiet connection may be dead without knowing it: a query finds out.
            if not wanted and time.monotonic() - last_poll >= self.poll_seconds:
                conn.execute("SELECT 1")
                wanted = True
            if wanted:
                last_poll = time.monotonic()
                self._safe_catch_up()

    def _safe_catch_up(self) -> None:
        """Catch up; a failure (the database away) is retried at the next chance, not fatal."""
        try:
            self.catch_up()
        except psycopg.OperationalError:
            raise
        except Exception as err:  # the thread must outlive any one failed catch-up
            log.warning("collection %d: catching up failed (%s); retrying later", self.collection_id, err)
            raise psycopg.OperationalError(str(err)) from err
