"""Seed the library's YAML presets as experiments, so a new lab has something
to launch."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.models import Experiment, ExperimentTag, utcnow
from vsml import config as vcfg

PRESET_TAG = "preset"


def seed_presets(session: Session) -> list[str]:
    """On a new lab, create an experiment per preset; returns their names.

    A lab that has any experiment is left alone, so presets a user deleted do
    not come back at the next start.
    """
    taken = set(session.scalars(select(Experiment.name)))
    if taken:
        return []
    created = []
    for name in vcfg.preset_names():
        if name in taken:
            continue
        text = vcfg.resolve_config_path(name).read_text()
        vcfg.validate_yaml(text)  # a broken preset should fail loudly here
        summary = text.splitlines()[0].lstrip("# ") if text else ""
        now = utcnow()
        session.add(
            Experiment(
                name=name, description=summary, config_yaml=text, created_at=now,
                updated_at=now, tag_rows=[ExperimentTag(tag=PRESET_TAG)],
            )
        )  # fmt: skip
        created.append(name)
    return created
