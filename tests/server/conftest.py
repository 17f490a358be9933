"""Fixtures for the service tests: the real app on real databases and queue.

Every API test runs twice: on a SQLite file of its own (a copy of one the
Alembic migrations built at the start), and on this machine's PostgreSQL,
where the session gets a fresh database (migrated once, dropped at the end)
whose tables are emptied before each test. Runs are queued on the broker the
app uses by default, kombu's file-system transport in the test's folder, and
points are written with `server.records`, the worker's own writer.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from server import models, records
from server.app import create_app
from server.config import Settings
from server.db import Base, get_engine, session_factory, session_scope
from server.migrate import upgrade
from server.queue import RUN_TASK, make_celery
from tests.services import fresh_postgres

BACKENDS = ["sqlite", "postgresql"]
# For slow tests whose subject does not depend on the database.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

TINY_YAML = """\
# A config the API accepts; nothing here ever trains.
name: tiny
seed: 7
training:
  num_iterations: 20
  episode_length: 10
"""


def forget_engine(url: str) -> None:
    """Close the pooled connections to `url` and drop the cached engines.

    `server.db` caches a few engines; one pushed out of that cache would keep
    its connections open until garbage collection, which warns.
    """
    get_engine(url).dispose()
    get_engine.cache_clear()
    session_factory.cache_clear()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One migrated PostgreSQL database for the whole test session."""
    with fresh_postgres() as url:
        upgrade(url)
        yield url


def empty_tables(url: str) -> None:
    names = ", ".join(table.name for table in Base.metadata.sorted_tables)
    with get_engine(url).begin() as connection:
        connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that tests copy (faster than migrating each time)."""
    path = tmp_path_factory.mktemp("template") / "lab.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    forget_engine(url)  # closing the last connection folds the WAL into the file
    return path


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: a fresh SQLite file or the emptied PostgreSQL."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        empty_tables(url)
    else:
        path = shutil.copy(request.getfixturevalue("sqlite_template"), tmp_path)
        url = f"sqlite:///{path}"
    yield url
    forget_engine(url)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """Settings of a lab living in the test's folder, with the file-system queue."""
    return Settings(
        artifact_dir=tmp_path / "artifacts",
        database_url=database_url,
        broker_url="",
        api_token="",
    )


@pytest.fixture
def make_client(settings: Settings) -> Iterator[Callable[..., TestClient]]:
    """Build a client of an app whose settings differ from `settings` by `changes`."""
    clients: list[TestClient] = []

    def make(raise_server_exceptions: bool = True, **changes: Any) -> TestClient:
        app = create_app(settings.model_copy(update=changes))
        client = TestClient(app, raise_server_exceptions=raise_server_exceptions)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@dataclass
class Lab:
    """A client of the app plus direct access to its database and queue."""

    client: TestClient
    settings: Settings

    @property
    def url(self) -> str:
        return self.settings.resolved_database_url

    def experiment(self, name: str = "tiny", tags: tuple[str, ...] = ()) -> dict:
        body = {"name": name, "tags": list(tags), "config": TINY_YAML}
        response = self.client.post("/api/experiments", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def launch(self, experiment_id: int, **body: Any) -> list[dict]:
        path = f"/api/experiments/{experiment_id}/runs"
        response = self.client.post(path, json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def run(self, **body: Any) -> dict:
        """One queued run of a new experiment."""
        return self.launch(self.experiment()["id"], **body)[0]

    @contextmanager
    def session(self) -> Iterator[Session]:
        with session_scope(self.url) as session:
            yield session

    def set_status(self, run_id: int, status: models.RunStatus) -> None:
        """Move a run as the worker would."""
        with self.session() as session:
            records.set_status(session, session.get(models.Run, run_id), status)

    def add_metrics(self, run_id: int, key: str, points: dict[int, float]) -> None:
        """Write one metric's {step: value} points in one batch."""
        rows = [
            row
            for step, value in points.items()
            for row in records.metric_rows(run_id, step, {key: value})
        ]
        with self.session() as session:
            records.add_metric_rows(session, rows)

    def add_curve(
        self, run_id: int, meta_step: int, dataset: str, learner: str, steps: int
    ) -> None:
        """A learning curve whose accuracy grows by 0.1 per inner step."""
        rows = [
            {"run_id": run_id, "meta_step": meta_step, "dataset": dataset,
             "learner": learner, "inner_step": i, "accuracy": 0.1 * i,
             "loss": 2.0 - 0.1 * i}
            for i in range(steps)
        ]  # fmt: skip
        with self.session() as session:
            records.add_curve_rows(session, rows)

    def add_logs(self, run_id: int, texts: list[str]) -> None:
        with self.session() as session:
            first = records.next_log_seq(session, run_id)
            rows = [
                {"run_id": run_id, "seq": first + i, "time": 1.0 * i, "text": line}
                for i, line in enumerate(texts)
            ]
            records.add_log_rows(session, rows)

    def queued_run_ids(self) -> list[int]:
        """Take every message off the run queue; the run ids they carry."""
        celery = make_celery(self.settings)
        queue = celery.conf.task_default_queue
        run_ids = []
        with celery.connection_for_read() as connection:
            channel = connection.default_channel
            while (message := channel.basic_get(queue, no_ack=True)) is not None:
                assert message.headers["task"] == RUN_TASK
                args, _kwargs, _embed = message.decode()
                run_ids.append(args[0])
        return sorted(run_ids)


@pytest.fixture
def lab(make_client: Callable[..., TestClient], settings: Settings) -> Lab:
    return Lab(make_client(), settings)


@pytest.fixture
def client(lab: Lab) -> TestClient:
    return lab.client
