"""The training process of one run: `python -m worker.child RUN_ID`.

Started by `worker.supervisor`, in its own process group, so that a crash of
the training cannot take the worker down. It re-reads the run, resumes from
the run's latest checkpoint if there is one, trains with `DatabaseSink`, and
writes `result.json` (status, error, traceback) for the supervisor. SIGTERM
asks it to stop after the current iteration with a final checkpoint.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from server.config import get_settings
from server.db import session_scope
from server.models import Run
from worker.mirror import WandbMirror

RESULT_FILE = "result.json"
logger = logging.getLogger("worker.child")


def write_result(folder: Path, result: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{RESULT_FILE}.tmp"
    tmp.write_text(json.dumps(result))
    tmp.replace(folder / RESULT_FILE)


def load_run(url: str, run_id: int) -> tuple[dict[str, Any], Path]:
    with session_scope(url) as session:
        run = session.get(Run, run_id)
        if run is None:
            raise LookupError(f"run {run_id} does not exist")
        return dict(run.config), Path(run.artifact_dir)


def train(url: str, run_id: int, folder: Path, config_data: dict[str, Any]) -> str:
    """Meta-train the run; returns "succeeded" or "cancelled"."""
    from vsml.cli import load_checkpoint
    from vsml.config import validate
    from vsml.training import Trainer
    from worker.sink import DatabaseSink

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    latest = folder / "checkpoints" / "latest.pt"
    checkpoint = load_checkpoint(latest) if latest.is_file() else None
    if checkpoint is not None:
        logger.info("resuming from iteration %d", checkpoint["iteration"])
    sink = DatabaseSink(
        url, run_id, folder, stop, make_mirror(run_id, folder, config_data)
    )
    try:
        trainer = Trainer(validate(config_data), sink, checkpoint)
        logger.info("run %d: meta-training on %s", run_id, trainer.device)
        summary = trainer.run()
    finally:
        sink.close()
    (folder / "summary.json").write_text(json.dumps(vars(summary), indent=2))
    logger.info("run %d: stopped after %d iterations", run_id, summary.iterations)
    return "cancelled" if summary.cancelled else "succeeded"


def make_mirror(
    run_id: int, folder: Path, config_data: dict[str, Any]
) -> WandbMirror | None:
    """A W&B mirror when VSML_WANDB_MODE is set; a bad setting only warns."""
    settings = get_settings()
    if not settings.wandb_mode:
        return None
    try:
        return WandbMirror(settings.wandb_mode, settings.wandb_project, run_id,
                           folder / "wandb", config_data)  # fmt: skip
    except ValueError as err:
        logger.warning("W&B mirroring off: %s", err)
        return None


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(message)s"
    )
    run_id = int(argv[0])
    url = get_settings().resolved_database_url
    config_data, folder = load_run(url, run_id)
    try:
        status = train(url, run_id, folder, config_data)
    except BaseException as err:
        logger.exception("run %d failed", run_id)
        error = f"{type(err).__name__}: {err}"
        write_result(
            folder,
            {"status": "failed", "error": error, "traceback": traceback.format_exc()},
        )
        return 1
    write_result(folder, {"status": status})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
