"""Adam with optional global-norm clipping, on dicts of tensors (DESIGN.md 3.3).

Written out rather than taken from torch.optim so that its whole state is a
plain dict that checkpoints and restores exactly, and so that ES (which has
no autograd graph) and backprop share one update rule. The step size may be
a schedule of the step count; the count is part of the state, so a resumed
run continues the schedule exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

Tensors = dict[str, Tensor]
Schedule = Callable[[int], float]  # steps taken so far -> step size of the next


def constant_schedule(value: float) -> Schedule:
    """The same step size at every step."""
    return lambda count: value


def cosine_schedule(
    init_value: float, decay_steps: int, final_fraction: float = 0.0
) -> Schedule:
    """Cosine decay from init_value to final_fraction * init_value.

    Half a cosine period over `decay_steps` steps, then flat at the final
    value (SGDR without restarts; Loshchilov and Hutter 2017).
    """
    steps = max(decay_steps, 1)
    final = final_fraction * init_value

    def schedule(count: int) -> float:
        progress = min(count, steps) / steps  # 0 at the first step, 1 at the end
        return final + (init_value - final) * 0.5 * (1 + math.cos(math.pi * progress))

    return schedule


def global_norm(tensors: Tensors) -> Tensor:
    return torch.sqrt(sum((t.double() ** 2).sum() for t in tensors.values()))


def clip_by_global_norm(grads: Tensors, max_norm: float | None) -> Tensors:
    """Scale all gradients down together if their joint norm exceeds max_norm."""
    if max_norm is None:
        return grads
    norm = float(global_norm(grads))
    if norm <= max_norm:
        return grads
    return {k: g * (max_norm / norm) for k, g in grads.items()}


@dataclass
class Adam:
    """Adam (Kingma and Ba 2015) over named tensors; `step` returns new values.

    `learning_rate` is a number or a Schedule of the steps taken so far.
    """

    learning_rate: float | Schedule
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    count: int = 0
    m: Tensors = field(default_factory=dict)
    v: Tensors = field(default_factory=dict)

    def step(self, params: Tensors, grads: Tensors) -> Tensors:
        """One descent step on `grads`; params are not modified in place."""
        learning_rate = self.current_learning_rate()
        self.count += 1
        new = {}
        for name, grad in grads.items():
            m = self.m.get(name, torch.zeros_like(grad))
            v = self.v.get(name, torch.zeros_like(grad))
            m = self.beta1 * m + (1 - self.beta1) * grad
            v = self.beta2 * v + (1 - self.beta2) * grad * grad
            self.m[name], self.v[name] = m, v
            m_hat = m / (1 - self.beta1**self.count)
            v_hat = v / (1 - self.beta2**self.count)
            step = learning_rate * m_hat / (v_hat.sqrt() + self.eps)
            new[name] = params[name] - step
        return new

    def current_learning_rate(self) -> float:
        """The step size the next `step` will take."""
        if callable(self.learning_rate):
            return float(self.learning_rate(self.count))
        return float(self.learning_rate)

    def state_dict(self) -> dict:
        return {"count": self.count, "m": dict(self.m), "v": dict(self.v)}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])
        self.m, self.v = dict(state["m"]), dict(state["v"])
