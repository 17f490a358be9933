"""Weights & Biases mirroring, in offline mode (no network)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from worker.mirror import WandbMirror

pytest.importorskip("wandb", reason="wandb is a dev dependency (pip install -e .[dev])")


def offline_log(folder: Path) -> bytes:
    files = list(folder.glob("wandb/offline-run-*/*.wandb"))
    assert len(files) == 1, files
    return files[0].read_bytes()


def test_offline_mirror_records_every_key(tmp_path: Path) -> None:
    """Offline mode writes the run's metrics to W&B's local store."""
    mirror = WandbMirror("offline", "vsml-lab", 7, tmp_path, {"seed": 0})
    for step in range(1, 21):
        mirror.log(step, {"meta_loss": 1.0 / step, "train_accuracy": 0.1})
    mirror.log(20, {"test/digits/vsml/mean_accuracy": 0.5})
    mirror.close(timeout=60)
    assert not mirror.failed and mirror.dropped == 0
    # W&B's own service process writes the file; on a busy machine it may
    # still be flushing when finish() returns.
    deadline = time.monotonic() + 60
    while offline_log(tmp_path).count(b"meta_loss") < 20:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    data = offline_log(tmp_path)
    assert data.count(b"meta_loss") >= 20
    assert b"test/digits/vsml/mean_accuracy" in data


def test_broken_wandb_never_blocks_or_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A W&B that fails to start only turns the mirror off."""
    import wandb

    def refuse(**_: object) -> None:
        raise RuntimeError("W&B is down")

    monkeypatch.setattr(wandb, "init", refuse)
    mirror = WandbMirror("online", "vsml-lab", 8, tmp_path, {})
    start = time.monotonic()
    for step in range(10_000):
        mirror.log(step, {"meta_loss": 1.0})
    mirror.close(timeout=5)
    assert mirror.failed
    assert time.monotonic() - start < 5


def test_full_queue_drops_instead_of_waiting(tmp_path: Path) -> None:
    """When W&B cannot keep up, points are dropped, never waited for."""
    mirror = WandbMirror("offline", "vsml-lab", 9, tmp_path, {}, capacity=1)
    start = time.monotonic()
    for step in range(2_000):
        mirror.log(step, {"meta_loss": 1.0})
    assert time.monotonic() - start < 1.0
    assert mirror.dropped > 0
    mirror.close(timeout=60)


def test_unknown_mode_is_refused(tmp_path: Path) -> None:
    """A bad VSML_WANDB_MODE names the allowed values."""
    with pytest.raises(ValueError, match="offline"):
        WandbMirror("sometimes", "p", 1, tmp_path, {})
