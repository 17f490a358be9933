"""Meta-learning on real data: a VSML learner that learns to learn digits."""

from vsml.config import load_config
from vsml.training import Callbacks, Trainer


class Curves(Callbacks):
    def __init__(self):
        self.tests = {}

    def on_meta_test(self, iteration, curves):
        self.tests[iteration] = {c.learner: c.mean_accuracy for c in curves}


def test_es_meta_training_learns_to_learn_digits():
    """ES meta-training on scikit-learn digits turns a chance-level learner into
    one that learns online about as well as SGD (real data, about a minute)."""
    config = load_config(
        overrides=[
            "data.train=[{name: digits}]",
            "data.image_size=[8,8]",
            "model.aggregation=sum",
            "model.backward_pass=true",
            "model.num_micro_ticks=1",
            "optimizer.population_size=16",
            "training.episode_length=50",
            "training.num_iterations=160",
            "evaluation.datasets=[{name: digits}]",
            "evaluation.every=1000",
            "evaluation.episode_length=200",
            "evaluation.num_episodes=8",
        ]
    )
    curves = Curves()
    Trainer(config, curves).run()
    before, after = curves.tests[0], curves.tests[160]
    assert before["vsml"] < 0.15
    assert after["vsml"] > 0.45
    assert after["vsml"] > 0.75 * after["sgd"]
