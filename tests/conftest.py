"""Shared fixtures: tiny experiment configs on real (bundled) data."""

import pytest

from vsml.config import load_config

TINY = [
    "data.train=[{name: digits}]",
    "data.image_size=[4,4]",
    "model.state_size=8",
    "model.message_size=4",
    "model.num_micro_ticks=1",
    "model.backward_pass=true",
    "model.aggregation=sum",
    "training.episode_length=12",
    "training.log_every=1",
    "optimizer.population_size=3",
    "evaluation.datasets=[{name: digits}]",
    "evaluation.num_episodes=2",
    "evaluation.episode_length=20",
    "evaluation.every=1000",
]


@pytest.fixture
def tiny_config():
    """A config small enough to meta-train for a few iterations in a second."""

    def make(*overrides: str):
        return load_config(overrides=[*TINY, *overrides])

    return make
