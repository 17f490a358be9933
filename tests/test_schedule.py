"""Learning-rate schedules: their values and exact resume of a decaying run."""

import math

import pytest
import torch

from tests.test_training import Recorder
from vsml.optim import Adam, constant_schedule, cosine_schedule
from vsml.training import Trainer


def test_cosine_starts_halves_and_ends_at_its_fraction():
    """Cosine decay: full at step 0, midway at half, final fraction at the end."""
    schedule = cosine_schedule(0.02, decay_steps=100, final_fraction=0.1)
    assert schedule(0) == pytest.approx(0.02)
    assert schedule(50) == pytest.approx((0.02 + 0.002) / 2)
    assert schedule(100) == pytest.approx(0.002)
    assert schedule(1000) == pytest.approx(0.002)  # flat after the decay


def test_cosine_decreases_monotonically():
    """Every step of a cosine schedule is at most the one before."""
    schedule = cosine_schedule(1.0, decay_steps=37, final_fraction=0.0)
    values = [schedule(count) for count in range(40)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert values[-1] == 0.0


def test_constant_schedule_is_constant():
    """The constant schedule gives its value at every step."""
    schedule = constant_schedule(0.025)
    assert {schedule(count) for count in (0, 1, 10**6)} == {0.025}


def test_adam_takes_the_scheduled_step_size():
    """Adam's first step moves each weight by the schedule's value at count 0."""
    adam = Adam(cosine_schedule(0.5, decay_steps=2, final_fraction=0.0))
    params = {"w": torch.zeros(3)}
    grads = {"w": torch.tensor([1.0, -2.0, 3.0])}
    assert adam.current_learning_rate() == 0.5
    params = adam.step(params, grads)
    # Adam's first step is lr * sign(grad) (up to eps).
    assert torch.allclose(params["w"], torch.tensor([-0.5, 0.5, -0.5]))
    assert adam.current_learning_rate() == pytest.approx(0.25)


def test_trainer_reports_the_cosine_learning_rate(tiny_config):
    """A cosine run logs the decayed step size of each iteration."""
    config = tiny_config(
        "optimizer.learning_rate_schedule=cosine",
        "optimizer.learning_rate=0.04",
        "optimizer.final_learning_rate_fraction=0.25",
        "training.num_iterations=4",
    )
    recorder = Recorder()
    Trainer(config, recorder).run()
    rates = [m["learning_rate"] for _, m in recorder.metrics]
    expected = [0.01 + 0.03 * (1 + math.cos(math.pi * i / 4)) / 2 for i in range(4)]
    assert rates == pytest.approx(expected)


def test_resume_continues_the_schedule_exactly(tiny_config):
    """A cosine run stopped at 2 of 5 iterations and resumed ends identical."""
    overrides = (
        "optimizer.learning_rate_schedule=cosine",
        "optimizer.final_learning_rate_fraction=0.0",
        "training.num_iterations=5",
    )
    whole = Trainer(tiny_config(*overrides))
    whole.run()

    class StopAfterTwo(Recorder):
        def should_stop(self):
            return len(self.metrics) >= 2

    part = StopAfterTwo()
    Trainer(tiny_config(*overrides), part).run()
    checkpoint = part.checkpoints[-1][1]
    assert checkpoint["iteration"] == 2
    rest = Trainer(tiny_config(*overrides), checkpoint=checkpoint)
    assert rest.adam.current_learning_rate() == pytest.approx(
        whole.config.optimizer.learning_rate * (1 + math.cos(math.pi * 2 / 5)) / 2
    )
    rest.run()
    for name, value in whole.params.items():
        assert torch.equal(value, rest.params[name]), name
