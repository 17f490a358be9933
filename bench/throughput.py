"""Throughput and memory of the VSML hot path (issue 2's benchmark).

Prints, per variant (plain, and with the backward pass):
  es_forward_updates_per_s  sub-LSTM cell updates per second of the antithetic
                            ES evaluation: 784x10 dense layer, M=8, S=16,
                            2 micro ticks, 16 pairs, episode 100, batch 1
  backprop_peak_mb          peak resident memory (MB) of a fresh process that
                            takes one backprop meta-gradient step with 4
                            trajectories of 100 steps, as training does by
                            default on a CPU: one trajectory at a time
  backprop_peak_mb_all_at_once   the same with all 4 differentiated together
Usage: python bench/throughput.py [--json] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from vsml import backprop, es, model
from vsml.config import ModelConfig, OptimizerConfig
from vsml.objective import run_members

VARIANTS = {
    "": dict(num_micro_ticks=2),
    "_backward_pass": dict(num_micro_ticks=2, backward_pass=True),
}


def _problem(options: dict, population: int, steps: int = 100):
    spec = model.build_network(ModelConfig(**options), (28, 28, 1), 10)
    gen = torch.Generator().manual_seed(0)
    params = model.init_params(spec, gen)
    x = torch.randn(population, steps, 1, 28, 28, 1, generator=gen)
    labels = torch.randint(0, 10, (population, steps, 1), generator=gen)
    y = torch.nn.functional.one_hot(labels, 10).float()
    return spec, params, x, y, gen


def es_updates_per_s(options: dict, repeats: int) -> float:
    """Best of `repeats` timed ES evaluations of 16 antithetic pairs."""
    pairs = 16
    spec, params, x, y, gen = _problem(options, 2 * pairs)
    members = es.perturb(params, es.sample_noise(params, pairs, gen), 0.05)
    passes = 2 if options.get("backward_pass") else 1
    updates = 2 * pairs * 100 * 784 * 10 * options["num_micro_ticks"] * passes
    best = float("inf")
    for _ in range(repeats + 1):  # the first run warms up (kernel build, caches)
        start = time.perf_counter()
        run_members(spec, members, x, y, gen, repeat=2)
        best = min(best, time.perf_counter() - start)
    return updates / best


def backprop_step(options: dict, chunk: int = 0) -> None:
    """One meta-gradient step, 4 trajectories x 100 steps (run in a subprocess)."""
    spec, params, x, y, gen = _problem(options, 4)
    segment = OptimizerConfig().checkpoint_segment
    backprop.meta_gradient(spec, params, x, y, gen, "mean", segment, chunk=chunk)


def backprop_peak_mb(variant: str, chunk: int = 0) -> float:
    code = (
        "import resource, bench.throughput as b; "
        f"b.backprop_step(b.VARIANTS[{variant!r}], {chunk}); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON line")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, float | int] = {"threads": torch.get_num_threads()}
    for suffix, options in VARIANTS.items():
        figures[f"es_forward_updates_per_s{suffix}"] = es_updates_per_s(
            options, args.repeats
        )
        figures[f"backprop_peak_mb{suffix}"] = backprop_peak_mb(suffix)
        figures[f"backprop_peak_mb{suffix}_all_at_once"] = backprop_peak_mb(suffix, 4)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures["this_process_peak_mb"] = base
    if args.json:
        print(json.dumps(figures))
        return
    for name, value in figures.items():
        print(f"{name:<40}{value:>14.4g}")


if __name__ == "__main__":
    main()
