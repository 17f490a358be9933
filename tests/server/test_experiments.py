"""Experiments over the REST API: create, list, read, update, delete."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from server.models import RunStatus
from tests.server.conftest import TINY_YAML, Lab


def test_create_from_yaml_text_stores_the_text_as_written(client: TestClient):
    """A JSON body with YAML text keeps the text, comments included."""
    body = {"config": TINY_YAML, "description": "first", "tags": ["b", "a", "b"]}
    response = client.post("/api/experiments", json=body)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["name"] == "tiny"  # from the config, as no name was given
    assert created["config_yaml"] == TINY_YAML
    assert created["description"] == "first"
    assert created["tags"] == ["a", "b"]


def test_create_from_json_object_stores_it_as_yaml(client: TestClient):
    """A config given as a JSON object is stored as equivalent YAML."""
    config = {"seed": 3, "training": {"num_iterations": 4}}
    response = client.post("/api/experiments", json={"name": "obj", "config": config})
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "obj"
    assert yaml.safe_load(response.json()["config_yaml"]) == config


def test_create_from_raw_yaml_body_takes_name_and_tags_from_query(client: TestClient):
    """An application/yaml body is the config; name and tags come from the query."""
    response = client.post(
        "/api/experiments",
        content=TINY_YAML,
        params=[("name", "raw"), ("tag", "x"), ("tag", "y"), ("description", "d")],
        headers={"content-type": "application/yaml"},
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert (created["name"], created["tags"]) == ("raw", ["x", "y"])
    assert (created["description"], created["config_yaml"]) == ("d", TINY_YAML)


def test_duplicate_name_conflicts(lab: Lab):
    """A second experiment with a taken name gets 409 naming it."""
    lab.experiment("twin")
    body = {"name": "twin", "config": TINY_YAML}
    response = lab.client.post("/api/experiments", json=body)
    assert response.status_code == 409
    assert "twin" in response.json()["detail"]


def test_list_filters_by_tag(lab: Lab):
    """?tag= lists only the experiments carrying that tag, newest first."""
    lab.experiment("a", tags=("x",))
    lab.experiment("b", tags=("y",))
    lab.experiment("c", tags=("x", "y"))
    everything = lab.client.get("/api/experiments").json()
    tagged = lab.client.get("/api/experiments", params={"tag": "x"}).json()
    assert [e["name"] for e in everything["items"]] == ["c", "b", "a"]
    assert [e["name"] for e in tagged["items"]] == ["c", "a"]
    assert tagged["total"] == 2


def test_get_counts_runs_by_status(lab: Lab):
    """An experiment reports how many of its runs are in each status."""
    experiment = lab.experiment()
    first, _second = lab.launch(experiment["id"], seeds=[1, 2])
    lab.set_status(first["id"], RunStatus.running)
    response = lab.client.get(f"/api/experiments/{experiment['id']}")
    assert response.status_code == 200
    assert response.json()["run_counts"] == {"queued": 1, "running": 1}


def test_patch_changes_only_what_is_given(lab: Lab):
    """PATCH sets the description or the tags and leaves the rest alone."""
    experiment = lab.experiment(tags=("old",))
    path = f"/api/experiments/{experiment['id']}"
    described = lab.client.patch(path, json={"description": "new words"}).json()
    assert (described["description"], described["tags"]) == ("new words", ["old"])
    retagged = lab.client.patch(path, json={"tags": ["n2", "n1"]}).json()
    assert (retagged["description"], retagged["tags"]) == ("new words", ["n1", "n2"])
    assert retagged["config_yaml"] == TINY_YAML


def test_delete_removes_the_runs_and_their_artifacts(lab: Lab):
    """Deleting an experiment deletes its finished runs and their folders."""
    experiment = lab.experiment()
    run = lab.launch(experiment["id"])[0]
    lab.set_status(run["id"], RunStatus.succeeded)
    folder = Path(lab.settings.artifact_dir) / "runs" / str(run["id"])
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"weights")
    response = lab.client.delete(f"/api/experiments/{experiment['id']}")
    assert response.status_code == 204
    assert lab.client.get(f"/api/experiments/{experiment['id']}").status_code == 404
    assert lab.client.get(f"/api/runs/{run['id']}").status_code == 404
    assert not folder.exists()


@pytest.mark.parametrize("status", [RunStatus.queued, RunStatus.running])
def test_delete_is_refused_while_a_run_is_active(lab: Lab, status: RunStatus):
    """An experiment with a queued or running run cannot be deleted (409)."""
    experiment = lab.experiment()
    run = lab.launch(experiment["id"])[0]
    if status != RunStatus.queued:
        lab.set_status(run["id"], status)
    response = lab.client.delete(f"/api/experiments/{experiment['id']}")
    assert response.status_code == 409
    assert "cancel" in response.json()["detail"]
    assert lab.client.get(f"/api/runs/{run['id']}").status_code == 200


def test_presets_are_listed_with_their_yaml(client: TestClient):
    """GET /api/presets offers the library's presets, quick among them."""
    presets = {p["name"]: p for p in client.get("/api/presets").json()}
    assert "quick" in presets
    assert yaml.safe_load(presets["quick"]["yaml"])["name"] == "quick"
