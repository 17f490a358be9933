"""Where a run's outputs go: the database, in batches, off the training thread.

`BatchWriter` collects rows from the training loop (or the log pump) and
writes them in one transaction every `interval` seconds. Every insert is
idempotent (server.records), so a batch retried after a database hiccup never
duplicates a point. `DatabaseSink` is the library's `Callbacks` for a run.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from server import records
from server.db import session_scope
from server.models import Run
from vsml.cli import atomic_save
from vsml.evaluation import LearningCurve
from vsml.training import Callbacks
from worker.mirror import WandbMirror

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """Rows gathered since the last write, by table."""

    metrics: list[dict[str, Any]] = field(default_factory=list)
    curves: list[dict[str, Any]] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[tuple[int, str, int]] = field(default_factory=list)
    progress: tuple[int, dict[str, float]] | None = None
    accuracies: list[tuple[str, float]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.metrics or self.curves or self.logs or self.checkpoints
                    or self.progress or self.accuracies)  # fmt: skip


class BatchWriter:
    """A thread that writes queued Batch pieces for one run."""

    def __init__(self, url: str, run_id: int, interval: float = 0.2) -> None:
        self.url, self.run_id, self.interval = url, run_id, interval
        # Items: a change to the next batch, a flush request, or None (close).
        self._queue: queue.Queue[Callable[[Batch], None] | threading.Event | None] = (
            queue.Queue()
        )
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"run-{run_id}-writer")  # fmt: skip
        self._thread.start()

    def put(self, add: Callable[[Batch], None]) -> None:
        """Queue a change: `add` puts rows into the next batch."""
        self._queue.put(add)

    def close(self, timeout: float = 120.0) -> None:
        """Write everything queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("run %d: gave up writing queued outputs", self.run_id)

    def flush(self) -> None:
        """Return once everything queued so far is in the database."""
        done = threading.Event()
        self._queue.put(done)
        done.wait()

    def _loop(self) -> None:
        closing = False
        while not closing:
            batch, closing, flushed = self._collect()
            if batch:
                self._write_with_retry(batch)
            if flushed is not None:
                flushed.set()

    def _collect(self) -> tuple[Batch, bool, threading.Event | None]:
        """Gather until the interval ends, the writer closes or a flush."""
        batch = Batch()
        deadline = time.monotonic() + self.interval
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return batch, False, None
            if item is None:
                return batch, True, None
            if isinstance(item, threading.Event):
                return batch, False, item
            item(batch)

    def _write_with_retry(self, batch: Batch) -> None:
        delay = 0.5
        while True:
            try:
                with session_scope(self.url) as session:
                    self._write(session, batch)
                return
            except Exception:  # the database may be restarting: keep the rows
                logger.warning(
                    "run %d: database write failed, retrying in %.1f s",
                    self.run_id, delay, exc_info=True,
                )  # fmt: skip
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _write(self, session: Session, batch: Batch) -> None:
        records.add_metric_rows(session, batch.metrics)
        records.add_curve_rows(session, batch.curves)
        records.add_log_rows(session, batch.logs)
        for iteration, path, size in batch.checkpoints:
            records.add_checkpoint(session, self.run_id, iteration, path, size)
        run = session.get(Run, self.run_id)
        if run is None:  # deleted meanwhile; its rows went with it
            return
        if batch.checkpoints:  # the last iteration may not have been logged
            newest = max(iteration for iteration, _, _ in batch.checkpoints)
            run.iteration = max(run.iteration, newest)
        if batch.progress is not None:
            records.update_progress(session, run, *batch.progress)
        if batch.accuracies:
            records.update_best_accuracy(session, run, batch.accuracies)
        # Log lines alone do not touch the run: the runs page does not show them.
        changed = batch.metrics or batch.curves or batch.checkpoints
        if changed and batch.progress is None and not batch.accuracies:
            records.record_event(session, run, "progress")


def curve_rows(run_id: int, iteration: int, curve: LearningCurve) -> list[dict]:
    pairs = zip(curve.accuracy.tolist(), curve.loss.tolist(), strict=True)
    return [
        {"run_id": run_id, "meta_step": iteration, "dataset": curve.dataset,
         "learner": curve.learner, "inner_step": step,
         "accuracy": records.finite(acc), "loss": records.finite(loss)}
        for step, (acc, loss) in enumerate(pairs)
    ]  # fmt: skip


def summary_metrics(curves: list[LearningCurve]) -> dict[str, float]:
    """Meta-test figures as metric keys, charted against meta-iteration."""
    out = {}
    for c in curves:
        prefix = f"test/{c.dataset}/{c.learner}"
        out[f"{prefix}/mean_accuracy"] = c.mean_accuracy
        out[f"{prefix}/last100_accuracy"] = c.last100_accuracy
        out[f"{prefix}/final_accuracy"] = c.final_accuracy
    return out


class DatabaseSink(Callbacks):
    """A run's metrics, curves and checkpoints to the database and disk."""

    def __init__(
        self,
        url: str,
        run_id: int,
        artifact_dir: Path,
        stop: threading.Event,
        mirror: WandbMirror | None = None,
        stop_file: Path | None = None,
    ) -> None:
        self.run_id, self.artifact_dir, self.stop = run_id, artifact_dir, stop
        self.stop_file = stop_file
        self.writer = BatchWriter(url, run_id)
        self.mirror = mirror

    def on_metrics(self, iteration: int, metrics: dict[str, float]) -> None:
        rows = records.metric_rows(self.run_id, iteration, metrics)

        def add(batch: Batch) -> None:
            batch.metrics.extend(rows)
            batch.progress = (iteration, metrics)

        self.writer.put(add)
        if self.mirror is not None:
            self.mirror.log(iteration, metrics)
        logger.info(
            "iteration %d: meta_loss %.4f, train_accuracy %.3f, %.2f s/it",
            iteration, metrics["meta_loss"], metrics["train_accuracy"],
            metrics["seconds_per_iteration"],
        )  # fmt: skip

    def on_meta_test(self, iteration: int, curves: list[LearningCurve]) -> None:
        rows = [r for c in curves for r in curve_rows(self.run_id, iteration, c)]
        summary = records.metric_rows(self.run_id, iteration, summary_metrics(curves))
        vsml = [(c.dataset, c.mean_accuracy) for c in curves if c.learner == "vsml"]

        def add(batch: Batch) -> None:
            batch.curves.extend(rows)
            batch.metrics.extend(summary)
            batch.accuracies.extend(vsml)

        self.writer.put(add)
        if self.mirror is not None:
            self.mirror.log(iteration, summary_metrics(curves))
        for c in curves:
            logger.info(
                "meta-test at iteration %d: %s %s mean accuracy %.3f",
                iteration, c.dataset, c.learner, c.mean_accuracy,
            )  # fmt: skip

    def on_checkpoint(self, iteration: int, checkpoint: dict[str, Any]) -> None:
        # Metrics first: a run resumed from this checkpoint will not produce
        # the points before it again, so they must be stored already.
        self.writer.flush()
        folder = self.artifact_dir / "checkpoints"
        path = folder / f"iter-{iteration:06d}.pt"
        atomic_save(checkpoint, path)
        atomic_save(checkpoint, folder / "latest.pt")
        size = path.stat().st_size
        self.writer.put(lambda batch: batch.checkpoints.append((iteration, str(path),
                                                                 size)))  # fmt: skip
        logger.info("checkpoint at iteration %d written (%d bytes)", iteration, size)

    def should_stop(self) -> bool:
        if self.stop_file is not None and self.stop_file.exists():
            self.stop.set()
        return self.stop.is_set()

    def close(self) -> None:
        self.writer.close()
        if self.mirror is not None:
            self.mirror.close()
