"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from server import models  # noqa: F401  (registers the tables)
from server.db import Base, get_engine
from server.migrate import alembic_config, upgrade
from tests.server.conftest import BACKENDS, forget_engine
from tests.services import fresh_postgres


@pytest.fixture(params=BACKENDS)
def blank_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of its own (never the shared test database)."""
    if request.param == "postgresql":
        with fresh_postgres() as url:
            yield url
        return
    url = f"sqlite:///{tmp_path / 'blank.db'}"
    yield url
    forget_engine(url)


def schema_drift(url: str) -> list:
    with get_engine(url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def table_names(url: str) -> set[str]:
    with get_engine(url).connect() as connection:
        return set(inspect(connection).get_table_names())


def test_models_and_migrations_do_not_drift(blank_url: str):
    """After `upgrade head`, autogenerate finds nothing to change."""
    upgrade(blank_url)
    assert schema_drift(blank_url) == []


def test_downgrade_to_base_and_back(blank_url: str):
    """`downgrade base` drops every table, and `upgrade head` rebuilds them."""
    upgrade(blank_url)
    command.downgrade(alembic_config(blank_url), "base")
    assert table_names(blank_url) <= {"alembic_version"}
    upgrade(blank_url)
    assert table_names(blank_url) >= set(Base.metadata.tables)
    assert schema_drift(blank_url) == []
