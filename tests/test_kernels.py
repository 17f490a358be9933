"""The fused native dense-layer kernel against the PyTorch path (float32)."""

import pytest
import torch

from vsml import kernels, model
from vsml.config import ModelConfig


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(hidden_layers=[5], aggregation="sum"),
        dict(backward_pass=True, state_size=8, num_micro_ticks=1),
    ],
)
def test_native_kernel_matches_pytorch_path(options, monkeypatch):
    """Logits of a whole episode agree between the kernel and PyTorch."""
    with torch.no_grad():
        assert kernels.dense_supported(torch.zeros(1, 1, 1, 1, 16))
    assert not kernels.dense_supported(torch.zeros(1, 1, 1, 1, 16))  # autograd on
    cfg = ModelConfig(**options)
    spec = model.build_network(cfg, (6, 5, 1), num_classes=4)
    gen = torch.Generator().manual_seed(1)
    params = model.init_params(spec, gen, population=3)
    x = torch.randn(3, 6, 2, 6, 5, 1, generator=gen)
    y = torch.nn.functional.one_hot(torch.randint(0, 4, (3, 6, 2), generator=gen), 4)
    state = model.initial_state(spec, 3, 2, gen)
    copy = model.State.from_tensors([t.clone() for t in state.tensors()])
    with torch.no_grad():
        native = model.run_episode(spec, params, x, y.float(), state)
        monkeypatch.setattr(kernels, "dense_supported", lambda h: False)
        reference = model.run_episode(spec, params, x, y.float(), copy)
    assert torch.allclose(native, reference, atol=1e-4, rtol=1e-4)
    assert reference.abs().max() > 1e-3


def test_single_threaded_block_restores_pytorch_threads():
    """PyTorch's thread count is 1 inside the block and restored after it."""
    before = torch.get_num_threads()
    with kernels.single_threaded_torch(torch.device("cpu")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
