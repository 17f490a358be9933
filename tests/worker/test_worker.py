"""End to end: a real Celery worker process, real Redis, real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import Settings
from server.db import session_scope
from server.migrate import upgrade
from server.models import MetricPoint
from tests.conftest import TINY
from tests.services import REDIS, fresh_postgres

ROOT = Path(__file__).resolve().parents[2]
TINY_YAML = """
name: tiny
data: {train: [{name: digits}], image_size: [4, 4]}
model: {state_size: 8, message_size: 4, num_micro_ticks: 1, backward_pass: true,
        aggregation: sum}
training: {episode_length: 12, log_every: 1, num_iterations: 12,
           checkpoint_every: 5}
optimizer: {population_size: 3}
evaluation: {datasets: [{name: digits}], num_episodes: 2, episode_length: 20,
             every: 6}
"""
assert "data.image_size=[4,4]" in TINY  # the same tiny learner as the unit tests


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with fresh_postgres() as url:
        upgrade(url)
        yield Settings(
            artifact_dir=tmp_path_factory.mktemp("lab") / "artifacts",
            database_url=url,
            broker_url=REDIS,
            queue=f"test-{uuid.uuid4().hex[:8]}",  # apart from any other worker
        )


@pytest.fixture(scope="module")
def worker(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """`vsml-lab worker` as a deployment starts it."""
    env = {
        **os.environ,
        "VSML_ARTIFACT_DIR": str(settings.artifact_dir),
        "VSML_DATABASE_URL": settings.database_url,
        "VSML_BROKER_URL": settings.broker_url,
        "VSML_QUEUE": settings.queue,
        "VSML_WANDB_MODE": "offline",  # mirrored without network
    }
    log = open(settings.artifact_dir.parent / "worker.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "worker", "--name", "test@%h"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    yield process
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture(scope="module")
def client(settings: Settings, worker: subprocess.Popen[bytes]) -> TestClient:
    return TestClient(create_app(settings))


@pytest.fixture(scope="module")
def experiment_id(client: TestClient) -> int:
    response = client.post("/api/experiments", json={"config": TINY_YAML})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def launch(client: TestClient, experiment_id: int, *overrides: str) -> int:
    body = {"seeds": [0], "overrides": list(overrides)}
    response = client.post(f"/api/experiments/{experiment_id}/runs", json=body)
    assert response.status_code == 201, response.text
    return response.json()[0]["id"]


def wait_for(client: TestClient, run_id: int, done, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get(f"/api/runs/{run_id}").json()
        if done(run):
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not get there in {timeout} s: {run}")


def finished(run: dict) -> bool:
    return run["status"] in ("succeeded", "failed", "cancelled")


def test_run_goes_from_queued_to_succeeded(
    client: TestClient, experiment_id: int, settings: Settings
) -> None:
    """A queued run trains on the worker; its outputs land in the database."""
    run_id = launch(client, experiment_id)
    run = wait_for(client, run_id, finished)
    assert run["status"] == "succeeded", run["traceback"]
    assert run["iteration"] == 12 and run["worker"].startswith("test@")
    assert run["started_at"] and run["finished_at"]
    metrics = client.get(f"/api/runs/{run_id}/metrics?keys=meta_loss").json()
    assert metrics["meta_loss"]["steps"] == list(range(1, 13))
    curves = client.get(f"/api/runs/{run_id}/curves?meta_step=all").json()
    assert curves["meta_steps"] == [0, 6, 12]
    learners = {row[2] for row in curves["rows"]}
    assert learners == {"vsml", "sgd", "adam"} and len(curves["rows"]) == 3 * 3 * 20
    assert set(run["best_accuracy"]) == {"digits"}
    iterations = [c["iteration"] for c in client.get(f"/api/runs/{run_id}/checkpoints")
                  .json()]  # fmt: skip
    assert iterations == [5, 10, 12]
    logs = [x["text"] for x in client.get(f"/api/runs/{run_id}/logs").json()]
    assert any("iteration 12: meta_loss" in line for line in logs)
    folder = settings.artifact_dir / "runs" / str(run_id) / "wandb"
    mirrored = b"".join(p.read_bytes() for p in folder.rglob("*.wandb"))
    assert b"meta_loss" in mirrored and b"test/digits/vsml/mean_accuracy" in mirrored


def test_metric_points_are_written_once(
    client: TestClient, experiment_id: int, settings: Settings
) -> None:
    """Every (run, key, step) is stored exactly once."""
    run_id = launch(client, experiment_id, "training.num_iterations=4")
    assert wait_for(client, run_id, finished)["status"] == "succeeded"
    with session_scope(settings.database_url) as session:
        rows = session.query(MetricPoint.key, MetricPoint.step).filter_by(run_id=run_id)
        pairs = [tuple(r) for r in rows]
    assert pairs and len(pairs) == len(set(pairs))


def test_cancel_stops_a_running_run_with_a_checkpoint(
    client: TestClient, experiment_id: int
) -> None:
    """Cancel ends a running run within 10 s, after a final checkpoint."""
    run_id = launch(
        client, experiment_id, "training.num_iterations=1000000",
        "training.checkpoint_every=100000", "evaluation.every=100000",
    )  # fmt: skip
    wait_for(client, run_id, lambda r: r["iteration"] >= 3)
    response = client.post(f"/api/runs/{run_id}/cancel")
    assert response.status_code == 200 and response.json()["cancel_requested"]
    asked = time.monotonic()
    run = wait_for(client, run_id, finished, timeout=30)
    assert run["status"] == "cancelled"
    assert time.monotonic() - asked < 10
    checkpoints = client.get(f"/api/runs/{run_id}/checkpoints").json()
    assert checkpoints[-1]["iteration"] >= run["iteration"] >= 3
    assert client.post(f"/api/runs/{run_id}/cancel").status_code == 409


def test_failing_run_keeps_its_traceback(
    client: TestClient, experiment_id: int
) -> None:
    """A run whose training raises is failed, with the error and traceback."""
    run_id = launch(client, experiment_id, "data.train=[{name: kmnist}]")
    run = wait_for(client, run_id, finished)
    assert run["status"] == "failed"
    assert "kmnist" in run["error"]
    assert "Traceback" in run["traceback"]


def test_two_process_run_trains_and_cancels(
    client: TestClient, experiment_id: int
) -> None:
    """world_size 2 runs under torchrun; rank 0 reports, a cancel stops both."""
    run_id = launch(client, experiment_id, "distributed.world_size=2")
    run = wait_for(client, run_id, finished, timeout=120)
    assert run["status"] == "succeeded", run["traceback"]
    metrics = client.get(f"/api/runs/{run_id}/metrics?keys=meta_loss").json()
    assert metrics["meta_loss"]["steps"] == list(range(1, 13))
    logs = "\n".join(x["text"] for x in client.get(f"/api/runs/{run_id}/logs").json())
    assert "rank 1 of 2" in logs and "rank 0 of 2" in logs

    run_id = launch(
        client, experiment_id, "distributed.world_size=2",
        "training.num_iterations=1000000", "evaluation.every=100000",
    )  # fmt: skip
    wait_for(client, run_id, lambda r: r["iteration"] >= 2, timeout=120)
    client.post(f"/api/runs/{run_id}/cancel")
    run = wait_for(client, run_id, finished, timeout=30)
    assert run["status"] == "cancelled", run["error"]
