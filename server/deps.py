"""FastAPI dependencies: the database session, settings and the API token."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from server.config import Settings
from server.db import session_factory

TOKEN_COOKIE = "vsml_token"


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    session = session_factory(settings.resolved_database_url)()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


def get_celery(request: Request) -> Celery:
    return request.app.state.celery()


CeleryDep = Annotated[Celery, Depends(get_celery)]


def presented_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get(TOKEN_COOKIE, "")


def token_ok(request: Request, settings: Settings) -> bool:
    if not settings.api_token:
        return True
    given = presented_token(request).encode()
    return hmac.compare_digest(given, settings.api_token.encode())


def require_token(request: Request, settings: SettingsDep) -> None:
    """With VSML_API_TOKEN set, every API call must present it."""
    if not token_ok(request, settings):
        raise HTTPException(
            status_code=401,
            detail="missing or wrong API token: send 'Authorization: Bearer TOKEN'",
            headers={"WWW-Authenticate": "Bearer"},
        )
