"""Importing the JAX seed's parameters and running one episode with them."""

import numpy as np
import pytest
import torch

from vsml import seed
from vsml.cli import main
from vsml.training import Trainer, network_for


def _seed_npz(config, path, generator_seed=0):
    """Parameters of a fresh learner, saved under the seed's Haiku names."""
    trainer = Trainer(config)
    gen = torch.Generator().manual_seed(generator_seed)
    spec = network_for(config)
    arrays = {
        seed.seed_key(name, spec): torch.randn(v.shape[1:], generator=gen).numpy()
        for name, v in trainer.params.items()
    }
    np.savez(path, **arrays)
    return arrays


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["model.layerwise_rnns=true", "model.hidden_layers=[3]"],
        ["model.separate_backward_rnn=true", "model.layer_norm=true"],
    ],
)
def test_seed_names_round_trip(tiny_config, tmp_path, options):
    """Every parameter maps to a Haiku name and back, values unchanged."""
    config = tiny_config(*options)
    arrays = _seed_npz(config, tmp_path / "p.npz")
    params = seed.load_seed_params(tmp_path / "p.npz", config)
    spec = network_for(config)
    for name, value in params.items():
        assert np.array_equal(value[0].numpy(), arrays[seed.seed_key(name, spec)])
    assert "vsmlrnn/~/sub_rnn/~/custom_lstm/linear/w" in arrays


def test_lstm_weight_layout_is_x_at_w(tiny_config):
    """The seed's custom_lstm/linear/w is [2M + S, 4S] and used as x @ w."""
    config = tiny_config()
    M, S = config.model.message_size, config.model.state_size
    key = "vsmlrnn/~/sub_rnn/~/custom_lstm/linear/w"
    assert seed.our_name(key, network_for(config)) == "fwd0.lstm_w"
    trainer = Trainer(config)
    assert tuple(trainer.params["fwd0.lstm_w"].shape[1:]) == (2 * M + S, 4 * S)


def test_episode_without_random_init_ignores_the_seed(tiny_config, tmp_path):
    """With init_rand_proportion 0 the logits do not depend on any RNG."""
    config = tiny_config("model.init_rand_proportion=0")
    _seed_npz(config, tmp_path / "p.npz")
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(7, 2, 4, 4, 1, generator=gen)
    y = torch.nn.functional.one_hot(torch.randint(0, 10, (7, 2), generator=gen), 10)
    first = seed.run_episode(tmp_path / "p.npz", config, x, y.float(), seed=1)
    second = seed.run_episode(tmp_path / "p.npz", config, x, y.float(), seed=2)
    assert first.shape == (7, 2, 10)
    assert torch.equal(first, second)
    assert first.abs().max() > 0


def test_wrong_shape_is_named(tiny_config, tmp_path):
    """A parameter of the wrong shape is refused with its name and both shapes."""
    config = tiny_config()
    arrays = _seed_npz(config, tmp_path / "p.npz")
    key = "vsmlrnn/~/sub_rnn/~/linear/w"
    arrays[key] = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="linear/w.*shape"):
        seed.params_from_seed(arrays, network_for(config))


def test_missing_parameter_is_named(tiny_config, tmp_path):
    """An incomplete parameter dict names what is missing."""
    config = tiny_config()
    arrays = _seed_npz(config, tmp_path / "p.npz")
    del arrays["vsmlrnn/~/sub_rnn/~/linear_1/b"]
    with pytest.raises(ValueError, match="lack.*linear_1/b"):
        seed.params_from_seed(arrays, network_for(config))


def test_import_seed_command_writes_an_evaluable_checkpoint(
    tiny_config, tmp_path, capsys
):
    """`vsml import-seed` writes a checkpoint that `vsml evaluate` meta-tests."""
    from tests.conftest import TINY

    config = tiny_config()
    _seed_npz(config, tmp_path / "p.npz")
    sets = [arg for item in TINY for arg in ("--set", item)]
    out = tmp_path / "seed-run"
    assert main(["import-seed", str(tmp_path / "p.npz"), *sets, "--out", str(out)]) == 0
    assert (out / "checkpoints" / "latest.pt").is_file()
    assert main(["evaluate", "--checkpoint", str(out / "checkpoints/latest.pt")]) == 0
    table = capsys.readouterr().out
    assert "vsml" in table and "sgd" in table and "adam" in table
