"""GET /health reports the database and the broker."""

from __future__ import annotations

from fastapi.testclient import TestClient

from server.config import Settings
from tests.server.conftest import SQLITE_ONLY


def test_health_is_ok_on_a_fresh_lab(client: TestClient, settings: Settings):
    """A new lab (no run launched yet) is healthy: database and queue folder."""
    response = client.get("/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    backend = settings.resolved_database_url.split(":")[0].split("+")[0]
    assert body["database"] == {"ok": True, "backend": backend}
    assert body["broker"]["backend"] == "filesystem"


@SQLITE_ONLY  # kombu pauses 2 s before its retry; once is enough
def test_health_is_503_when_the_broker_is_down(make_client):
    """A broker URL on a closed loopback port makes /health answer 503."""
    response = make_client(broker_url="redis://127.0.0.1:1/0").get("/health")
    assert response.status_code == 503
    assert response.json()["status"] == "degraded"
    assert response.json()["broker"]["ok"] is False
    assert response.json()["database"]["ok"] is True


def test_health_is_503_when_the_database_is_down(make_client):
    """A database URL on a closed loopback port makes /health answer 503."""
    url = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
    response = make_client(database_url=url).get("/health")
    assert response.status_code == 503
    assert response.json()["database"]["ok"] is False
