"""Live updates as server-sent events, resumable from the last event seen.

Each event's id is a cursor (see `queries.Cursor`): the newest metric, curve,
log and status row the client has received. A browser that reconnects sends
it back as Last-Event-ID and continues exactly after it: no gap, no
duplicate. The server watches the database (the worker's writes land there),
so a stream needs no broker and works the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from server import queries
from server.db import session_factory
from server.deps import SessionDep, SettingsDep
from server.models import MAX_DB_INT, CurvePoint, LogLine, MetricPoint, Run, RunEvent
from server.routes.runs import get_run, run_public

router = APIRouter(prefix="/api", tags=["live"])

POLL_S = 0.1  # how often a stream looks for new rows
KEEPALIVE_S = 15.0  # a comment line keeps proxies from closing an idle stream
BATCH = 5000  # rows per event at most


def sse(event: str, data: Any, event_id: str | None = None) -> str:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), allow_nan=False))
    return "\n".join(lines) + "\n\n"


def _after(session: Session, model: Any, run_id: int, after: int) -> list[Any]:
    query = (
        select(model).where(model.run_id == run_id, model.id > after)
        .order_by(model.id).limit(BATCH)
    )  # fmt: skip
    return list(session.scalars(query))


def run_updates(
    session: Session, run_id: int, cursor: queries.Cursor
) -> tuple[list[str], queries.Cursor]:
    """SSE messages for everything newer than `cursor`, each with its cursor."""
    messages = []
    if rows := _after(session, MetricPoint, run_id, cursor.metrics):
        cursor = replace(cursor, metrics=rows[-1].id)
        points = [[r.key, r.step, r.value] for r in rows]
        messages.append(sse("metrics", {"points": points}, str(cursor)))
    if rows := _after(session, CurvePoint, run_id, cursor.curves):
        cursor = replace(cursor, curves=rows[-1].id)
        points = [[r.meta_step, r.dataset, r.learner, r.inner_step, r.accuracy,
                   r.loss] for r in rows]  # fmt: skip
        messages.append(sse("curves", {"rows": points}, str(cursor)))
    if rows := _after(session, LogLine, run_id, cursor.logs):
        cursor = queries.Cursor(
            cursor.metrics, cursor.curves, rows[-1].id, cursor.events
        )
        lines = [[r.seq, r.time, r.text] for r in rows]
        messages.append(sse("logs", {"lines": lines}, str(cursor)))
    if rows := _after(session, RunEvent, run_id, cursor.events):
        cursor = replace(cursor, events=rows[-1].id)
        run = session.get(Run, run_id)
        if run is not None:
            payload = run_public(run).model_dump(mode="json")
            messages.append(sse("run", payload, str(cursor)))
    return messages, cursor


def _cursor_of(text: str | None) -> queries.Cursor:
    try:
        return queries.Cursor.parse(text)
    except ValueError as err:
        raise HTTPException(422, str(err)) from err


async def event_stream(
    request: Request, poll: Callable[[], list[str]]
) -> AsyncIterator[str]:
    """Call `poll` (in a thread) until the client goes; yield what it returns."""
    yield "retry: 1000\n\n"
    idle = 0.0
    while not await request.is_disconnected():
        messages = await run_in_threadpool(poll)
        for message in messages:
            yield message
        idle = 0.0 if messages else idle + POLL_S
        if idle >= KEEPALIVE_S:
            idle = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(POLL_S)


def _streaming(body: AsyncIterator[str]) -> StreamingResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body, media_type="text/event-stream", headers=headers)


@router.get("/runs/{run_id}/stream")
async def stream_run(
    run_id: int,
    request: Request,
    settings: SettingsDep,
    session: SessionDep,
    cursor: Annotated[str | None, Query(description="resume after this")] = None,
) -> StreamingResponse:
    """Events `metrics`, `curves`, `logs` and `run` (status and progress)."""
    get_run(session, run_id)
    session.close()
    state = {"cursor": _cursor_of(request.headers.get("last-event-id") or cursor)}
    factory = session_factory(settings.resolved_database_url)

    def poll() -> list[str]:
        with factory() as db:
            messages, state["cursor"] = run_updates(db, run_id, state["cursor"])
        return messages

    return _streaming(event_stream(request, poll))


@router.get("/runs/{run_id}/snapshot")
def run_snapshot(
    run_id: int,
    session: SessionDep,
    max_points: Annotated[int, Query(ge=3, le=20_000)] = 2000,
) -> Response:
    """Everything a run page shows, as of one cursor to stream on from.

    The newest 10,000 log lines come with it (older ones: /logs).
    """
    run = get_run(session, run_id)
    cursor = queries.current_cursor(session, run_id)
    latest = queries.latest_meta_step(session, run_id, until_id=cursor.curves)
    curves = [] if latest is None else queries.curve_rows(
        session, run_id, latest, until_id=cursor.curves
    )  # fmt: skip
    logs = queries.recent_log_lines(session, run_id, 10_000, cursor.logs)
    body = {
        "cursor": str(cursor),
        "run": run_public(run).model_dump(mode="json"),
        "metrics": queries.metric_series(
            session, run_id, max_points=max_points, until_id=cursor.metrics
        ),
        "curves": {"columns": queries.CURVE_COLUMNS, "rows": curves},
        "logs": [[x.seq, x.time, x.text] for x in logs],
    }
    # Serialised here: FastAPI's generic encoder is slow on 100k-point bodies.
    return Response(json.dumps(body, allow_nan=False), media_type="application/json")


def runs_updates(session: Session, after: int) -> tuple[list[str], int]:
    """One `run` event per run that changed since event id `after`."""
    query = select(RunEvent).where(RunEvent.id > after).order_by(RunEvent.id)
    events = list(session.scalars(query.limit(BATCH)))
    if not events:
        return [], after
    changed = dict.fromkeys(e.run_id for e in events)
    newest = events[-1].id
    messages = []
    for run_id in changed:
        run = session.get(Run, run_id)
        payload = (run_public(run).model_dump(mode="json") if run is not None
                   else {"id": run_id, "deleted": True})  # fmt: skip
        messages.append(sse("run", payload, str(newest)))
    return messages, newest


@router.get("/stream/runs")
async def stream_runs(
    request: Request,
    settings: SettingsDep,
    after: Annotated[int | None, Query(ge=0, le=MAX_DB_INT)] = None,
) -> StreamingResponse:
    """A `run` event whenever any run's status or progress changes."""
    header = request.headers.get("last-event-id")
    if header is not None and queries.row_number(header) is None:
        raise HTTPException(422, f"bad Last-Event-ID {header!r}: expected an integer")
    factory = session_factory(settings.resolved_database_url)
    with factory() as db:
        start = db.scalar(select(RunEvent.id).order_by(RunEvent.id.desc()).limit(1))
    state = {"after": int(header) if header else after if after is not None
             else start or 0}  # fmt: skip

    def poll() -> list[str]:
        with factory() as db:
            messages, state["after"] = runs_updates(db, state["after"])
        return messages

    return _streaming(event_stream(request, poll))
