"""The Celery application both sides share: the API sends, the worker runs.

The API enqueues by task name and never imports the worker's code (or torch).
Without a broker URL the queue is a folder on disk (kombu's file-system
transport), so a laptop needs no Redis; with one (`redis://...`) it is Redis.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from server.config import Settings, get_settings

RUN_TASK = "vsml.execute_run"


def make_celery(settings: Settings) -> Celery:
    if settings.uses_local_broker:
        folder = settings.queue_dir
        folder.mkdir(parents=True, exist_ok=True)
        broker = "filesystem://"
        transport = {
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "control_folder": str(folder / "control"),
            "polling_interval": 0.2,
        }
    else:
        broker = settings.broker_url
        # A run can take days; the broker must not hand it out again meanwhile.
        transport = {"visibility_timeout": 7 * 24 * 3600}
    app = Celery("vsml_lab", broker=broker)
    app.conf.update(
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue,
        task_ignore_result=True,
        # Long GPU jobs: acknowledge only when done, give a lost worker's run
        # back to the queue, take one run at a time.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
    )
    return app


@lru_cache
def default_celery() -> Celery:
    return make_celery(get_settings())


def enqueue_run(app: Celery, run_id: int) -> None:
    """Send the run to the queue; raises if the broker cannot be reached."""
    app.send_task(
        RUN_TASK, args=[run_id], queue=app.conf.task_default_queue,
        retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2,
                                  "interval_step": 0.5, "interval_max": 1.0},
    )  # fmt: skip
