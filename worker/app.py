"""The Celery application of the worker (`celery -A worker.app worker`)."""

from __future__ import annotations

import logging

from celery.signals import worker_shutting_down

from server.config import get_settings
from server.queue import make_celery

app = make_celery(get_settings())
app.conf.include = ["worker.tasks"]
# One run per worker process: a run owns its GPU (or CPU cores) while it trains.
app.conf.worker_concurrency = 1

logger = logging.getLogger(__name__)


@worker_shutting_down.connect
def _on_shutdown(**_: object) -> None:
    # A warm shutdown must not wait hours for a run: stop it at the next
    # iteration, checkpoint, and give it back to the queue (worker.supervisor).
    from worker import supervisor

    logger.info("worker shutting down: stopping the current run")
    supervisor.SHUTDOWN.set()
