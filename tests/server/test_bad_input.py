"""Bad input gets a 4xx that says what is wrong; never a 500.

Covers every case the API promises: malformed YAML (422 with line and
column), unknown config keys (422 naming the key and the closest valid one),
invalid values, missing objects (404), actions that do not fit the state
(409), bodies over 1 MB (413), and then whatever else a client can send.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from server import records
from server.models import MAX_DB_INT, RunStatus
from server.queries import Cursor, row_number
from tests.server.conftest import TINY_YAML, Lab

YAML = {"content-type": "application/yaml"}
JSON = {"content-type": "application/json"}
OVER_LIMIT = 1_000_001


def create_yaml(client: TestClient, text: str | bytes):
    return client.post("/api/experiments", content=text, headers=YAML)


def create_raw_json(client: TestClient, body: bytes):
    return client.post("/api/experiments", content=body, headers=JSON)


def only_problem(response) -> dict:
    assert response.status_code == 422, response.text
    (problem,) = response.json()["problems"]
    return problem


# --- configs ---------------------------------------------------------------


@pytest.mark.parametrize("as_json", [False, True], ids=["yaml-body", "json-body"])
def test_malformed_yaml_names_line_and_column(client: TestClient, as_json: bool):
    """Broken YAML gets 422 giving the line and column of the fault."""
    text = "name: x\ntraining:\n  episode_length: [1, 2\nseed: 3\n"
    if as_json:
        response = client.post("/api/experiments", json={"config": text})
    else:
        response = create_yaml(client, text)
    problem = only_problem(response)
    assert (problem["line"], problem["column"]) == (4, 5)
    assert "line 4, column 5" in response.json()["detail"]


def test_unknown_key_names_it_and_the_closest_valid_key(client: TestClient):
    """A misspelt key gets 422 naming it, its line and the key meant."""
    text = "seed: 1\ntraining:\n  epsiode_length: 5\n"
    problem = only_problem(create_yaml(client, text))
    assert problem["loc"] == "training.epsiode_length"
    assert problem["suggestion"] == "episode_length"
    assert (problem["line"], problem["column"]) == (3, 3)
    assert "'training.epsiode_length'" in problem["message"]
    assert "'episode_length'" in problem["message"]


def test_unknown_section_in_a_json_config_names_the_closest(client: TestClient):
    """A JSON object config with a misspelt section gets the same help."""
    body = {"config": {"trainig": {"episode_length": 5}}}
    problem = only_problem(client.post("/api/experiments", json=body))
    assert (problem["loc"], problem["suggestion"]) == ("trainig", "training")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("seed: -1\n", "seed"),
        ("optimizer:\n  sigma: 0\n", "optimizer.sigma"),
        ("training:\n  meta_loss: median\n", "training.meta_loss"),
        ("optimizer:\n  sigma: .nan\n", "optimizer.sigma"),
        ("training:\n  num_iterations: 99999999999999999999999\n", "num_iterations"),
    ],
    ids=["negative-seed", "zero-sigma", "unknown-choice", "nan", "huge-iterations"],
)
def test_invalid_value_names_the_field(client: TestClient, text: str, field: str):
    """A value out of range gets 422 whose message names the field."""
    response = create_yaml(client, text)
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]


@pytest.mark.parametrize(
    "text",
    [
        "seed: " + "9" * 5000 + "\n",
        "optimizer:\n  sigma: 1.0e999\n",
        "seed: " + "[" * 1500 + "\n",
    ],
    ids=["5000-digit-int", "float-overflow", "deep-nesting"],
)
def test_extreme_yaml_values_get_422(client: TestClient, text: str):
    """Numbers too big for Python or nesting too deep for the parser get 422."""
    assert create_yaml(client, text).status_code == 422


def test_extreme_json_values_get_422(client: TestClient):
    """A 5000-digit JSON number or 10,000-deep JSON nesting gets 422."""
    huge = b'{"config": {"seed": ' + b"9" * 5000 + b"}}"
    deep = b'{"config": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    assert create_raw_json(client, huge).status_code == 422
    assert create_raw_json(client, deep).status_code == 422


def test_alias_bomb_is_refused_quickly(client: TestClient):
    """YAML aliases that expand to billions of values get 422, not a hang."""
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for level in range(1, 10):
        aliases = ", ".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{aliases}]")
    response = create_yaml(client, "\n".join([*lines, "seed: *a9", ""]))
    assert response.status_code == 422
    assert len(response.content) < 10_000


def test_config_is_a_mapping(client: TestClient):
    """A YAML list or scalar instead of a mapping of sections gets 422."""
    assert create_yaml(client, "- a\n- b\n").status_code == 422
    assert client.post("/api/experiments", json={"config": [1]}).status_code == 422


# --- names, tags and text --------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"name": "", "config": {}},
        {"name": "n" * 201, "config": {}},
        {"config": {"name": "n" * 201}},
        {"config": {"name": " "}},
        {"tags": ["t" * 65], "config": {}},
        {"tags": [f"t{i}" for i in range(33)], "config": {}},
        {"name": "nul\u0000", "config": {}},
        {"config": {"name": "nul\u0000"}},
        {"description": "nul\u0000", "config": {}},
        {"tags": ["nul\u0000"], "config": {}},
        {"config": {}, "colour": "red"},
        {"name": "no config"},
    ],
    ids=["empty-name", "long-name", "long-config-name", "blank-config-name",
         "long-tag", "too-many-tags", "nul-name", "nul-config-name",
         "nul-description", "nul-tag", "unknown-field", "no-config"],
)  # fmt: skip
def test_bad_experiment_fields_get_422(client: TestClient, body: dict):
    """Names, tags and descriptions that cannot be stored get 422."""
    response = client.post("/api/experiments", json=body)
    assert response.status_code == 422, response.text


def test_lone_surrogate_gets_422(client: TestClient):
    """Text that is not valid Unicode (a lone surrogate) gets 422."""
    for field in ("name", "description"):
        body = f'{{"{field}": "\\ud800", "config": {{}}}}'.encode()
        assert create_raw_json(client, body).status_code == 422


def test_patch_refuses_what_cannot_be_stored(lab: Lab):
    """PATCH with a NUL in the description or an over-long tag gets 422."""
    path = f"/api/experiments/{lab.experiment()['id']}"
    assert lab.client.patch(path, json={"description": "\u0000"}).status_code == 422
    assert lab.client.patch(path, json={"tags": ["t" * 65]}).status_code == 422
    assert lab.client.patch(path, json={"config": "seed: 1"}).status_code == 422


# --- bodies ----------------------------------------------------------------


def test_malformed_json_names_line_and_column(client: TestClient):
    """Broken JSON gets 422 saying where it breaks."""
    response = create_raw_json(client, b'{"config":\n  {"seed": 1,}}')
    assert response.status_code == 422
    assert "line 2, column 14" in response.json()["detail"]


@pytest.mark.parametrize("body", [b"", b"[]", b"null", b'"config"', b"{}"])
def test_json_that_is_not_an_experiment_gets_422(client: TestClient, body: bytes):
    """Valid JSON of the wrong shape gets 422."""
    assert create_raw_json(client, body).status_code == 422


@pytest.mark.parametrize(
    "kind", ["text/plain", "multipart/form-data; boundary=x", "application/xml"]
)
def test_wrong_content_type_gets_415(client: TestClient, kind: str):
    """Only JSON and YAML bodies create experiments."""
    response = client.post(
        "/api/experiments", content=TINY_YAML, headers={"content-type": kind}
    )
    assert response.status_code == 415
    assert "application/yaml" in response.json()["detail"]


def test_non_utf8_body_gets_422(lab: Lab):
    """Bytes that are not UTF-8 get 422 on every body-taking route."""
    experiment = lab.experiment()
    garbage = "seed: 1  # caf\u00e9\n".encode("latin-1")
    assert create_yaml(lab.client, garbage).status_code == 422
    assert create_raw_json(lab.client, b'{"config": "\xff"}').status_code == 422
    path = f"/api/experiments/{experiment['id']}/runs"
    response = lab.client.post(path, content=b'{"seeds": [1], "x": "\xff"}')
    assert 400 <= response.status_code < 500


def big_bodies(lab: Lab) -> list[tuple[str, str]]:
    experiment = lab.experiment()
    return [
        ("POST", "/api/experiments"),
        ("POST", f"/api/experiments/{experiment['id']}/runs"),
        ("PATCH", f"/api/experiments/{experiment['id']}"),
    ]


def test_body_over_1mb_with_content_length_gets_413(lab: Lab):
    """A declared body over 1 MB is refused with 413 before it is read."""
    body = json.dumps({"config": {}, "description": "x" * OVER_LIMIT})
    for method, path in big_bodies(lab):
        response = lab.client.request(method, path, content=body, headers=JSON)
        assert response.status_code == 413, (method, path, response.text)


def test_chunked_body_over_1mb_gets_413(lab: Lab):
    """A chunked body (no Content-Length) is cut off at 1 MB with 413."""

    def chunks():
        yield b'{"config": {}, "description": "'
        for _ in range(11):
            yield b"x" * 100_000
        yield b'"}'

    for method, path in big_bodies(lab):
        response = lab.client.request(method, path, content=chunks(), headers=JSON)
        assert "content-length" not in response.request.headers
        assert response.status_code == 413, (method, path, response.text)


def test_body_limit_is_exact(make_client):
    """A body of exactly the limit is read; one byte more gets 413."""
    client = make_client(max_body_bytes=5000)
    for size, status in ((5000, 201), (5001, 413)):
        fields = {"name": f"size-{size}", "config": {}}
        empty = len(json.dumps({**fields, "description": ""}))
        body = json.dumps({**fields, "description": "x" * (size - empty)}).encode()
        assert len(body) == size
        assert create_raw_json(client, body).status_code == status


# --- launching runs --------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"seeds": [2**70]},
        {"seeds": [-1]},
        {"seeds": [2**32]},
        {"seeds": []},
        {"seeds": list(range(101))},
        {"seeds": ["one"]},
        {"seeds": [1.5]},
        {"overrides": ["training.epsiode_length=3"]},
        {"overrides": ["no equals sign"]},
        {"overrides": ["seed=[1"]},
        {"overrides": ["seed=" + "9" * 990]},
        {"overrides": ["seed=" + "[" * 995]},
        {"overrides": ["optimizer.sigma=1.0e999"]},
        {"overrides": ["x" * 1001]},
        {"colour": "red"},
    ],
    ids=["seed-2**70", "seed-minus-1", "seed-2**32", "no-seeds", "101-seeds",
         "text-seed", "float-seed", "unknown-key", "no-equals", "malformed-yaml",
         "huge-int", "deep-nesting", "float-overflow", "long-override",
         "unknown-field"],
)  # fmt: skip
def test_bad_launch_gets_422_and_queues_nothing(lab: Lab, body: dict):
    """Bad seeds or overrides get 422, and no run is created or queued."""
    experiment = lab.experiment()
    path = f"/api/experiments/{experiment['id']}/runs"
    response = lab.client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert lab.client.get("/api/runs").json()["total"] == 0
    assert lab.queued_run_ids() == []


def test_unknown_override_key_names_the_closest(lab: Lab):
    """An override with a misspelt key gets 422 naming the key meant."""
    experiment = lab.experiment()
    path = f"/api/experiments/{experiment['id']}/runs"
    response = lab.client.post(path, json={"overrides": ["optimiser.sigma=0.1"]})
    (problem,) = response.json()["problems"]
    assert (problem["loc"], problem["suggestion"]) == ("optimiser", "optimizer")


def test_malformed_json_launch_gets_422(lab: Lab):
    """A launch body that is not JSON gets 422."""
    path = f"/api/experiments/{lab.experiment()['id']}/runs"
    assert lab.client.post(path, content=b"{seeds", headers=JSON).status_code == 422


# --- missing objects and state conflicts -----------------------------------


MISSING = [
    ("GET", "/api/experiments/{x}"),
    ("PATCH", "/api/experiments/{x}"),
    ("DELETE", "/api/experiments/{x}"),
    ("POST", "/api/experiments/{x}/runs"),
    ("GET", "/api/runs/{x}"),
    ("POST", "/api/runs/{x}/cancel"),
    ("GET", "/api/runs/{x}/config"),
    ("GET", "/api/runs/{x}/metrics"),
    ("GET", "/api/runs/{x}/curves"),
    ("GET", "/api/runs/{x}/checkpoints"),
    ("GET", "/api/runs/{x}/checkpoints/1"),
    ("GET", "/api/runs/{x}/logs"),
    ("GET", "/api/runs/{x}/snapshot"),
    ("GET", "/api/runs/{x}/stream"),
]


# 99999999999: fits a BIGINT but not PostgreSQL's INTEGER id columns.
@pytest.mark.parametrize(
    "missing_id", ["424242", "0", "-3", "99999999999", "99999999999999999999"]
)
def test_missing_objects_get_404(client: TestClient, missing_id: str):
    """Every route about an experiment or run that does not exist says 404."""
    for method, template in MISSING:
        path = template.format(x=missing_id)
        response = client.request(method, path, json={})
        assert response.status_code == 404, (method, path, response.text)
        assert "does not exist" in response.json()["detail"]


def test_missing_checkpoint_gets_404(lab: Lab):
    """A checkpoint iteration that was never written, or lost its file, is 404."""
    run = lab.run()
    with lab.session() as session:
        records.add_checkpoint(session, run["id"], 5, "/nonexistent/ckpt.pt", 10)
    for iteration in (4, 5, 99999999999, 99999999999999999999):
        path = f"/api/runs/{run['id']}/checkpoints/{iteration}"
        assert lab.client.get(path).status_code == 404


@pytest.mark.parametrize(
    "status", [RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled]
)
def test_cancel_a_finished_run_conflicts(lab: Lab, status: RunStatus):
    """Cancelling a run that has finished gets 409 saying its status."""
    run = lab.run()
    lab.set_status(run["id"], status)
    response = lab.client.post(f"/api/runs/{run['id']}/cancel")
    assert response.status_code == 409
    assert str(status) in response.json()["detail"]


# --- query parameters ------------------------------------------------------


BAD_QUERIES = [
    "/api/runs?limit=0",
    "/api/runs?limit=501",
    "/api/runs?limit=abc",
    "/api/runs?offset=-1",
    "/api/runs?status=bogus",
    "/api/runs?experiment_id=abc",
    "/api/runs?experiment_id=99999999999999999999",
    "/api/runs?experiment_id=99999999999",
    "/api/runs?tag=" + "t" * 65,
    "/api/runs/{run}/metrics?max_points=2",
    "/api/runs/{run}/metrics?max_points=abc",
    "/api/runs/{run}/metrics?format=xml",
    "/api/runs/{run}/curves?meta_step=abc",
    "/api/runs/{run}/curves?meta_step=-1",
    "/api/runs/{run}/curves?meta_step=%C2%B2",
    "/api/runs/{run}/curves?meta_step=99999999999999999999",
    "/api/runs/{run}/curves?meta_step=99999999999",
    "/api/runs/{run}/curves?format=pdf",
    "/api/runs/{run}/config?format=toml",
    "/api/runs/{run}/logs?after=-2",
    "/api/runs/{run}/logs?after=99999999999999999999",
    "/api/runs/{run}/logs?after=9223372036854775807",
    "/api/runs/{run}/logs?limit=0",
    "/api/runs/{run}/snapshot?max_points=1",
    "/api/runs/{run}/stream?cursor=bad",
    "/api/runs/{run}/stream?cursor=1.2.3",
    "/api/runs/{run}/stream?cursor=-1.0.0.0",
    "/api/runs/{run}/stream?cursor=%C2%B2.0.0.0",
    "/api/runs/{run}/stream?cursor=99999999999999999999.0.0.0",
    "/api/stream/runs?after=-1",
    "/api/stream/runs?after=99999999999999999999",
]


def test_bad_query_parameters_get_4xx(lab: Lab):
    """Out-of-range, mistyped or malformed query parameters get a 4xx."""
    run = lab.run()
    for template in BAD_QUERIES:
        response = lab.client.get(template.format(run=run["id"]))
        assert 400 <= response.status_code < 500, (template, response.text)
        assert response.json()["detail"], template


@pytest.mark.parametrize("header", [b"bad", b"1.2", b"\xb2", b"9" * 30])
def test_bad_last_event_id_gets_422(lab: Lab, header: bytes):
    """A Last-Event-ID that is no cursor gets 422 on both streams."""
    run = lab.run()
    headers = {"Last-Event-ID": header}
    for path in (f"/api/runs/{run['id']}/stream", "/api/stream/runs"):
        with lab.client.stream("GET", path, headers=headers) as response:
            assert response.status_code == 422, path


def test_row_numbers_are_ascii_digits_that_fit_the_database():
    """Client text is an id only as ASCII digits within a 64-bit integer."""
    assert row_number("42") == 42
    assert row_number(str(MAX_DB_INT)) == MAX_DB_INT
    for text in ["\u00b2", "\u0663", "-1", "+1", "", " 1", "1.0", "9" * 19, "9" * 5000]:
        assert row_number(text) is None, text
    with pytest.raises(ValueError, match="four non-negative integers"):
        Cursor.parse("\u00b2.0.0.0")
