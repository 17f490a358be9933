"""GET /health: can the service reach its database and its queue?"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from server.config import Settings
from server.db import get_engine
from server.deps import SettingsDep

router = APIRouter(tags=["health"])


def check_database(settings: Settings) -> dict[str, Any]:
    try:
        with get_engine(settings.resolved_database_url).connect() as connection:
            connection.execute(text("SELECT 1"))
        return {"ok": True, "backend": get_engine(settings.resolved_database_url)
                .dialect.name}  # fmt: skip
    except Exception as err:  # any driver error means "not reachable"
        return {"ok": False, "error": str(err).splitlines()[0]}


def check_broker(settings: Settings) -> dict[str, Any]:
    if settings.uses_local_broker:
        # The folder appears with the first queued run; a new lab makes it here.
        folder = settings.queue_dir
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            return {"ok": False, "backend": "filesystem", "error": str(err)}
        return {"ok": True, "backend": "filesystem", "path": str(folder)}
    from kombu import Connection

    try:
        with Connection(settings.broker_url, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        return {"ok": True, "backend": settings.broker_url.split(":", 1)[0]}
    except Exception as err:  # kombu raises many types for a lost broker
        return {"ok": False, "error": str(err).splitlines()[0]}


@router.get("/health")
def health(settings: SettingsDep) -> JSONResponse:
    """200 when both the database and the broker answer, else 503."""
    database, broker = check_database(settings), check_broker(settings)
    ok = database["ok"] and broker["ok"]
    body = {"status": "ok" if ok else "degraded", "database": database,
            "broker": broker}  # fmt: skip
    return JSONResponse(body, status_code=200 if ok else 503)
