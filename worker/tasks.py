"""Celery tasks. A task takes a run id and re-reads the run from the database."""

from __future__ import annotations

from server.config import get_settings
from server.queue import RUN_TASK
from worker import supervisor
from worker.app import app


@app.task(name=RUN_TASK, bind=True)
def execute_run(self, run_id: int) -> str:  # noqa: ANN001 (Celery's bound self)
    """Train run `run_id` in a child process; returns the final status."""
    return supervisor.supervise(get_settings(), run_id, self.request.hostname or "")
