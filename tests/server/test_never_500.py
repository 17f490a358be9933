"""Never a 500 for anything a client sends: odd bodies thrown at the POST routes.

A property-style sweep without a library: a seeded generator builds bodies
from pieces that have broken parsers before (huge and non-finite numbers,
NUL and lone surrogates, deep nesting, YAML tags and aliases, wrong types),
and every answer must be below 500.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.server.conftest import TINY_YAML, Lab

BODIES_PER_ROUTE = 60

ODD_TEXT = [
    "", " ", "\x00", "\ud800", "caf\u00e9", "\u00b2", "n" * 300, "{{", "[1",
    "!!python/object/apply:os.system ['true']", "&a [*a]", "*nowhere",
    "seed: 1\n\tbad: tab", "1e400", "-0", ".nan", "~", "seed=1", "=1", "a.=1",
    ".a=1", "seed=" + "9" * 500, "training.num_iterations=1.0e999",
    "optimizer.sigma=-1", "data.train=[{name: x}]", "seed=[[[[[[[[[[",
    TINY_YAML, TINY_YAML.replace("seed: 7", "seed: 7\nseed: 8"),
]  # fmt: skip
ODD_NUMBERS = [0, -1, 1.5, 2**31, 2**63, 2**70, -(2**70), 10**400, 1e308,
               float("inf"), float("nan"), True, None]  # fmt: skip
KEYS = ["name", "seed", "tags", "config", "description", "seeds", "overrides",
        "training", "optimizer", "model", "data", "evaluation",
        "\ud800", ""]  # fmt: skip


def odd_value(rng: random.Random, depth: int = 0) -> Any:
    """A JSON-ish value built from the odd pieces above."""
    kind = rng.randrange(6 if depth < 3 else 2)
    if kind == 0:
        return rng.choice(ODD_TEXT)
    if kind == 1:
        return rng.choice(ODD_NUMBERS)
    if kind == 2:
        return [odd_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 3:
        return {rng.choice(KEYS): odd_value(rng, depth + 1) for _ in range(3)}
    if kind == 4:
        return "[" * rng.choice([10, 2000]) + "]" * rng.randrange(3)
    return {"config": odd_value(rng, depth + 1), rng.choice(KEYS): odd_value(rng)}


def encoded(rng: random.Random, value: Any) -> bytes:
    """The value as JSON, as YAML-ish text, or as broken bytes."""
    kind = rng.randrange(5)
    if kind <= 1:
        return json.dumps(value).encode()  # ASCII: surrogates become escapes
    if kind == 2:
        return json.dumps(value).encode()[: rng.randrange(1, 40)]
    if kind == 3:
        return str(value).encode("utf-8", "surrogatepass")
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))


CONTENT_TYPES = ["application/json", "application/yaml", "text/yaml", "",
                 "text/plain", "application/json; charset=latin-1"]  # fmt: skip


def odd_requests(seed: int, shape: dict[str, Any]) -> Iterator[tuple[bytes, str]]:
    """BODIES_PER_ROUTE (body, content type) pairs, some shaped like `shape`."""
    rng = random.Random(seed)
    for _ in range(BODIES_PER_ROUTE):
        value = odd_value(rng)
        if rng.random() < 0.5:
            value = {key: odd_value(rng) for key in shape if rng.random() < 0.7}
        yield encoded(rng, value), rng.choice(CONTENT_TYPES)


@pytest.fixture
def tolerant(make_client) -> TestClient:
    """A client that reports a server error as a 500 instead of raising it."""
    return make_client(raise_server_exceptions=False)


def assert_no_server_error(client: TestClient, path: str, requests) -> None:
    for body, kind in requests:
        headers = {"content-type": kind} if kind else {}
        response = client.post(path, content=body, headers=headers)
        assert response.status_code < 500, (body[:200], kind, response.text[:300])


def test_odd_experiment_bodies_never_get_500(tolerant: TestClient):
    """POST /api/experiments answers every odd body with a status below 500."""
    shape = {"name": "", "description": "", "tags": [], "config": {}}
    assert_no_server_error(tolerant, "/api/experiments", odd_requests(1, shape))


def test_odd_launch_bodies_never_get_500(lab: Lab, tolerant: TestClient):
    """POST /api/experiments/{id}/runs answers every odd body below 500."""
    path = f"/api/experiments/{lab.experiment()['id']}/runs"
    shape = {"seeds": [], "overrides": []}
    assert_no_server_error(tolerant, path, odd_requests(2, shape))


def test_odd_config_text_values_never_get_500(lab: Lab, tolerant: TestClient):
    """Odd strings inside a valid config's text fields store and launch cleanly."""
    for index, text in enumerate(ODD_TEXT[:6] + ["\\0", "\\ud800"]):
        config = {"name": f"e{index}", "data": {"train": [{"name": text}]}}
        body = json.dumps({"config": config}).encode()  # escapes surrogates
        response = tolerant.post("/api/experiments", content=body)
        assert response.status_code < 500, (text, response.text)
        if response.status_code == 201:
            path = f"/api/experiments/{response.json()['id']}/runs"
            launched = tolerant.post(path, json={})
            assert launched.status_code < 500, (text, launched.text)
