"""The meta-training loop (DESIGN.md 3.3), reporting through callbacks.

`Trainer` owns the meta-parameters, the optimiser and the random stream; it
never prints or writes files. Entry points (the CLI, the service's worker)
pass a `Callbacks` object that decides where metrics, meta-test curves and
checkpoints go, and that can ask the loop to stop (a cancel).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from vsml import backprop, data, es, model
from vsml.config import ExperimentConfig, validate
from vsml.distributed import Comm, share
from vsml.evaluation import LearningCurve, MetaTester, MetaTestInterruptedError
from vsml.objective import meta_loss, run_members, step_accuracy, step_losses
from vsml.optim import (
    Adam,
    Schedule,
    clip_by_global_norm,
    constant_schedule,
    cosine_schedule,
    global_norm,
)

CHECKPOINT_FORMAT = 1
DATA_SEED_OFFSET = 7_919  # keeps the episode stream apart from the noise stream


class DivergedError(ValueError):
    """Meta-training produced a non-finite loss or gradient; the parameters
    of the last checkpoint are still finite."""


class Callbacks:
    """Where a training run reports; override what you need."""

    def on_metrics(self, iteration: int, metrics: dict[str, float]) -> None:
        """Meta-training metrics, every `training.log_every` iterations."""

    def on_meta_test(self, iteration: int, curves: list[LearningCurve]) -> None:
        """Learning curves of every evaluation dataset and learner."""

    def on_checkpoint(self, iteration: int, checkpoint: dict[str, Any]) -> None:
        """A complete training state to persist (see `Trainer.checkpoint`)."""

    def should_stop(self) -> bool:
        """Polled once per iteration; True ends the run after a checkpoint."""
        return False


def network_for(config: ExperimentConfig) -> model.NetworkSpec:
    """The learner's layers for the configured input shape and class count."""
    height, width = config.data.image_size
    shape = (height, width, config.data.channels)
    return model.build_network(config.model, shape, config.data.num_classes)


def learning_rate_schedule(config: ExperimentConfig) -> Schedule:
    """Adam's step size by meta-iteration; cosine decays over num_iterations.

    A run stopped early by its time limit never reaches the final value, so
    a decaying preset should be bounded by num_iterations.
    """
    opt = config.optimizer
    if opt.learning_rate_schedule == "cosine":
        return cosine_schedule(
            opt.learning_rate,
            config.training.num_iterations,
            opt.final_learning_rate_fraction,
        )
    return constant_schedule(opt.learning_rate)


def updates_per_step(spec: model.NetworkSpec) -> int:
    """Sub-LSTM cell updates of one member, one example and one step."""
    cells = sum(math.prod(model.cell_shape(layer)) for layer in spec.layers)
    passes = 2 if spec.model.backward_pass else 1
    return cells * spec.model.num_micro_ticks * passes


@dataclass
class Summary:
    """What a finished (or stopped) run reports."""

    iterations: int
    stopped_early: bool  # by the time limit or a stop request
    seconds: float
    final_curves: list[dict[str, float | str]] = field(default_factory=list)
    cancelled: bool = False  # stopped by `should_stop` (no final meta-test)


@dataclass
class StepResult:
    """One meta-gradient estimate, summed over all processes."""

    grads: dict[str, Tensor]
    losses: Tensor  # [population] meta-loss of every member or trajectory
    accuracy: float  # mean step accuracy over the whole population
    evaluations: int  # member-episode-steps x batch evaluated by all processes


class Trainer:
    """Meta-trains one VSML learner by ES or backprop; resumable exactly.

    With a `comm` of several processes (vsml.distributed), each evaluates its
    share of the population and the estimates are summed; only rank 0 reports
    through the callbacks, meta-tests and checkpoints.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        callbacks: Callbacks | None = None,
        checkpoint: dict[str, Any] | None = None,
        comm: Comm | None = None,
    ) -> None:
        self.config = config
        self.callbacks = callbacks or Callbacks()
        self.comm = comm or Comm()
        self.spec = network_for(config)
        self.device = resolve_device(config.training.device)
        # CPU generators drive every random draw: the same stream on any
        # device, and their states checkpoint exactly. `generator` (noise,
        # initial states) is identical on every process; `data_generator`
        # samples this process's episodes, whose datasets may differ by rank.
        self.generator = torch.Generator().manual_seed(config.seed)
        self.data_generator = torch.Generator().manual_seed(
            config.seed + DATA_SEED_OFFSET
        )
        params = model.init_params(self.spec, self.generator, population=1)
        self.params = _to(params, self.device)
        opt = config.optimizer
        self.adam = Adam(learning_rate_schedule(config), opt.beta1, opt.beta2)
        self.iteration = 0
        # Bookkeeping of `run`: last checkpointed and meta-tested iterations.
        self._saved, self._tested = -1, -1
        self._curves: list[LearningCurve] = []
        self._interrupted = False
        self.sources = [
            data.load_split(d, config.data, "train")
            for d in config.train_datasets(self.comm.rank)
        ]
        self.tester = MetaTester(config, self.spec, self.device)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        # Every process starts from rank 0's meta-parameters.
        self.params = self.comm.broadcast(self.params)

    # --- one meta-iteration ------------------------------------------------

    def _episodes(self, count: int) -> tuple[Tensor, Tensor]:
        tr = self.config.training
        x, y = data.sample_mixture(
            self.sources, count, tr.episode_length, tr.batch_size,
            self.config.data.num_classes, self.data_generator, tr.few_shot_ways,
            offset=self.iteration,
        )  # fmt: skip
        return x.to(self.device), y.to(self.device)

    def _gather(self, local: Tensor, part: slice, total: int) -> Tensor:
        """Every process's slice of a population-sized vector, joined."""
        full = torch.zeros(total, dtype=local.dtype, device=local.device)
        full[part] = local
        return self.comm.sum({"v": full})["v"]

    def _summed_accuracy(self, logits: Tensor, y: Tensor, total: int) -> float:
        accuracy = step_accuracy(logits, y)  # [members, ...]
        local = accuracy.reshape(len(accuracy), -1).mean(1).sum()
        return float(self.comm.sum({"a": local.reshape(1)})["a"]) / total

    def _es_step(self) -> StepResult:
        opt, tr = self.config.optimizer, self.config.training
        pairs = opt.population_size
        noise = es.sample_noise(self.params, pairs, self.generator)
        x, y = self._episodes(pairs)
        # Both signs of a pair see the same episode and initial state.
        x, y = x.repeat_interleave(2, dim=0), y.repeat_interleave(2, dim=0)
        state = model.initial_state(
            self.spec, 2 * pairs, x.shape[2], self.generator, 2, self.device
        )

        # This process's pairs, and their members (2 per pair).
        mine = share(pairs, self.comm.rank, self.comm.world_size)
        members_part = slice(2 * mine.start, 2 * mine.stop)
        noise = {k: v[mine] for k, v in noise.items()}
        members = es.perturb(self.params, noise, opt.sigma)
        logits = run_members(
            self.spec, members, x[members_part], y[members_part], self.generator,
            repeat=2, chunk=tr.member_chunk, state=state.members(members_part),
        )  # fmt: skip
        local = meta_loss(step_losses(logits, y[members_part]), tr.meta_loss)

        # Fitness shaping ranks the whole population, so gather losses first.
        losses = self._gather(local, members_part, 2 * pairs)
        shaped = opt.fitness_shaping == "centered_ranks"
        fitness = es.centered_ranks(losses) if shaped else losses
        share_of_grad = es.estimate_gradient(
            noise, fitness[members_part], opt.sigma, pairs
        )
        return StepResult(
            self.comm.sum(share_of_grad), losses,
            self._summed_accuracy(logits, y[members_part], 2 * pairs),
            2 * pairs * x.shape[1] * x.shape[2],
        )  # fmt: skip

    def _backprop_step(self) -> StepResult:
        opt, tr = self.config.optimizer, self.config.training
        P = opt.population_size
        x, y = self._episodes(P)
        state = model.initial_state(
            self.spec, P, x.shape[2], self.generator, device=self.device
        )
        mine = share(P, self.comm.rank, self.comm.world_size)
        grads, logits = backprop.meta_gradient(
            self.spec, self.params, x[mine], y[mine], self.generator, tr.meta_loss,
            opt.checkpoint_segment, state=state.members(mine), chunk=tr.member_chunk,
        )  # fmt: skip
        # The gradient of the mean over all P: weight this slice's mean.
        weight = (mine.stop - mine.start) / P
        grads = self.comm.sum({k: g * weight for k, g in grads.items()})
        local = meta_loss(step_losses(logits, y[mine]), tr.meta_loss)
        return StepResult(
            grads, self._gather(local, mine, P),
            self._summed_accuracy(logits, y[mine], P),
            P * x.shape[1] * x.shape[2],
        )  # fmt: skip

    def train_step(self) -> dict[str, float]:
        """One meta-iteration: estimate the meta-gradient, take an Adam step."""
        start = time.perf_counter()
        if self.config.optimizer.type == "es":
            result = self._es_step()
        else:
            result = self._backprop_step()
        grad_norm = float(global_norm(result.grads))
        self._check_finite(result, grad_norm)
        grads = clip_by_global_norm(result.grads, self.config.optimizer.clip_norm)
        learning_rate = self.adam.current_learning_rate()
        self.params = self.adam.step(self.params, grads)
        self.iteration += 1

        seconds = time.perf_counter() - start
        updates = result.evaluations * updates_per_step(self.spec)
        return {
            "meta_loss": float(result.losses.mean()),
            "train_accuracy": result.accuracy,
            "grad_norm": grad_norm,
            "param_norm": float(global_norm(self.params)),
            "learning_rate": learning_rate,
            "seconds_per_iteration": seconds,
            "updates_per_s": updates / seconds,
        }

    def _check_finite(self, result: StepResult, grad_norm: float) -> None:
        # A NaN step would make every later step NaN too: stop at the first.
        loss = float(result.losses.mean())
        if math.isfinite(loss) and math.isfinite(grad_norm):
            return
        raise DivergedError(
            f"meta-training diverged at iteration {self.iteration + 1}: meta-loss "
            f"{loss}, gradient norm {grad_norm}; lower optimizer.learning_rate or "
            "optimizer.sigma, or set optimizer.clip_norm (the last checkpoint "
            "holds finite meta-parameters)"
        )

    # --- checkpoints -------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to continue exactly where the run is now."""
        return {
            "format": CHECKPOINT_FORMAT,
            "iteration": self.iteration,
            "params": _to(self.params, "cpu"),
            "optimizer": {
                "count": self.adam.count,
                "m": _to(self.adam.m, "cpu"),
                "v": _to(self.adam.v, "cpu"),
            },
            "generator": self.generator.get_state(),
            "data_generator": self.data_generator.get_state(),
            "config": self.config.model_dump(mode="json"),
        }

    def load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        expected = model.param_shapes(self.spec)
        got = {k: tuple(v.shape[1:]) for k, v in checkpoint["params"].items()}
        if got != expected:
            diff = [
                f"{k}: {got.get(k, 'missing')} vs {expected.get(k, 'unused')}"
                for k in sorted(set(got) | set(expected))
                if got.get(k) != expected.get(k)
            ]
            raise ValueError(
                "checkpoint does not fit this config (checkpoint vs config): "
                + "; ".join(diff)
            )
        self.iteration = int(checkpoint["iteration"])
        self.params = _to(checkpoint["params"], self.device)
        state = checkpoint["optimizer"]
        self.adam.load_state_dict(
            {
                **state,
                "m": _to(state["m"], self.device),
                "v": _to(state["v"], self.device),
            }
        )
        self.generator.set_state(checkpoint["generator"])
        if "data_generator" in checkpoint:  # absent before distributed runs
            self.data_generator.set_state(checkpoint["data_generator"])

    # --- the loop ----------------------------------------------------------

    def meta_test(self) -> list[LearningCurve]:
        """Meta-test now; raises MetaTestInterruptedError on a stop request."""
        curves = self.tester.run(self.params, should_stop=self.callbacks.should_stop)
        self.callbacks.on_meta_test(self.iteration, curves)
        return curves

    def run(self) -> Summary:
        """Meta-train until the iteration budget, the time limit or a stop.

        Meta-tests before the first iteration, every `evaluation.every`
        iterations and at the end; checkpoints every `training.checkpoint_every`
        iterations and at the end (also when stopped). A stop request (a
        cancel) skips the final meta-test so that the run ends promptly.
        Only rank 0 meta-tests and checkpoints; it also decides when to stop.
        """
        start = time.monotonic()
        limit = self.config.training.time_limit_minutes
        deadline = start + 60 * limit if limit else None
        self._saved, self._tested, self._curves = -1, -1, []
        self._interrupted = False
        reason = self._loop(start, deadline)
        cancelled = reason == "cancel"
        if self.comm.is_main:
            if self._saved != self.iteration:
                self.callbacks.on_checkpoint(self.iteration, self.checkpoint())
            if not cancelled and (self._tested != self.iteration or not self._curves):
                self._curves = self.meta_test()
        return Summary(
            iterations=self.iteration,
            stopped_early=bool(reason),
            seconds=time.monotonic() - start,
            final_curves=[c.summary() for c in self._curves],
            cancelled=cancelled,
        )

    def _loop(self, start: float, deadline: float | None) -> str:
        """Iterate; returns "cancel", "deadline" or "" (budget reached)."""
        tr, ev = self.config.training, self.config.evaluation
        if self.iteration == 0:
            self._maybe_meta_test()
        while self.iteration < tr.num_iterations:
            # Rank 0's verdict binds every process, so all stop together.
            verdict = STOP_REASONS[self.comm.decide(self._stop_code(deadline))]
            if verdict:
                return verdict
            metrics = self.train_step()
            metrics["elapsed_s"] = time.monotonic() - start
            if not self.comm.is_main:
                continue
            if self.iteration % tr.log_every == 0 or self.iteration == 1:
                self.callbacks.on_metrics(self.iteration, metrics)
            if self.iteration % tr.checkpoint_every == 0:
                self.callbacks.on_checkpoint(self.iteration, self.checkpoint())
                self._saved = self.iteration
            if self.iteration % ev.every == 0:
                self._maybe_meta_test()
        return ""

    def _maybe_meta_test(self) -> None:
        """Meta-test on rank 0; an interrupted one turns into a stop."""
        if not self.comm.is_main:
            return
        try:
            self._curves, self._tested = self.meta_test(), self.iteration
        except MetaTestInterruptedError:
            self._interrupted = True

    def _stop_code(self, deadline: float | None) -> int:
        """Index into STOP_REASONS (only rank 0's counts)."""
        if self._interrupted or self.callbacks.should_stop():
            return 1
        if deadline and time.monotonic() > deadline:
            return 2
        return 0


STOP_REASONS = ("", "cancel", "deadline")


def resolve_device(name: str) -> torch.device:
    """training.device -> a torch device; a missing GPU is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"training.device={name!r} is not a device name") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"training.device={name!r} but PyTorch sees no CUDA GPU here; "
            "use 'cpu' or 'auto', or install the CUDA build of torch (README)"
        )
    return device


def _to(tensors: dict[str, Tensor], device: torch.device | str) -> dict[str, Tensor]:
    """Copies of named tensors on `device` (never aliases of the originals)."""
    return {k: v.detach().to(device, copy=True) for k, v in tensors.items()}


def config_from_checkpoint(checkpoint: dict[str, Any]) -> ExperimentConfig:
    """The resolved config a checkpoint was written with."""
    return validate(checkpoint["config"])
