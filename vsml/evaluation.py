"""Meta-test: learning curves of the meta-learned learner and of baselines.

DESIGN.md 3.6: theta fixed, fresh test-split episodes of every evaluation
dataset; accuracy and loss per inner step, their mean over the episode and
their value at the end. The same episodes go through online SGD and Adam
(`vsml.baselines`), so every evaluation shows VSML beside hand-designed
learning. Test episodes are drawn from their own generator, seeded by the
experiment seed, so each meta-test sees the same episodes and training's
random stream is untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vsml import data
from vsml.baselines import evaluate_baselines
from vsml.config import ExperimentConfig
from vsml.kernels import single_threaded_torch
from vsml.model import NetworkSpec, Params
from vsml.objective import expand_params, run_members, step_accuracy, step_losses

EVAL_SEED_OFFSET = 1_000_003  # keeps test episodes apart from training's stream
EVAL_CHUNK = 4  # test episodes run at once; a stop request waits for one group


class MetaTestInterruptedError(Exception):
    """A meta-test abandoned because its run was asked to stop."""


@dataclass(frozen=True)
class LearningCurve:
    """Accuracy and loss per inner step, averaged over the test episodes."""

    dataset: str
    learner: str  # "vsml", "sgd" or "adam"
    accuracy: Tensor  # [T]
    loss: Tensor  # [T]

    @property
    def mean_accuracy(self) -> float:
        return float(self.accuracy.mean())

    @property
    def last100_accuracy(self) -> float:
        """Mean accuracy over the last 100 inner steps (or all, if fewer)."""
        return float(self.accuracy[-100:].mean())

    @property
    def final_accuracy(self) -> float:
        return float(self.accuracy[-1])

    @property
    def mean_loss(self) -> float:
        return float(self.loss.mean())

    def summary(self) -> dict[str, float | str]:
        return {
            "dataset": self.dataset,
            "learner": self.learner,
            "mean_accuracy": self.mean_accuracy,
            "last100_accuracy": self.last100_accuracy,
            "final_accuracy": self.final_accuracy,
            "mean_loss": self.mean_loss,
        }


class MetaTester:
    """Evaluates meta-parameters on fixed test episodes; caches the baselines."""

    def __init__(
        self,
        config: ExperimentConfig,
        spec: NetworkSpec,
        device: torch.device | str = "cpu",
    ) -> None:
        self.config, self.spec, self.device = config, spec, torch.device(device)
        self._episodes: dict[str, tuple[Tensor, Tensor]] = {}
        self._baselines: dict[str, list[LearningCurve]] = {}

    def episodes(self, index: int) -> tuple[str, Tensor, Tensor]:
        """(label, x, y) of evaluation dataset `index`, sampled once."""
        ev, cfg = self.config.evaluation, self.config
        dataset = ev.datasets[index]
        label = data.dataset_label(dataset)
        if label not in self._episodes:
            images = data.load_split(dataset, cfg.data, "test")
            gen = torch.Generator().manual_seed(cfg.seed + EVAL_SEED_OFFSET + index)
            x, y = data.sample_episodes(
                images, ev.num_episodes, ev.episode_length, ev.batch_size,
                cfg.data.num_classes, gen,
            )  # fmt: skip
            self._episodes[label] = (x.to(self.device), y.to(self.device))
        return label, *self._episodes[label]

    def baselines(self, label: str, x: Tensor, y: Tensor) -> list[LearningCurve]:
        if label not in self._baselines:
            gen = torch.Generator().manual_seed(self.config.seed + EVAL_SEED_OFFSET)
            with single_threaded_torch(x.device):
                curves = evaluate_baselines(self.config.evaluation, x, y, gen)
            self._baselines[label] = [
                LearningCurve(label, kind, acc.mean(0), loss.mean(0))
                for kind, (acc, loss) in curves.items()
            ]
        return self._baselines[label]

    def vsml_curve(
        self,
        params: Params,
        label: str,
        x: Tensor,
        y: Tensor,
        should_stop: Callable[[], bool] | None = None,
    ) -> LearningCurve:
        """The learner with theta fixed on the test episodes x [E, T, N, ...]."""
        E = x.shape[0]
        gen = torch.Generator().manual_seed(self.config.seed + EVAL_SEED_OFFSET)
        members = expand_params({k: v.detach() for k, v in params.items()}, E)

        def check() -> None:
            if should_stop is not None and should_stop():
                raise MetaTestInterruptedError

        # Episodes run a few at a time so that a stop request is seen quickly.
        logits = run_members(
            self.spec, members, x, y, gen, chunk=EVAL_CHUNK, before_chunk=check
        )
        accuracy = step_accuracy(logits, y).mean(0)
        loss = step_losses(logits, y).mean(0)
        return LearningCurve(label, "vsml", accuracy, loss)

    def run(
        self,
        params: Params,
        with_baselines: bool = True,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[LearningCurve]:
        """Curves of VSML (and the baselines) on every evaluation dataset.

        `should_stop` is asked between small groups of episodes; True raises
        MetaTestInterruptedError, so a cancel does not wait for the meta-test.
        """
        curves = []
        for index in range(len(self.config.evaluation.datasets)):
            label, x, y = self.episodes(index)
            curves.append(self.vsml_curve(params, label, x, y, should_stop))
            if with_baselines:
                curves.extend(self.baselines(label, x, y))
        return curves
