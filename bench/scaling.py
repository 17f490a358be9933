"""Scaling of one run over processes (issue 4's benchmark).

Meta-trains the same ES population (the throughput benchmark's problem: a
784x10 VSML layer, M=8, S=16, 2 micro ticks, 16 antithetic pairs, episodes of
100 steps) with distributed.world_size 1 and 2, one CPU thread per process,
and prints the sub-LSTM updates per second of each and their ratio:

  scaling_1_process_updates_per_s, scaling_2_process_updates_per_s,
  scaling_speedup (bar: >= 1.8 on the 2-core development machine)

Usage: python -m bench.scaling [--json] [--iterations N]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

PROBLEM = [
    "data.train=[{name: random}]",
    "data.image_size=[28,28]",
    "model.num_micro_ticks=2",
    "training.episode_length=100",
    "optimizer.population_size=16",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, world: int, port: int, iterations: int, out: str) -> None:
    """One process: warm up, then time `iterations` meta-iterations."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      RANK=str(rank), WORLD_SIZE=str(world),
                      VSML_THREADS="1")  # fmt: skip
    torch.set_num_threads(1)
    from vsml import distributed
    from vsml.config import load_config
    from vsml.training import Trainer

    config = load_config(overrides=[*PROBLEM, f"distributed.world_size={world}"])
    comm = distributed.from_environment(torch.device("cpu"))
    try:
        trainer = Trainer(config, comm=comm)
        updates = 0.0
        trainer.train_step()  # warm-up: kernel build, caches
        start = time.perf_counter()
        for _ in range(iterations):
            metrics = trainer.train_step()
            updates += metrics["updates_per_s"] * metrics["seconds_per_iteration"]
        seconds = time.perf_counter() - start
        if rank == 0:
            Path(out).write_text(json.dumps(updates / seconds))
    finally:
        comm.close()


def updates_per_s(world: int, iterations: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "result.json")
        mp.spawn(_rank, args=(world, _free_port(), iterations, out), nprocs=world)
        return float(json.loads(Path(out).read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args()
    one = updates_per_s(1, args.iterations)
    two = updates_per_s(2, args.iterations)
    figures = {
        "scaling_1_process_updates_per_s": one,
        "scaling_2_process_updates_per_s": two,
        "scaling_speedup": two / one,
    }
    if args.json:
        print(json.dumps(figures))
    else:
        for name, value in figures.items():
            print(f"{name:<36}{value:.4g}")


if __name__ == "__main__":
    main()
