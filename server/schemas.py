"""Request and response bodies of the REST API."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
)


def _iso_utc(value: datetime) -> str:
    # SQLite hands back naive datetimes; every time we store is UTC.
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def _storable(text: str) -> str:
    # PostgreSQL text cannot hold NUL; refuse it on every database alike.
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return text


def _single_line(text: str) -> str:
    # Names and tags are labels: control and bidi-override characters in them
    # would garble tables and could disguise one name as another.
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in text):
        raise ValueError("must not contain control or formatting characters")
    return text


def _distinct(seeds: list[int] | None) -> list[int] | None:
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise ValueError("seeds must not repeat (each seed is one run)")
    return seeds


Storable = AfterValidator(_storable)
Label = AfterValidator(_single_line)
UtcDatetime = Annotated[datetime, PlainSerializer(_iso_utc, return_type=str)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                        max_length=200), Storable, Label]  # fmt: skip
Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                       max_length=64), Storable, Label]  # fmt: skip
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
Description = Annotated[str, StringConstraints(max_length=20_000), Storable]
Override = Annotated[str, StringConstraints(min_length=3, max_length=1000), Storable]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExperimentCreate(_Strict):
    name: Name | None = Field(
        default=None, description="Unique name; defaults to the config's `name`."
    )
    description: Description = ""
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    config: str | dict[str, Any] = Field(
        description="The experiment config: YAML text or a JSON object."
    )


class ExperimentUpdate(_Strict):
    description: Description | None = None
    tags: list[Tag] | None = Field(default=None, max_length=32)


class ExperimentPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    description: str
    tags: list[str]
    config_yaml: str
    created_at: UtcDatetime
    updated_at: UtcDatetime
    run_counts: dict[str, int] = Field(default_factory=dict)


class ExperimentList(BaseModel):
    items: list[ExperimentPublic]
    total: int


class RunLaunch(_Strict):
    seeds: Annotated[list[Seed] | None, AfterValidator(_distinct)] = Field(
        default=None, min_length=1, max_length=100,
        description="Seeds to launch, one run each; default: the config's seed.",
    )  # fmt: skip
    overrides: list[Override] = Field(
        default_factory=list, max_length=100,
        description="`section.key=value` changes to the experiment's config.",
    )  # fmt: skip


class RunPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    experiment_id: int
    experiment_name: str
    tags: list[str]
    seed: int
    overrides: list[str]
    status: str
    cancel_requested: bool
    queued_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    worker: str | None
    attempts: int  # times a worker started it (lost runs are retried)
    heartbeat_at: UtcDatetime | None  # last sign of life from its worker
    queue: str | None  # the Celery queue it was sent to (CPU or N-GPU runs)
    devices: list[str]  # "host device" per training process, once started
    error: str | None
    traceback: str | None
    version: str
    iteration: int
    total_iterations: int
    time_limit_s: float | None
    elapsed_s: float
    progress: float
    latest_loss: float | None
    best_accuracy: dict[str, float]


class RunList(BaseModel):
    items: list[RunPublic]
    total: int
    limit: int
    offset: int


class CheckpointPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    iteration: int
    size_bytes: int
    created_at: UtcDatetime
    download_url: str = ""


class LogLinePublic(BaseModel):
    seq: int
    time: float
    text: str


class Problem(BaseModel):
    loc: str
    message: str
    suggestion: str | None = None
    line: int | None = None
    column: int | None = None


class WorkerPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    hostname: str
    queues: list[str]
    gpus: int
    devices: list[str]
    pid: int
    started_at: UtcDatetime
    heartbeat_at: UtcDatetime
    stopped: bool  # it exited cleanly (a lost worker just stops beating)
    online: bool  # beat within VSML_LOST_AFTER_S and not stopped
    run_id: int | None  # the run it trains now (node 0 of a multi-host run)
