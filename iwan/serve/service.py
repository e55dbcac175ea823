"""What the routes share: the database, the settings, the decoder's policy, and the collections
as they load."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
from fastapi import HTTPException
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from iwan.config import SHUTDOWN_TIMEOUT_S, Settings
from iwan.db.engine import DatabaseError
from iwan.serve.metrics import Metrics
from iwan.vision.decode import UPLOAD_FORMATS, DecodePolicy, MemoryBudget

log = logging.getLogger(__name__)

STATIC = Path(str(files("iwan.serve") / "static"))
RETRY_AFTER_S = 5
"""What a 503 asks a client to wait: the database's restart, or the collections' loading."""


class Service:
    """What the routes share: the database, the settings, and the collections as they load."""

    def __init__(self, engine: Engine, settings: Settings, collections: Iterable, load: Sequence[str]):
        self.engine = engine
        self.settings = settings
        self.policy = DecodePolicy(max_pixels=settings.max_image_pixels, formats=UPLOAD_FORMATS)
        """What an uploaded image may be (the one decoder's policy for this service)."""
        self.budget = MemoryBudget(settings.decode_memory)
        """What concurrent decodes and model passes may hold together (503 beyond it)."""
        self.collections = {c.name: c for c in collections}
        self.pending = [name for name in load if name not in self.collections]
        self.error: str | None = None
        self.opened: list = []
        """Collections this service opened itself, closed at shutdown."""
        self.stopping = threading.Event()
        """Set when the shutdown begins: no collection is opened after it."""
        self._loader: threading.Thread | None = None
        self._lock = threading.Lock()
        self.thumbnails = ThumbnailCache()
        """Thumbnails made by this process (a removal evicts; the routes answer from it only for
        an image that a served collection holds, as the database says)."""
        self.metrics = Metrics(lambda: {name: c.size for name, c in list(self.collections.items())})

    @property
    def ready(self) -> bool:
        return not self.pending and self.error is None

    def collection(self, name: str):
        """The served collection `name`: 404 when unknown, 503 while it is still loading."""
        found = self.collections.get(name)
        if found is not None:
            return found
        if name in self.pending:
            raise HTTPException(503, f"collection {name!r} is still loading; retry shortly",
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        served = ", ".join(sorted(self.collections)) or "none"
        raise HTTPException(404, f"unknown collection {name!r}: this server serves {served}")

    def sweep(self) -> None:
        """Delete the files that adds killed mid-way left behind (at start-up, in the background)."""
        from iwan.collections.ingest import sweep_files

        try:
            deleted = sweep_files(self.engine, self.settings.image_dir)
        except (DatabaseError, DBAPIError) as err:
            log.warning("iwan serve: left-over image files not swept, the database is unavailable: %s", err)
            return
        if deleted:
            log.info("iwan serve: deleted %d image files that interrupted adds left behind", len(deleted))

    def start(self) -> None:
        """Open the pending collections, then sweep, in a background thread (at start-up)."""
        self._loader = threading.Thread(target=self._start, name="iwan-load", daemon=True)
        self._loader.start()

    def _start(self) -> None:
        self.load()
        if not self.stopping.is_set():
            self.sweep()

    def load(self) -> None:
        """Open the pending collections one by one, until the shutdown begins."""
        from iwan.collections.live import LiveCollection

        for name in list(self.pending):
            if self.stopping.is_set():
                return
            try:
                collection = LiveCollection.open(self.engine, name, settings=self.settings)
                # The predictor (and hash net) load on first use: pay that before answering ready.
                collection.image_queries([np.zeros((32, 32, 3), dtype=np.uint8)])
            except Exception as err:  # noqa: BLE001 - any failure must reach /readyz and the log
                log.error("iwan serve: cannot load collection %r: %s", name, err)
                # /readyz is public: a database's detail (a socket's path, a URL) stays in the log.
                reason = "the database is unavailable" if isinstance(err, DatabaseError | DBAPIError) else err
                self.error = f"collection {name!r} failed to load: {reason}"
                return
            with self._lock:
                late = self.stopping.is_set()
                if not late:
                    self.collections[name] = collection
                    self.opened.append(collection)
                    self.pending.remove(name)
            if late:
                # The shutdown stopped waiting for this load: its follower must not outlive the service.
                collection.close()
                return
            log.info("iwan serve: collection %r loaded (%d images)", name, collection.size)

    def stop(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Close the collections this service opened (their snapshots saved), within `timeout`
        seconds in all, the wait for a collection still loading included; past it, stop without
        the rest, a warning naming each (they finish in the background while the process lives)."""
        deadline = time.monotonic() + timeout
        self.stopping.set()
        if self._loader is not None:
            self._loader.join(timeout)
            if self._loader.is_alive():
                loading = f"collection {self.pending[0]!r} was still loading" if self.pending else \
                    "the sweep of left-over image files was still running"
                log.warning("iwan serve: %s %g s into the shutdown; stopping without it", loading, timeout)
        with self._lock:
            left, self.opened = list(self.opened), []
        closer = threading.Thread(target=_close_each, args=(left,), name="iwan-close", daemon=True)
        closer.start()
        closer.join(max(0.0, deadline - time.monotonic()))
        if left:
            log.warning("iwan serve: collection %s was not closed (its snapshot saved) within the shutdown's %g s "
                        "(--shutdown-timeout); stopping without it: the next start replays its changes since "
                        "its last snapshot from the database", ", ".join(repr(c.name) for c in left), timeout)
        self.thumbnails.clear()

    def check_served(self, image_id: int, holding: Iterable[str]) -> None:
        """Nothing when a collection this server serves is among `holding` (the collections that
        hold image `image_id`); 503 when one is still loading; LookupError (404) otherwise."""
        holding = list(holding)
        if any(name in self.collections for name in holding):
            return
        for name in holding:
            if name in self.pending:
                self.collection(name)  # raises the 503
        raise LookupError(f"image {image_id} is in none of the collections this server serves")


def _close_each(collections: list) -> None:
    """Close `collections` in turn, each taken off the list once closed: what is left when the
    shutdown stops waiting is what was not saved."""
    while collections:
        try:
            collections[0].close()
        except Exception as err:  # noqa: BLE001 - the others are still to be closed
            log.error("iwan serve: collection %r could not be closed: %s", collections[0].name, err)
        collections.pop(0)


@dataclass(frozen=True)
class Thumbnail:
    source: tuple
    """What the thumbnail was made from (the image's stored file): an entry for other bytes is stale."""
    data: bytes
    media_type: str
    etag: str


class ThumbnailCache:
    """The last `max_entries` thumbnails by image id, for the threads of one service."""

    def __init__(self, max_entries: int = 2048):
        self.max_entries = max_entries
        self._entries: OrderedDict[int, Thumbnail] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, image_id: int, source: tuple) -> Thumbnail | None:
        with self._lock:
            found = self._entries.get(image_id)
            if found is None or found.source != source:
                return None
            self._entries.move_to_end(image_id)
            return found

    def put(self, image_id: int, thumbnail: Thumbnail) -> None:
        with self._lock:
            self._entries[image_id] = thumbnail
            self._entries.move_to_end(image_id)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def evict(self, image_id: int) -> None:
        with self._lock:
            self._entries.pop(image_id, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __contains__(self, image_id: object) -> bool:
        with self._lock:
            return image_id in self._entries
