"""The ASGI app: the versioned JSON API under ``/api/v1`` (OpenAPI page at ``/docs``), ``/health``, and the
web page (``/``, ``/static``), with errors as JSON ``{"detail": "<one message>"}``.

``create_app(config)`` builds it; ``amc serve`` runs it under uvicorn.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from amc import __version__
from amc.errors import AmcError
from amc.service.api import datasets, files, health, jobs, registry, uploads
from amc.service.auth import TokenCache
from amc.service.config import ServiceConfig
from amc.service.queue import JobQueue
from amc.service.store import Store

WEB = Path(__file__).resolve().parent / "web"


def _one_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body",))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts) or "invalid request"


class ServerTiming:
    """ASGI middleware: every HTTP response carries ``Server-Timing: app;dur=<ms>``, the time from the
    request reaching the app to its response headers, so that a client can tell the server's own time
    from the time its request waited in sockets, the kernel and its own event loop."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()

        async def timed(message: Any) -> None:
            if message["type"] == "http.response.start":
                dur = f"app;dur={(time.perf_counter() - t0) * 1000:.2f}".encode()
                message = {**message, "headers": [*message.get("headers", []), (b"server-timing", dur)]}
            await send(message)

        await self.app(scope, receive, timed)


def create_app(config: ServiceConfig, store: Store | None = None, queue: JobQueue | None = None) -> FastAPI:
    config.root.mkdir(parents=True, exist_ok=True)
    config.runs.mkdir(parents=True, exist_ok=True)
    app = FastAPI(title="amc-service", version=__version__,
                  description="AutoML compression search: submit a model and a budget, follow the search, "
                              "download the recipe, the compressed model and the report.")
    app.state.config = config
    app.state.store = store or Store(config.database)
    app.state.queue = queue or JobQueue(config.queue)
    app.state.tokens = TokenCache(config.token_cache_s)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _one_message(exc)}, status_code=422)

    @app.exception_handler(AmcError)
    async def _amc(request: Request, exc: AmcError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    app.add_middleware(ServerTiming)
    for r in (health.router, registry.router, jobs.router, files.router, uploads.router, datasets.router):
        app.include_router(r)
    app.mount("/static", StaticFiles(directory=WEB / "static"), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:  # the page holds no data: everything it shows comes through the API's token
        return FileResponse(WEB / "index.html")

    return app
