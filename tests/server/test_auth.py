"""With an API token set, the API needs it; /health does not."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

TOKEN = "t0ken"
GUARDED = [
    ("GET", "/api/experiments"),
    ("POST", "/api/experiments"),
    ("GET", "/api/runs"),
    ("GET", "/api/runs/1"),
    ("POST", "/api/runs/1/cancel"),
    ("GET", "/api/runs/1/stream"),
    ("GET", "/api/presets"),
]


@pytest.fixture
def guarded(make_client) -> TestClient:
    return make_client(api_token=TOKEN)


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_api_without_token_is_401(guarded: TestClient, method: str, path: str):
    """Every API route refuses a request that carries no token."""
    response = guarded.request(method, path, json={"config": {}})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_api_with_a_wrong_token_is_401(guarded: TestClient):
    """A wrong bearer token is refused like a missing one."""
    headers = {"Authorization": "Bearer nope"}
    assert guarded.get("/api/experiments", headers=headers).status_code == 401


def test_api_with_the_bearer_token_succeeds(guarded: TestClient):
    """`Authorization: Bearer TOKEN` opens the API."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    created = guarded.post("/api/experiments", json={"config": {}}, headers=headers)
    assert created.status_code == 201
    assert guarded.get("/api/experiments", headers=headers).status_code == 200


def test_api_accepts_the_dashboard_cookie(guarded: TestClient):
    """The token in the dashboard's cookie opens the API too."""
    guarded.cookies.set("vsml_token", TOKEN)
    assert guarded.get("/api/runs").status_code == 200


def test_health_needs_no_token(guarded: TestClient):
    """/health stays reachable without the token."""
    assert guarded.get("/health").status_code == 200
