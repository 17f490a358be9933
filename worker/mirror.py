"""Optional mirroring of a run to Weights & Biases (VSML_WANDB_MODE).

The mirror must never fail or slow a run: points go into a bounded queue
(dropped, with one warning, if W&B cannot keep up), a thread feeds W&B, and
any W&B error disables the mirror with one warning. Offline mode writes W&B's
local files under the run's folder and needs no network.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MODES = ("online", "offline")


class WandbMirror:
    """Feeds (step, metrics) to a W&B run from a background thread."""

    def __init__(
        self,
        mode: str,
        project: str,
        run_id: int,
        folder: Path,
        config: dict[str, Any],
        capacity: int = 10_000,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"VSML_WANDB_MODE={mode!r}: use one of {MODES} or ''")
        self._init = {"mode": mode, "project": project, "dir": str(folder),
                      "name": f"run-{run_id}", "id": f"vsml-run-{run_id}",
                      "resume": "allow", "config": config}  # fmt: skip
        self._queue: queue.Queue[tuple[int, dict[str, float]] | None] = queue.Queue(
            capacity
        )
        self.dropped = 0
        self.failed = False
        folder.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._feed, daemon=True,
                                        name=f"wandb-run-{run_id}")  # fmt: skip
        self._thread.start()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Never blocks: a full queue drops the point."""
        if self.failed:
            return
        try:
            self._queue.put_nowait((step, dict(metrics)))
        except queue.Full:
            if self.dropped == 0:
                logger.warning("W&B is not keeping up; dropping mirrored points")
            self.dropped += 1

    def close(self, timeout: float = 10.0) -> None:
        """Flush what W&B can take within `timeout`; never raises."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=0 if self.failed else timeout)
        self._thread.join(timeout)

    def _feed(self) -> None:
        run = None
        try:
            import wandb

            run = wandb.init(**self._init)
            while (item := self._queue.get()) is not None:
                step, metrics = item
                run.log(metrics, step=step)
        except Exception as err:  # any W&B problem: stop mirroring, keep training
            self.failed = True
            logger.warning("W&B mirroring off for this run: %s", err)
        finally:
            if run is not None:
                try:
                    run.finish()
                except Exception as err:
                    logger.warning("W&B did not finish cleanly: %s", err)
