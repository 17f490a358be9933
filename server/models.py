"""Database tables: experiments, runs and everything a run produces."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from server.db import Base

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


# The largest integer SQLite stores, and PostgreSQL's BIGINT (the ids of
# metric points, curve points, log lines and events).
MAX_DB_INT = 2**63 - 1
# The largest INTEGER of PostgreSQL: experiment and run ids, iterations,
# meta-steps and log sequence numbers.
MAX_INT = 2**31 - 1


def fits_id(value: int) -> bool:
    """Whether `value` can be an experiment or run id (an INTEGER column)."""
    return 0 < value <= MAX_INT


def utcnow() -> datetime:
    return datetime.now(UTC)


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


ACTIVE_STATUSES = (RunStatus.queued, RunStatus.running)


def _run_fk() -> Mapped[int]:
    return mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))


class Experiment(Base):
    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    config_yaml: Mapped[str] = mapped_column(Text)  # as the user wrote it
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    tag_rows: Mapped[list[ExperimentTag]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, lazy="selectin"
    )
    # The database deletes the runs (ON DELETE CASCADE); loaded ones go too,
    # instead of being orphaned with a NULL experiment.
    runs: Mapped[list[Run]] = relationship(
        back_populates="experiment", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def tags(self) -> list[str]:
        return sorted(t.tag for t in self.tag_rows)


class ExperimentTag(Base):
    __tablename__ = "experiment_tags"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    seed: Mapped[int] = mapped_column(BigInteger)
    overrides: Mapped[list[str]] = mapped_column(JSON, default=list)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # resolved, validated
    status: Mapped[str] = mapped_column(String(16), index=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    worker: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    version: Mapped[str] = mapped_column(String(64))
    # Progress, kept on the row so the runs list needs no metric queries.
    iteration: Mapped[int] = mapped_column(Integer, default=0)
    total_iterations: Mapped[int] = mapped_column(Integer)
    time_limit_s: Mapped[float | None] = mapped_column(Float)
    elapsed_s: Mapped[float] = mapped_column(Float, default=0.0)
    latest_loss: Mapped[float | None] = mapped_column(Float)
    best_accuracy: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    artifact_dir: Mapped[str] = mapped_column(String(1000), default="")
    # Liveness: the supervising worker stamps this while the run trains; a
    # run whose stamp is too old lost its worker (worker.supervisor.reap).
    # attempts: how many times a worker started it.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Where it runs: the Celery queue it was sent to (CPU runs and runs
    # asking for N GPUs go to different queues) and the devices its ranks
    # reported, one "host device" entry per rank.
    queue: Mapped[str | None] = mapped_column(String(200))
    devices: Mapped[list[str] | None] = mapped_column(JSON)
    # A run over several hosts: how many have joined this attempt, and the
    # address the first one listens on for the others' rendezvous.
    nodes_joined: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    rendezvous: Mapped[str | None] = mapped_column(String(300))

    experiment: Mapped[Experiment] = relationship(back_populates="runs")


class Worker(Base):
    """A Celery worker as it last reported itself (every heartbeat_s)."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    queues: Mapped[list[str]] = mapped_column(JSON, default=list)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    devices: Mapped[list[str]] = mapped_column(JSON, default=list)
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stopped: Mapped[bool] = mapped_column(Boolean, default=False)
    # The run it trains now, as whichever host of it (None when idle).
    run_id: Mapped[int | None] = mapped_column(Integer)


class MetricPoint(Base):
    """One meta-training metric at one iteration; written once per key and step."""

    __tablename__ = "metric_points"
    __table_args__ = (
        UniqueConstraint("run_id", "key", "step"),
        Index("ix_metric_points_run_id_id", "run_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = _run_fk()
    key: Mapped[str] = mapped_column(String(200))
    step: Mapped[int] = mapped_column(Integer)
    value: Mapped[float | None] = mapped_column(Float)
    wall_time: Mapped[float] = mapped_column(Float)


class CurvePoint(Base):
    """One inner step of a meta-test learning curve."""

    __tablename__ = "curve_points"
    __table_args__ = (
        UniqueConstraint("run_id", "meta_step", "dataset", "learner", "inner_step"),
        Index("ix_curve_points_run_id_id", "run_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = _run_fk()
    meta_step: Mapped[int] = mapped_column(Integer)
    dataset: Mapped[str] = mapped_column(String(200))
    learner: Mapped[str] = mapped_column(String(16))
    inner_step: Mapped[int] = mapped_column(Integer)
    accuracy: Mapped[float | None] = mapped_column(Float)
    loss: Mapped[float | None] = mapped_column(Float)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "iteration"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = _run_fk()
    iteration: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1000))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LogLine(Base):
    __tablename__ = "log_lines"
    __table_args__ = (
        UniqueConstraint("run_id", "seq"),
        Index("ix_log_lines_run_id_id", "run_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = _run_fk()
    seq: Mapped[int] = mapped_column(Integer)
    time: Mapped[float] = mapped_column(Float)
    text: Mapped[str] = mapped_column(Text)


class RunEvent(Base):
    """A change of a run's status or progress, for live streams to resume from."""

    __tablename__ = "run_events"
    __table_args__ = (Index("ix_run_events_run_id_id", "run_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = _run_fk()
    time: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(16))  # "status" or "progress"
    status: Mapped[str] = mapped_column(String(16))
