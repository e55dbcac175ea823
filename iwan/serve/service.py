"""What the routes share: the database, the settings, the decoder's policy, and the collections
as they load."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from importlib.resources import files
from pathlib import Path

import numpy as np
from fastapi import HTTPException
from sqlalchemy.engine import Engine

from iwan.config import Settings
from iwan.serve.metrics import Metrics
from iwan.vision.decode import UPLOAD_FORMATS, DecodePolicy

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
        self.collections = {c.name: c for c in collections}
        self.pending = [name for name in load if name not in self.collections]
        self.error: str | None = None
        self.opened: list = []
        """Collections this service opened itself, closed at shutdown."""
        self._lock = threading.Lock()
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

    def load(self) -> None:
        """Open the pending collections one by one (in a background thread at start-up)."""
        from iwan.collections.live import LiveCollection

        for name in list(self.pending):
            try:
                collection = LiveCollection.open(self.engine, name, settings=self.settings)
                # The predictor (and hash net) load on first use: pay that before answering ready.
                collection.image_queries([np.zeros((32, 32, 3), dtype=np.uint8)])
            except Exception as err:  # noqa: BLE001 - any failure must reach /readyz and the log
                log.error("iwan serve: cannot load collection %r: %s", name, err)
                self.error = f"collection {name!r} failed to load: {err}"
                return
            with self._lock:
                self.collections[name] = collection
                self.opened.append(collection)
                self.pending.remove(name)
            log.info("iwan serve: collection %r loaded (%d images)", name, collection.size)

    def close(self) -> None:
        for collection in self.opened:
            collection.close()
        self.opened.clear()
