"""Supervise one run: start its training process, relay logs, honour cancels.

Status changes: queued -> running -> succeeded | failed | cancelled. The
training runs as a child process in its own session (process group), so a
crash or a kill of the training leaves the worker standing to record it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import IO

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from server import records
from server.config import Settings
from server.db import session_scope
from server.models import Run, RunStatus, utcnow
from worker.child import RESULT_FILE, STOP_FILE
from worker.sink import Batch, BatchWriter

logger = logging.getLogger(__name__)

SHUTDOWN = threading.Event()  # set when the Celery worker is shutting down
STOP_GRACE_S = 60.0  # after a stop request, how long a run may take to stop


def supervise(settings: Settings, run_id: int, worker_name: str) -> str:
    """Run `run_id` to its end; returns its final status."""
    url = settings.resolved_database_url
    if SHUTDOWN.is_set():
        # Taken while this worker stops: leave the run queued for the next
        # worker (worker.app re-sends queued runs when a worker starts).
        logger.info("run %d: worker shutting down, leaving it queued", run_id)
        return "skipped"
    folder = claim(url, run_id, worker_name)
    if folder is None:
        return "skipped"
    logger.info("run %d: started on %s", run_id, worker_name)
    (folder / RESULT_FILE).unlink(missing_ok=True)
    (folder / STOP_FILE).unlink(missing_ok=True)
    child = start_child(run_id, world_size(url, run_id))
    pump = LogPump(url, run_id, child.stdout)
    reason = watch(settings, run_id, worker_name, child, folder)
    pump.join()
    if reason == "taken":  # re-queued as lost meanwhile: no longer ours
        logger.warning("run %d: taken over while this worker was silent", run_id)
        return "taken"
    status = finish(url, run_id, folder, child.returncode, reason)
    logger.info("run %d: %s", run_id, status)
    return status


def claim(url: str, run_id: int, worker_name: str) -> Path | None:
    """Mark a queued run as running here; None if it is not ours to run."""
    with session_scope(url) as session:
        run = session.get(Run, run_id, with_for_update=True)
        if run is None or run.status != RunStatus.queued:
            # Cancelled before it started, deleted, or delivered twice.
            logger.info("run %d: not queued (%s), skipping", run_id,
                        run.status if run else "deleted")  # fmt: skip
            return None
        records.set_status(
            session, run, RunStatus.running, worker=worker_name,
            heartbeat_at=utcnow(), attempts=run.attempts + 1,
        )  # fmt: skip
        folder = Path(run.artifact_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def world_size(url: str, run_id: int) -> int:
    with session_scope(url) as session:
        run = session.get(Run, run_id)
        config = run.config if run is not None else {}
    return int(config.get("distributed", {}).get("world_size", 1))


def child_command(run_id: int, processes: int) -> list[str]:
    """One training process, or `processes` of them under torchrun."""
    if processes <= 1:
        return [sys.executable, "-m", "worker.child", str(run_id)]
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={processes}", "--max-restarts=0",
        "-m", "worker.child", str(run_id),
    ]  # fmt: skip


def start_child(run_id: int, processes: int = 1) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "worker.orphan_guard", *child_command(run_id,
                                                                       processes)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        errors="replace", env=env, start_new_session=True,
    )  # fmt: skip


class LogPump:
    """Copies the child's output lines into the run's log, in batches."""

    def __init__(self, url: str, run_id: int, stream: IO[str] | None) -> None:
        with session_scope(url) as session:
            self.seq = records.next_log_seq(session, run_id)
        self.run_id = run_id
        self.writer = BatchWriter(url, run_id)
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream: IO[str] | None) -> None:
        for line in stream or []:
            row = {"run_id": self.run_id, "seq": self.seq, "time": time.time(),
                   "text": line.rstrip("\n")[:10_000]}  # fmt: skip
            self.seq += 1
            self.writer.put(lambda batch, row=row: _add_log(batch, row))

    def join(self) -> None:
        self.thread.join()
        self.writer.close()


def _add_log(batch: Batch, row: dict) -> None:
    batch.logs.append(row)


def watch(
    settings: Settings,
    run_id: int,
    worker_name: str,
    child: subprocess.Popen[str],
    folder: Path,
) -> str:
    """Wait for the child, stamping the run's heartbeat; stop it on a cancel,
    a worker shutdown, or when the run was taken over (re-queued as lost).

    The stop request is a file the training's rank 0 looks for each
    iteration (a signal would also hit torchrun, which treats it as a
    failure). Returns "" when it ended by itself, else "cancel", "shutdown"
    or "taken".
    """
    url = settings.resolved_database_url
    reason, signalled_at, last_beat = "", 0.0, time.monotonic()
    while child.poll() is None:
        beat = time.monotonic() - last_beat >= settings.heartbeat_s
        state = check_in(url, run_id, worker_name, beat)
        last_beat = time.monotonic() if beat else last_beat
        if not reason:
            reason = state or ("shutdown" if SHUTDOWN.is_set() else "")
            if reason:
                logger.info("run %d: stopping (%s)", run_id, reason)
                (folder / STOP_FILE).touch()
                signalled_at = time.monotonic()
        elif time.monotonic() - signalled_at > STOP_GRACE_S:
            logger.warning("run %d: no exit after a stop request, killing it", run_id)
            os.killpg(child.pid, signal.SIGKILL)
        time.sleep(settings.cancel_poll_s)
    return reason


def check_in(url: str, run_id: int, worker_name: str, beat: bool) -> str:
    """ "cancel", "taken" (no longer running here) or ""; stamps if `beat`."""
    try:
        with session_scope(url) as session:
            run = session.get(Run, run_id)
            if run is None or run.status != RunStatus.running:
                return "taken" if run is not None else "cancel"
            if run.worker != worker_name:
                return "taken"
            if beat:
                run.heartbeat_at = utcnow()
            return "cancel" if run.cancel_requested else ""
    except Exception:  # a database hiccup must not end the run
        logger.warning("run %d: could not check in", run_id, exc_info=True)
        return ""


def read_result(folder: Path) -> dict:
    try:
        return json.loads((folder / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return {}


def finish(url: str, run_id: int, folder: Path, code: int, reason: str) -> str:
    """Record how the run ended; a worker shutdown puts it back in the queue."""
    result = read_result(folder)
    status = result.get("status")
    fields: dict[str, str | None] = {}
    if reason == "cancel" and not result:
        # It did not stop in time and was killed: cancelled, but say how.
        status = "cancelled"
        fields = {
            "error": f"{_exit_reason(code)} after not stopping within "
            f"{STOP_GRACE_S:.0f} s of the cancel (no final checkpoint)"
        }
    elif code != 0 or status not in ("succeeded", "cancelled"):
        status = "failed"
        error = result.get("error") or _exit_reason(code)
        fields = {"error": error, "traceback": result.get("traceback")}
    if reason == "shutdown" and status == "cancelled":
        status = "queued"  # stopped with a checkpoint; resumes on the next worker
    with session_scope(url) as session:
        run = session.get(Run, run_id)
        if run is None:
            return "deleted"
        records.set_status(session, run, RunStatus(status), **fields)
    if status == "queued":
        requeue(run_id)
    return status


def requeue(run_id: int) -> None:
    from server.queue import enqueue_run
    from worker.app import app

    enqueue_run(app, run_id)


def _exit_reason(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        return f"the training process was killed by {name}"
    return f"the training process exited with status {code}"


def recover(settings: Settings, worker_name: str) -> list[int]:
    """At worker start: runs this worker held when it died go back to the
    queue (they resume from their last checkpoint), and every queued run is
    sent again, so that none waits for a message that was lost. A run is
    claimed only once (`claim`), so extra messages are harmless."""
    url = settings.resolved_database_url
    with session_scope(url) as session:
        lost = session.scalars(
            select(Run).where(
                Run.status == RunStatus.running, Run.worker == worker_name
            )
        ).all()
        for run in lost:
            give_back(session, run, settings, "its worker restarted")
        queued = list(
            session.scalars(select(Run.id).where(Run.status == RunStatus.queued))
        )
    for run_id in queued:
        requeue(run_id)
    return queued


def reap(settings: Settings) -> list[int]:
    """Runs whose worker has been silent for lost_after_s go back to the
    queue (or fail after max_attempts starts); returns those re-queued."""
    url = settings.resolved_database_url
    silent_since = utcnow() - timedelta(seconds=settings.lost_after_s)
    with session_scope(url) as session:
        lost = session.scalars(
            select(Run)
            .where(
                Run.status == RunStatus.running,
                or_(Run.heartbeat_at < silent_since, Run.heartbeat_at.is_(None)),
            )
            .with_for_update(skip_locked=True)
        ).all()
        requeued = [
            run.id for run in lost
            if give_back(session, run, settings,
                         f"no heartbeat from {run.worker} for "
                         f"{settings.lost_after_s:.0f} s")
        ]  # fmt: skip
    for run_id in requeued:
        requeue(run_id)
    return requeued


def give_back(session: Session, run: Run, settings: Settings, why: str) -> bool:
    """Re-queue a lost run, or fail it after max_attempts; True if re-queued."""
    note = f"run lost on attempt {run.attempts}: {why}"
    logger.warning("run %d: %s", run.id, note)
    seq = records.next_log_seq(session, run.id)
    records.add_log_rows(session, [{"run_id": run.id, "seq": seq,
                                    "time": time.time(), "text": note}])  # fmt: skip
    if run.attempts >= settings.max_attempts:
        records.set_status(
            session, run, RunStatus.failed,
            error=f"lost {run.attempts} times (max_attempts "
            f"{settings.max_attempts}); last: {why}",
        )  # fmt: skip
        return False
    records.set_status(session, run, RunStatus.queued, worker=None)
    return True
