"""Faults of a shared cluster, each on real servers: a killed training
process, a crash loop, a broker that redelivers a long run, a Redis restart,
a database and API restart, and a run over two "hosts" on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from server.config import Settings
from server.db import get_engine, session_scope
from server.migrate import upgrade
from server.models import MetricPoint
from tests.services import (
    free_port,
    private_postgres,
    private_redis,
)
from tests.worker.test_recovery import LONG, history, start_worker, stop, tiny_lab
from tests.worker.test_worker import ROOT, TINY_YAML, finished, launch, wait_for


def training_pids(run_id: int) -> dict[int, int]:
    """{rank: pid} of the run's training processes on this machine."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if b"worker.child" not in argv or str(run_id).encode() not in argv:
            continue
        if b"torch.distributed.run" in argv:
            continue  # the launcher, not a training process
        env = dict(e.split(b"=", 1) for e in environ if b"=" in e)
        found[int(env.get(b"RANK", b"0"))] = int(proc.name)
    return found


def logs_of(client: TestClient, run_id: int) -> list[str]:
    rows = client.get(f"/api/runs/{run_id}/logs?limit=10000").json()
    return [row["text"] for row in rows]


def kill_rank_when(
    client: TestClient, run_id: int, rank: int, ready: Callable[[dict], bool]
) -> None:
    wait_for(client, run_id, ready, timeout=120)
    pids = training_pids(run_id)
    assert rank in pids, pids
    os.kill(pids[rank], signal.SIGKILL)


@pytest.mark.parametrize("world_size,rank", [(1, 0), (2, 1)])
def test_killed_training_process_is_retried(
    settings: Settings, world_size: int, rank: int
) -> None:
    """kill -9 of one training process: the run resumes from its checkpoint
    and ends with every meta-iteration stored exactly once."""
    client, experiment_id = tiny_lab(settings)
    log = settings.artifact_dir.parent / "worker.log"
    worker = start_worker(settings, log)
    try:
        run_id = launch(client, experiment_id, *LONG,
                        f"distributed.world_size={world_size}")  # fmt: skip
        kill_rank_when(client, run_id, rank, lambda r: r["iteration"] >= 12)
        run = wait_for(client, run_id, finished, timeout=180)
    finally:
        stop(worker)
    assert run["status"] == "succeeded", (run, log.read_text()[-3000:])
    assert run["attempts"] == 2
    assert history(settings, run_id) == list(range(1, 61))
    logs = logs_of(client, run_id)
    assert any("lost on attempt 1" in line for line in logs)
    assert any("resuming from iteration" in line for line in logs)


def test_run_that_keeps_crashing_fails_naming_each_attempt(settings: Settings) -> None:
    client, experiment_id = tiny_lab(settings)
    log = settings.artifact_dir.parent / "worker.log"
    worker = start_worker(settings, log, VSML_MAX_ATTEMPTS="2")
    try:
        run_id = launch(client, experiment_id, *LONG)
        for attempt in (1, 2):
            kill_rank_when(client, run_id, 0, lambda r, a=attempt: (
                r["attempts"] == a and r["status"] == "running"
                and bool(training_pids(run_id))))  # fmt: skip
        run = wait_for(client, run_id, finished, timeout=60)
    finally:
        stop(worker)
    assert run["status"] == "failed", run
    assert "lost 2 times" in run["error"]
    assert "attempt 1: the training process was killed by SIGKILL" in run["error"]
    assert "attempt 2: the training process was killed by SIGKILL" in run["error"]


def test_redelivered_long_run_is_not_run_twice(settings: Settings) -> None:
    """Redis hands a run that outlives its visibility timeout to another
    worker; that worker skips it and the run trains once."""
    client, experiment_id = tiny_lab(settings)
    logs = settings.artifact_dir.parent
    quick = {"VSML_BROKER_VISIBILITY_S": "2"}
    first = start_worker(settings, logs / "first.log", name="first@%h", **quick)
    second = None
    try:
        run_id = launch(client, experiment_id, *LONG)
        wait_for(client, run_id, lambda r: r["status"] == "running", timeout=60)
        second = start_worker(settings, logs / "second.log", name="second@%h",
                              **quick)  # fmt: skip
        run = wait_for(client, run_id, finished, timeout=180)
    finally:
        stop(first)
        if second is not None:
            stop(second)
    assert run["status"] == "succeeded", run
    assert run["attempts"] == 1 and run["worker"].startswith("first@")
    assert history(settings, run_id) == list(range(1, 61))
    skipped = f"run {run_id}: not for this worker (running), skipping"
    assert skipped in (logs / "second.log").read_text()  # it was redelivered


def test_redis_restart_mid_run_loses_nothing(settings: Settings, tmp_path: Path):
    """The broker goes down and comes back while a run trains: the run
    finishes with a clean history and the worker takes new runs again."""
    with private_redis(tmp_path) as redis:
        broker = f"redis://127.0.0.1:{redis.port}/0"
        settings = settings.model_copy(update={"broker_url": broker})
        client, experiment_id = tiny_lab(settings)
        log = settings.artifact_dir.parent / "worker.log"
        worker = start_worker(settings, log)
        try:
            run_id = launch(client, experiment_id, *LONG)
            wait_for(client, run_id, lambda r: r["iteration"] >= 10, timeout=90)
            redis.restart(down_s=3)
            run = wait_for(client, run_id, finished, timeout=180)
            later = launch(client, experiment_id)  # sent after it
            after = wait_for(client, later, finished, timeout=180)
        finally:
            stop(worker)
    assert run["status"] == "succeeded", (run, log.read_text()[-3000:])
    assert history(settings, run_id) == list(range(1, 61))
    assert after["status"] == "succeeded", (after, log.read_text()[-3000:])


def start_api(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "VSML_ARTIFACT_DIR": str(settings.artifact_dir),
           "VSML_DATABASE_URL": settings.database_url,
           "VSML_BROKER_URL": settings.broker_url, "VSML_QUEUE": settings.queue,
           "VSML_PORT": str(port)}  # fmt: skip
    with log.open("ab") as out:
        api = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "api"], cwd=ROOT, env=env,
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return api
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"the API did not come up: {log.read_text()[-2000:]}")


def test_database_and_api_restart_mid_run_lose_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    """PostgreSQL and the API both restart while a run trains: the worker
    keeps its points until the database is back, and nothing is lost."""
    with private_postgres() as postgres:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{postgres.port}/postgres"
        upgrade(url)
        settings = settings.model_copy(update={"database_url": url})
        logs, port = settings.artifact_dir.parent, free_port()
        logs.mkdir(parents=True, exist_ok=True)
        api = start_api(settings, port, logs / "api.log")
        worker = start_worker(settings, logs / "worker.log")
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        try:
            experiment_id = http.post(
                "/api/experiments", json={"config": TINY_YAML}
            ).json()["id"]
            run_id = launch(http, experiment_id, *LONG)
            wait_for(http, run_id, lambda r: r["iteration"] >= 10, timeout=90)
            api.kill()
            api.wait(30)
            postgres.restart(down_s=5)  # pooled connections are pinged
            api = start_api(settings, port, logs / "api.log")
            run = wait_for(http, run_id, finished, timeout=180)
            steps = history(settings, run_id)
        finally:
            stop(worker)
            stop(api)
            http.close()
            get_engine(url).dispose()
    worker_log = (logs / "worker.log").read_text()[-3000:]
    assert run["status"] == "succeeded", (run, worker_log)
    assert run["attempts"] == 1, worker_log  # the worker waited for the database
    assert steps == list(range(1, 61))


def loss_curve(settings: Settings, run_id: int) -> list[float]:
    with session_scope(settings.database_url) as session:
        rows = session.query(MetricPoint.step, MetricPoint.value).filter_by(
            run_id=run_id, key="meta_loss"
        )
        return [value for _, value in sorted(rows)]


def test_run_over_two_hosts_matches_one_host(settings: Settings) -> None:
    """distributed.nodes=2: two workers (two "hosts" on loopback) each take
    one copy of the run, rendezvous, and train it together, with the same
    losses as the two processes on one host."""
    client, experiment_id = tiny_lab(settings)
    logs = settings.artifact_dir.parent
    on_loopback = {"VSML_NODE_ADDRESS": "127.0.0.1"}
    hosts = [start_worker(settings, logs / f"host{i}.log", name=f"host{i}@%h",
                          **on_loopback) for i in (0, 1)]  # fmt: skip
    try:
        two_hosts = launch(client, experiment_id,
                           "distributed.world_size=2",
                           "distributed.nodes=2")  # fmt: skip
        busy: set[str] = set()  # workers seen training it (both hosts)

        def done(run: dict) -> bool:
            workers = client.get("/api/workers").json()
            busy.update(w["name"] for w in workers if w["run_id"] == two_hosts)
            return finished(run)

        spread = wait_for(client, two_hosts, done, timeout=180)
        one_host = launch(client, experiment_id, "distributed.world_size=2")
        together = wait_for(client, one_host, finished, timeout=180)
    finally:
        for host in hosts:
            stop(host)
    host0 = (logs / "host0.log").read_text()[-3000:]
    assert spread["status"] == "succeeded", (spread, host0)
    assert together["status"] == "succeeded", together
    assert len(spread["devices"]) == 2 and spread["attempts"] == 1
    joined = [i for i in (0, 1) if f"run {two_hosts}: node 1 of 2 started" in
              (logs / f"host{i}.log").read_text()]  # fmt: skip
    assert len(joined) == 1 and spread["worker"].startswith(f"host{1 - joined[0]}@")
    assert {name.split("@")[0] for name in busy} == {"host0", "host1"}
    notes = logs_of(client, two_hosts)
    assert any("waiting for 1 more host(s)" in line for line in notes)
    assert any("node 1 of 2 joined on host" in line for line in notes)
    assert loss_curve(settings, two_hosts) == pytest.approx(
        loss_curve(settings, one_host), rel=1e-5
    )


def test_gpu_runs_wait_for_a_worker_with_gpus(settings: Settings) -> None:
    """A run asking for a GPU goes to its own queue, which a CPU worker does
    not serve: it stays queued while CPU runs pass it by."""
    import redis

    client, experiment_id = tiny_lab(settings)
    worker = start_worker(settings, settings.artifact_dir.parent / "cpu.log")
    try:
        gpu_run = launch(client, experiment_id, "distributed.gpus=1")
        cpu_run = launch(client, experiment_id)
        assert wait_for(client, cpu_run, finished)["status"] == "succeeded"
        waiting = client.get(f"/api/runs/{gpu_run}").json()
    finally:
        stop(worker)
    assert waiting["status"] == "queued"
    assert waiting["queue"] == f"{settings.queue}.gpu1"
    broker = redis.Redis.from_url(settings.broker_url)
    assert broker.llen(f"{settings.queue}.gpu1") >= 1  # its message waits there
    broker.delete(f"{settings.queue}.gpu1")


def test_run_short_of_hosts_fails_or_cancels_promptly(settings: Settings) -> None:
    """nodes=2 with one worker: the run says it waits for a host, a cancel
    ends it at once, and without one it fails after timeout_minutes."""
    client, experiment_id = tiny_lab(settings)
    log = settings.artifact_dir.parent / "alone.log"
    worker = start_worker(settings, log, VSML_NODE_ADDRESS="127.0.0.1")
    two = ("distributed.world_size=2", "distributed.nodes=2")
    try:
        waits = launch(client, experiment_id, *two)
        wait_for(
            client,
            waits,
            lambda r: any(
                "waiting for 1 more host" in line for line in logs_of(client, waits)
            ),
        )
        client.post(f"/api/runs/{waits}/cancel")
        start = time.monotonic()
        cancelled = wait_for(client, waits, finished, timeout=60)
        took = time.monotonic() - start
        alone = launch(client, experiment_id, *two,
                       "distributed.timeout_minutes=0.1")  # fmt: skip
        failed = wait_for(client, alone, finished, timeout=90)
    finally:
        stop(worker)
    assert cancelled["status"] == "cancelled" and took < 15, (cancelled, took)
    assert failed["status"] == "failed", failed
    assert "only 1 of 2 hosts joined" in failed["error"]
    assert "serving queue" in failed["error"]


def test_restarted_worker_resends_only_the_queues_it_serves(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At start, a worker re-sends the queued runs of its own queues and leaves
    a GPU run's message to the workers with GPUs."""
    import redis

    from server.queue import make_celery
    from worker.supervisor import recover

    # The Celery app a worker started with these settings would have.
    monkeypatch.setattr("worker.app.app", make_celery(settings))
    client, experiment_id = tiny_lab(settings)
    cpu_run = launch(client, experiment_id)
    gpu_run = launch(client, experiment_id, "distributed.gpus=1")
    broker = redis.Redis.from_url(settings.broker_url)
    gpu_queue = f"{settings.queue}.gpu1"
    before = broker.llen(settings.queue), broker.llen(gpu_queue)
    try:
        resent = recover(settings, "restarted@test", [settings.queue])
        after = broker.llen(settings.queue), broker.llen(gpu_queue)
    finally:
        broker.delete(settings.queue, gpu_queue)
    assert resent == [cpu_run] and gpu_run not in resent
    assert after == (before[0] + 1, before[1])
