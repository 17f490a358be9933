"""Metric ingestion into PostgreSQL through the worker's write path.

A run logs `--keys` metrics per iteration; like the worker's batch writer,
each transaction inserts one batch of rows with server.records.add_metric_rows
(idempotent: ON CONFLICT DO NOTHING) and updates the run's progress. Prints
  ingest_points_per_s    metric points stored per second (bar: >= 20,000)
  ingest_batch_ms_p50    median time of one transaction
Usage: python -m bench.ingest [--json] [--points N] [--batch ROWS] [--keys K]
                              [--backend postgresql|sqlite]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sqlalchemy import func, select

from bench.support import (
    BACKENDS,
    metric_batch,
    new_run,
    report,
    scratch_database,
)
from server import records
from server.db import session_scope
from server.models import MetricPoint, Run

KEYS = [
    "meta_loss", "train_accuracy", "seconds_per_iteration", "elapsed_s",
    "fitness_mean", "fitness_std", "gradient_norm", "learning_rate",
]  # fmt: skip


def write_batch(url: str, run_id: int, rows: list[dict]) -> None:
    """One worker transaction: the rows, then the run's progress."""
    with session_scope(url) as session:
        records.add_metric_rows(session, rows)
        run = session.get(Run, run_id)
        assert run is not None
        last = rows[-1]
        records.update_progress(session, run, last["step"],
                                {"meta_loss": last["value"]})  # fmt: skip


def ingest(url: str, points: int, batch: int, keys: list[str]) -> dict[str, float]:
    run_id = new_run(url)
    steps_per_batch = max(1, batch // len(keys))
    num_batches = max(1, points // (steps_per_batch * len(keys)))
    batches = [
        metric_batch(run_id, keys, i * steps_per_batch, steps_per_batch)
        for i in range(num_batches)
    ]

    # Warm the connection pool and the statement cache with a first batch.
    write_batch(url, run_id, batches[0])
    durations = []
    start = time.perf_counter()
    for rows in batches[1:]:
        t0 = time.perf_counter()
        write_batch(url, run_id, rows)
        durations.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start

    # A retried batch stores nothing twice.
    write_batch(url, run_id, batches[-1])
    with session_scope(url) as session:
        query = select(func.count()).where(MetricPoint.run_id == run_id)
        stored = session.scalar(query.select_from(MetricPoint))
    expected = sum(len(rows) for rows in batches)
    if stored != expected:
        raise RuntimeError(f"stored {stored} points, expected {expected}")
    timed = expected - len(batches[0])
    return {
        "ingest_points_per_s": timed / elapsed,
        "ingest_batch_ms_p50": float(np.median(durations)) * 1000,
        "points": timed,
        "rows_per_transaction": len(batches[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON line")
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=2000, help="rows per commit")
    parser.add_argument("--keys", type=int, default=len(KEYS), choices=range(1, 9))
    parser.add_argument("--backend", choices=BACKENDS, default="postgresql")
    args = parser.parse_args()
    with scratch_database(args.backend) as url:
        figures = ingest(url, args.points, args.batch, KEYS[: args.keys])
    report({"backend": args.backend, **figures}, args.json)


if __name__ == "__main__":
    main()
