"""The application factory: the collections to serve, the settings, and everything around the routes."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.utils import is_body_allowed_for_status_code
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from iwan.config import MAX_BODY_BYTES, Settings
from iwan.config import settings as current_settings
from iwan.serve.limits import BodyLimit, json_safe
from iwan.serve.metrics import MetricsMiddleware
from iwan.serve.routes import router
from iwan.serve.service import STATIC, Service


def create_app(
    engine: Engine,
    collections: Iterable = (),
    *,
    load: Sequence[str] = (),
    settings: Settings | None = None,
) -> FastAPI:
    """The service over `collections` (opened LiveCollections, owned by the caller) and the
    collections named in `load`, opened in the background at start-up (/readyz answers 503 until
    they are all loaded; they are closed at shutdown).

    `settings` (read from the environment when not given: an entry point) are the service's:
    its write key, CORS origins and upload pixel limit, and the settings of the collections it
    opens itself."""
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
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _refused)
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


async def _invalid(request: Request, exc: Exception) -> Response:
    """FastAPI's 422 answer, echoing only what JSON can write (a value sent may not be: NaN, a
    lone surrogate), so that the answer to bad input is never a 500."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse({"detail": json_safe(list(errors))}, status_code=422)


async def _refused(request: Request, exc: Exception) -> Response:
    """FastAPI's answer to an HTTPException, its detail made writable as JSON."""
    assert isinstance(exc, StarletteHTTPException)
    if not is_body_allowed_for_status_code(exc.status_code):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"detail": json_safe(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


def _swagger_ui() -> Path:
    """Swagger UI 5's files (it reads OpenAPI 3.1) as the fastapi-offline package ships them: no CDN."""
    return Path(str(files("fastapi_offline") / "static"))
