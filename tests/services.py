"""Real services for integration tests: a fresh PostgreSQL database, Redis."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379/0"


def _admin():
    return create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """The URL of a new, empty database, dropped afterwards."""
    name = f"vsml_test_{uuid.uuid4().hex[:12]}"
    admin = _admin()
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as err:  # the server is part of the test environment
        admin.dispose()
        pytest.fail(f"PostgreSQL at {POSTGRES} is not reachable: {err}")
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        from server.db import get_engine, session_factory

        get_engine(f"{POSTGRES}/{name}").dispose()
        get_engine.cache_clear()
        session_factory.cache_clear()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
