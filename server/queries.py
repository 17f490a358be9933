"""Reading what runs produced: metric series, curves, logs, stream cursors."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Float, Integer, Select, cast, func, select, text
from sqlalchemy.dialects.postgresql import array
from sqlalchemy.orm import Session

from server.downsample import downsample
from server.models import MAX_DB_INT, CurvePoint, LogLine, MetricPoint, RunEvent

CURVE_COLUMNS = ["meta_step", "dataset", "learner", "inner_step", "accuracy", "loss"]


def row_number(text: str) -> int | None:
    """A non-negative integer the database can hold, from client text; else None.

    ASCII digits only ('²'.isdigit() is true, but int('²') fails), and no more
    than 19 of them, so int() never meets Python's 4,300-digit limit.
    """
    if not (text.isascii() and text.isdigit() and len(text) <= 19):
        return None
    value = int(text)
    return value if value <= MAX_DB_INT else None


@dataclass(frozen=True)
class Cursor:
    """The newest row of each stream a client has seen (ids, 0 = none)."""

    metrics: int = 0
    curves: int = 0
    logs: int = 0
    events: int = 0

    def __str__(self) -> str:
        return f"{self.metrics}.{self.curves}.{self.logs}.{self.events}"

    @classmethod
    def parse(cls, text: str | None) -> Cursor:
        """'12.0.5.3' -> Cursor; raises ValueError naming the expected form."""
        if not text:
            return cls()
        parts = [row_number(p) for p in text.strip().split(".")]
        if len(parts) != 4 or None in parts:
            raise ValueError(
                f"bad stream cursor {text!r}: expected four non-negative "
                "integers joined by dots, like 120.0.7.3"
            )
        return cls(*parts)


def current_cursor(session: Session, run_id: int) -> Cursor:
    def newest(model: Any) -> int:
        query = select(func.max(model.id)).where(model.run_id == run_id)
        return session.scalar(query) or 0

    return Cursor(
        newest(MetricPoint), newest(CurvePoint), newest(LogLine), newest(RunEvent)
    )


# The distinct keys of a run by skip scan: one index probe per key instead of
# reading every point (100 ms -> 3 ms for 500,000 points on PostgreSQL).
METRIC_KEYS = text(
    """
    WITH RECURSIVE found(key) AS (
        SELECT min(key) FROM metric_points WHERE run_id = :run_id
        UNION ALL
        SELECT (SELECT min(key) FROM metric_points
                WHERE run_id = :run_id AND key > found.key)
        FROM found WHERE found.key IS NOT NULL
    )
    SELECT key FROM found WHERE key IS NOT NULL
    """
)


def metric_keys(session: Session, run_id: int) -> list[str]:
    return sorted(session.scalars(METRIC_KEYS, {"run_id": run_id}))


def metric_series(
    session: Session,
    run_id: int,
    keys: list[str] | None = None,
    max_points: int | None = None,
    until_id: int | None = None,
) -> dict[str, dict[str, list[Any]]]:
    """{key: {"steps": [...], "values": [...]}}, optionally downsampled.

    Keys are read concurrently, each on a session of its own: the database
    drivers release the GIL while a query runs, so a run page with several
    100k-point curves is served about twice as fast on two cores.
    """
    chosen = keys if keys is not None else metric_keys(session, run_id)
    engine = session.get_bind()

    def one(key: str) -> tuple[str, dict[str, list[Any]]]:
        with Session(engine) as own:
            steps, values = _series(own, run_id, key, max_points, until_id)
        return key, {"steps": steps.tolist(), "values": _json_floats(values)}

    if len(chosen) <= 1:
        return dict(one(key) for key in chosen)
    with ThreadPoolExecutor(max_workers=min(4, len(chosen))) as pool:
        return dict(pool.map(one, chosen))


def _series(
    session: Session,
    run_id: int,
    key: str,
    max_points: int | None,
    until_id: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """One key's (steps, values), thinned in the database when asked."""
    query = select(MetricPoint.step, MetricPoint.value).where(
        MetricPoint.run_id == run_id, MetricPoint.key == key
    )
    if until_id is not None:
        # "+ 0": the (run, key, step) index must serve this query; a bare
        # id bound would make SQLite walk the run's (run, id) index.
        query = query.where(MetricPoint.id + 0 <= until_id)
    dialect = session.get_bind().dialect.name
    if max_points and dialect == "postgresql":
        return _downsampled_in_database(session, query, max_points)
    if max_points and dialect == "sqlite":
        return _downsampled_in_sqlite(session, query, max_points)
    steps, values = _points(session, query.order_by(MetricPoint.step))
    if max_points:
        steps, values = downsample(steps, values, max_points)
    return steps, values


def _points(session: Session, query: Select) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of (step, value) rows; NULL values become NaN."""
    rows = session.execute(query).all()
    steps = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    values = np.array([np.nan if r[1] is None else r[1] for r in rows])
    return steps, values


def _downsampled_in_database(
    session: Session, query: Select, max_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """`downsample(...)` of the series, computed by PostgreSQL.

    Fetching 100,000 points into Python takes most of a second; here one
    GROUP BY returns each bucket's minimum, maximum and last point (at most
    max_points rows). Buckets are cut with the same float arithmetic as
    `downsample`; `min(ARRAY[value, step])` picks the smallest value and, among
    equal ones, the first step, as numpy's nanargmin does. NULLs never win.
    """
    points = query.subquery()
    first, last = session.execute(
        select(func.min(points.c.step), func.max(points.c.step))
    ).one()  # two index probes
    if first is None:
        return _points(session, select(points))
    buckets = max(1, max_points // 3)
    scale = buckets / (float(last - first) + 1.0)
    step, value = cast(points.c.step, Float), points.c.value
    valid = value.is_not(None) & (value != float("nan"))
    extremes = select(
        func.count(),
        func.min(array([value, step])).filter(valid),
        func.max(array([value, -step])).filter(valid),
        func.max(array([step, value])),
    ).group_by(func.floor((step - first) * scale))
    rows = session.execute(extremes).all()
    if sum(row[0] for row in rows) <= max_points:  # short: every point
        return _points(session, select(points).order_by(points.c.step))
    kept: dict[int, float] = {}
    for _count, lowest, highest, newest in rows:
        kept[int(newest[0])] = np.nan if newest[1] is None else newest[1]
        if lowest is not None:
            kept[int(lowest[1])] = lowest[0]
            kept[int(-highest[1])] = highest[0]
    steps = np.array(sorted(kept), dtype=np.int64)
    return steps, np.array([kept[s] for s in steps.tolist()], dtype=np.float64)


def _downsampled_in_sqlite(
    session: Session, query: Select, max_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """`downsample(...)` of the series, computed by SQLite.

    Three GROUP BY queries return each bucket's minimum, maximum and last
    point. They lean on SQLite's documented "bare column" rule: beside a
    single min() or max(), a plain column takes its value from the row that
    holds it (the first such row in step order, as numpy's nanargmin picks).
    """
    points = query.subquery()
    count, first, last = session.execute(
        select(func.count(), func.min(points.c.step), func.max(points.c.step))
    ).one()
    if count <= max_points:
        return _points(session, select(points).order_by(points.c.step))
    scale = max(1, max_points // 3) / (float(last - first) + 1.0)
    bucket = cast((points.c.step - first) * scale, Integer)
    valid = points.c.value.is_not(None)
    kept: dict[int, float] = {}
    for aggregate in (func.min(points.c.value), func.max(points.c.value)):
        rows = session.execute(
            select(aggregate, points.c.step).where(valid).group_by(bucket)
        )
        kept.update((int(step), value) for value, step in rows)
    newest = select(func.max(points.c.step), points.c.value).group_by(bucket)
    kept.update((int(step), value) for step, value in session.execute(newest))
    steps = np.array(sorted(kept), dtype=np.int64)
    values = [np.nan if kept[s] is None else kept[s] for s in steps.tolist()]
    return steps, np.array(values, dtype=np.float64)


def _json_floats(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values.tolist()]


def meta_steps(session: Session, run_id: int) -> list[int]:
    query = select(CurvePoint.meta_step).where(CurvePoint.run_id == run_id)
    return sorted(set(session.scalars(query.distinct())))


def curve_rows(
    session: Session,
    run_id: int,
    meta_step: int | None = None,
    dataset: str | None = None,
    until_id: int | None = None,
) -> list[tuple[Any, ...]]:
    """Rows in CURVE_COLUMNS order; all meta-steps unless one is given."""
    query = select(
        CurvePoint.meta_step, CurvePoint.dataset, CurvePoint.learner,
        CurvePoint.inner_step, CurvePoint.accuracy, CurvePoint.loss,
    ).where(CurvePoint.run_id == run_id)  # fmt: skip
    if meta_step is not None:
        query = query.where(CurvePoint.meta_step == meta_step)
    if dataset is not None:
        query = query.where(CurvePoint.dataset == dataset)
    if until_id is not None:
        query = query.where(CurvePoint.id + 0 <= until_id)  # as in metric_series
    order = (CurvePoint.meta_step, CurvePoint.dataset, CurvePoint.learner,
             CurvePoint.inner_step)  # fmt: skip
    return [tuple(r) for r in session.execute(query.order_by(*order))]


def latest_meta_step(
    session: Session, run_id: int, until_id: int | None = None
) -> int | None:
    query = select(func.max(CurvePoint.meta_step)).where(CurvePoint.run_id == run_id)
    if until_id is not None:
        query = query.where(CurvePoint.id + 0 <= until_id)  # as in metric_series
    return session.scalar(query)


def log_lines(
    session: Session, run_id: int, after_seq: int = -1, limit: int = 1000
) -> list[LogLine]:
    query = (
        select(LogLine).where(LogLine.run_id == run_id, LogLine.seq > after_seq)
        .order_by(LogLine.seq).limit(limit)
    )  # fmt: skip
    return list(session.scalars(query))


def recent_log_lines(
    session: Session, run_id: int, limit: int, until_id: int
) -> list[LogLine]:
    """The newest `limit` lines with id <= `until_id`, oldest first."""
    query = (
        select(LogLine)
        .where(LogLine.run_id == run_id, LogLine.id <= until_id)
        .order_by(LogLine.seq.desc())
        .limit(limit)
    )
    return list(reversed(session.scalars(query).all()))
