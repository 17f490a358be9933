"""Runs: listing, cancelling, and everything a run produced."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse, PlainTextResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server import queries, records
from server.deps import SessionDep
from server.models import (
    MAX_DB_INT,
    MAX_INT,
    Checkpoint,
    Experiment,
    ExperimentTag,
    Run,
    RunStatus,
    fits_id,
)
from server.schemas import CheckpointPublic, LogLinePublic, RunList, RunPublic

router = APIRouter(prefix="/api/runs", tags=["runs"])

Format = Literal["json", "csv"]
MAX_CHART_POINTS = 20_000


def get_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id) if fits_id(run_id) else None
    if run is None:
        raise HTTPException(404, f"run {run_id} does not exist")
    return run


def run_public(run: Run) -> RunPublic:
    if run.time_limit_s:
        progress = min(1.0, run.elapsed_s / run.time_limit_s)
        if run.total_iterations:
            progress = max(progress, run.iteration / run.total_iterations)
    else:
        progress = run.iteration / run.total_iterations if run.total_iterations else 1
    if run.status == RunStatus.succeeded:
        progress = 1.0
    return RunPublic.model_validate(
        {
            **{c: getattr(run, c) for c in RunPublic.model_fields if hasattr(run, c)},
            "experiment_name": run.experiment.name,
            "tags": run.experiment.tags,
            "progress": progress,
            "devices": run.devices or [],
        }
    )


@router.get("", response_model=RunList)
def list_runs(
    session: SessionDep,
    status: RunStatus | None = None,
    experiment_id: Annotated[int | None, Query(ge=1, le=MAX_INT)] = None,
    tag: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_DB_INT)] = 0,
) -> RunList:
    """Newest first, filtered by status, experiment and experiment tag."""
    query = select(Run)
    if status is not None:
        query = query.where(Run.status == status)
    if experiment_id is not None:
        query = query.where(Run.experiment_id == experiment_id)
    if tag:
        query = (
            query.join(Experiment).join(ExperimentTag).where(ExperimentTag.tag == tag)
        )
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    runs = session.scalars(query.order_by(Run.id.desc()).limit(limit).offset(offset))
    items = [run_public(r) for r in runs]
    return RunList(items=items, total=total, limit=limit, offset=offset)


@router.get("/{run_id}", response_model=RunPublic)
def read_run(run_id: int, session: SessionDep) -> RunPublic:
    return run_public(get_run(session, run_id))


@router.post("/{run_id}/cancel", response_model=RunPublic)
def cancel_run(run_id: int, session: SessionDep) -> RunPublic:
    """Cancel: a queued run at once, a running one after a final checkpoint."""
    run = get_run(session, run_id)
    if run.status == RunStatus.queued:
        records.set_status(session, run, RunStatus.cancelled)
    elif run.status == RunStatus.running:
        run.cancel_requested = True
        records.record_event(session, run, "status")
    else:
        raise HTTPException(409, f"run {run_id} is already {run.status}")
    session.commit()
    return run_public(run)


@router.get("/{run_id}/config")
def read_config(run_id: int, session: SessionDep, format: str = "yaml") -> Response:
    """The resolved config the run trains with, as YAML (default) or JSON."""
    run = get_run(session, run_id)
    if format == "json":
        return Response(content=_json(run.config), media_type="application/json")
    if format != "yaml":
        raise HTTPException(422, f"format={format!r}: use 'yaml' or 'json'")
    text = yaml.safe_dump(run.config, sort_keys=False)
    return PlainTextResponse(text, media_type="application/yaml")


def _json(data: object) -> str:
    return json.dumps(data, allow_nan=False)


@router.get("/{run_id}/metrics")
def read_metrics(
    run_id: int,
    session: SessionDep,
    keys: Annotated[str | None, Query(description="comma-separated")] = None,
    max_points: Annotated[int | None, Query(ge=3, le=MAX_CHART_POINTS)] = None,
    format: Format = "json",
) -> Response:
    """Meta-training metrics per key; `max_points` thins each key for charts."""
    get_run(session, run_id)
    chosen = [k for k in keys.split(",") if k] if keys else None
    series = queries.metric_series(session, run_id, chosen, max_points)
    if format == "json":
        return Response(_json(series), media_type="application/json")
    rows = [
        (key, step, value)
        for key, data in series.items()
        for step, value in zip(data["steps"], data["values"], strict=True)
    ]
    return _csv(["key", "step", "value"], rows, f"run-{run_id}-metrics.csv")


def _csv(header: list[str], rows: list[tuple[object, ...]], name: str) -> Response:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    disposition = f'attachment; filename="{name}"'
    return Response(
        buffer.getvalue(), media_type="text/csv",
        headers={"Content-Disposition": disposition},
    )  # fmt: skip


@router.get("/{run_id}/curves")
def read_curves(
    run_id: int,
    session: SessionDep,
    meta_step: Annotated[
        str, Query(description="'latest', 'all' or an iteration")
    ] = "latest",
    dataset: Annotated[str | None, Query(max_length=200)] = None,
    format: Format = "json",
) -> Response:
    """Meta-test learning curves (accuracy and loss per inner step)."""
    get_run(session, run_id)
    step = _meta_step(session, run_id, meta_step)
    rows = [] if step == -1 else queries.curve_rows(session, run_id, step, dataset)
    if format == "csv":
        return _csv(queries.CURVE_COLUMNS, rows, f"run-{run_id}-meta-test.csv")
    body = {
        "meta_steps": queries.meta_steps(session, run_id),
        "columns": queries.CURVE_COLUMNS,
        "rows": rows,
    }
    return Response(_json(body), media_type="application/json")


def _meta_step(session: Session, run_id: int, text: str) -> int | None:
    """None for all, -1 when the run has no curves yet."""
    if text == "all":
        return None
    if text == "latest":
        latest = queries.latest_meta_step(session, run_id)
        return -1 if latest is None else latest
    step = queries.row_number(text)
    if step is None or step > MAX_INT:
        raise HTTPException(
            422, f"meta_step={text!r}: use 'latest', 'all' or an iteration number"
        )
    steps = queries.meta_steps(session, run_id)
    if step not in steps:
        shown = ", ".join(map(str, steps[-20:])) or "none yet"
        raise HTTPException(
            404, f"run {run_id} has no meta-test at iteration {step}; "
            f"meta-tests at: {shown}",
        )  # fmt: skip
    return step


@router.get("/{run_id}/checkpoints", response_model=list[CheckpointPublic])
def list_checkpoints(run_id: int, session: SessionDep) -> list[CheckpointPublic]:
    get_run(session, run_id)
    rows = session.scalars(
        select(Checkpoint).where(Checkpoint.run_id == run_id)
        .order_by(Checkpoint.iteration)
    )  # fmt: skip
    return [
        CheckpointPublic(
            iteration=c.iteration,
            size_bytes=c.size_bytes,
            created_at=c.created_at,
            download_url=f"/api/runs/{run_id}/checkpoints/{c.iteration}",
        )  # fmt: skip
        for c in rows
    ]


@router.get("/{run_id}/checkpoints/{iteration}")
def download_checkpoint(run_id: int, iteration: int, session: SessionDep) -> Response:
    get_run(session, run_id)
    row = None
    if 0 <= iteration <= MAX_INT:
        row = session.scalar(
            select(Checkpoint).where(
                Checkpoint.run_id == run_id, Checkpoint.iteration == iteration
            )
        )
    if row is None or not Path(row.path).is_file():
        raise HTTPException(
            404, f"run {run_id} has no checkpoint at iteration {iteration}"
        )
    name = f"run-{run_id}-iter-{iteration:06d}.pt"
    return FileResponse(row.path, filename=name, media_type="application/octet-stream")


@router.get("/{run_id}/logs", response_model=list[LogLinePublic])
def read_logs(
    run_id: int,
    session: SessionDep,
    after: Annotated[int, Query(ge=-1, le=MAX_INT)] = -1,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[LogLinePublic]:
    """Log lines of the training process, oldest first, after sequence `after`."""
    get_run(session, run_id)
    lines = queries.log_lines(session, run_id, after, limit)
    return [LogLinePublic(seq=x.seq, time=x.time, text=x.text) for x in lines]
