"""The FastAPI application: API routers, dashboard pages, error handling."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from celery import Celery
from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.config import Settings, get_settings
from server.deps import require_token
from server.queue import make_celery
from server.routes import experiments, health, pages, runs, stream, workers
from vsml.config import ConfigError

logger = logging.getLogger(__name__)


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, before reading them all."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLargeError(self.limit)
            return message

        try:
            await self.app(scope, counting_receive, send)
        except BodyTooLargeError:  # read outside a route; routes answer 413
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        detail = f"request body over {self.limit} bytes"
        response = JSONResponse({"detail": detail}, status_code=413)
        await response({"type": "http"}, _no_body, send)


class BodyTooLargeError(HTTPException):
    """Raised while reading a body past the limit.

    An HTTPException, so that FastAPI's own body parsing passes it on (it
    turns other errors into 400) and the route answers 413.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped, so echoed lone surrogates still encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode()


async def config_error(_request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, ConfigError)
    problems = [p.as_dict() for p in err.problems]
    body = {"detail": str(err), "problems": problems}
    return AsciiJSONResponse(body, status_code=422)


async def http_error(_request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, HTTPException)
    return AsciiJSONResponse(
        {"detail": err.detail}, status_code=err.status_code, headers=err.headers
    )


async def request_invalid(_request: Request, err: Exception) -> JSONResponse:
    """422 with one sentence naming each fault, and the faults as a list.

    The input is never echoed (it may not even be valid JSON text).
    """
    assert isinstance(err, RequestValidationError)
    errors = [{k: v for k, v in e.items() if k != "input"} for e in err.errors()]
    sentence = "; ".join(_fault(e) for e in errors)
    body = {"detail": sentence, "errors": jsonable_encoder(errors)}
    return AsciiJSONResponse(body, status_code=422)


def _fault(error: dict[str, Any]) -> str:
    """("query", "status") + message -> "query parameter 'status': message"."""
    kind, *path = [str(part) for part in error.get("loc", ())] or ["request"]
    name = ".".join(path)
    where = {"query": "query parameter", "path": "path parameter",
             "body": "body field", "header": "header"}.get(kind, kind)  # fmt: skip
    return (
        f"{where} {name!r}: {error.get('msg', 'invalid')}"
        if name
        else (f"{where}: {error.get('msg', 'invalid')}")
    )


async def out_of_range(request: Request, err: Exception) -> JSONResponse:
    # A number the checks above let through that a column cannot hold: the
    # client's mistake, not the server's.
    logger.warning("out-of-range value on %s %s: %s", request.method,
                   request.url.path, err)  # fmt: skip
    return JSONResponse(
        {"detail": "a number in the request is too large for the database"}, 422
    )


async def unexpected_error(request: Request, err: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal error (see the server log)"}, 500)


def mount_docs(app: FastAPI) -> None:
    """/docs with Swagger UI's files from the installed swagger-ui-bundle."""
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    app.mount(
        "/docs-assets",
        StaticFiles(directory=swagger_ui_bundle.swagger_ui_path),
        name="docs-assets",
    )

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="VSML Lab API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )


def create_app(
    settings: Settings | None = None, celery: Callable[[], Celery] | None = None
) -> FastAPI:
    """The app; tests pass their own settings (and a Celery factory)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="VSML Lab",
        summary="Meta-train VSML learners, watch them learn, compare runs.",
        version="0.1.0",
        docs_url=None,  # served below from local files, not a CDN
        redoc_url=None,
    )
    mount_docs(app)
    app.state.settings = settings
    app.state.celery = celery or lru_cache(maxsize=1)(lambda: make_celery(settings))
    guarded: dict[str, Any] = {"dependencies": [Depends(require_token)]}
    for module in (experiments, runs, workers, stream):
        app.include_router(module.router, **guarded)
    app.include_router(health.router)
    app.include_router(pages.router)
    pages.mount_static(app)
    app.add_exception_handler(ConfigError, config_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, request_invalid)
    app.add_exception_handler(DataError, out_of_range)
    app.add_exception_handler(Exception, unexpected_error)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app
