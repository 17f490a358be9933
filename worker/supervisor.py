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
from pathlib import Path
from typing import IO

from sqlalchemy import select

from server import records
from server.config import Settings
from server.db import session_scope
from server.models import Run, RunStatus
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
    reason = watch(url, run_id, child, folder, settings.cancel_poll_s)
    pump.join()
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
        records.set_status(session, run, RunStatus.running, worker=worker_name)
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
    url: str, run_id: int, child: subprocess.Popen[str], folder: Path, poll_s: float
) -> str:
    """Wait for the child; stop it on a cancel or a worker shutdown.

    The stop request is a file the training's rank 0 looks for each
    iteration (a signal would also hit torchrun, which treats it as a
    failure). Returns "" when it ended by itself, else "cancel" or "shutdown".
    """
    reason, signalled_at = "", 0.0
    while child.poll() is None:
        if not reason:
            if cancel_requested(url, run_id):
                reason = "cancel"
            elif SHUTDOWN.is_set():
                reason = "shutdown"
            if reason:
                logger.info("run %d: stopping (%s)", run_id, reason)
                (folder / STOP_FILE).touch()
                signalled_at = time.monotonic()
        elif time.monotonic() - signalled_at > STOP_GRACE_S:
            logger.warning("run %d: no exit after a stop request, killing it", run_id)
            os.killpg(child.pid, signal.SIGKILL)
        time.sleep(poll_s)
    return reason


def cancel_requested(url: str, run_id: int) -> bool:
    try:
        with session_scope(url) as session:
            run = session.get(Run, run_id)
            return run is None or run.cancel_requested
    except Exception:  # a database hiccup must not end the run
        logger.warning("run %d: could not check for a cancel", run_id, exc_info=True)
        return False


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
            logger.warning("run %d: its worker died; back to the queue", run.id)
            records.set_status(session, run, RunStatus.queued)
        queued = list(
            session.scalars(select(Run.id).where(Run.status == RunStatus.queued))
        )
    for run_id in queued:
        requeue(run_id)
    return queued
