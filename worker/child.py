"""The training process of one run: `python -m worker.child RUN_ID`.

Started by `worker.supervisor`, in its own process group, so that a crash of
the training cannot take the worker down; a run with distributed.world_size
N > 1 is N of these under torchrun, rank 0 reporting. It re-reads the run,
resumes from the run's latest checkpoint if there is one, trains with
`DatabaseSink`, and writes `result.json` (status, error, traceback) for the
supervisor (a rank other than 0 that fails by its own error writes
`error.rankN.json`). A `STOP` file in the run folder (or SIGTERM) asks it to
stop after the current iteration with a final checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from server.config import get_settings
from server.db import session_scope
from server.models import Run
from worker.mirror import WandbMirror
from worker.orphan_guard import die_with_parent

RESULT_FILE = "result.json"
STOP_FILE = "STOP"
logger = logging.getLogger("worker.child")


def write_result(folder: Path, result: dict[str, Any], name: str = RESULT_FILE) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    tmp.write_text(json.dumps(result))
    tmp.replace(folder / name)


def load_run(url: str, run_id: int) -> tuple[dict[str, Any], Path]:
    with session_scope(url) as session:
        run = session.get(Run, run_id)
        if run is None:
            raise LookupError(f"run {run_id} does not exist")
        return dict(run.config), Path(run.artifact_dir)


def train(url: str, run_id: int, folder: Path, config_data: dict[str, Any]) -> str:
    """Meta-train the run; returns "succeeded", "cancelled" (a stop request
    or a time limit) or "interrupted" (SIGTERM, from torchrun when another
    process of the run failed, or from an operator: the run is retried)."""
    from vsml import distributed
    from vsml.config import validate
    from vsml.training import Callbacks, Trainer, resolve_device
    from worker.sink import DatabaseSink

    config = validate(config_data)
    stop, terminated = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: (terminated.set(), stop.set()))
    device = rank_device(resolve_device(config.training.device))
    comm = distributed.from_environment(device, 60 * config.distributed.timeout_minutes)
    devices = comm.gather_strings(describe(device))
    checkpoint = comm.share_object(latest_checkpoint(folder) if comm.is_main else None)
    sink: Callbacks = Callbacks()
    if comm.is_main:
        record_devices(url, run_id, devices)
        if checkpoint is not None:
            logger.info("resuming from iteration %d", checkpoint["iteration"])
        sink = DatabaseSink(url, run_id, folder, stop, make_mirror(run_id, folder,
                                                                   config_data),
                            stop_file=folder / STOP_FILE)  # fmt: skip
    try:
        trainer = Trainer(config, sink, checkpoint, comm)
        logger.info("rank %d of %d: meta-training on %s", comm.rank,
                    comm.world_size, trainer.device)  # fmt: skip
        summary = trainer.run()
    finally:
        if isinstance(sink, DatabaseSink):
            sink.close()
        comm.close()
    if comm.is_main:
        (folder / "summary.json").write_text(json.dumps(vars(summary), indent=2))
        logger.info("run %d: stopped after %d iterations", run_id, summary.iterations)
    if not summary.cancelled:
        return "succeeded"
    return "interrupted" if terminated.is_set() else "cancelled"


def latest_checkpoint(folder: Path) -> dict[str, Any] | None:
    from vsml.cli import load_checkpoint

    latest = folder / "checkpoints" / "latest.pt"
    return load_checkpoint(latest) if latest.is_file() else None


def describe(device: Any) -> str:
    """ "host device" of this process, for the run page."""
    import torch

    if device.type == "cuda":
        name = f"{device} {torch.cuda.get_device_name(device)}"
    else:
        name = f"cpu ({torch.get_num_threads()} threads)"
    return f"{socket.gethostname()} {name}"


def record_devices(url: str, run_id: int, devices: list[str]) -> None:
    with session_scope(url) as session:
        run = session.get(Run, run_id)
        if run is not None:
            run.devices = devices


def is_comm_error(err: BaseException) -> bool:
    """Whether `err` says another process of the run went away rather than
    that this one hit a bug. Gloo and NCCL report a vanished peer as a plain
    RuntimeError, so the message is all there is to go on."""
    import torch.distributed as dist

    if isinstance(err, dist.DistError):
        return True
    text = str(err).lower()
    markers = ("gloo", "nccl", "connection", "timed out", "broken pipe", "socket")
    return isinstance(err, RuntimeError) and any(m in text for m in markers)


def rank_device(device: Any) -> Any:
    """Under torchrun each local rank takes its own GPU."""
    import torch

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda" and device.index is None:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return device


def share_cores() -> None:
    """Processes of one run on one host split its CPU cores between them."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local > 1 and "VSML_THREADS" not in os.environ:
        os.environ["VSML_THREADS"] = str(max(1, (os.cpu_count() or 1) // local))


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
    rank = int(os.environ.get("RANK", "0"))
    prefix = f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout,
        format=f"%(asctime)s {prefix}%(message)s",
    )  # fmt: skip
    share_cores()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        die_with_parent()  # torchrun is our parent: go when it goes
    run_id = int(argv[0])
    url = get_settings().resolved_database_url
    config_data, folder = load_run(url, run_id)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        status = train(url, run_id, folder, config_data)
    except BaseException as err:
        logger.exception("run %d failed", run_id)
        result = {
            "status": "failed", "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(),
            "retry": distributed and is_comm_error(err),
        }  # fmt: skip
        if rank == 0:
            write_result(folder, result)
        elif not result["retry"]:  # this rank's own bug: the run must fail
            write_result(folder, result, f"error.rank{rank}.json")
        return 1
    if rank == 0:
        write_result(folder, {"status": status})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
