"""Run page data for a long run: 100,000 points per curve, served downsampled.

Fills a PostgreSQL run with `--points` iterations of several metric keys
(through server.records, as the worker writes them), a few meta-tests worth
of learning curves and log lines; starts the real app on uvicorn and times
what the run page loads. Prints
  snapshot_ms         median GET /api/runs/{id}/snapshot?max_points=2000
  metrics_ms          median GET /api/runs/{id}/metrics?max_points=2000
  run_page_data_ms    the slower of the two (bar: < 1000 ms)
  snapshot_kb         size of the snapshot response
Usage: python -m bench.run_page [--json] [--points N] [--repeats R]
                                [--backend postgresql|sqlite]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sqlalchemy import text

from bench.support import (
    BACKENDS,
    get,
    metric_batch,
    new_run,
    report,
    scratch_database,
    serve,
)
from server import queries, records
from server.db import session_scope
from server.downsample import downsample

KEYS = [
    "meta_loss", "train_accuracy", "seconds_per_iteration",
    "test/mnist/vsml/mean_accuracy", "test/fashion_mnist/vsml/mean_accuracy",
]  # fmt: skip
DATASETS = ["mnist", "fashion_mnist"]
LEARNERS = ["vsml", "sgd", "adam"]
MAX_POINTS = 2000


def fill(url: str, run_id: int, points: int, meta_tests: int = 20) -> None:
    """`points` iterations of every key; curves of `meta_tests` meta-tests."""
    steps_per_batch = 1000
    for first in range(0, points, steps_per_batch):
        rows = metric_batch(run_id, KEYS, first, min(steps_per_batch, points - first))
        with session_scope(url) as session:
            records.add_metric_rows(session, rows)
    for meta_step in np.linspace(0, points - 1, meta_tests).astype(int).tolist():
        with session_scope(url) as session:
            records.add_curve_rows(session, curve_rows(run_id, meta_step))
    lines = [
        {"run_id": run_id, "seq": i, "time": time.time(), "text": f"iteration {i}"}
        for i in range(2000)
    ]
    with session_scope(url) as session:
        records.add_log_rows(session, lines)

    # Planner statistics, as autovacuum gathers them within a minute of a bulk
    # load on a live server (without them PostgreSQL sorts where it can hash).
    if url.startswith("postgresql"):
        with session_scope(url) as session:
            session.execute(text("ANALYZE"))


def curve_rows(run_id: int, meta_step: int, inner_steps: int = 500) -> list[dict]:
    accuracy = np.linspace(0.1, 0.9, inner_steps).tolist()
    return [
        {"run_id": run_id, "meta_step": meta_step, "dataset": dataset,
         "learner": learner, "inner_step": i, "accuracy": a, "loss": 1 - a}
        for dataset in DATASETS
        for learner in LEARNERS
        for i, a in enumerate(accuracy)
    ]  # fmt: skip


def median_ms(address: str, repeats: int) -> tuple[float, bytes]:
    get(address)  # warm-up: first query plans, connection pool
    times, body = [], b""
    for _ in range(repeats):
        start = time.perf_counter()
        body = get(address)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000, body


def check(url: str, run_id: int, shown: dict[str, dict]) -> None:
    """The snapshot's series are `downsample` of every stored point."""
    if set(shown) != set(KEYS):
        raise RuntimeError(f"snapshot keys {sorted(shown)}, expected {sorted(KEYS)}")
    with session_scope(url) as session:
        stored = queries.metric_series(session, run_id)
    for key, series in stored.items():
        steps = np.asarray(series["steps"], dtype=np.int64)
        values = np.array([np.nan if v is None else v for v in series["values"]])
        steps, values = downsample(steps, values, MAX_POINTS)
        expected = [None if np.isnan(v) else v for v in values.tolist()]
        if shown[key] != {"steps": steps.tolist(), "values": expected}:
            raise RuntimeError(f"snapshot series {key!r} differs from downsample()")


def measure(url: str, run_id: int, points: int, repeats: int) -> dict[str, float]:
    with serve(url) as base:
        query = f"max_points={MAX_POINTS}"
        snapshot_ms, body = median_ms(
            f"{base}/api/runs/{run_id}/snapshot?{query}", repeats
        )
        metrics_ms, _ = median_ms(f"{base}/api/runs/{run_id}/metrics?{query}", repeats)
    check(url, run_id, json.loads(body)["metrics"])
    return {
        "run_page_data_ms": max(snapshot_ms, metrics_ms),
        "snapshot_ms": snapshot_ms,
        "metrics_ms": metrics_ms,
        "snapshot_kb": len(body) / 1024,
        "points_per_curve": points,
        "curves": len(KEYS),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON line")
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", choices=BACKENDS, default="postgresql")
    args = parser.parse_args()
    with scratch_database(args.backend) as url:
        run_id = new_run(url)
        fill(url, run_id, args.points)
        figures = measure(url, run_id, args.points, args.repeats)
    report({"backend": args.backend, **figures}, args.json)


if __name__ == "__main__":
    main()
