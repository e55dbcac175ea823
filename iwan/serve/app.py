"""The application factory: the collections to serve, the settings, and everything around the routes."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.utils import is_body_allowed_for_status_code
from sqlalchemy.engine import Engine
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iwan.config import LOOPBACK_HOSTS, MAX_BODY_BYTES, SHUTDOWN_TIMEOUT_S, Settings
from iwan.config import settings as current_settings
from iwan.serve.limits import BodyLimit, json_safe
from iwan.serve.metrics import MetricsMiddleware
from iwan.serve.routes import PAGE_POLICY, router
from iwan.serve.service import STATIC, Service


def create_app(
    engine: Engine,
    collections: Iterable = (),
    *,
    load: Sequence[str] = (),
    settings: Settings | None = None,
    host: str | None = None,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT_S,
) -> FastAPI:
    """The service over `collections` (opened LiveCollections, owned by the caller) and the
    collections named in `load`, opened in the background at start-up (/readyz answers 503 until
    they are all loaded; they are closed at shutdown).

    `settings` (read from the environment when not given: an entry point) are the service's:
    its write key, CORS origins and upload pixel limit, and the settings of the collections it
    opens itself.

    The service answers only requests whose Host header names it (else 400, against DNS
    rebinding): the loopback names, `host` (the address it binds) unless a wildcard, and the
    settings' allowed hosts.

    At shutdown it waits at most `shutdown_timeout` seconds for the collections it loads (one
    still loading, the snapshots of those changed), then stops without them (Service.stop)."""
    service = Service(engine, settings or current_settings(), collections, load)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop(shutdown_timeout)

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
    app.add_exception_handler(ClientDisconnect, _gone)
    app.add_exception_handler(Exception, _failed)
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
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(service.settings, host), www_redirect=False)
    app.add_middleware(SecurityHeaders)
    return app


log = logging.getLogger(__name__)
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": PAGE_POLICY}
"""On every answer (an answer that sets its own Content-Security-Policy keeps it: /docs)."""


def allowed_hosts(settings: Settings, host: str | None = None) -> list[str]:
    """The Host header names the service answers: loopback, its bind address `host` unless that
    is a wildcard, and the settings' (IWAN_ALLOWED_HOSTS; `*.example.com` patterns allowed)."""
    names = list(LOOPBACK_HOSTS)
    if host is not None and host.strip() not in WILDCARD_HOSTS:
        names.append(_host_name(host))
    for given in settings.allowed_hosts:
        name = _host_name(given)
        if "*" in name[1:] or (name.startswith("*") and name != "*" and not name.startswith("*.")):
            raise ValueError(f"IWAN_ALLOWED_HOSTS: {given!r} is not a host name or a pattern like '*.example.com'")
        names.append(name)
    return list(dict.fromkeys(names))


def _host_name(given: str) -> str:
    """A host as the Host header carries it, without its port: IPv6 addresses in brackets."""
    name = given.strip().lower()
    if name.startswith("["):
        return name.split("]", 1)[0] + "]"
    if name.count(":") == 1:
        return name.split(":", 1)[0]
    return f"[{name}]" if ":" in name else name


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every answer: no MIME sniffing, and the page's CSP (no framing,
    only the server's own scripts) on static files and every other answer without its own."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def server_config(app: FastAPI, host: str, port: int, *, log_level: str = "info", access_log: bool = False):
    """The uvicorn configuration `iwan serve` runs under (and the tests' real servers): the
    connections limited by the app's settings (iwan.serve.connections), no `server` banner, the
    app's lifespan required, five seconds to finish requests at shutdown."""
    from iwan.serve.connections import ServerConfig

    return ServerConfig(app, settings=app.state.service.settings, host=host, port=port, log_level=log_level,
                        access_log=access_log, lifespan="on", server_header=False, timeout_graceful_shutdown=5)


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


async def _gone(request: Request, exc: Exception) -> Response:
    """The client left, or was cut off by a deadline (iwan.serve.connections), before its body
    arrived: no one to answer and nothing that went wrong here, so no traceback in the log. The
    status, nginx's "client closed request", is for the metrics; it is never sent."""
    log.info("iwan serve: the client disconnected before its request body was read (%s %s)",
             request.method, request.url.path)
    return Response(status_code=499)


async def _failed(request: Request, exc: Exception) -> Response:
    """An unexpected error: a bare 500 (the error is logged by the server), with the security headers,
    since this answer is sent outside every middleware."""
    return PlainTextResponse("Internal Server Error", status_code=500, headers=SECURITY_HEADERS)


def _swagger_ui() -> Path:
    """Swagger UI 5's files (it reads OpenAPI 3.1) as the fastapi-offline package ships them: no CDN."""
    return Path(str(files("fastapi_offline") / "static"))
