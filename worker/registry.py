"""Workers announce themselves in the database, so the dashboard can show
which are online, what devices they have and which queues they serve."""

from __future__ import annotations

import os
import socket

from server.config import Settings
from server.db import session_scope
from server.models import Worker, utcnow


def describe_devices(gpus: int) -> list[str]:
    """What this worker gives its runs: its GPUs by name, or its CPU cores."""
    if gpus:
        import torch  # only GPU workers pay for the import here

        return [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(gpus)]
    return [f"cpu ({os.cpu_count() or 1} cores)"]


def register(settings: Settings, name: str, queues: list[str]) -> None:
    """Insert or refresh this worker's row at start."""
    now = utcnow()
    with session_scope(settings.resolved_database_url) as session:
        row = session.get(Worker, name) or Worker(name=name)
        row.hostname = socket.gethostname()
        row.queues = list(queues)
        row.gpus = settings.worker_gpus
        row.devices = describe_devices(settings.worker_gpus)
        row.pid = os.getpid()
        row.started_at = row.heartbeat_at = now
        row.stopped = False
        session.add(row)


def beat(settings: Settings, name: str, stopped: bool = False) -> None:
    """Stamp this worker as alive (or as stopped, at a clean exit)."""
    with session_scope(settings.resolved_database_url) as session:
        row = session.get(Worker, name)
        if row is not None:
            row.heartbeat_at = utcnow()
            row.stopped = stopped


def training(settings: Settings, name: str, run_id: int | None) -> None:
    """Record the run this worker trains now (None: idle again)."""
    with session_scope(settings.resolved_database_url) as session:
        row = session.get(Worker, name)
        if row is not None:
            row.run_id = run_id
