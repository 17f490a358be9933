"""Scoring an episode of online learning: per-step loss, accuracy, meta-loss.

DESIGN.md 3.3: the meta-loss is the mean cross-entropy of all predictions of
an episode (rewards learning fast) or that of the last prediction only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from vsml import kernels, model
from vsml.model import NetworkSpec, Params


def step_losses(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy per member and step, averaged over the batch: [P, T]."""
    return -(torch.log_softmax(logits, dim=-1) * y).sum(-1).mean(-1)


def step_accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """Fraction of the batch predicted right, per member and step: [P, T]."""
    return (logits.argmax(-1) == y.argmax(-1)).float().mean(-1)


def meta_loss(losses: Tensor, kind: str) -> Tensor:
    """[P, T] step losses -> [P] meta-loss ("mean" over the episode, or "last")."""
    return losses.mean(dim=1) if kind == "mean" else losses[:, -1]


@contextlib.contextmanager
def _unchanged(device: torch.device) -> Iterator[None]:
    yield


def expand_params(params: Params, population: int) -> Params:
    """Broadcast one meta-parameter set ([1, ...]) to `population` members."""
    return {k: v.expand(population, *v.shape[1:]) for k, v in params.items()}


@torch.no_grad()
def run_members(
    spec: NetworkSpec,
    params: Params,
    x: Tensor,
    y: Tensor,
    generator: torch.Generator,
    repeat: int = 1,
    chunk: int = 0,
    before_chunk: Callable[[], None] | None = None,
    state: model.State | None = None,
) -> Tensor:
    """Logits [P, T, N, K] of P members on their episodes, without gradients.

    Members run in chunks of `chunk` (0: all at once) so that the working set
    stays cache-sized. Initial states are drawn for P / repeat members and
    shared by each run of `repeat` (antithetic pairs share theirs).
    `before_chunk` is called before each chunk (it may raise to abandon).
    `state` replaces the drawn initial states (a process's slice of them).
    """
    P, N = x.shape[0], x.shape[2]
    if state is None:
        state = model.initial_state(spec, P, N, generator, repeat, x.device)
    size = P if chunk <= 0 else max(repeat, chunk - chunk % repeat)
    logits = []
    # With the native kernel the remaining PyTorch ops are small (see kernels).
    threads = kernels.single_threaded_torch if kernels.available() else _unchanged
    with threads(x.device):
        for start in range(0, P, size):
            if before_chunk is not None:
                before_chunk()
            part = slice(start, start + size)
            sub_state = state.members(part)
            sub_params = {k: v[part] for k, v in params.items()}
            logits.append(
                model.run_episode(spec, sub_params, x[part], y[part], sub_state)
            )
    return torch.cat(logits)
