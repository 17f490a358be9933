"""Online SGD / Adam baselines: shapes, a per-episode reference, and learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn

from vsml.baselines import (
    BASELINE_KINDS,
    evaluate_baselines,
    init_mlp,
    online_learning_curve,
)
from vsml.config import EvaluationConfig

LEARNING_RATES = {"sgd": 0.1, "adam": 0.01}


def random_episodes(
    num_episodes: int = 3,
    num_steps: int = 20,
    batch_size: int = 4,
    num_classes: int = 5,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """Gaussian 4x4x1 images with random one-hot labels, [E, T, B, ...]."""
    generator = torch.Generator().manual_seed(1)
    shape = (num_episodes, num_steps, batch_size)
    x = torch.randn(*shape, 4, 4, 1, generator=generator, dtype=dtype)
    labels = torch.randint(num_classes, shape, generator=generator)
    return x, F.one_hot(labels, num_classes).to(dtype)


def reference_model(weights: list[Tensor], episode: int) -> nn.Module:
    """An nn.Linear (or Linear-ReLU-Linear) holding one episode's initial weights."""
    layers = []
    for weight, bias in zip(weights[::2], weights[1::2], strict=True):
        fan_in, fan_out = weight.shape[1:]
        layer = nn.Linear(fan_in, fan_out, dtype=weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(weight[episode].T)
            layer.bias.copy_(bias[episode])
        layers.append(layer)
    return (
        nn.Sequential(layers[0], nn.ReLU(), layers[1]) if len(layers) > 1 else layers[0]
    )


def reference_curve(
    kind: str, x: Tensor, y: Tensor, hidden: int, seed: int
) -> tuple[Tensor, Tensor]:
    """One nn.Module and torch.optim optimiser per episode, looped naively."""
    num_episodes, num_steps = x.shape[:2]
    inputs = x.flatten(start_dim=3)  # [E, T, B, D]
    generator = torch.Generator().manual_seed(seed)
    weights = init_mlp(
        num_episodes, inputs.shape[-1], hidden, y.shape[-1], generator, x.dtype
    )
    accuracy = torch.empty(num_episodes, num_steps, dtype=x.dtype)
    loss = torch.empty_like(accuracy)
    for episode in range(num_episodes):
        model = reference_model(weights, episode)
        optimizer_class = torch.optim.SGD if kind == "sgd" else torch.optim.Adam
        optimizer = optimizer_class(model.parameters(), lr=LEARNING_RATES[kind])
        for step in range(num_steps):
            logits = model(inputs[episode, step])
            labels = y[episode, step].argmax(dim=-1)
            step_loss = F.cross_entropy(logits, labels)
            loss[episode, step] = step_loss.detach()
            hits = logits.argmax(dim=-1) == labels
            accuracy[episode, step] = hits.to(x.dtype).mean()
            optimizer.zero_grad()
            step_loss.backward()
            optimizer.step()
    return accuracy, loss


def digits_episodes(num_episodes: int, num_steps: int) -> tuple[Tensor, Tensor]:
    """Standardised scikit-learn digits as [E, T, 1, 8, 8, 1] and one-hot labels."""
    digits = load_digits()
    images = torch.tensor(digits.data, dtype=torch.float32)  # [N, 64]
    std = images.std(dim=0)
    images = (images - images.mean(dim=0)) / torch.where(std > 0, std, 1.0)
    labels = torch.tensor(digits.target)
    generator = torch.Generator().manual_seed(2)
    order = torch.stack(
        [torch.randperm(len(labels), generator=generator) for _ in range(num_episodes)]
    )[:, :num_steps]  # [E, T]
    x = images[order].reshape(num_episodes, num_steps, 1, 8, 8, 1)
    y = F.one_hot(labels[order], 10).float().unsqueeze(2)  # [E, T, 1, 10]
    return x, y


@pytest.mark.parametrize("hidden", [0, 8])
@pytest.mark.parametrize("kind", BASELINE_KINDS)
def test_curves_have_one_value_per_episode_and_step(kind: str, hidden: int) -> None:
    """Accuracy and loss are [E, T], accuracy a fraction of the batch."""
    x, y = random_episodes(num_episodes=3, num_steps=7, dtype=torch.float32)
    accuracy, loss = online_learning_curve(
        kind, x, y, 0.01, hidden, torch.Generator().manual_seed(0)
    )
    assert accuracy.shape == loss.shape == (3, 7)
    assert ((accuracy >= 0) & (accuracy <= 1)).all()
    assert torch.isfinite(loss).all()


@pytest.mark.parametrize("hidden", [0, 16])
@pytest.mark.parametrize("kind", BASELINE_KINDS)
def test_batched_learner_matches_per_episode_reference(kind: str, hidden: int) -> None:
    """The batched learner equals independent nn.Linear + torch.optim loops."""
    x, y = random_episodes()
    accuracy, loss = online_learning_curve(
        kind,
        x,
        y,
        LEARNING_RATES[kind],
        hidden,
        torch.Generator().manual_seed(3),
        dtype=torch.float64,
    )
    expected_accuracy, expected_loss = reference_curve(kind, x, y, hidden, seed=3)
    torch.testing.assert_close(accuracy, expected_accuracy)
    torch.testing.assert_close(loss, expected_loss)


def test_prediction_precedes_update() -> None:
    """The loss at step 0 is the loss of the initial weights."""
    x, y = random_episodes()
    _, loss = online_learning_curve(
        "sgd", x, y, 1.0, 16, torch.Generator().manual_seed(4), dtype=torch.float64
    )
    w1, b1, w2, b2 = init_mlp(3, 16, 16, 5, torch.Generator().manual_seed(4), x.dtype)
    inputs = x[:, 0].flatten(start_dim=2)  # [E, B, D]
    logits = (inputs @ w1 + b1.unsqueeze(1)).relu() @ w2 + b2.unsqueeze(1)
    initial_loss = -(y[:, 0] * logits.log_softmax(dim=-1)).sum(dim=-1).mean(dim=-1)
    torch.testing.assert_close(loss[:, 0], initial_loss)


def test_same_seed_gives_same_curves() -> None:
    """Two runs from equally seeded generators give identical curves."""
    x, y = random_episodes(dtype=torch.float32)
    first, second = (
        online_learning_curve("adam", x, y, 0.01, 8, torch.Generator().manual_seed(5))
        for _ in range(2)
    )
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_online_sgd_learns_digits() -> None:
    """Online SGD on digits is well above chance in the last 100 of 300 steps."""
    x, y = digits_episodes(num_episodes=4, num_steps=300)
    accuracy, _ = online_learning_curve(
        "sgd", x, y, 0.1, 128, torch.Generator().manual_seed(6)
    )
    assert accuracy[:, -100:].mean() > 0.5


def test_unknown_kind_is_rejected() -> None:
    """An unknown optimiser name raises a ValueError that names it."""
    x, y = random_episodes()
    with pytest.raises(ValueError, match="'rmsprop'"):
        online_learning_curve("rmsprop", x, y, 0.1, 8, torch.Generator())  # type: ignore[arg-type]


def test_mismatched_labels_are_rejected() -> None:
    """Labels whose [E, T, B] differ from the inputs' raise a ValueError."""
    x, y = random_episodes()
    with pytest.raises(ValueError, match="y has shape"):
        online_learning_curve("sgd", x, y[:, :-1], 0.1, 8, torch.Generator())


def test_evaluate_baselines_runs_every_configured_kind() -> None:
    """evaluate_baselines returns one pair of curves per configured baseline."""
    x, y = random_episodes(num_steps=5, dtype=torch.float32)
    evaluation = EvaluationConfig(baselines=["adam"], baseline_hidden=4)
    curves = evaluate_baselines(evaluation, x, y, torch.Generator().manual_seed(7))
    assert list(curves) == ["adam"]
    assert curves["adam"][0].shape == (3, 5)
