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
        # A run can take days; the broker should not hand it out again
        # meanwhile (and when it does, worker.supervisor.claim skips it).
        transport = {"visibility_timeout": settings.broker_visibility_s}
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


def run_queue(base: str, gpus: int) -> str:
    """CPU runs go to `base`; runs asking for G GPUs per host to `base.gpuG`,
    which only workers with at least G GPUs serve (`worker_queues`)."""
    return base if gpus <= 0 else f"{base}.gpu{gpus}"


def run_nodes(config: dict) -> int:
    """Hosts a run spans (its resolved config's distributed.nodes)."""
    return int(config.get("distributed", {}).get("nodes", 1))


def worker_queues(base: str, gpus: int, cpu_runs: bool) -> list[str]:
    """The queues of a worker with `gpus` GPUs: every GPU count it can give,
    and the CPU queue when it also takes CPU runs."""
    queues = [run_queue(base, count) for count in range(1, gpus + 1)]
    return [base, *queues] if cpu_runs or not gpus else queues


def enqueue_run(
    app: Celery, run_id: int, queue: str | None = None, copies: int = 1
) -> None:
    """Send the run to its queue, once per host it needs (each worker that
    takes a copy joins the run as one node); raises if the broker cannot be
    reached."""
    for _ in range(copies):
        app.send_task(
            RUN_TASK, args=[run_id], queue=queue or app.conf.task_default_queue,
            retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2,
                                      "interval_step": 0.5, "interval_max": 1.0},
        )  # fmt: skip
