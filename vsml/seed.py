"""Interoperability with the original JAX/Haiku VSML code (the "seed").

Meta-parameters saved from the seed as an .npz keyed by Haiku module names,
for example `vsmlrnn/~/sub_rnn/~/custom_lstm/linear/w` ([2M + S, 4S], used as
x @ w on concat(forward msg, backward msg, previous h), gates i, g, f, o), map
onto this library's names:

    sub_rnn{_i}/~/custom_lstm/linear/{w,b}  ->  fwd{i}.lstm_{w,b}
    sub_rnn{_i}/~/linear/{w,b}              ->  fwd{i}.fwd_{w,b}   (forward read-out)
    sub_rnn{_i}/~/linear_1/{w,b}            ->  fwd{i}.bwd_{w,b}   (backward read-out)
    sub_rnn{_i}/~/layer_norm/{scale,offset} ->  fwd{i}.fwd_ln_{scale,offset}
    sub_rnn{_i}/~/layer_norm_1/...          ->  fwd{i}.bwd_ln_{scale,offset}

Sub-RNN i is `sub_rnn` for i = 0 and `sub_rnn_i` after that. With layer-wise
sub-RNNs the forward ones come first (one per layer); a separate backward
sub-RNN set follows them, so with R forward sub-RNNs `sub_rnn_R` is `bwd0`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vsml import model
from vsml.config import ExperimentConfig
from vsml.model import NetworkSpec, Params
from vsml.training import Trainer, network_for

_MODULES = {
    ("custom_lstm/linear", "w"): "lstm_w",
    ("custom_lstm/linear", "b"): "lstm_b",
    ("linear", "w"): "fwd_w",
    ("linear", "b"): "fwd_b",
    ("linear_1", "w"): "bwd_w",
    ("linear_1", "b"): "bwd_b",
    ("layer_norm", "scale"): "fwd_ln_scale",
    ("layer_norm", "offset"): "fwd_ln_offset",
    ("layer_norm_1", "scale"): "bwd_ln_scale",
    ("layer_norm_1", "offset"): "bwd_ln_offset",
}
_KEY = re.compile(r"sub_rnn(?:_(\d+))?/~/(.+)/(w|b|scale|offset)$")


def _prefixes(spec: NetworkSpec) -> list[str]:
    """Our sub-RNN prefixes in the seed's order (sub_rnn, sub_rnn_1, ...)."""
    order = [f"fwd{i}." for i in range(spec.num_rnns)]
    if spec.model.separate_backward_rnn:
        order += [f"bwd{i}." for i in range(spec.num_rnns)]
    return order


def our_name(key: str, spec: NetworkSpec) -> str:
    """The library name of a seed key; ValueError names a key that fits nothing."""
    match = _KEY.search(key)
    field = _MODULES.get((match.group(2), match.group(3))) if match else None
    if match is None or field is None:
        raise ValueError(f"seed parameter {key!r} is not a VSML sub-RNN parameter")
    index = int(match.group(1) or 0)
    prefixes = _prefixes(spec)
    if index >= len(prefixes):
        raise ValueError(
            f"seed parameter {key!r} names sub-RNN {index}, but this config has "
            f"{len(prefixes)} (check model.layerwise_rnns / separate_backward_rnn)"
        )
    return prefixes[index] + field


def seed_key(name: str, spec: NetworkSpec) -> str:
    """The seed's Haiku key for a library parameter name (inverse of our_name)."""
    prefix, field = name.split(".")
    index = _prefixes(spec).index(prefix + ".")
    module, leaf = next(k for k, v in _MODULES.items() if v == field)
    rnn = "sub_rnn" if index == 0 else f"sub_rnn_{index}"
    return f"vsmlrnn/~/{rnn}/~/{module}/{leaf}"


def params_from_seed(arrays: Mapping[str, Any], spec: NetworkSpec) -> Params:
    """Seed arrays -> meta-parameters with a population axis of 1."""
    expected = model.param_shapes(spec)
    params: Params = {}
    for key, value in arrays.items():
        name = our_name(key, spec)
        tensor = torch.as_tensor(np.asarray(value), dtype=torch.float32)
        if name not in expected:
            raise ValueError(f"seed parameter {key!r} is not used by this config")
        if tuple(tensor.shape) != expected[name]:
            raise ValueError(
                f"seed parameter {key!r} has shape {tuple(tensor.shape)}, "
                f"this config needs {expected[name]}"
            )
        params[name] = tensor.unsqueeze(0)
    missing = sorted(seed_key(n, spec) for n in expected if n not in params)
    if missing:
        raise ValueError(f"the seed parameters lack {', '.join(missing)}")
    return params


def load_seed_params(path: Path, config: ExperimentConfig) -> Params:
    """Read an .npz of seed parameters for `config`'s learner."""
    try:
        arrays = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"{path} is not an .npz of arrays ({err})") from err
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds one array; expected an .npz keyed by names")
    with arrays:
        try:
            values = {key: arrays[key] for key in arrays.files}
        except ValueError as err:
            raise ValueError(f"{path} holds non-numeric arrays ({err})") from err
    return params_from_seed(values, network_for(config))


def checkpoint_from_npz(path: Path, config: ExperimentConfig) -> dict[str, Any]:
    """A fresh training checkpoint (iteration 0) holding the seed's parameters."""
    trainer = Trainer(config)
    trainer.params = load_seed_params(path, config)
    return trainer.checkpoint()


def run_episode(
    params: Params | Path | str,
    config: ExperimentConfig,
    x: Tensor,
    y: Tensor,
    seed: int = 0,
) -> Tensor:
    """Run one episode of online learning with fixed meta-parameters.

    Args:
        params: library params ([1, ...] each), or a path to a seed .npz.
        config: the experiment config describing the learner.
        x: inputs [T, batch, H, W, C]; y: one-hot labels [T, batch, K].
        seed: seeds the random part of the initial cell state; with
            model.init_rand_proportion 0 the result does not depend on it.

    Returns:
        logits [T, batch, K] (each predicted before its label was seen).
    """
    if not isinstance(params, dict):
        params = load_seed_params(Path(params), config)
    spec = network_for(config)
    params = {k: v.to(x.dtype) for k, v in params.items()}
    generator = torch.Generator().manual_seed(seed)
    state = model.initial_state(spec, 1, x.shape[1], generator)
    state = model.State.from_tensors([t.to(x.dtype) for t in state.tensors()])
    with torch.no_grad():
        logits = model.run_episode(spec, params, x[None], y[None].to(x.dtype), state)
    return logits[0]
