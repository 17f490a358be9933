"""Live updates: server-sent events that resume where the client left off."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest

from server.routes import stream
from tests.server.conftest import Lab

TIMEOUT_S = 10.0


@dataclass
class Event:
    name: str
    id: str | None
    data: Any


@pytest.fixture(autouse=True)
def frequent_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    # A comment line every 0.2 s lets the reader below check its deadline.
    monkeypatch.setattr(stream, "KEEPALIVE_S", 0.2)


def read_until(
    response: httpx2.Response, done: Callable[[list[Event]], bool]
) -> list[Event]:
    """Parse events off an open stream until `done(events)` or TIMEOUT_S."""
    events: list[Event] = []
    fields: dict[str, str] = {}
    deadline = time.monotonic() + TIMEOUT_S
    for line in response.iter_lines():
        if line:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
            continue
        if "data" in fields:
            event = Event(fields["event"], fields.get("id"), json.loads(fields["data"]))
            events.append(event)
        fields = {}
        if done(events) or time.monotonic() > deadline:
            break
    return events


def metric_steps(events: list[Event]) -> list[int]:
    return [p[1] for e in events if e.name == "metrics" for p in e.data["points"]]


def has_steps(*steps: int) -> Callable[[list[Event]], bool]:
    return lambda events: set(steps) <= set(metric_steps(events))


def open_stream(lab: Lab, run_id: int, **kwargs: Any):
    return lab.client.stream("GET", f"/api/runs/{run_id}/stream", **kwargs)


def test_stream_delivers_points_written_after_the_cursor(lab: Lab):
    """Starting at a snapshot's cursor, only the points written later arrive."""
    run = lab.run()
    lab.add_metrics(run["id"], "meta_loss", {0: 1.0, 1: 0.9})
    cursor = lab.client.get(f"/api/runs/{run['id']}/snapshot").json()["cursor"]
    with open_stream(lab, run["id"], params={"cursor": cursor}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lab.add_metrics(run["id"], "meta_loss", {2: 0.8, 3: 0.7})
        events = read_until(response, has_steps(2, 3))
    assert metric_steps(events) == [2, 3]
    assert events[-1].data["points"][-1] == ["meta_loss", 3, 0.7]


def test_reconnect_with_last_event_id_has_no_gap_and_no_duplicate(lab: Lab):
    """Every point written around a disconnect is received exactly once."""
    run = lab.run()
    cursor = lab.client.get(f"/api/runs/{run['id']}/snapshot").json()["cursor"]
    with open_stream(lab, run["id"], params={"cursor": cursor}) as response:
        lab.add_metrics(run["id"], "meta_loss", {0: 1.0, 1: 0.9})
        first = read_until(response, has_steps(0, 1))
        # Written while the client is about to drop: possibly sent, never read.
        lab.add_metrics(run["id"], "meta_loss", {2: 0.8})
    lab.add_metrics(run["id"], "meta_loss", {3: 0.7, 4: 0.6})  # while away
    last_seen = [e.id for e in first if e.id][-1]
    with open_stream(lab, run["id"], headers={"Last-Event-ID": last_seen}) as response:
        lab.add_metrics(run["id"], "meta_loss", {5: 0.5})  # after coming back
        second = read_until(response, has_steps(2, 3, 4, 5))
    assert metric_steps(first) + metric_steps(second) == [0, 1, 2, 3, 4, 5]


def test_stream_sends_status_changes(lab: Lab):
    """Cancelling a queued run sends a `run` event with the new status."""
    run = lab.run()
    cursor = lab.client.get(f"/api/runs/{run['id']}/snapshot").json()["cursor"]
    with open_stream(lab, run["id"], params={"cursor": cursor}) as response:
        lab.client.post(f"/api/runs/{run['id']}/cancel")
        events = read_until(response, lambda evs: any(e.name == "run" for e in evs))
    (event,) = [e for e in events if e.name == "run"]
    assert (event.data["id"], event.data["status"]) == (run["id"], "cancelled")


def test_logs_and_curves_arrive_as_their_own_events(lab: Lab):
    """Log lines and curve points stream as `logs` and `curves` events."""
    run = lab.run()
    cursor = lab.client.get(f"/api/runs/{run['id']}/snapshot").json()["cursor"]
    with open_stream(lab, run["id"], params={"cursor": cursor}) as response:
        lab.add_logs(run["id"], ["hello"])
        lab.add_curve(run["id"], 0, "mnist", "vsml", steps=2)
        names = {"logs", "curves"}
        events = read_until(response, lambda evs: names <= {e.name for e in evs})
    by_name = {e.name: e.data for e in events}
    assert by_name["logs"]["lines"][0][2] == "hello"
    assert [row[3] for row in by_name["curves"]["rows"]] == [0, 1]


def test_runs_stream_announces_new_runs(lab: Lab):
    """/api/stream/runs sends a `run` event when a run is launched."""
    experiment = lab.experiment()
    with lab.client.stream("GET", "/api/stream/runs") as response:
        (run,) = lab.launch(experiment["id"])
        events = read_until(response, lambda evs: bool(evs))
    assert [(e.name, e.data["id"]) for e in events] == [("run", run["id"])]
