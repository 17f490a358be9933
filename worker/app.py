"""The Celery application of the worker (`celery -A worker.app worker`)."""

from __future__ import annotations

import logging
import threading

from celery.signals import worker_ready, worker_shutting_down

from server.config import get_settings
from server.queue import make_celery
from worker import registry

app = make_celery(get_settings())
app.conf.include = ["worker.tasks"]
# One run per worker process: a run owns its GPU (or CPU cores) while it trains.
app.conf.worker_concurrency = 1

logger = logging.getLogger(__name__)
NAME = [""]  # this worker's Celery node name, once it is ready


@worker_shutting_down.connect
def _on_shutdown(**_: object) -> None:
    # A warm shutdown must not wait hours for a run: stop it at the next
    # iteration, checkpoint, and give it back to the queue (worker.supervisor).
    from worker import supervisor

    logger.info("worker shutting down: stopping the current run")
    supervisor.SHUTDOWN.set()
    try:
        registry.beat(get_settings(), NAME[0], stopped=True)
    except Exception:  # the dashboard then shows it offline a little later
        logger.warning("could not mark this worker stopped", exc_info=True)


@worker_ready.connect
def _on_ready(sender: object = None, **_: object) -> None:
    # Runs this worker held when it died go back to the queue; queued runs
    # whose message was lost are sent again (worker.supervisor.recover).
    from worker import supervisor

    name = getattr(sender, "hostname", "") or ""
    NAME[0] = name
    settings = get_settings()
    queues = sorted(app.amqp.queues.consume_from or [settings.queue])
    registry.register(settings, name, queues)
    requeued = supervisor.recover(settings, name, queues)
    if requeued:
        logger.info(
            "worker %s: sent queued runs %s again (in case their "
            "messages were lost; a run trains once)",
            name,
            requeued,
        )
    threading.Thread(target=_beat_forever, daemon=True, name="beat").start()
    threading.Thread(target=_reap_forever, daemon=True, name="reaper").start()


def _beat_forever() -> None:
    """Tell the dashboard this worker is online, every heartbeat_s."""
    from worker import supervisor

    settings = get_settings()
    while not supervisor.SHUTDOWN.wait(settings.heartbeat_s):
        try:
            registry.beat(settings, NAME[0])
        except Exception:  # the database may be restarting
            logger.warning("could not stamp this worker online", exc_info=True)


def _reap_forever() -> None:
    """Every worker watches for runs whose worker went silent (any host)."""
    from worker import supervisor

    settings = get_settings()
    while not supervisor.SHUTDOWN.wait(max(1.0, settings.lost_after_s / 2)):
        try:
            requeued = supervisor.reap(settings)
        except Exception:  # the database may be restarting; try again later
            logger.warning("could not look for lost runs", exc_info=True)
            continue
        if requeued:
            logger.info("re-queued lost runs %s", requeued)
