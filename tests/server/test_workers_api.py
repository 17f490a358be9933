"""GET /api/workers: who is online, what each trains, in what order."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from server import records
from server.models import Run, RunStatus, Worker, utcnow
from tests.server.conftest import Lab

TOKEN = "w0rker-t0ken"


def add_worker(
    lab: Lab, name: str, silent_s: float = 0.0, stopped: bool = False
) -> None:
    """A worker row as worker.registry writes it, last beating `silent_s` ago."""
    beat = utcnow() - timedelta(seconds=silent_s)
    row = Worker(
        name=name, hostname=f"host-{name}", queues=["runs", "runs.gpu1"], gpus=1,
        devices=["cuda:0 Test GPU"], pid=4242, started_at=beat - timedelta(hours=1),
        heartbeat_at=beat, stopped=stopped,
    )  # fmt: skip
    with lab.session() as session:
        session.add(row)


def start_on(lab: Lab, run_id: int, worker: str, status=RunStatus.running) -> None:
    """Move a run to `status` on `worker`, as the worker's claim does."""
    with lab.session() as session:
        records.set_status(session, session.get(Run, run_id), status, worker=worker)


def workers(client: TestClient, **params: str) -> list[dict]:
    response = client.get("/api/workers", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_no_workers_is_an_empty_list(client: TestClient):
    """Before any worker starts, the list is empty."""
    assert workers(client) == []


def test_online_means_a_recent_beat_and_not_stopped(lab: Lab):
    """A fresh beat is online; a beat older than lost_after_s or a stop is not."""
    lost = lab.settings.lost_after_s
    add_worker(lab, "fresh", silent_s=1)
    add_worker(lab, "silent", silent_s=lost + 5)
    add_worker(lab, "stopped", silent_s=1, stopped=True)
    online = {w["name"]: w["online"] for w in workers(lab.client)}
    assert online == {"fresh": True, "silent": False, "stopped": False}


def test_lost_after_s_comes_from_the_settings(lab: Lab, make_client):
    """The same beat counts as online or lost depending on VSML_LOST_AFTER_S."""
    add_worker(lab, "slow", silent_s=30)
    assert workers(make_client(lost_after_s=60))[0]["online"] is True
    assert workers(make_client(lost_after_s=10))[0]["online"] is False


def test_online_first_then_by_name(lab: Lab):
    """Online workers come first, each group sorted by name."""
    for name, silent_s in [("c", 999), ("b", 0), ("d", 999), ("a", 0)]:
        add_worker(lab, name, silent_s=silent_s)
    listed = [(w["online"], w["name"]) for w in workers(lab.client)]
    assert listed == [(True, "a"), (True, "b"), (False, "c"), (False, "d")]


def test_online_filter(lab: Lab):
    """`online=true` keeps online workers only, `online=false` the rest."""
    add_worker(lab, "up")
    add_worker(lab, "down", stopped=True)
    assert [w["name"] for w in workers(lab.client, online="true")] == ["up"]
    assert [w["name"] for w in workers(lab.client, online="false")] == ["down"]


def test_bad_online_filter_is_422(client: TestClient):
    """A value that is no boolean is refused with a sentence naming the parameter."""
    response = client.get("/api/workers", params={"online": "maybe"})
    assert response.status_code == 422
    assert "'online'" in response.json()["detail"]


def test_run_id_is_the_running_run_of_the_worker(lab: Lab):
    """run_id names the run the worker trains now, and only a running one."""
    add_worker(lab, "busy")
    add_worker(lab, "idle")
    add_worker(lab, "done")
    running, finished = lab.launch(lab.experiment()["id"], seeds=[0, 1])
    start_on(lab, running["id"], "busy")
    start_on(lab, finished["id"], "done", RunStatus.succeeded)
    run_ids = {w["name"]: w["run_id"] for w in workers(lab.client)}
    assert run_ids == {"busy": running["id"], "idle": None, "done": None}


def test_fields_round_trip(lab: Lab):
    """Every column the worker reports comes back, times as UTC ISO text."""
    add_worker(lab, "w")
    (worker,) = workers(lab.client)
    assert worker["hostname"] == "host-w"
    assert worker["queues"] == ["runs", "runs.gpu1"]
    assert (worker["gpus"], worker["devices"]) == (1, ["cuda:0 Test GPU"])
    assert worker["pid"] == 4242
    assert worker["heartbeat_at"].endswith("+00:00")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}])
def test_needs_the_token_when_one_is_set(make_client, headers: dict[str, str]):
    """With VSML_API_TOKEN set, a missing or wrong token gets 401."""
    guarded = make_client(api_token=TOKEN)
    response = guarded.get("/api/workers", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_opens_with_the_token(make_client):
    """The bearer token opens the list."""
    guarded = make_client(api_token=TOKEN)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert guarded.get("/api/workers", headers=headers).status_code == 200


def test_listed_in_openapi(client: TestClient):
    """The route and its response schema appear in the OpenAPI document."""
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/api/workers"]["get"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["items"]["$ref"].endswith("/WorkerPublic")
