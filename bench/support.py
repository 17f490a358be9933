"""What the service benchmarks share: a scratch database, a run, the live app.

The database is a fresh PostgreSQL database (vsml_bench_<pid>) on the server
named by VSML_BENCH_ADMIN_URL (default: user postgres on 127.0.0.1:5432),
migrated with the project's Alembic scripts and dropped afterwards; no other
database is touched. `backend="sqlite"` uses a throwaway SQLite file instead.
The app is served by uvicorn in a child process on a free loopback port.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from sqlalchemy import make_url

from server.db import get_engine, session_scope
from server.migrate import upgrade
from server.models import Experiment, Run, RunStatus, utcnow

ADMIN_URL = os.environ.get(
    "VSML_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ("postgresql", "sqlite")


@contextmanager
def scratch_database(backend: str = "postgresql") -> Iterator[str]:
    """The SQLAlchemy URL of a new, migrated database, removed on exit."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="vsml-bench-") as folder:
            url = f"sqlite:///{folder}/bench.db"
            upgrade(url)
            yield url
            get_engine(url).dispose()
        return
    if backend != "postgresql":
        raise ValueError(f"backend {backend!r}: expected one of {BACKENDS}")
    name = f"vsml_bench_{os.getpid()}"
    admin_sql(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = (
        make_url(ADMIN_URL)
        .set(drivername="postgresql+psycopg", database=name)
        .render_as_string(hide_password=False)
    )
    try:
        upgrade(url)
        yield url
    finally:
        get_engine(url).dispose()
        drop = "DROP DATABASE IF EXISTS {} WITH (FORCE)"
        admin_sql(sql.SQL(drop).format(sql.Identifier(name)))


def admin_sql(statement: sql.Composed) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(statement)


def new_run(url: str, name: str = "bench") -> int:
    """A running run of a new experiment; returns its id."""
    now = utcnow()
    with session_scope(url) as session:
        experiment = Experiment(name=name, description="benchmark", config_yaml="",
                                created_at=now, updated_at=now)  # fmt: skip
        session.add(experiment)
        session.flush()
        run = Run(experiment_id=experiment.id, seed=0, overrides=[], config={},
                  status=RunStatus.running, queued_at=now, started_at=now,
                  version="bench", total_iterations=0, best_accuracy={})  # fmt: skip
        session.add(run)
        session.flush()
        return run.id


def metric_batch(
    run_id: int, keys: list[str], first_step: int, num_steps: int, seed: int = 0
) -> list[dict[str, Any]]:
    """Rows for `num_steps` iterations from `first_step`, one per key each."""
    rng = np.random.default_rng(seed + first_step)
    values = rng.standard_normal((num_steps, len(keys))).tolist()
    now = time.time()
    return [
        {"run_id": run_id, "key": key, "step": first_step + i, "value": value,
         "wall_time": now}
        for i, row in enumerate(values)
        for key, value in zip(keys, row, strict=True)
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serve(url: str) -> Iterator[str]:
    """The real app on uvicorn, on 127.0.0.1; yields its base URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="vsml-bench-app-") as folder:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VSML_")}
        env |= {"VSML_DATABASE_URL": url,
                "VSML_ARTIFACT_DIR": str(Path(folder) / "artifacts")}  # fmt: skip
        command = [sys.executable, "-m", "uvicorn", "--factory",
                   "server.app:create_app", "--host", "127.0.0.1",
                   "--port", str(port), "--log-level", "warning"]  # fmt: skip
        server = subprocess.Popen(command, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(base, server)
            yield base
        finally:
            server.terminate()
            server.wait(timeout=30)


def wait_until_up(base: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"uvicorn exited with status {server.returncode}")
        try:
            get(f"{base}/api/runs?limit=1")
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise RuntimeError(f"the app at {base} did not answer within {timeout:.0f} s")


def get(address: str) -> bytes:
    with urllib.request.urlopen(address, timeout=60) as response:
        return response.read()


def report(figures: dict[str, Any], as_json: bool) -> None:
    """Print the figures: one JSON line, or one `name value` line each."""
    if as_json:
        print(json.dumps(figures))
        return
    for name, value in figures.items():
        if isinstance(value, float):
            shown = f"{value:,.1f}"
        else:
            shown = f"{value:,}" if isinstance(value, int) else str(value)
        print(f"{name:<28} {shown}")
