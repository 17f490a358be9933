"""Runs over the REST API: launch, list, read, cancel."""

from __future__ import annotations

from fastapi.testclient import TestClient

from server.models import RunStatus
from tests.server.conftest import SQLITE_ONLY, Lab


def run_config(client: TestClient, run_id: int) -> dict:
    response = client.get(f"/api/runs/{run_id}/config", params={"format": "json"})
    assert response.status_code == 200, response.text
    return response.json()


def test_launch_without_seeds_runs_the_config_seed(lab: Lab):
    """With no seeds given, one run is queued with the config's own seed."""
    experiment = lab.experiment()
    (run,) = lab.launch(experiment["id"])
    assert (run["status"], run["seed"], run["experiment_name"]) == ("queued", 7, "tiny")
    assert run_config(lab.client, run["id"])["seed"] == 7


def test_launch_several_seeds_applies_seed_and_overrides(lab: Lab):
    """Each seed gets a run whose stored config is resolved with the overrides."""
    experiment = lab.experiment()
    overrides = ["training.episode_length=3", "optimizer.sigma=0.125"]
    runs = lab.launch(experiment["id"], seeds=[11, 12, 13], overrides=overrides)
    assert [r["seed"] for r in runs] == [11, 12, 13]
    for run in runs:
        config = run_config(lab.client, run["id"])
        assert config["seed"] == run["seed"]
        assert config["training"]["episode_length"] == 3
        assert config["optimizer"]["sigma"] == 0.125
        assert config["training"]["num_iterations"] == run["total_iterations"] == 20
        assert run["overrides"] == overrides


def test_launch_puts_one_message_per_run_on_the_queue(lab: Lab):
    """Every launched run is really sent to the broker, by id."""
    experiment = lab.experiment()
    runs = lab.launch(experiment["id"], seeds=[1, 2, 3])
    assert lab.queued_run_ids() == sorted(r["id"] for r in runs)


@SQLITE_ONLY  # the enqueue retries take a second; once is enough
def test_launch_with_the_broker_down_fails_the_runs(lab: Lab, make_client):
    """An unreachable broker gets 503, and the runs are marked failed, not queued."""
    experiment = lab.experiment()
    offline = make_client(broker_url="redis://127.0.0.1:1/0")
    response = offline.post(f"/api/experiments/{experiment['id']}/runs", json={})
    assert response.status_code == 503
    (run,) = lab.client.get("/api/runs").json()["items"]
    assert run["status"] == "failed"
    assert "could not queue" in run["error"]


def test_list_filters_by_status_experiment_and_tag(lab: Lab):
    """Each filter of GET /api/runs keeps only the matching runs."""
    first = lab.experiment("first", tags=("vision",))
    second = lab.experiment("second", tags=("audio",))
    a, b = lab.launch(first["id"], seeds=[1, 2])
    c = lab.launch(second["id"])[0]
    lab.set_status(b["id"], RunStatus.running)

    def ids(**params) -> list[int]:
        response = lab.client.get("/api/runs", params=params)
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.json()["items"]]

    assert ids() == [c["id"], b["id"], a["id"]]
    assert ids(status="running") == [b["id"]]
    assert ids(experiment_id=second["id"]) == [c["id"]]
    assert ids(tag="vision") == [b["id"], a["id"]]
    assert ids(tag="vision", status="queued") == [a["id"]]


def test_list_pages_with_limit_and_offset(lab: Lab):
    """limit/offset page through the runs, newest first, with the full total."""
    experiment = lab.experiment()
    runs = lab.launch(experiment["id"], seeds=list(range(5)))
    newest_first = [r["id"] for r in reversed(runs)]
    pages = [
        lab.client.get("/api/runs", params={"limit": 2, "offset": o}).json()
        for o in (0, 2, 4)
    ]
    assert [[r["id"] for r in p["items"]] for p in pages] == [
        newest_first[0:2], newest_first[2:4], newest_first[4:]
    ]  # fmt: skip
    assert {p["total"] for p in pages} == {5}


def test_get_reads_one_run(lab: Lab):
    """GET /api/runs/{id} returns the run as launched."""
    run = lab.run(seeds=[5])
    response = lab.client.get(f"/api/runs/{run['id']}")
    assert response.status_code == 200
    assert response.json()["seed"] == 5
    assert response.json()["progress"] == 0


def test_cancel_queued_run_is_cancelled_at_once(lab: Lab):
    """A queued run goes straight to cancelled, with a finish time."""
    run = lab.run()
    response = lab.client.post(f"/api/runs/{run['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None


def test_cancel_running_run_asks_the_worker(lab: Lab):
    """A running run stays running with cancel_requested set for the worker."""
    run = lab.run()
    lab.set_status(run["id"], RunStatus.running)
    response = lab.client.post(f"/api/runs/{run['id']}/cancel")
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["cancel_requested"]) == (
        "running", True
    )  # fmt: skip
