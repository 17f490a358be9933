"""Hand-designed online learners: an MLP trained online by SGD or Adam.

The comparison learners of DESIGN.md 3.5 (last bullet), run under the same
online protocol as the VSML learner: at every step the learner first predicts
the labels of the new batch, that prediction is scored (accuracy and
cross-entropy), and only then is ONE optimiser step taken on the mean
cross-entropy of that batch. Kirsch and Schmidhuber (2021) compare the VSML
learner's meta-test learning curves against exactly this online SGD / Adam
baseline.

Many independent episodes run at once. Every weight carries a leading episode
axis E, products are batched matrix multiplies, and the backward pass of the
small MLP is written out by hand (faster than autograd for these tiny per-step
graphs). SGD and Adam act elementwise, so one optimiser over the batched
tensors is exactly E independent optimisers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import Tensor

from vsml.config import EvaluationConfig

BaselineKind = Literal["sgd", "adam"]
BASELINE_KINDS: tuple[str, ...] = get_args(BaselineKind)


def init_mlp(
    num_episodes: int,
    input_size: int,
    hidden: int,
    num_classes: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> list[Tensor]:
    """Fresh MLP weights for every episode, drawn like `torch.nn.Linear`'s default.

    `nn.Linear` draws weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    Draws happen in float32 on the generator's device, layer by layer, weight
    before bias, so a seed gives the same initial weights in every dtype.

    Args:
        num_episodes: E, independent networks.
        input_size: D, flattened input features.
        hidden: hidden ReLU units; 0 gives a linear model.
        num_classes: K, output logits.
        generator: source of the random draws.
        dtype: dtype of the returned weights.
        device: device of the returned weights (default: the generator's).

    Returns:
        [W_1, b_1, W_2, b_2] (or [W_1, b_1] when hidden is 0), W_l of shape
        [E, fan_in, fan_out] (the transpose of `nn.Linear.weight`), b_l of
        shape [E, fan_out].
    """
    sizes = [input_size, *([hidden] if hidden > 0 else []), num_classes]
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        bound = fan_in**-0.5
        for shape in ((num_episodes, fan_in, fan_out), (num_episodes, fan_out)):
            uniform = torch.rand(shape, generator=generator, device=generator.device)
            params.append(((2 * uniform - 1) * bound).to(device=device, dtype=dtype))
    return params


def _forward(params: list[Tensor], inputs: Tensor) -> list[Tensor]:
    """Activations [inputs, hidden (after ReLU)..., logits], each [E, B, n]."""
    num_layers = len(params) // 2
    activations = [inputs]
    for layer in range(num_layers):
        weight, bias = params[2 * layer], params[2 * layer + 1]
        # bias [E, n] -> [E, 1, n], broadcast over the batch
        out = torch.baddbmm(bias.unsqueeze(1), activations[-1], weight)
        activations.append(out.relu() if layer < num_layers - 1 else out)
    return activations


def _backward(params: list[Tensor], activations: list[Tensor], delta: Tensor) -> None:
    """Write the loss gradient into every param's preallocated `.grad`.

    Args:
        params: [W_1, b_1, ...] as from `init_mlp`, each with a `.grad` buffer.
        activations: as from `_forward`.
        delta: gradient of the loss w.r.t. the logits, [E, B, K].
    """
    num_layers = len(params) // 2
    for layer in reversed(range(num_layers)):
        weight, bias = params[2 * layer], params[2 * layer + 1]
        layer_input = activations[layer].transpose(1, 2)  # [E, fan_in, B]

        # Into the buffers: a fresh [E, D, hidden] tensor per step costs more
        # (page faults) than the arithmetic; with a batch of one the weight
        # gradient is an outer product, which `mul` computes faster than `bmm`.
        matmul = torch.mul if layer_input.shape[-1] == 1 else torch.bmm
        matmul(layer_input, delta, out=weight.grad)
        torch.sum(delta, dim=1, out=bias.grad)

        # delta becomes the gradient w.r.t. the previous pre-activation: back
        # through the weights, then through the ReLU (h > 0 iff pre > 0)
        if layer > 0:
            delta = delta @ weight.transpose(1, 2)
            delta = delta * (activations[layer] > 0)


def _make_optimizer(
    kind: str, params: list[Tensor], learning_rate: float
) -> Callable[[], object]:
    """A function that takes one SGD or Adam step on params from their `.grad`.

    SGD is a single in-place update per tensor (`torch.optim.SGD` costs about
    twice as much per step here); Adam is PyTorch's, with its defaults and the
    fused kernel where one exists (about twice as fast as the plain one on CPU).
    """
    if kind == "sgd":

        def sgd_step() -> None:
            for param in params:
                param.sub_(param.grad, alpha=learning_rate)

        return sgd_step
    fused = params[0].device.type in ("cpu", "cuda") or None
    return torch.optim.Adam(params, lr=learning_rate, fused=fused).step


def _check_inputs(kind: str, x: Tensor, y: Tensor, hidden: int) -> None:
    """Raise ValueError naming the argument that cannot be used."""
    if kind not in BASELINE_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {list(BASELINE_KINDS)}")
    if hidden < 0:
        raise ValueError(f"hidden={hidden} must be >= 0 (0 is a linear model)")
    if x.dim() < 4:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected [E, T, B, *features]")
    if y.dim() != 4 or y.shape[:3] != x.shape[:3]:
        raise ValueError(
            f"y has shape {tuple(y.shape)}; expected one-hot [E, T, B, K] with "
            f"[E, T, B] = {list(x.shape[:3])} as in x"
        )


def online_learning_curve(
    kind: BaselineKind,
    x: Tensor,
    y: Tensor,
    learning_rate: float,
    hidden: int,
    generator: torch.Generator,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Learning curves of an MLP trained online by SGD or Adam, one per episode.

    Every episode gets its own freshly initialised MLP (`init_mlp`). At step t
    it predicts y_t from x_t; that prediction is scored; then one optimiser
    step is taken on the batch's mean cross-entropy.

    Args:
        kind: "sgd" or "adam" (PyTorch's defaults besides the learning rate).
        x: inputs [E, T, B, H, W, C] (any trailing feature shape works).
        y: one-hot labels [E, T, B, K].
        learning_rate: optimiser step size.
        hidden: hidden ReLU units; 0 gives a linear model.
        generator: source of the initial weights.
        dtype: compute dtype (default: x's dtype).

    Returns:
        accuracy [E, T] (fraction of the batch predicted right) and loss
        [E, T] (mean cross-entropy of the prediction, before the update), in
        the compute dtype.
    """
    _check_inputs(kind, x, y, hidden)
    dtype = dtype or x.dtype
    num_episodes, num_steps, batch_size = x.shape[:3]
    # [E, T, B, H, W, C] -> [E, T, B, D]
    inputs = x.reshape(num_episodes, num_steps, batch_size, -1).to(dtype)
    targets = y.to(dtype)
    params = init_mlp(
        num_episodes,
        inputs.shape[-1],
        hidden,
        targets.shape[-1],
        generator,
        dtype=dtype,
        device=x.device,
    )
    for param in params:
        param.grad = torch.zeros_like(param)
    optimizer_step = _make_optimizer(kind, params, learning_rate)
    accuracy = torch.empty(num_episodes, num_steps, dtype=dtype, device=x.device)
    loss = torch.empty_like(accuracy)

    with torch.no_grad():
        for step in range(num_steps):
            target = targets[:, step]  # [E, B, K]

            # predict and score before learning from this batch
            activations = _forward(params, inputs[:, step])
            log_probs = activations[-1].log_softmax(dim=-1)  # [E, B, K]
            loss[:, step] = -(target * log_probs).sum(dim=-1).mean(dim=-1)
            hits = log_probs.argmax(dim=-1) == target.argmax(dim=-1)
            accuracy[:, step] = hits.to(dtype).mean(dim=-1)

            # one optimiser step on the batch's mean cross-entropy
            probs = log_probs.exp()
            _backward(params, activations, (probs - target) / batch_size)
            optimizer_step()
    return accuracy, loss


def evaluate_baselines(
    evaluation: EvaluationConfig,
    x: Tensor,
    y: Tensor,
    generator: torch.Generator,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Learning curves of every baseline the evaluation config asks for.

    Args:
        evaluation: names the baselines, their learning rates and hidden size.
        x: inputs [E, T, B, H, W, C].
        y: one-hot labels [E, T, B, K].
        generator: source of the initial weights (drawn anew per baseline).

    Returns:
        kind -> (accuracy [E, T], loss [E, T]), as from `online_learning_curve`.
    """
    learning_rates = {
        "sgd": evaluation.sgd_learning_rate,
        "adam": evaluation.adam_learning_rate,
    }
    return {
        kind: online_learning_curve(
            kind, x, y, learning_rates[kind], evaluation.baseline_hidden, generator
        )
        for kind in evaluation.baselines
    }
