"""The application factory: the collections to serve, the settings, and everything around the routes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.staticfiles import StaticFiles
from sqlalchemy.engine import Engine

from iwan.config import MAX_BODY_BYTES, Settings
from iwan.config import settings as current_settings
from iwan.serve.metrics import Metrics, MetricsMiddleware
from iwan.serve.uploads import BodyLimit

log = logging.getLogger(__name__)

STATIC = Path(str(files("iwan.serve") / "static"))
RETRY_AFTER_S = 5
"""What a 503 asks a client to wait: the database's restart, or the collections' loading."""


class Service:
    """What the routes share: the database, the settings, and the collections as they load."""

    def __init__(self, engine: Engine, settings: Settings, collections: Iterable, load: Sequence[str]):
        self.engine = engine
        self.settings = settings
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
        from PIL import Image

        from iwan.collections.live import LiveCollection

        for name in list(self.pending):
            try:
                collection = LiveCollection.open(self.engine, name)
                # The predictor (and hash net) load on first use: pay that before answering ready.
                collection.image_queries([Image.new("RGB", (32, 32))])
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


def create_app(
    engine: Engine,
    collections: Iterable = (),
    *,
    load: Sequence[str] = (),
    settings: Settings | None = None,
) -> FastAPI:
    """The service over `collections` (opened LiveCollections, owned by the caller) and the
    collections named in `load`, opened in the background at start-up (/readyz answers 503 until
    they are all loaded; they are closed at shutdown)."""
    from iwan.serve.routes import router

    service = Service(engine, settings or current_settings(), collections, load)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = None
        if service.pending:
            loader = threading.Thread(target=service.load, name="iwan-load", daemon=True)
            loader.start()
        try:
            yield
        finally:
            if loader is not None:
                loader.join()
            service.close()

    app = FastAPI(
        title="iwan",
        summary="Semantic image retrieval: search by image, by words or by a stored image, with explanations.",
        version="1",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/docs/assets", StaticFiles(directory=_swagger_ui()), name="swagger-ui")
    if service.settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(service.settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"], allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    return app


def _swagger_ui() -> Path:
    """Swagger UI 5's files (it reads OpenAPI 3.1) as the fastapi-offline package ships them: no CDN."""
    return Path(str(files("fastapi_offline") / "static"))
