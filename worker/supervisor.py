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
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

from sqlalchemy import or_, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from server import records
from server.config import Settings
from server.db import session_scope
from server.models import LogLine, Run, RunStatus, utcnow
from server.queue import run_nodes
from worker import registry
from worker.child import RESULT_FILE, STOP_FILE
from worker.sink import Batch, BatchWriter

logger = logging.getLogger(__name__)

SHUTDOWN = threading.Event()  # set when the Celery worker is shutting down
STOP_GRACE_S = 60.0  # after a stop request, how long a run may take to stop


@dataclass
class Placement:
    """This worker's part of one attempt of a run."""

    folder: Path
    attempt: int  # the run's attempts count when this worker joined
    node_rank: int = 0  # which host of the run this is (0 reports)
    nodes: int = 1
    processes: int = 1  # training processes on this host
    gpus: int = 0  # GPUs on this host; 0 hides them from the training
    rendezvous: str | None = None  # "address:port" of node 0, nodes > 1
    join_timeout_s: float = 1800.0  # how long node 0 waits for the others


def supervise(settings: Settings, run_id: int, worker_name: str) -> str:
    """Run `run_id` (or this host's part of it) to its end; returns how it
    ended for this worker."""
    if SHUTDOWN.is_set():
        # Taken while this worker stops: leave the run queued for the next
        # worker (worker.app re-sends queued runs when a worker starts).
        logger.info("run %d: worker shutting down, leaving it queued", run_id)
        return "skipped"
    placement = retrying(lambda: claim(settings, run_id, worker_name))
    if placement is None:
        return "skipped"
    mark_training(settings, worker_name, run_id)
    try:
        return train_here(settings, run_id, worker_name, placement)
    finally:
        mark_training(settings, worker_name, None)


def train_here(
    settings: Settings, run_id: int, worker_name: str, placement: Placement
) -> str:
    """Start this host's training processes, watch them, record the end."""
    logger.info("run %d: node %d of %d started on %s", run_id, placement.node_rank,
                placement.nodes, worker_name)  # fmt: skip
    child = start_child(run_id, placement)
    url = settings.resolved_database_url
    if placement.node_rank == 0:
        relay: LogPump | threading.Thread = LogPump(url, run_id, child.stdout)
    else:  # other hosts' output goes to their worker's own log
        lines = (run_id, placement.node_rank, child.stdout)
        relay = threading.Thread(target=_log_lines, args=lines, daemon=True)
        relay.start()
    reason = watch(settings, run_id, placement, child)
    relay.join()
    if reason == "taken":  # re-queued as lost meanwhile: no longer ours
        logger.warning("run %d: taken over while this worker was silent", run_id)
        return "taken"
    if placement.node_rank:
        return f"node {placement.node_rank} ended ({_exit_reason(child.returncode)})"
    status = retrying(
        lambda: finish(settings, run_id, placement.folder, child.returncode, reason)
    )
    logger.info("run %d: %s", run_id, status)
    return status


def _log_lines(run_id: int, node: int, stream: IO[str] | None) -> None:
    for line in stream or []:
        logger.info("run %d node %d: %s", run_id, node, line.rstrip())


def mark_training(settings: Settings, worker_name: str, run_id: int | None) -> None:
    """Tell the dashboard which run this worker trains (best effort)."""
    try:
        registry.training(settings, worker_name, run_id)
    except Exception:  # the database may be away; the run matters more
        logger.warning("could not record the worker's run", exc_info=True)


T = TypeVar("T")
DB_RETRY_S = 600.0  # how long a worker waits for its database to come back


def retrying(step: Callable[[], T], give_up_after: float = DB_RETRY_S) -> T:
    """Run a database step, again and again while the database is away (a
    restart), so that neither a claimed run nor how it ended is lost."""
    deadline, delay = time.monotonic() + give_up_after, 0.5
    while True:
        try:
            return step()
        except OperationalError:
            if time.monotonic() > deadline:
                raise
            logger.warning("database unreachable, retrying in %.1f s", delay)
            time.sleep(delay)
            delay = min(2 * delay, 10.0)


def claim(settings: Settings, run_id: int, worker_name: str) -> Placement | None:
    """Mark a queued run as running here (node 0), or join a running run
    that still waits for hosts; None if it is not ours to run."""
    with session_scope(settings.resolved_database_url) as session:
        run = session.get(Run, run_id, with_for_update=True)
        placement = _place(settings, run, worker_name) if run else None
        if placement is None:
            # Cancelled before it started, deleted, or delivered twice.
            logger.info("run %d: not for this worker (%s), skipping", run_id,
                        run.status if run else "deleted")  # fmt: skip
            return None
    if placement.node_rank == 0:
        placement.folder.mkdir(parents=True, exist_ok=True)
        for stale in (RESULT_FILE, STOP_FILE):
            (placement.folder / stale).unlink(missing_ok=True)
        for stale in placement.folder.glob("error.rank*.json"):
            stale.unlink(missing_ok=True)
    return placement


def _place(settings: Settings, run: Run, worker_name: str) -> Placement | None:
    dist = run.config.get("distributed", {})
    nodes = int(dist.get("nodes", 1))
    placement = Placement(
        folder=Path(run.artifact_dir), attempt=run.attempts + 1, nodes=nodes,
        processes=int(dist.get("world_size", 1)) // nodes,
        gpus=int(dist.get("gpus", 0)),
        join_timeout_s=60 * float(dist.get("timeout_minutes", 30)),
    )  # fmt: skip
    session = session_of(run)
    if run.status == RunStatus.queued:
        placement.rendezvous = (
            f"{settings.node_address}:{free_port()}" if nodes > 1 else None
        )
        records.set_status(
            session, run, RunStatus.running, worker=worker_name,
            heartbeat_at=utcnow(), attempts=placement.attempt, nodes_joined=1,
            rendezvous=placement.rendezvous, devices=None,
        )  # fmt: skip
        if nodes > 1:
            note(session, run.id, f"node 0 of {nodes} on {worker_name}, listening "
                 f"at {placement.rendezvous}; waiting for {nodes - 1} more "
                 f"host(s), each a worker serving queue {run.queue} (up to "
                 f"distributed.timeout_minutes)")  # fmt: skip
        return placement
    # Node 0 claimed it (nodes_joined >= 1) and waits for the other hosts.
    joining = run.status == RunStatus.running and 0 < run.nodes_joined < nodes
    if not joining or run.cancel_requested:
        return None
    placement.attempt, placement.node_rank = run.attempts, run.nodes_joined
    placement.rendezvous = run.rendezvous
    run.nodes_joined += 1
    note(session, run.id, f"node {placement.node_rank} of {nodes} joined on "
         f"{worker_name}")  # fmt: skip
    return placement


def note(session: Session, run_id: int, text: str) -> None:
    """A line in the run's log from the supervisor itself."""
    logger.info("run %d: %s", run_id, text)
    seq = records.next_log_seq(session, run_id)
    records.add_log_rows(session, [{"run_id": run_id, "seq": seq,
                                    "time": time.time(), "text": text}])  # fmt: skip


def session_of(run: Run) -> Session:
    session = Session.object_session(run)
    assert session is not None  # runs here are always loaded in a session
    return session


def free_port() -> int:
    """A TCP port free on this host now, for node 0's rendezvous store."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


def child_command(run_id: int, placement: Placement) -> list[str]:
    """One training process, or several under torchrun (over hosts too)."""
    train = ["-m", "worker.child", str(run_id)]
    if placement.nodes == 1 and placement.processes == 1:
        return [sys.executable, *train]
    launch = [sys.executable, "-m", "torch.distributed.run", "--max-restarts=0",
              f"--nproc-per-node={placement.processes}"]  # fmt: skip
    if placement.nodes == 1:
        return [*launch, "--standalone", *train]
    address, port = (placement.rendezvous or "").rsplit(":", 1)
    return [
        *launch, f"--nnodes={placement.nodes}", f"--node-rank={placement.node_rank}",
        f"--master-addr={address}", f"--master-port={port}", *train,
    ]  # fmt: skip


def start_child(run_id: int, placement: Placement) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not placement.gpus:  # a CPU run leaves this host's GPUs to GPU runs
        env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.Popen(
        [sys.executable, "-m", "worker.orphan_guard",
         *child_command(run_id, placement)],
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
    placement: Placement,
    child: subprocess.Popen[str],
) -> str:
    """Wait for the child, stamping the run's heartbeat (node 0); stop it on
    a cancel, a worker shutdown, or when the run was taken over (re-queued
    as lost, or its attempt ended on another host).

    The stop request is a file the training's rank 0 looks for each
    iteration (a signal would also hit torchrun, which treats it as a
    failure). Returns "" when it ended by itself, else "cancel", "shutdown",
    "taken", "unjoined" (hosts missing after distributed.timeout_minutes) or
    "cancel_waiting" (cancelled before all hosts joined).
    """
    url = settings.resolved_database_url
    reason, signalled_at, last_beat = "", 0.0, time.monotonic()
    hosts = HostWait(url, run_id, placement)
    while child.poll() is None:
        beat = placement.node_rank == 0 and (
            time.monotonic() - last_beat >= settings.heartbeat_s
        )
        state = check_in(url, run_id, placement.attempt, beat)
        state = state or ("unjoined" if hosts.expired() else "")
        last_beat = time.monotonic() if beat else last_beat
        if state == "taken" and placement.node_rank:
            os.killpg(child.pid, signal.SIGKILL)  # node 0 decides what is kept
        if not reason:
            reason = state or ("shutdown" if SHUTDOWN.is_set() else "")
            if reason and hosts.waiting:
                # Nothing has trained yet, so there is no checkpoint to wait for.
                logger.info("run %d: stopping (%s) before all hosts joined",
                            run_id, reason)  # fmt: skip
                os.killpg(child.pid, signal.SIGKILL)
                reason = "cancel_waiting" if reason == "cancel" else reason
            elif reason:
                logger.info("run %d: stopping (%s)", run_id, reason)
                (placement.folder / STOP_FILE).touch()
                signalled_at = time.monotonic()
        elif time.monotonic() - signalled_at > STOP_GRACE_S:
            logger.warning("run %d: no exit after a stop request, killing it", run_id)
            os.killpg(child.pid, signal.SIGKILL)
        time.sleep(settings.cancel_poll_s)
    return reason


class HostWait:
    """Node 0 of a run over several hosts, until every host has joined."""

    def __init__(self, url: str, run_id: int, placement: Placement) -> None:
        self.url, self.run_id, self.nodes = url, run_id, placement.nodes
        self.waiting = placement.node_rank == 0 and placement.nodes > 1
        self.deadline = time.monotonic() + placement.join_timeout_s

    def expired(self) -> bool:
        """Whether the hosts took too long to join (checks while waiting)."""
        if not self.waiting:
            return False
        try:
            with session_scope(self.url) as session:
                run = session.get(Run, self.run_id)
                joined = run.nodes_joined if run is not None else self.nodes
        except Exception:  # a database hiccup: ask again next time
            return False
        self.waiting = joined < self.nodes
        return self.waiting and time.monotonic() > self.deadline


def check_in(url: str, run_id: int, attempt: int, beat: bool) -> str:
    """ "cancel", "taken" (this attempt is over) or ""; stamps if `beat`."""
    try:
        with session_scope(url) as session:
            run = session.get(Run, run_id)
            if run is None:
                return "cancel"
            if run.status != RunStatus.running or run.attempts != attempt:
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


def finish(settings: Settings, run_id: int, folder: Path, code: int,
           reason: str) -> str:  # fmt: skip
    """Record how the run ended. A crash, a kill or a lost peer process is
    retried (`give_back`); an error of the training itself fails the run;
    a worker shutdown puts it back in the queue."""
    status, fields = outcome(folder, code, reason)
    with session_scope(settings.resolved_database_url) as session:
        run = session.get(Run, run_id)
        if run is None:
            return "deleted"
        if reason == "unjoined":
            fields = {"error": unjoined(run)}
        if status == "lost":
            requeued = give_back(session, run, settings, fields["error"] or "")
            status = "queued" if requeued else "failed"
        elif status == "queued":  # a warm stop is not the run's fault
            records.set_status(session, run, RunStatus.queued, worker=None,
                               attempts=max(0, run.attempts - 1))  # fmt: skip
        else:
            records.set_status(session, run, RunStatus(status), **fields)
        queue, copies = run.queue, run_nodes(run.config)
    if status == "queued":
        requeue(run_id, queue, copies)
    return status


def outcome(folder: Path, code: int, reason: str) -> tuple[str, dict[str, Any]]:
    """(status, fields) from the child's exit and result files; status
    "lost" means: retry it if attempts remain."""
    result = read_result(folder)
    status = result.get("status")
    if code == 0 and status == "succeeded":
        return status, {}
    if reason == "shutdown":
        return "queued", {}
    if reason == "cancel_waiting":
        return "cancelled", {}
    if reason == "unjoined":
        return "failed", {}
    if reason == "cancel" and not result:
        # It did not stop in time and was killed: cancelled, but say how.
        return "cancelled", {
            "error": f"{_exit_reason(code)} after not stopping within "
            f"{STOP_GRACE_S:.0f} s of the cancel (no final checkpoint)"
        }
    if code == 0 and status in ("succeeded", "cancelled"):
        return status, {}
    own = rank_errors(folder)
    if status == "failed" and not result.get("retry") or own:
        failed = own or result
        return "failed", {"error": failed.get("error") or _exit_reason(code),
                          "traceback": failed.get("traceback")}  # fmt: skip
    if status == "interrupted":
        return "lost", {"error": "the training was terminated (SIGTERM)"}
    return "lost", {"error": result.get("error") or _exit_reason(code)}


def unjoined(run: Run) -> str:
    dist = run.config.get("distributed", {})
    return (
        f"only {run.nodes_joined} of {dist.get('nodes')} hosts joined within "
        f"distributed.timeout_minutes={dist.get('timeout_minutes')}: each host "
        f"needs a free worker serving queue {run.queue} (`vsml-lab worker` with "
        "VSML_NODE_ADDRESS set, see the README)"
    )


def rank_errors(folder: Path) -> dict:
    """The first error another rank wrote about itself (not about a peer)."""
    for path in sorted(folder.glob("error.rank*.json")):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return {}


def requeue(run_id: int, queue: str | None = None, copies: int = 1) -> None:
    from server.queue import enqueue_run
    from worker.app import app

    enqueue_run(app, run_id, queue, copies)


def _exit_reason(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        return f"the training process was killed by {name}"
    return f"the training process exited with status {code}"


def recover(
    settings: Settings, worker_name: str, queues: list[str] | None = None
) -> list[int]:
    """At worker start: runs this worker held when it died go back to the
    queue (they resume from their last checkpoint), and every queued run of
    the queues it serves is sent again, so that none waits for a message
    that was lost. A run is claimed only once (`claim`), so extra messages
    are harmless."""
    served = queues or [settings.queue]
    url = settings.resolved_database_url
    with session_scope(url) as session:
        lost = session.scalars(
            select(Run).where(
                Run.status == RunStatus.running, Run.worker == worker_name
            )
        ).all()
        for run in lost:
            give_back(session, run, settings, "its worker restarted")
        queued = [
            (run.id, run.queue, run_nodes(run.config))
            for run in session.scalars(
                select(Run).where(Run.status == RunStatus.queued)
            )
            if (run.queue or settings.queue) in served
        ]
    for run_id, queue, copies in queued:
        requeue(run_id, queue, copies)
    return [run_id for run_id, _, _ in queued]


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
            (run.id, run.queue, run_nodes(run.config)) for run in lost
            if give_back(session, run, settings,
                         f"no heartbeat from {run.worker} for "
                         f"{settings.lost_after_s:.0f} s")
        ]  # fmt: skip
    for run_id, queue, copies in requeued:
        requeue(run_id, queue, copies)
    return [run_id for run_id, _, _ in requeued]


LOST_NOTE = "run lost on attempt"


def give_back(session: Session, run: Run, settings: Settings, why: str) -> bool:
    """Re-queue a lost run, or fail it after max_attempts, naming what ended
    each attempt; True if re-queued."""
    note(session, run.id, f"{LOST_NOTE} {run.attempts}: {why}")
    if run.attempts >= settings.max_attempts:
        history = session.scalars(
            select(LogLine.text)
            .where(LogLine.run_id == run.id, LogLine.text.startswith(LOST_NOTE))
            .order_by(LogLine.seq)
        ).all()
        attempts = "; ".join(text.removeprefix("run lost on ") for text in history)
        records.set_status(
            session, run, RunStatus.failed,
            error=f"lost {run.attempts} times (max_attempts "
            f"{settings.max_attempts}): {attempts}",
        )  # fmt: skip
        return False
    records.set_status(session, run, RunStatus.queued, worker=None, nodes_joined=0,
                       rendezvous=None)  # fmt: skip
    return True
