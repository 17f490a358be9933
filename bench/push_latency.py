"""Push latency: from a worker's committed write to an SSE client's receipt.

Serves the real app on uvicorn, subscribes a client to the run's stream
(/api/runs/{id}/stream), and starts a writer process that, like the worker,
commits one batch of metric points at a time through server.records (with
the run's progress), at irregular intervals. Each batch's latency is the time
from its commit returning in the writer to its points arriving at the client.
Prints push_latency_ms_p50, _p95 and _max (bar: < 1000 ms).
Usage: python -m bench.push_latency [--json] [--batches N]
                                    [--backend postgresql|sqlite]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import random
import threading
import time
from urllib.parse import urlsplit

import numpy as np

from bench.support import BACKENDS, new_run, report, scratch_database, serve
from server import records
from server.db import session_scope
from server.models import Run


def write_batches(url: str, run_id: int, batches: int, commits) -> None:
    """The writer process: one transaction per batch; reports commit times."""
    rng = random.Random(0)
    for step in range(batches):
        metrics = {"meta_loss": rng.random(), "train_accuracy": rng.random(),
                   "seconds_per_iteration": 0.3}  # fmt: skip
        with session_scope(url) as session:
            records.add_metric_rows(session, records.metric_rows(run_id, step, metrics))
            run = session.get(Run, run_id)
            assert run is not None
            records.update_progress(session, run, step, metrics)
        commits.put((step, time.time()))
        time.sleep(rng.uniform(0.05, 0.35))  # out of phase with the stream's poll


class StreamClient(threading.Thread):
    """Reads a run's event stream; notes when each step's points arrive."""

    def __init__(self, base: str, run_id: int, steps: int) -> None:
        super().__init__(daemon=True)
        address = urlsplit(base)
        self.connection = http.client.HTTPConnection(
            address.hostname, address.port, timeout=60
        )
        self.path = f"/api/runs/{run_id}/stream"
        self.steps = steps
        self.received: dict[int, float] = {}
        self.subscribed = threading.Event()

    def run(self) -> None:
        self.connection.request("GET", self.path)
        response = self.connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"stream answered {response.status}")
        self.subscribed.set()
        event = ""
        while len(self.received) < self.steps:
            line = response.readline().decode().rstrip("\n")
            if not line and response.isclosed():
                return
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "metrics":
                now = time.time()
                for _key, step, _value in json.loads(line[6:])["points"]:
                    self.received.setdefault(step, now)

    def close(self) -> None:
        self.connection.close()


def measure(url: str, batches: int) -> dict[str, float]:
    run_id = new_run(url)
    with serve(url) as base:
        client = StreamClient(base, run_id, batches)
        client.start()
        if not client.subscribed.wait(30):
            raise RuntimeError("the stream did not answer within 30 s")
        context = multiprocessing.get_context("spawn")
        commits = context.Queue()
        writer = context.Process(
            target=write_batches, args=(url, run_id, batches, commits)
        )
        writer.start()
        committed = dict(commits.get(timeout=60) for _ in range(batches))
        writer.join(60)
        client.join(30)
        client.close()
    missing = set(committed) - set(client.received)
    if missing:
        raise RuntimeError(f"the client never received steps {sorted(missing)}")
    latency = np.array([client.received[s] - committed[s] for s in committed]) * 1000
    return {
        "push_latency_ms_p50": float(np.percentile(latency, 50)),
        "push_latency_ms_p95": float(np.percentile(latency, 95)),
        "push_latency_ms_max": float(latency.max()),
        "batches": batches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON line")
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--backend", choices=BACKENDS, default="postgresql")
    args = parser.parse_args()
    with scratch_database(args.backend) as url:
        figures = measure(url, args.batches)
    report({"backend": args.backend, **figures}, args.json)


if __name__ == "__main__":
    main()
