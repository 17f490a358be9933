"""Writing what runs produce: idempotent batch inserts and status changes.

Used by the worker (and by tests and benchmarks); the API only reads these
tables. Every insert ignores rows whose natural key (run, key, step; run,
meta-step, dataset, learner, inner step; ...) is already stored, so a retried
batch never duplicates a point.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Insert, Table, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from server.models import (
    Checkpoint,
    CurvePoint,
    LogLine,
    MetricPoint,
    Run,
    RunEvent,
    RunStatus,
    utcnow,
)

FINISHED = {RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled}


def insert_ignoring_duplicates(
    session: Session, table: Table, rows: Sequence[dict[str, Any]]
) -> None:
    """INSERT ... ON CONFLICT DO NOTHING of all `rows`, which share their keys."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(_unnest_insert(table, rows))
    elif dialect == "sqlite":
        session.execute(sqlite_insert(table).on_conflict_do_nothing(), list(rows))
    else:  # pragma: no cover - only the two databases above are supported
        raise ValueError(f"unsupported database dialect {dialect!r}")


def _unnest_insert(table: Table, rows: Sequence[dict[str, Any]]) -> Insert:
    """One statement for the whole batch: a typed array per column, unnested.

    An executemany runs one INSERT per row; this runs one per batch, which
    stores metric points about 1.7 times as fast on PostgreSQL.
    """
    names = list(rows[0])
    arrays = [
        bindparam(name, [row[name] for row in rows], type_=ARRAY(table.c[name].type))
        for name in names
    ]
    source = func.unnest(*arrays).table_valued(*names).render_derived()
    return pg_insert(table).from_select(names, select(source)).on_conflict_do_nothing()


def finite(value: float) -> float | None:
    """NaN and infinities are stored as NULL (JSON has no spelling for them)."""
    value = float(value)
    return value if math.isfinite(value) else None


def metric_rows(
    run_id: int, step: int, metrics: dict[str, float], wall_time: float | None = None
) -> list[dict[str, Any]]:
    now = time.time() if wall_time is None else wall_time
    return [
        {"run_id": run_id, "key": key, "step": step, "value": finite(value),
         "wall_time": now}
        for key, value in metrics.items()
    ]  # fmt: skip


def add_metric_rows(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    insert_ignoring_duplicates(session, MetricPoint.__table__, rows)


def add_curve_rows(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    insert_ignoring_duplicates(session, CurvePoint.__table__, rows)


def add_log_rows(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    insert_ignoring_duplicates(session, LogLine.__table__, rows)


def add_checkpoint(
    session: Session, run_id: int, iteration: int, path: str, size_bytes: int
) -> None:
    row = {"run_id": run_id, "iteration": iteration, "path": path,
           "size_bytes": size_bytes, "created_at": utcnow()}  # fmt: skip
    insert_ignoring_duplicates(session, Checkpoint.__table__, [row])


def next_log_seq(session: Session, run_id: int) -> int:
    """The sequence number after the run's last stored log line."""
    last = session.scalar(select(LogLine.seq).where(LogLine.run_id == run_id)
                          .order_by(LogLine.seq.desc()).limit(1))  # fmt: skip
    return 0 if last is None else last + 1


def record_event(session: Session, run: Run, kind: str) -> None:
    """Tell live streams that `run` changed."""
    session.add(RunEvent(run_id=run.id, time=time.time(), kind=kind,
                         status=run.status))  # fmt: skip


def set_status(session: Session, run: Run, status: RunStatus, **fields: Any) -> None:
    """Move a run to `status`, stamping times, and record the change."""
    run.status = status
    if status == RunStatus.running and run.started_at is None:
        run.started_at = utcnow()
    if status in FINISHED:
        run.finished_at = utcnow()
    for name, value in fields.items():
        setattr(run, name, value)
    record_event(session, run, "status")


def update_progress(
    session: Session, run: Run, iteration: int, metrics: dict[str, float]
) -> None:
    run.iteration = max(run.iteration, iteration)
    if "elapsed_s" in metrics:
        run.elapsed_s = float(metrics["elapsed_s"])
    if "meta_loss" in metrics:
        run.latest_loss = finite(metrics["meta_loss"])
    record_event(session, run, "progress")


def update_best_accuracy(
    session: Session, run: Run, accuracies: Iterable[tuple[str, float]]
) -> None:
    """Keep each dataset's best meta-test mean accuracy on the run row."""
    best = dict(run.best_accuracy or {})
    for dataset, accuracy in accuracies:
        if math.isfinite(accuracy) and accuracy > best.get(dataset, -1.0):
            best[dataset] = accuracy
    run.best_accuracy = best  # a new dict, so SQLAlchemy sees the change
    record_event(session, run, "progress")
