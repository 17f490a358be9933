"""`vsml-lab`: run the service.

    vsml-lab up        API + a local worker on embedded defaults (the main job)
    vsml-lab api       the API alone (deployments run workers separately)
    vsml-lab worker    a Celery worker for runs
    vsml-lab migrate   bring the database schema up to date

Settings come from VSML_* environment variables (server/config.py); the
flags below override the bind address and the data folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from pydantic import ValidationError

from server.config import Settings, check_bind, get_settings
from server.queue import worker_queues

logger = logging.getLogger("vsml_lab")


def prepare(settings: Settings, seed: bool = True) -> None:
    """Migrate the database and (optionally) seed the presets."""
    from server.db import session_scope
    from server.migrate import upgrade
    from server.presets import seed_presets

    upgrade(settings.resolved_database_url)
    if seed:
        with session_scope(settings.resolved_database_url) as session:
            created = seed_presets(session)
        if created:
            logger.info("seeded presets: %s", ", ".join(created))


def worker_command(queues: str, name: str = "local@%h") -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker",
        "-Q", queues, "--pool=solo", "--concurrency=1", "--loglevel=INFO",
        "-n", name, "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process these exact settings."""
    env = dict(os.environ)
    env["VSML_ARTIFACT_DIR"] = str(settings.artifact_dir.resolve())
    env["VSML_DATABASE_URL"] = settings.resolved_database_url
    env["VSML_QUEUE"] = settings.queue
    env["VSML_WORKER_GPUS"] = str(settings.worker_gpus)
    env["VSML_WORKER_CPU_RUNS"] = "1" if settings.worker_cpu_runs else "0"
    if settings.broker_url:
        env["VSML_BROKER_URL"] = settings.broker_url
    return env


def serve(settings: Settings) -> None:
    import uvicorn

    from server.app import create_app

    check_bind(settings)
    app = create_app(settings)
    # Open event streams would hold a shutdown forever; give them 3 s.
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level="warning",
        timeout_graceful_shutdown=3,
    )  # fmt: skip


def gpu_count(text: str) -> int:
    """argparse type of --gpus: a whole number from 0."""
    if not text.isdigit() or int(text) > 1024:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a GPU count (a whole number, 0 to 1024)"
        )
    return int(text)


def visible_gpus() -> int:
    """CUDA devices this process can see (0 without torch or without CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(wanted: int) -> None:
    have = visible_gpus()
    if wanted > have:
        shown = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        fix = (
            f"use --gpus {have} or fewer"
            if have
            else "start a CPU worker (--gpus 0), which takes CPU runs"
        )
        raise ValueError(
            f"--gpus {wanted} but this host shows {have} CUDA device(s) "
            f"(CUDA_VISIBLE_DEVICES={shown}): {fix}"
        )


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    check_bind(settings)
    prepare(settings)
    # The laptop's one worker takes CPU runs and runs on any GPUs it has.
    local = settings.model_copy(
        update={"worker_gpus": visible_gpus(), "worker_cpu_runs": True}
    )
    queues = worker_queues(local.queue, local.worker_gpus, cpu_runs=True)
    keeper = WorkerKeeper(worker_command(",".join(queues)), settings_env(local))
    worker = keeper.process
    broker = settings.broker_url or f"a folder queue in {settings.queue_dir}"
    print(
        f"VSML Lab is up: http://{settings.host}:{settings.port}/\n"
        f"  database {settings.resolved_database_url}\n"
        f"  queue    {broker}; local worker pid {worker.pid}\n"
        "  Ctrl-C stops both (a running run checkpoints and goes back to the "
        "queue).",
        flush=True,
    )
    try:
        serve(settings)
    finally:
        keeper.stop()
    return 0


class WorkerKeeper:
    """Starts the local worker and starts it again if it dies."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.command, self.env = command, env
        self.stopping = threading.Event()
        self.process = subprocess.Popen(command, env=env)
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while not self.stopping.wait(2.0):
            if self.process.poll() is not None and not self.stopping.is_set():
                logger.warning(
                    "the local worker exited (status %s); starting it again",
                    self.process.returncode,
                )
                self.process = subprocess.Popen(self.command, env=self.env)

    def stop(self) -> None:
        self.stopping.set()
        stop_process(self.process)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    """Warm-stop a worker: it checkpoints its run, then exits."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    prepare(settings, seed=not args.no_seed)
    serve(settings)
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    updates = {"worker_gpus": args.gpus, "worker_cpu_runs": args.cpu_runs}
    settings = settings.model_copy(
        update={k: v for k, v in updates.items() if v is not None}
    )
    check_gpus(settings.worker_gpus)
    queues = args.queues or ",".join(
        worker_queues(settings.queue, settings.worker_gpus, settings.worker_cpu_runs)
    )
    command = worker_command(queues, args.name)
    os.execvpe(command[0], command, settings_env(settings))
    return 0  # not reached


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    prepare(settings, seed=False)
    print(f"database at the newest schema: {settings.resolved_database_url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vsml-lab", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", help="bind address (VSML_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (VSML_PORT, default 8000)")
    parser.add_argument(
        "--data", metavar="DIR", help="folder for the database, queue and artefacts"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="API and a local worker").set_defaults(func=cmd_up)
    api = sub.add_parser("api", help="the API alone")
    api.add_argument("--no-seed", action="store_true", help="do not add presets")
    api.set_defaults(func=cmd_api)
    worker = sub.add_parser("worker", help="a Celery worker for runs")
    worker.add_argument(
        "--gpus", type=gpu_count, metavar="N",
        help="GPUs this worker gives runs (VSML_WORKER_GPUS, default 0: CPU runs "
        "only); it serves runs asking for 1..N GPUs",
    )  # fmt: skip
    worker.add_argument(
        "--cpu-runs", action=argparse.BooleanOptionalAction, default=None,
        help="a GPU worker also takes CPU runs (VSML_WORKER_CPU_RUNS)",
    )  # fmt: skip
    worker.add_argument(
        "--queues", help="comma-separated queues, instead of those --gpus implies"
    )
    worker.add_argument("--name", default="worker@%h")
    worker.set_defaults(func=cmd_worker)
    sub.add_parser("migrate", help="upgrade the schema").set_defaults(func=cmd_migrate)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    if args.data:
        overrides["artifact_dir"] = Path(args.data) / "artifacts"
    return get_settings().model_copy(update=overrides)


def settings_problems(err: ValidationError) -> str:
    """One line per bad environment variable, named as the user set it."""
    return "; ".join(
        f"VSML_{'_'.join(map(str, e['loc'])).upper()}={e.get('input')!r}: {e['msg']}"
        for e in err.errors()
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(name)s %(message)s")
    logger.setLevel(logging.INFO)
    try:
        settings = settings_from(args)
        return args.func(settings, args)
    except ValidationError as err:  # a VSML_* variable with a bad value
        print(f"vsml-lab {args.command}: error: {settings_problems(err)}",
              file=sys.stderr)  # fmt: skip
        return 2
    except ValueError as err:
        print(f"vsml-lab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
