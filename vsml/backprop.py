"""Meta-gradients by backpropagation through whole episodes (DESIGN.md 3.3).

The episode is cut into segments of `segment` steps; only the learner state
at segment boundaries is kept, and each segment's activations are recomputed
during the backward pass (gradient checkpointing over time), so memory grows
with T / segment + segment rather than with T.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from vsml import model
from vsml.model import NetworkSpec, Params
from vsml.objective import expand_params, meta_loss, step_losses


def _segment(
    spec: NetworkSpec,
    names: list[str],
    num_params: int,
    x: Tensor,
    y: Tensor,
    *tensors: Tensor,
) -> tuple[Tensor, ...]:
    """Run steps x[:, t] for a segment; returns (new state..., logits)."""
    params = dict(zip(names, tensors[:num_params], strict=True))
    state = model.State.from_tensors(list(tensors[num_params:]))
    logits = model.run_episode(spec, params, x, y, state)
    return (*state.tensors(), logits)


def meta_gradient(
    spec: NetworkSpec,
    params: Params,
    x: Tensor,
    y: Tensor,
    generator: torch.Generator,
    loss_kind: str,
    segment: int,
    state: model.State | None = None,
    chunk: int = 0,
) -> tuple[Params, Tensor]:
    """Gradient of the mean meta-loss over P trajectories w.r.t. theta.

    Trajectories are independent given theta, so their gradients are summed
    over chunks of `chunk` trajectories; 0 picks one at a time on a CPU and
    all at once elsewhere. On a CPU, glibc keeps much of a big batch's freed
    activations in its heap: one at a time, the peak of bench/throughput.py's
    step fell from 1.49 GB to 0.58 GB, in the same time on an idle machine.

    Args:
        params: one meta-parameter set, [1, ...].
        x: [P, T, N, H, W, C] episodes; y: [P, T, N, K] one-hot labels.
        state: initial states of the P trajectories; drawn if None.

    Returns:
        Gradients shaped like params, and the logits [P, T, N, K] (detached).
    """
    P, N = x.shape[0], x.shape[2]
    if state is None:
        state = model.initial_state(spec, P, N, generator, device=x.device)
    if chunk <= 0:
        chunk = 1 if x.device.type == "cpu" else P
    total: Params = {k: torch.zeros_like(v) for k, v in params.items()}
    pieces = []
    for start in range(0, P, chunk):
        part = slice(start, start + chunk)
        grads, logits = _chunk_gradient(
            spec, params, x[part], y[part], loss_kind, segment, state.members(part)
        )
        # The mean over all P weights each chunk's mean by its share.
        share = logits.shape[0] / P
        for name, grad in grads.items():
            total[name] += grad * share
        pieces.append(logits)
    return total, torch.cat(pieces)


def _chunk_gradient(
    spec: NetworkSpec,
    params: Params,
    x: Tensor,
    y: Tensor,
    loss_kind: str,
    segment: int,
    state: model.State,
) -> tuple[Params, Tensor]:
    """Gradient of the mean meta-loss of these trajectories, and their logits."""
    P, T = x.shape[:2]
    names = list(params)
    leaves = [params[n].detach().requires_grad_() for n in names]
    members = expand_params(dict(zip(names, leaves, strict=True)), P)
    tensors = state.tensors()
    pieces = []
    for start in range(0, T, segment):
        part = slice(start, start + segment)
        *tensors, logits = checkpoint(
            _segment,
            spec, names, len(names), x[:, part], y[:, part],
            *members.values(), *tensors,
            use_reentrant=False,
        )  # fmt: skip
        pieces.append(logits)
    logits = torch.cat(pieces, dim=1)
    loss = meta_loss(step_losses(logits, y), loss_kind).mean()
    # A one-layer learner never uses its backward read-out: its gradient is 0.
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    grads = [
        torch.zeros_like(p) if g is None else g
        for p, g in zip(leaves, grads, strict=True)
    ]
    return dict(zip(names, grads, strict=True)), logits.detach()
