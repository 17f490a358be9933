"""Real services for integration tests: a fresh PostgreSQL database, Redis."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


class Server:
    """A private server process on a loopback port that a test may restart."""

    def __init__(self, command: list[str], port: int, ready: list[str]) -> None:
        self.command, self.port, self.ready = command, port, ready
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while subprocess.run(self.ready, capture_output=True).returncode != 0:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"{self.command[0]} did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # both servers shut down cleanly on TERM
            self.process.wait(30)

    def restart(self, down_s: float) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


@contextmanager
def private_redis(folder: Path) -> Iterator[Server]:
    """A Redis of this test's own that keeps its data (append-only file)."""
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
               "--dir", str(folder), "--appendonly", "yes", "--save", ""]  # fmt: skip
    server = Server(command, port, ["redis-cli", "-p", str(port), "ping"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _as_postgres(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI runs as root.
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@contextmanager
def private_postgres() -> Iterator[Server]:
    """A PostgreSQL cluster of this test's own (trust auth, database
    postgres), so that the test can restart it without touching others'."""
    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not binaries:
        pytest.skip("PostgreSQL's server binaries are not installed")
    bin_dir = binaries[-1]
    # Not under pytest's folder: as root, the server runs as user postgres,
    # who may not enter it.
    folder = Path(tempfile.mkdtemp(prefix="vsml-pg-"))
    data = folder / "pgdata"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(data, "postgres")
    subprocess.run(
        _as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust",
                      "-U", "postgres"]),
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    command = _as_postgres([
        str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k",
        str(folder), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
    ])  # fmt: skip
    ready = [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)]
    server = Server(command, port, ready)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
