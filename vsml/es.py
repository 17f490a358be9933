"""Antithetic evolution strategies for meta-training (DESIGN.md 3.3).

theta +/- sigma * eps for P pairs, both signs of a pair on the same episode;
gradient estimate: mean over pairs of (L+ - L-) / (2 sigma) * eps.

The pair axis is explicit and shardable: every process draws the noise of all
pairs from the same generator (it is small), evaluates its own slice, and
`estimate_gradient` returns that slice's share of the mean, so that summing
the shares over processes (an all-reduce) gives the full estimate.
"""

from __future__ import annotations

import torch
from torch import Tensor

Tensors = dict[str, Tensor]


def sample_noise(params: Tensors, pairs: int, generator: torch.Generator) -> Tensors:
    """eps ~ N(0, I) of shape [pairs, ...] for every meta-parameter ([1, ...]).

    Drawn on the CPU generator (the same stream on any device), then moved.
    """
    return {
        name: torch.randn(pairs, *p.shape[1:], generator=generator).to(p)
        for name, p in params.items()
    }


def perturb(params: Tensors, noise: Tensors, sigma: float) -> Tensors:
    """Members [2 * pairs, ...]: member 2i is theta + sigma eps_i, 2i+1 theta - ...."""
    members = {}
    for name, eps in noise.items():
        signed = torch.stack([eps, -eps], dim=1)  # [pairs, 2, ...]
        members[name] = params[name] + sigma * signed.flatten(0, 1)
    return members


def estimate_gradient(
    noise: Tensors, losses: Tensor, sigma: float, total_pairs: int
) -> Tensors:
    """This slice's share of the ES gradient estimate.

    Args:
        noise: eps of the pairs evaluated here, [pairs, ...].
        losses: their meta-losses, [2 * pairs] in `perturb`'s order.
        total_pairs: pairs over all processes (the mean's denominator).

    Returns:
        Gradient estimates shaped like the parameters, [1, ...].
    """
    plus, minus = losses[0::2], losses[1::2]
    weights = (plus - minus) / (2 * sigma * total_pairs)  # [pairs]
    return {
        name: torch.tensordot(weights.to(eps.dtype), eps, dims=1).unsqueeze(0)
        for name, eps in noise.items()
    }


def centered_ranks(losses: Tensor) -> Tensor:
    """Fitness shaping: losses -> their ranks scaled to [-0.5, 0.5].

    Makes the estimate invariant to the scale of the meta-loss and robust to
    outliers (Salimans et al. 2017). Ranks need every member's loss, so a
    sharded population must gather its losses first (issue 4).
    """
    ranks = torch.empty_like(losses)
    ranks[losses.argsort()] = torch.arange(len(losses), dtype=losses.dtype)
    return ranks / max(len(losses) - 1, 1) - 0.5
