"""Experiments: a named config with a description and tags; runs launch from it."""

from __future__ import annotations

import json
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from server import records
from server.deps import CeleryDep, SessionDep, SettingsDep
from server.models import (
    ACTIVE_STATUSES,
    MAX_DB_INT,
    Experiment,
    ExperimentTag,
    Run,
    RunStatus,
    fits_id,
    utcnow,
)
from server.queue import enqueue_run, run_nodes, run_queue
from server.routes.runs import run_public
from server.schemas import (
    ExperimentCreate,
    ExperimentList,
    ExperimentPublic,
    ExperimentUpdate,
    Name,
    RunLaunch,
    RunPublic,
)
from vsml import config as vcfg

router = APIRouter(prefix="/api", tags=["experiments"])

NAME = TypeAdapter(Name)
YAML_TYPES = {"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"}
CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/ExperimentCreate"}
            },
            "application/yaml": {
                "schema": {"type": "string"},
                "description": "The config itself; name, description and tags "
                "come from the query string.",
            },
        },
    }
}


def package_version() -> str:
    try:
        return version("vsml-lab")
    except PackageNotFoundError:  # running from a source tree
        from vsml import __version__

        return __version__


def get_experiment(session: Session, experiment_id: int) -> Experiment:
    experiment = None
    if fits_id(experiment_id):
        experiment = session.get(Experiment, experiment_id)
    if experiment is None:
        raise HTTPException(404, f"experiment {experiment_id} does not exist")
    return experiment


def parse_config(config: str | dict[str, Any]) -> tuple[vcfg.ExperimentConfig, str]:
    """The validated config and the YAML text to store (as written if YAML)."""
    if isinstance(config, str):
        return vcfg.validate_yaml(config), config
    return vcfg.validate(config), yaml.safe_dump(config, sort_keys=False)


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise HTTPException(
            422, f"the body is not UTF-8 text (byte {err.start}: {err.reason})"
        ) from err


def _json(raw: bytes) -> Any:
    try:
        return json.loads(_utf8(raw))
    except json.JSONDecodeError as err:
        raise HTTPException(
            422, f"malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from err
    except (ValueError, RecursionError) as err:  # huge integers, deep nesting
        raise HTTPException(422, f"unreadable JSON: {err}") from err


async def read_create_body(request: Request) -> ExperimentCreate:
    """A JSON body, or a YAML config with name/description/tags as query."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in YAML_TYPES and kind not in ("application/json", ""):
        raise HTTPException(
            415, f"unsupported content type {kind!r}: send application/json "
            "or application/yaml",
        )  # fmt: skip
    raw = await request.body()
    try:
        if kind in YAML_TYPES:
            query = request.query_params
            return ExperimentCreate(
                name=query.get("name"),
                description=query.get("description", ""),
                tags=query.getlist("tag"),
                config=_utf8(raw),
            )
        return ExperimentCreate.model_validate(_json(raw))
    except ValidationError as err:
        raise HTTPException(422, _pydantic_detail(err)) from err


def _pydantic_detail(err: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
        for e in err.errors(include_url=False, include_context=False)
    ]


def experiment_public(session: Session, experiment: Experiment) -> ExperimentPublic:
    counts = session.execute(
        select(Run.status, func.count()).where(Run.experiment_id == experiment.id)
        .group_by(Run.status)
    ).all()  # fmt: skip
    public = ExperimentPublic.model_validate(experiment)
    public.run_counts = {status: count for status, count in counts}
    return public


def set_tags(experiment: Experiment, tags: list[str]) -> None:
    experiment.tag_rows = [ExperimentTag(tag=t) for t in sorted(set(tags))]


@router.post(
    "/experiments", status_code=201, response_model=ExperimentPublic,
    openapi_extra=CREATE_BODY,
)  # fmt: skip
async def create_experiment(request: Request, session: SessionDep) -> ExperimentPublic:
    """Create an experiment from a YAML or JSON config (validated)."""
    body = await read_create_body(request)
    # Validating and storing block: keep them off the event loop.
    return await run_in_threadpool(store_experiment, session, body)


def experiment_name(body: ExperimentCreate, config: vcfg.ExperimentConfig) -> str:
    """The name given, or else the config's (which must fit the same rules)."""
    if body.name:
        return body.name
    try:
        return NAME.validate_python(config.name)
    except ValidationError as err:
        reason = err.errors()[0]["msg"]
        raise HTTPException(
            422, f"the config's name {config.name!r} cannot name an experiment "
            f"({reason}): give a name",
        ) from err  # fmt: skip


def store_experiment(session: Session, body: ExperimentCreate) -> ExperimentPublic:
    config, text = parse_config(body.config)
    name = experiment_name(body, config)
    now = utcnow()
    experiment = Experiment(
        name=name, description=body.description, config_yaml=text,
        created_at=now, updated_at=now,
    )  # fmt: skip
    set_tags(experiment, body.tags)
    session.add(experiment)
    try:
        session.commit()
    except IntegrityError as err:
        session.rollback()
        raise HTTPException(409, f"an experiment named {name!r} exists") from err
    return experiment_public(session, experiment)


@router.get("/experiments", response_model=ExperimentList)
def list_experiments(
    session: SessionDep,
    tag: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_DB_INT)] = 0,
) -> ExperimentList:
    """Newest first, optionally only those with `tag`."""
    query = select(Experiment)
    if tag:
        query = query.join(ExperimentTag).where(ExperimentTag.tag == tag)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    page = query.order_by(Experiment.id.desc()).limit(limit).offset(offset)
    items = [experiment_public(session, e) for e in session.scalars(page)]
    return ExperimentList(items=items, total=total)


@router.get("/experiments/{experiment_id}", response_model=ExperimentPublic)
def read_experiment(experiment_id: int, session: SessionDep) -> ExperimentPublic:
    return experiment_public(session, get_experiment(session, experiment_id))


@router.patch("/experiments/{experiment_id}", response_model=ExperimentPublic)
def update_experiment(
    experiment_id: int, body: ExperimentUpdate, session: SessionDep
) -> ExperimentPublic:
    """Change the description and/or the tags (the config is fixed)."""
    experiment = get_experiment(session, experiment_id)
    if body.description is not None:
        experiment.description = body.description
    if body.tags is not None:
        set_tags(experiment, body.tags)
    experiment.updated_at = utcnow()
    session.commit()
    return experiment_public(session, experiment)


@router.delete("/experiments/{experiment_id}", status_code=204)
def delete_experiment(experiment_id: int, session: SessionDep) -> None:
    """Delete an experiment with its runs and their artefacts."""
    experiment = get_experiment(session, experiment_id)
    active = session.scalar(
        select(func.count()).where(
            Run.experiment_id == experiment_id, Run.status.in_(ACTIVE_STATUSES)
        )
    )
    if active:
        raise HTTPException(
            409, f"experiment {experiment_id} has {active} queued or running "
            "run(s): cancel them first",
        )  # fmt: skip
    folders = [Path(r.artifact_dir) for r in experiment.runs if r.artifact_dir]
    session.delete(experiment)
    session.commit()
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def resolved_configs(
    experiment: Experiment, body: RunLaunch
) -> list[vcfg.ExperimentConfig]:
    """The experiment's config with the overrides, once per seed."""
    base = vcfg.read_yaml(experiment.config_yaml)
    for text in body.overrides:
        override = vcfg.parse_override(text)
        if "seed" in override and body.seeds is not None:
            raise HTTPException(
                422, f"override {text!r} sets the seed, but seeds are given too: "
                "use one of them",
            )  # fmt: skip
        base = vcfg.deep_merge(base, override)
    seeds = body.seeds if body.seeds is not None else [vcfg.validate(base).seed]
    return [vcfg.validate({**base, "seed": seed}) for seed in seeds]


@router.post(
    "/experiments/{experiment_id}/runs", status_code=201,
    response_model=list[RunPublic],
)  # fmt: skip
def launch_runs(
    experiment_id: int,
    body: RunLaunch,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
) -> list[RunPublic]:
    """Queue one run per seed of the experiment's config (plus overrides)."""
    experiment = get_experiment(session, experiment_id)
    configs = resolved_configs(experiment, body)
    runs = [new_run(experiment, body.overrides, c) for c in configs]
    session.add_all(runs)
    session.flush()
    for run in runs:
        run.queue = run_queue(settings.queue, run.config["distributed"]["gpus"])
        run.artifact_dir = str((settings.artifact_dir / "runs" / str(run.id)).resolve())
        records.record_event(session, run, "status")
    session.commit()  # enqueue only after commit: the worker re-reads the row
    for index, run in enumerate(runs):
        try:
            enqueue_run(celery, run.id, run.queue, run_nodes(run.config))
        except Exception as err:  # kombu raises many types for a lost broker
            for unsent in runs[index:]:
                records.set_status(
                    session, unsent, RunStatus.failed, error=f"could not queue: {err}"
                )
            session.commit()
            raise HTTPException(503, f"the run queue is unreachable: {err}") from err
    return [run_public(run) for run in runs]


def new_run(
    experiment: Experiment, overrides: list[str], config: vcfg.ExperimentConfig
) -> Run:
    limit = config.training.time_limit_minutes
    return Run(
        experiment=experiment, seed=config.seed, overrides=list(overrides),
        config=config.model_dump(mode="json"), status=RunStatus.queued,
        cancel_requested=False, queued_at=utcnow(), version=package_version(),
        iteration=0, total_iterations=config.training.num_iterations,
        time_limit_s=60 * limit if limit else None, elapsed_s=0.0,
        best_accuracy={},
    )  # fmt: skip


@router.get("/presets")
def list_presets() -> list[dict[str, str]]:
    """The library's YAML presets (configs/), for the new-experiment page."""
    presets = []
    for name in vcfg.preset_names():
        text = vcfg.resolve_config_path(name).read_text()
        first = text.splitlines()[0].lstrip("# ") if text else ""
        presets.append({"name": name, "summary": first, "yaml": text})
    return presets
