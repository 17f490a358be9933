"""A fresh PostgreSQL database and Redis queue per test (real servers)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.config import Settings
from server.migrate import upgrade
from tests.services import REDIS, fresh_postgres


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    with fresh_postgres() as url:
        upgrade(url)
        yield Settings(
            artifact_dir=tmp_path / "artifacts", database_url=url,
            broker_url=REDIS, queue=f"test-{uuid.uuid4().hex[:8]}",
        )  # fmt: skip
