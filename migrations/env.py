"""Alembic environment: the URL comes from the service settings.

`server.migrate.upgrade(url)` passes a URL explicitly (tests, the launcher);
plain `alembic upgrade head` uses VSML_DATABASE_URL or the SQLite default.
"""

from __future__ import annotations

from alembic import context

from server import models  # noqa: F401  (registers the tables)
from server.config import get_settings
from server.db import Base, get_engine

config = context.config
url = config.attributes.get("url") or get_settings().resolved_database_url


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    with get_engine(url).connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
