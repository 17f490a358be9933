"""Meta-training: determinism, exact resume, ES and backprop meta-gradients."""

import pytest
import torch

from vsml import backprop, es, model
from vsml.optim import Adam
from vsml.training import Callbacks, DivergedError, Trainer


class Recorder(Callbacks):
    def __init__(self):
        self.metrics, self.checkpoints, self.tests = [], [], []

    def on_metrics(self, iteration, metrics):
        self.metrics.append((iteration, metrics))

    def on_checkpoint(self, iteration, checkpoint):
        self.checkpoints.append((iteration, checkpoint))

    def on_meta_test(self, iteration, curves):
        self.tests.append((iteration, curves))


def _without_timing(metrics):
    skip = {"seconds_per_iteration", "updates_per_s", "elapsed_s"}
    return [(i, {k: v for k, v in m.items() if k not in skip}) for i, m in metrics]


@pytest.mark.parametrize("optimizer", ["es", "backprop"])
def test_same_seed_gives_same_metrics(tiny_config, optimizer):
    """Two runs with one seed report identical metrics."""
    config = tiny_config(f"optimizer.type={optimizer}", "training.num_iterations=3")
    first, second = Recorder(), Recorder()
    Trainer(config, first).run()
    Trainer(config, second).run()
    assert _without_timing(first.metrics) == _without_timing(second.metrics)
    assert len(first.metrics) == 3


@pytest.mark.parametrize("optimizer", ["es", "backprop"])
def test_resume_is_exact(tiny_config, optimizer):
    """N+M iterations in one go equal N, resume from the checkpoint, then M."""
    whole = Trainer(
        tiny_config(f"optimizer.type={optimizer}", "training.num_iterations=5")
    )
    whole.run()
    part = Recorder()
    config = tiny_config(f"optimizer.type={optimizer}", "training.num_iterations=2")
    Trainer(config, part).run()
    checkpoint = part.checkpoints[-1][1]
    assert checkpoint["iteration"] == 2
    rest = Trainer(
        tiny_config(f"optimizer.type={optimizer}", "training.num_iterations=5"),
        checkpoint=checkpoint,
    )
    rest.run()
    for name, value in whole.params.items():
        assert torch.equal(value, rest.params[name]), name


def test_run_meta_tests_before_and_after(tiny_config):
    """A run meta-tests at iteration 0 and at its end, and checkpoints at the end."""
    recorder = Recorder()
    summary = Trainer(tiny_config("training.num_iterations=2"), recorder).run()
    assert [i for i, _ in recorder.tests] == [0, 2]
    assert recorder.checkpoints[-1][0] == 2
    learners = {c.learner for c in recorder.tests[-1][1]}
    assert learners == {"vsml", "sgd", "adam"}
    assert summary.iterations == 2 and not summary.stopped_early


def test_stop_request_checkpoints_and_ends(tiny_config):
    """should_stop() ends the run early with a final checkpoint."""

    class StopAfterTwo(Recorder):
        def should_stop(self):
            return len(self.metrics) >= 2

    recorder = StopAfterTwo()
    summary = Trainer(tiny_config("training.num_iterations=50"), recorder).run()
    assert summary.stopped_early and summary.cancelled and summary.iterations == 2
    assert recorder.checkpoints[-1][0] == 2
    assert [i for i, _ in recorder.tests] == [0]  # no final meta-test on a stop


def test_stop_request_interrupts_a_meta_test(tiny_config):
    """A stop asked during a meta-test abandons it, then checkpoints."""

    class StopDuringTest(Recorder):
        calls = 0

        def should_stop(self):
            # The loop asks once per iteration; the meta-test once per group.
            self.calls += 1
            return len(self.metrics) >= 3 and self.calls > 3

    config = tiny_config(
        "training.num_iterations=50", "evaluation.every=3", "evaluation.num_episodes=8"
    )
    recorder = StopDuringTest()
    summary = Trainer(config, recorder).run()
    assert summary.cancelled and summary.iterations == 3
    assert [i for i, _ in recorder.tests] == [0]  # the one at 3 was abandoned
    assert recorder.checkpoints[-1][0] == 3


def test_time_limit_still_meta_tests_at_the_end(tiny_config):
    """Running out of time is not a cancel: the run ends with a meta-test."""
    recorder = Recorder()
    config = tiny_config("training.num_iterations=1000000")
    config.training.time_limit_minutes = 0.002
    summary = Trainer(config, recorder).run()
    assert summary.stopped_early and not summary.cancelled
    assert recorder.tests[-1][0] == summary.iterations > 0


def test_es_descends_a_quadratic():
    """The antithetic ES estimate with Adam minimises ||theta - target||^2."""
    gen = torch.Generator().manual_seed(0)
    target = {"w": torch.randn(1, 5, 3, generator=gen)}
    params = {"w": torch.zeros(1, 5, 3)}
    adam = Adam(0.05)

    def loss(members):
        return ((members["w"] - target["w"]) ** 2).sum(dim=(1, 2))

    start = float(loss(params)[0])
    for _ in range(200):
        noise = es.sample_noise(params, 16, gen)
        losses = loss(es.perturb(params, noise, 0.05))
        params = adam.step(params, es.estimate_gradient(noise, losses, 0.05, 16))
    assert float(loss(params)[0]) < 0.01 * start


def test_es_shards_sum_to_the_full_estimate():
    """Estimates of disjoint pair slices add up to the full-population estimate."""
    gen = torch.Generator().manual_seed(1)
    noise = {"w": torch.randn(6, 4, generator=gen)}
    losses = torch.randn(12, generator=gen)
    full = es.estimate_gradient(noise, losses, 0.1, 6)["w"]
    first = es.estimate_gradient({"w": noise["w"][:4]}, losses[:8], 0.1, 6)["w"]
    second = es.estimate_gradient({"w": noise["w"][4:]}, losses[8:], 0.1, 6)["w"]
    assert torch.allclose(first + second, full)


def _bptt(tiny_config, trajectories):
    """meta_gradient(segment, chunk) on one tiny backprop problem, same draws."""
    trainer = Trainer(tiny_config("optimizer.type=backprop"))
    x, y = trainer._episodes(trajectories)

    def grad(segment, chunk=0):
        gen = torch.Generator().manual_seed(3)
        return backprop.meta_gradient(
            trainer.spec, trainer.params, x, y, gen, "mean", segment, chunk=chunk
        )

    return grad, x.shape[1]


def test_checkpointing_over_time_keeps_the_meta_gradient(tiny_config):
    """BPTT with segments of 2 steps gives the gradient of unsegmented BPTT."""
    grad, steps = _bptt(tiny_config, 2)
    (whole, _), (pieces, _) = grad(steps), grad(2)
    for name in whole:
        assert torch.allclose(whole[name], pieces[name], atol=1e-6), name
    assert any(g.abs().max() > 0 for g in whole.values())


def test_backprop_chunks_of_trajectories_keep_the_meta_gradient(tiny_config):
    """Trajectories differentiated one or two at a time give the whole-batch result."""
    grad, _ = _bptt(tiny_config, 3)
    (whole, whole_logits), (ones, _) = grad(2, chunk=3), grad(2, chunk=1)
    twos, two_logits = grad(2, chunk=2)
    for name in whole:
        assert torch.allclose(whole[name], ones[name], atol=1e-6), name
        assert torch.allclose(whole[name], twos[name], atol=1e-6), name
    assert torch.allclose(whole_logits, two_logits, atol=1e-5)
    assert any(g.abs().max() > 0 for g in whole.values())


def test_backprop_gradient_matches_finite_differences(tiny_config):
    """The BPTT meta-gradient agrees with a central finite difference (float64)."""
    torch.set_default_dtype(torch.float64)
    try:
        config = tiny_config("optimizer.type=backprop", "training.episode_length=4")
        trainer = Trainer(config)
        params = {k: v.double() for k, v in trainer.params.items()}
        x, y = (t.double() for t in trainer._episodes(2))
        gen_state = torch.Generator().manual_seed(5).get_state()

        def loss_and_grad(p):
            gen = torch.Generator()
            gen.set_state(gen_state)
            g, logits = backprop.meta_gradient(trainer.spec, p, x, y, gen, "mean", 2)
            losses = -(torch.log_softmax(logits, -1) * y).sum(-1).mean(-1)
            return float(losses.mean()), g

        _, grads = loss_and_grad(params)
        name, index = "fwd0.lstm_w", (0, 3, 5)
        eps = 1e-6
        plus = {k: v.clone() for k, v in params.items()}
        minus = {k: v.clone() for k, v in params.items()}
        plus[name][index] += eps
        minus[name][index] -= eps
        numeric = (loss_and_grad(plus)[0] - loss_and_grad(minus)[0]) / (2 * eps)
        assert abs(float(grads[name][index]) - numeric) < 1e-6 + 1e-4 * abs(numeric)
    finally:
        torch.set_default_dtype(torch.float32)


def test_meta_loss_last_uses_only_the_final_prediction():
    """meta_loss('last') is the last step's loss; 'mean' averages the episode."""
    from vsml.objective import meta_loss

    losses = torch.tensor([[1.0, 2.0, 6.0]])
    assert float(meta_loss(losses, "last")[0]) == 6.0
    assert float(meta_loss(losses, "mean")[0]) == 3.0


def test_checkpoint_for_another_config_is_refused(tiny_config):
    """Resuming with a checkpoint of a different learner names the mismatch."""
    checkpoint = Trainer(tiny_config()).checkpoint()
    with pytest.raises(ValueError, match="does not fit"):
        Trainer(tiny_config("model.layer_norm=true"), checkpoint=checkpoint)


def test_updates_count_includes_backward_pass(tiny_config):
    """The throughput counter counts cells x micro ticks x passes."""
    from vsml.training import network_for, updates_per_step

    spec = network_for(tiny_config())
    assert updates_per_step(spec) == 16 * 10 * 1 * 2
    assert isinstance(spec.layers[0], model.DenseSpec)


def test_missing_gpu_is_a_clear_error(tiny_config):
    """training.device=cuda without a GPU names the field and what to do."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="training.device='cuda'.*no CUDA GPU"):
        Trainer(tiny_config("training.device=cuda"))


def test_bad_device_name_is_a_clear_error(tiny_config):
    with pytest.raises(ValueError, match="training.device='gpu0' is not a device"):
        Trainer(tiny_config("training.device=gpu0"))


def test_centered_ranks_spread_losses_evenly():
    """Fitness shaping maps losses to evenly spaced ranks in [-0.5, 0.5]."""
    ranks = es.centered_ranks(torch.tensor([3.0, -10.0, 1e6, 0.5]))
    assert torch.allclose(ranks, torch.tensor([1 / 6, -0.5, 0.5, -1 / 6]))


def test_es_with_fitness_shaping_runs(tiny_config):
    """optimizer.fitness_shaping=centered_ranks trains without error."""
    config = tiny_config(
        "optimizer.fitness_shaping=centered_ranks", "training.num_iterations=2"
    )
    recorder = Recorder()
    Trainer(config, recorder).run()
    assert len(recorder.metrics) == 2


@pytest.mark.parametrize("optimizer", ["es", "backprop"])
def test_diverged_meta_training_stops_with_a_clear_error(tiny_config, optimizer):
    """A NaN meta-loss ends the run at once (every later step would be NaN)."""
    config = tiny_config(f"optimizer.type={optimizer}")
    trainer = Trainer(config, Callbacks())
    trainer.train_step()
    name = next(iter(trainer.params))
    trainer.params[name] = torch.full_like(trainer.params[name], float("nan"))
    with pytest.raises(DivergedError, match="diverged at iteration 2"):
        trainer.train_step()
    assert trainer.iteration == 1
