"""A worker that dies or stops mid-run: the run resumes, its history stays clean."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import Settings
from server.db import session_scope
from server.models import MetricPoint, Run, utcnow
from tests.worker.test_worker import ROOT, TINY_YAML, finished, launch, wait_for


def start_worker(
    settings: Settings, log: Path, name: str = "recovery@%h", **extra: str
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "VSML_ARTIFACT_DIR": str(settings.artifact_dir),
        "VSML_DATABASE_URL": settings.database_url,
        "VSML_BROKER_URL": settings.broker_url,
        "VSML_QUEUE": settings.queue,
        **extra,
    }
    with log.open("ab") as out:  # the worker keeps its own copy of the file
        return subprocess.Popen(
            [sys.executable, "-m", "server.cli", "worker", "--name", name],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def tiny_lab(settings: Settings) -> tuple[TestClient, int]:
    """An API client on these settings and the id of a tiny experiment."""
    client = TestClient(create_app(settings))
    experiment = client.post("/api/experiments", json={"config": TINY_YAML})
    return client, experiment.json()["id"]


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(30)


def history(settings: Settings, run_id: int) -> list[int]:
    with session_scope(settings.database_url) as session:
        rows = session.query(MetricPoint.step).filter_by(run_id=run_id, key="meta_loss")
        return sorted(step for (step,) in rows)  # fmt: skip


# Long enough (about 15 s) that a stop or a kill lands mid-run, not after it.
LONG = ("training.num_iterations=60", "training.checkpoint_every=5",
        "training.episode_length=36", "evaluation.every=1000")  # fmt: skip


@pytest.mark.parametrize("how", ["kill -9", "warm stop"])
def test_run_resumes_after_its_worker_goes(settings: Settings, how: str) -> None:
    """Killed or stopped mid-run, the run resumes on the next worker and ends
    with every meta-iteration recorded exactly once."""
    client, experiment_id = tiny_lab(settings)
    log = settings.artifact_dir.parent / "worker.log"
    worker = start_worker(settings, log)
    try:
        run_id = launch(client, experiment_id, *LONG)
        wait_for(client, run_id, lambda r: r["iteration"] >= 12, timeout=90)
        if how == "kill -9":
            worker.send_signal(signal.SIGKILL)
        else:
            worker.send_signal(signal.SIGTERM)  # Celery's warm shutdown
        worker.wait(60)
        time.sleep(2)  # an orphaned training would keep writing meanwhile
        before = history(settings, run_id)
        time.sleep(2)
        assert history(settings, run_id) == before  # the training died too
        worker = start_worker(settings, log)
        run = wait_for(client, run_id, finished, timeout=120)
    finally:
        stop(worker)
    assert run["status"] == "succeeded", (run, log.read_text()[-3000:])
    assert history(settings, run_id) == list(range(1, 61))
    logs = [x["text"] for x in client.get(f"/api/runs/{run_id}/logs?limit=10000")
            .json()]  # fmt: skip
    assert any("resuming from iteration" in line for line in logs)


def silent_run(settings: Settings, client: TestClient, attempts: int) -> int:
    """A run that a vanished worker left "running" long ago."""
    experiment = client.post("/api/experiments", json={"config": TINY_YAML})
    run_id = launch(client, experiment.json()["id"], "training.num_iterations=8")
    with session_scope(settings.database_url) as session:
        run = session.get(Run, run_id)
        run.status, run.worker, run.attempts = "running", "ghost@elsewhere", attempts
        run.heartbeat_at = utcnow() - timedelta(minutes=10)
    return run_id


FAST_REAPER = {"VSML_LOST_AFTER_S": "2", "VSML_HEARTBEAT_S": "0.3"}


def test_run_of_a_silent_worker_is_requeued_and_finishes(settings: Settings) -> None:
    """A run whose worker stopped beating goes back to the queue and ends."""
    client = TestClient(create_app(settings))
    run_id = silent_run(settings, client, attempts=1)
    log = settings.artifact_dir.parent / "worker.log"
    worker = start_worker(settings, log, **FAST_REAPER)
    try:
        run = wait_for(client, run_id, finished, timeout=90)
    finally:
        stop(worker)
    assert run["status"] == "succeeded", (run, log.read_text()[-3000:])
    assert history(settings, run_id) == list(range(1, 9))  # never reaped twice
    logs = [x["text"] for x in client.get(f"/api/runs/{run_id}/logs").json()]
    assert any("lost on attempt 1" in line for line in logs)


def test_run_lost_too_often_fails_with_the_reason(settings: Settings) -> None:
    """After max_attempts starts, a lost run fails instead of looping."""
    client = TestClient(create_app(settings))
    run_id = silent_run(settings, client, attempts=3)
    worker = start_worker(settings, settings.artifact_dir.parent / "w.log",
                          **FAST_REAPER)  # fmt: skip
    try:
        run = wait_for(client, run_id, finished, timeout=60)
    finally:
        stop(worker)
    assert run["status"] == "failed"
    assert "lost 3 times" in run["error"] and "ghost@elsewhere" in run["error"]
