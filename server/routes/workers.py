"""Workers: which are online, what they give runs, and what they train now."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter
from sqlalchemy import ColumnElement, and_, func, not_, select

from server.deps import SessionDep, SettingsDep
from server.models import Run, RunStatus, Worker, utcnow
from server.schemas import WorkerPublic

router = APIRouter(prefix="/api/workers", tags=["workers"])


def online_clause(lost_after_s: float) -> ColumnElement[bool]:
    """True for a worker that has not stopped and beat within `lost_after_s`.

    Compared in SQL: SQLite hands back naive datetimes, PostgreSQL aware ones,
    but both compare a stored stamp with a bound one correctly.
    """
    silent_since = utcnow() - timedelta(seconds=lost_after_s)
    return and_(Worker.stopped.is_(False), Worker.heartbeat_at >= silent_since)


@router.get("", response_model=list[WorkerPublic])
def list_workers(
    session: SessionDep, settings: SettingsDep, online: bool | None = None
) -> list[WorkerPublic]:
    """Every worker that has reported itself, online ones first, then by name.

    `online=true` keeps the workers that beat within VSML_LOST_AFTER_S and
    have not stopped; `online=false` the others.
    """
    is_online = online_clause(settings.lost_after_s)
    # The worker records the run it trains (any host of it); node 0 is also
    # named on the run. Only a run still running counts.
    training = func.coalesce(
        select(Run.id)
        .where(Run.id == Worker.run_id, Run.status == RunStatus.running)
        .scalar_subquery(),
        select(func.max(Run.id))
        .where(Run.status == RunStatus.running, Run.worker == Worker.name)
        .scalar_subquery(),
    )
    query = select(Worker, is_online.label("online"), training.label("run_id"))
    if online is not None:
        query = query.where(is_online if online else not_(is_online))
    rows = session.execute(query.order_by(is_online.desc(), Worker.name))
    return [
        WorkerPublic.model_validate(
            {**_columns(worker), "online": bool(up), "run_id": run_id}
        )
        for worker, up, run_id in rows
    ]


def _columns(worker: Worker) -> dict[str, object]:
    return {
        name: getattr(worker, name)
        for name in WorkerPublic.model_fields
        if hasattr(worker, name)
    }
