"""The VSML learner: layers of tiny shared LSTMs that learn by passing messages.

Implements DESIGN.md 3.1-3.4 (Kirsch and Schmidhuber 2021, section 3): every
would-be weight of a dense or convolutional layer is a sub-LSTM; all of them
share one meta-parameter set theta and differ only in their states.

Everything carries a leading population axis P: member p runs with its own
meta-parameters `params[name][p]`, so a whole ES population (or several
test episodes with one theta, broadcast from P=1) runs as one batch.

Shapes use P population, N batch, A inputs, B outputs, M message size,
S state size, G = 4S gate pre-activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vsml import kernels
from vsml.config import ModelConfig

Params = dict[str, Tensor]

# Gate biases that make a fresh sub-LSTM keep its state (DESIGN.md 3.1).
INPUT_GATE_BIAS = -5.0
FORGET_GATE_BIAS = 5.0


# --- layer geometry ---------------------------------------------------------


@dataclass(frozen=True)
class DenseSpec:
    """A dense layer of inputs x outputs sub-RNNs."""

    inputs: int
    outputs: int

    @property
    def fan_in(self) -> int:
        return self.inputs


@dataclass(frozen=True)
class ConvSpec:
    """A conv layer: one sub-RNN per kernel entry (k x k x in x out), SAME padding."""

    height: int
    width: int
    in_channels: int
    out_channels: int
    kernel: int
    stride: int

    @property
    def out_height(self) -> int:
        return -(-self.height // self.stride)

    @property
    def out_width(self) -> int:
        return -(-self.width // self.stride)

    @property
    def fan_in(self) -> int:
        return self.kernel * self.kernel * self.in_channels

    def padding(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) zero padding for SAME output size."""
        pad_h = max((self.out_height - 1) * self.stride + self.kernel - self.height, 0)
        pad_w = max((self.out_width - 1) * self.stride + self.kernel - self.width, 0)
        return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


LayerSpec = DenseSpec | ConvSpec


@dataclass(frozen=True)
class NetworkSpec:
    """The stacked layers of one learner plus the model settings."""

    layers: tuple[LayerSpec, ...]
    input_shape: tuple[int, int, int]  # H, W, C of one input image
    num_classes: int
    model: ModelConfig

    @property
    def num_rnns(self) -> int:
        return len(self.layers) if self.model.layerwise_rnns else 1

    def rnn_name(self, layer: int, backward: bool = False) -> str:
        """Name prefix of the sub-RNN that updates `layer` (forward or backward)."""
        index = layer if self.model.layerwise_rnns else 0
        if backward and self.model.separate_backward_rnn:
            return f"bwd{index}."
        return f"fwd{index}."


def build_network(
    model: ModelConfig, input_shape: tuple[int, int, int], num_classes: int
) -> NetworkSpec:
    """Lay out conv layers, then dense hidden layers, then the output layer."""
    height, width, channels = input_shape
    layers: list[LayerSpec] = []
    for conv in model.conv_layers:
        spec = ConvSpec(
            height, width, channels, conv.channels, conv.kernel_size, conv.stride
        )
        layers.append(spec)
        height, width, channels = spec.out_height, spec.out_width, conv.channels
    inputs = height * width * channels
    for size in [*model.hidden_layers, num_classes]:
        layers.append(DenseSpec(inputs, size))
        inputs = size
    return NetworkSpec(tuple(layers), tuple(input_shape), num_classes, model)


# --- meta-parameters --------------------------------------------------------


def rnn_param_shapes(model: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of one sub-RNN's parameters (without the population axis)."""
    M, S = model.message_size, model.state_size
    shapes = {
        # LSTM on concat(forward msg, backward msg, h), used as x @ w;
        # gates in the order i, g, f, o.
        "lstm_w": (2 * M + S, 4 * S),
        "lstm_b": (4 * S,),
        "fwd_w": (S, M),  # forward read-out
        "fwd_b": (M,),
        "bwd_w": (S, M),  # backward read-out
        "bwd_b": (M,),
    }
    if model.layer_norm:
        shapes |= {
            "fwd_ln_scale": (M,),
            "fwd_ln_offset": (M,),
            "bwd_ln_scale": (M,),
            "bwd_ln_offset": (M,),
        }
    return shapes


def param_shapes(spec: NetworkSpec) -> dict[str, tuple[int, ...]]:
    """All meta-parameter names and shapes, e.g. `fwd0.lstm_w`."""
    prefixes = [f"fwd{i}." for i in range(spec.num_rnns)]
    if spec.model.separate_backward_rnn:
        prefixes += [f"bwd{i}." for i in range(spec.num_rnns)]
    shapes = rnn_param_shapes(spec.model)
    return {p + k: s for p in prefixes for k, s in shapes.items()}


def init_params(
    spec: NetworkSpec, generator: torch.Generator, population: int = 1
) -> Params:
    """Truncated normal weights (std 1/sqrt(fan_in)), zero biases, unit LN scales."""
    params: Params = {}
    for name, shape in param_shapes(spec).items():
        full = (population, *shape)
        if name.endswith("_w"):
            tensor = torch.empty(full)
            std = 1.0 / math.sqrt(shape[0])
            torch.nn.init.trunc_normal_(
                tensor, std=std, a=-2 * std, b=2 * std, generator=generator
            )
        elif name.endswith("_scale"):
            tensor = torch.ones(full)
        else:
            tensor = torch.zeros(full)
        params[name] = tensor
    return params


def rnn_params(params: Params, prefix: str) -> Params:
    """The parameters of one sub-RNN, keys without the prefix."""
    return {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}


# --- learner state ----------------------------------------------------------


@dataclass
class State:
    """Everything a learner carries from one step to the next.

    h, c: per layer, dense [P, N, A, B, S] or conv [P, N, k, k, Cin, Cout, S].
    backward_in: per layer, the backward message it reads next ([P, N, B, M] or
    conv [P, N, Ho, Wo, Cout, M]); the last layer's is the error message.
    """

    h: list[Tensor]
    c: list[Tensor]
    backward_in: list[Tensor]

    def tensors(self) -> list[Tensor]:
        return [*self.h, *self.c, *self.backward_in]

    @staticmethod
    def from_tensors(tensors: list[Tensor]) -> State:
        n = len(tensors) // 3
        return State(
            list(tensors[:n]), list(tensors[n : 2 * n]), list(tensors[2 * n :])
        )

    def members(self, part: slice) -> State:
        """The states of population members `part` (views, not copies)."""
        return State.from_tensors([t[part] for t in self.tensors()])


def cell_shape(layer: LayerSpec) -> tuple[int, ...]:
    """The grid of sub-RNNs in a layer."""
    if isinstance(layer, DenseSpec):
        return (layer.inputs, layer.outputs)
    return (layer.kernel, layer.kernel, layer.in_channels, layer.out_channels)


def output_shape(layer: LayerSpec) -> tuple[int, ...]:
    """The positions of a layer's outgoing forward messages."""
    if isinstance(layer, DenseSpec):
        return (layer.outputs,)
    return (layer.out_height, layer.out_width, layer.out_channels)


def initial_state(
    spec: NetworkSpec,
    population: int,
    batch: int,
    generator: torch.Generator,
    repeat: int = 1,
    device: torch.device | str = "cpu",
) -> State:
    """h = 0; the first `init_rand_proportion` of c's features random.

    The random part (std 1/sqrt(fan_in)) acts as a random weight initialisation;
    it is shared across the batch, like weights. `repeat` > 1 draws
    population / repeat states and repeats each (antithetic ES pairs share one).
    Drawn on the CPU (where the generator lives), then moved to `device`.
    """
    S, M = spec.model.state_size, spec.model.message_size
    num_random = round(spec.model.init_rand_proportion * S)
    hs, cs, backs = [], [], []
    for layer in spec.layers:
        cells = cell_shape(layer)
        h = torch.zeros(population, batch, *cells, S)
        noise = torch.empty(population // repeat, 1, *cells, num_random)
        std = 1.0 / math.sqrt(layer.fan_in)
        torch.nn.init.trunc_normal_(
            noise, std=std, a=-2 * std, b=2 * std, generator=generator
        )
        noise = noise.repeat_interleave(repeat, dim=0).expand(-1, batch, *cells, -1)
        c = torch.cat([noise, h[..., num_random:]], dim=-1)
        hs.append(h.to(device))
        cs.append(c.contiguous().to(device))
        backs.append(
            torch.zeros(population, batch, *output_shape(layer), M, device=device)
        )
    return State(hs, cs, backs)


# --- one layer update -------------------------------------------------------


def _gates(z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Activated gates i, g, f, o from pre-activations z [..., 4S]."""
    i, g, f, o = z.chunk(4, dim=-1)
    return (
        torch.sigmoid(i + INPUT_GATE_BIAS),
        torch.tanh(g),
        torch.sigmoid(f + FORGET_GATE_BIAS),
        torch.sigmoid(o),
    )


def lstm_cell(z: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """One sub-LSTM update from gate pre-activations z [..., 4S] (i, g, f, o)."""
    i, g, f, o = _gates(z)
    c = f * c + i * g
    return o * torch.tanh(c), c


def _readout(rnn: Params, h: Tensor, which: str, layer_norm: bool) -> Tensor:
    """Per-cell read-out h @ U + u (optionally layer-normalised), [..., M]."""
    P = h.shape[0]
    flat = h.reshape(P, -1, h.shape[-1])  # [P, cells, S]
    out = torch.baddbmm(rnn[f"{which}_b"].unsqueeze(1), flat, rnn[f"{which}_w"])
    out = out.reshape(*h.shape[:-1], out.shape[-1])
    if layer_norm:
        out = F.layer_norm(out, out.shape[-1:])
        scale = rnn[f"{which}_ln_scale"]
        offset = rnn[f"{which}_ln_offset"]
        view = (P,) + (1,) * (out.dim() - 2) + (out.shape[-1],)
        out = out * scale.reshape(view) + offset.reshape(view)
    return out


def _pool(x: Tensor, dims: tuple[int, ...], aggregation: str) -> Tensor:
    return x.mean(dim=dims) if aggregation == "mean" else x.sum(dim=dims)


class DenseTicks(torch.autograd.Function):
    """K LSTM ticks of an A x B grid whose message terms are fixed per row/column.

    Autograd through the plain ops keeps about 13 tensors of the grid's size
    per tick (52 MB a step for the benchmark's 784 x 10 layer and 4
    trajectories). This function keeps only its inputs, of which the states
    h and c are the only grid-sized ones, and recomputes the ticks in backward.
    With checkpointing over time that is the whole cost of a step's graph.

    Args (of `apply`):
        row: [P, N, A, G] forward-message terms plus bias.
        col: [P, N, B, G] backward-message terms.
        w_h: [P, S, G] recurrent weights.
        h, c: [P, N, A, B, S] states before the ticks.
        ticks: K.

    Returns:
        h, c after K ticks.
    """

    @staticmethod
    def forward(ctx, row, col, w_h, h, c, ticks):  # type: ignore[override]
        ctx.save_for_backward(row, col, w_h, h, c)
        ctx.ticks = ticks
        for _ in range(ticks):
            h, c, _ = DenseTicks._tick(row, col, w_h, h, c)
        return h, c

    @staticmethod
    def _tick(
        row: Tensor, col: Tensor, w_h: Tensor, h: Tensor, c: Tensor
    ) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """One tick; also returns what its backward needs."""
        P, S = h.shape[0], h.shape[-1]
        z = torch.bmm(h.reshape(P, -1, S), w_h).reshape(*h.shape[:-1], -1)
        z += row.unsqueeze(3)
        z += col.unsqueeze(2)
        i, g, f, o = _gates(z)
        c_new = f * c + i * g
        tanh_c = torch.tanh(c_new)
        return o * tanh_c, c_new, (i, g, f, o, tanh_c, h, c)

    @staticmethod
    def backward(ctx, grad_h, grad_c):  # type: ignore[override]
        row, col, w_h, h, c = ctx.saved_tensors
        P, S = h.shape[0], h.shape[-1]

        # Recompute the ticks, keeping each one's gates.
        saved = []
        for _ in range(ctx.ticks):
            h, c, tick = DenseTicks._tick(row, col, w_h, h, c)
            saved.append(tick)

        # Back through the ticks, last first; dz sums into the message terms.
        dh, dc = grad_h, grad_c.clone()
        d_row, d_col, d_w = torch.zeros_like(row), torch.zeros_like(col), 0
        for i, g, f, o, tanh_c, h_prev, c_prev in reversed(saved):
            dc += dh * o * (1 - tanh_c * tanh_c)
            dz = torch.cat(
                [
                    dc * g * i * (1 - i),
                    dc * i * (1 - g * g),
                    dc * c_prev * f * (1 - f),
                    dh * tanh_c * o * (1 - o),
                ],
                dim=-1,
            )  # [P, N, A, B, G]
            dc = dc * f
            d_row += dz.sum(dim=3)
            d_col += dz.sum(dim=2)
            dz_flat = dz.reshape(P, -1, dz.shape[-1])  # [P, cells, G]
            d_w = d_w + torch.bmm(h_prev.reshape(P, -1, S).transpose(1, 2), dz_flat)
            dh = torch.bmm(dz_flat, w_h.transpose(1, 2)).reshape(h_prev.shape)
        return d_row, d_col, d_w, dh, dc, None


def dense_update(
    rnn: Params,
    h: Tensor,
    c: Tensor,
    fwd_in: Tensor,
    bwd_in: Tensor,
    model: ModelConfig,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Update an A x B grid of sub-LSTMs (DESIGN.md 3.1).

    Args:
        rnn: one sub-RNN's parameters, each with a leading P axis.
        h, c: [P, N, A, B, S].
        fwd_in: [P, N, A, M] incoming forward messages (one per row).
        bwd_in: [P, N, B, M] incoming backward messages (one per column).

    Returns:
        h, c and the outgoing messages: forward [P, N, B, M], backward [P, N, A, M].
    """
    M = model.message_size
    w = rnn["lstm_w"]  # [P, 2M + S, G]
    A, B = h.shape[2], h.shape[3]
    col = torch.einsum("pnbm,pmg->pnbg", bwd_in, w[:, M : 2 * M])
    if kernels.dense_supported(h) and not model.layer_norm:
        h, c, sum_b, sum_a = kernels.dense_update(
            fwd_in, col, w, rnn["lstm_b"], h, c, model.num_micro_ticks
        )
        scale_a, scale_b = (1 / A, 1 / B) if model.aggregation == "mean" else (1, 1)
        fwd_out = _readout_pooled(rnn, sum_a * scale_a, "fwd", A, model.aggregation)
        bwd_out = _readout_pooled(rnn, sum_b * scale_b, "bwd", B, model.aggregation)
        return h, c, fwd_out, bwd_out

    # Message terms once per row and per column, then broadcast over the grid.
    row = torch.einsum("pnam,pmg->pnag", fwd_in, w[:, :M])
    row = row + rnn["lstm_b"][:, None, None, :]
    S = h.shape[-1]
    h, c = DenseTicks.apply(row, col, w[:, -S:], h, c, model.num_micro_ticks)

    # Read-outs pooled over rows (forward) and columns (backward).
    if model.layer_norm:
        fwd_out = _pool(_readout(rnn, h, "fwd", True), (2,), model.aggregation)
        bwd_out = _pool(_readout(rnn, h, "bwd", True), (3,), model.aggregation)
    else:
        # Without layer norm the read-out is linear: pool h first (A or B x cheaper).
        pooled_a = _pool(h, (2,), model.aggregation)
        pooled_b = _pool(h, (3,), model.aggregation)
        fwd_out = _readout_pooled(rnn, pooled_a, "fwd", A, model.aggregation)
        bwd_out = _readout_pooled(rnn, pooled_b, "bwd", B, model.aggregation)
    return h, c, fwd_out, bwd_out


def _readout_pooled(
    rnn: Params, pooled: Tensor, which: str, count: int, aggregation: str
) -> Tensor:
    """pool(h @ U + u) from pooled h [P, N, X, S]: pool(h) @ U + u (x count: sum)."""
    P = pooled.shape[0]
    out = torch.bmm(pooled.reshape(P, -1, pooled.shape[-1]), rnn[f"{which}_w"])
    bias = rnn[f"{which}_b"] * (count if aggregation == "sum" else 1)
    out = out + bias.unsqueeze(1)
    return out.reshape(*pooled.shape[:-1], out.shape[-1])


def _patches(x: Tensor, layer: ConvSpec) -> Tensor:
    """[P, N, H, W, Cin, M] -> [P, N, Ho, Wo, k, k, Cin, M] (SAME, zero padded)."""
    P, N, H, W, C, M = x.shape
    k = layer.kernel
    grid = x.reshape(P * N, H, W, C * M).permute(0, 3, 1, 2)
    grid = F.pad(grid, layer.padding())
    cols = F.unfold(grid, kernel_size=k, stride=layer.stride)  # [PN, C*M*k*k, Q]
    cols = cols.reshape(P, N, C, M, k, k, layer.out_height, layer.out_width)
    return cols.permute(0, 1, 6, 7, 4, 5, 2, 3)


def _route_back(x: Tensor, layer: ConvSpec, aggregation: str) -> Tensor:
    """Sum (or average) [P, N, Ho, Wo, k, k, Cin, M] onto [P, N, H, W, Cin, M]."""
    P, N, Ho, Wo, k, _, C, M = x.shape
    left, right, top, bottom = layer.padding()
    size = (layer.height + top + bottom, layer.width + left + right)
    cols = x.permute(0, 1, 6, 7, 4, 5, 2, 3).reshape(P * N, C * M * k * k, Ho * Wo)
    grid = F.fold(cols, size, kernel_size=k, stride=layer.stride)
    if aggregation == "mean":
        ones = torch.ones(1, k * k, Ho * Wo, dtype=x.dtype, device=x.device)
        count = F.fold(ones, size, kernel_size=k, stride=layer.stride)
        grid = grid / count.clamp(min=1)
    grid = grid[:, :, top : top + layer.height, left : left + layer.width]
    return grid.reshape(P, N, C, M, layer.height, layer.width).permute(0, 1, 4, 5, 2, 3)


def conv_update(
    rnn: Params,
    h: Tensor,
    c: Tensor,
    fwd_in: Tensor,
    bwd_in: Tensor,
    layer: ConvSpec,
    model: ModelConfig,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Update a conv layer's k x k x Cin x Cout sub-LSTMs (DESIGN.md 3.4).

    Each kernel cell processes every output position q it covers; its new state
    is the average over positions. Forward messages are pooled over the kernel
    window and input channels, backward messages routed to the inputs that fed
    them (pooled over output channels, then over the positions sharing an input).

    Args:
        h, c: [P, N, k, k, Cin, Cout, S].
        fwd_in: [P, N, H, W, Cin, M]; bwd_in: [P, N, Ho, Wo, Cout, M].

    Returns:
        h, c, forward [P, N, Ho, Wo, Cout, M], backward [P, N, H, W, Cin, M].
    """
    M, S = model.message_size, model.state_size
    P, N = h.shape[:2]
    w = rnn["lstm_w"]
    patches = _patches(fwd_in, layer)  # [P, N, Ho, Wo, k, k, Cin, M]
    row = torch.einsum("pnyxijcm,pmg->pnyxijcg", patches, w[:, :M])
    row = row + rnn["lstm_b"][:, None, None, None, None, None, None, :]
    col = torch.einsum("pnyxom,pmg->pnyxog", bwd_in, w[:, M : 2 * M])
    # [P, N, Ho, Wo, k, k, Cin, Cout, G]
    pre = row.unsqueeze(-2) + col[:, :, :, :, None, None, None, :, :]

    # Per position the same cell state; positions only differ in their messages.
    w_h = w[:, -S:]
    for _ in range(model.num_micro_ticks):
        zh = torch.bmm(h.reshape(P, -1, S), w_h).reshape(*h.shape[:-1], 4 * S)
        h_q, c_q = lstm_cell(pre + zh[:, :, None, None], c[:, :, None, None])
        h, c = h_q.mean(dim=(2, 3)), c_q.mean(dim=(2, 3))

    # Read-outs from each position's own h, pooled over the kernel window.
    fo = _readout(rnn, h_q, "fwd", model.layer_norm)
    fwd_out = _pool(fo, (4, 5, 6), model.aggregation)  # [P, N, Ho, Wo, Cout, M]
    bo = _readout(rnn, h_q, "bwd", model.layer_norm)
    bo = _pool(bo, (7,), model.aggregation)  # [P, N, Ho, Wo, k, k, Cin, M]
    return h, c, fwd_out, _route_back(bo, layer, model.aggregation)


def layer_update(
    spec: NetworkSpec,
    index: int,
    params: Params,
    state: State,
    fwd_in: Tensor,
    bwd_in: Tensor,
    backward: bool = False,
) -> tuple[Tensor, Tensor]:
    """Update layer `index` in place in `state`; returns its outgoing messages."""
    layer = spec.layers[index]
    rnn = rnn_params(params, spec.rnn_name(index, backward))
    h, c = state.h[index], state.c[index]
    if isinstance(layer, DenseSpec):
        fwd_in = fwd_in.reshape(*fwd_in.shape[:2], -1, fwd_in.shape[-1])
        bwd_in = bwd_in.reshape(*bwd_in.shape[:2], -1, bwd_in.shape[-1])
        h, c, fwd_out, bwd_out = dense_update(rnn, h, c, fwd_in, bwd_in, spec.model)
    else:
        fwd_in = fwd_in.reshape(
            *fwd_in.shape[:2], layer.height, layer.width, -1, fwd_in.shape[-1]
        )
        bwd_in = bwd_in.reshape(
            *bwd_in.shape[:2], layer.out_height, layer.out_width, -1, bwd_in.shape[-1]
        )
        h, c, fwd_out, bwd_out = conv_update(
            rnn, h, c, fwd_in, bwd_in, layer, spec.model
        )
    state.h[index], state.c[index] = h, c
    return fwd_out, bwd_out


# --- one step of online learning --------------------------------------------


def input_messages(x: Tensor, message_size: int) -> Tensor:
    """Pixels [P, N, H, W, C] -> forward messages [P, N, H, W, C, M], value in ch 0."""
    msg = x.new_zeros(*x.shape, message_size)
    msg[..., 0] = x
    return msg


def error_messages(
    logits: Tensor, labels: Tensor, message_size: int, feed_label: bool
) -> Tensor:
    """Backward messages [P, N, K, M] into the last layer (DESIGN.md 3.2 step 2).

    Channel 0: d(batch-mean cross-entropy)/d(logit) = (softmax - y) / N;
    channel 1: the one-hot label when `feed_label`.
    """
    N = logits.shape[1]
    msg = logits.new_zeros(*logits.shape, message_size)
    msg[..., 0] = (torch.softmax(logits, dim=-1) - labels) / N
    if feed_label:
        msg[..., 1] = labels
    return msg


def bound_logits(raw: Tensor, bound: float) -> Tensor:
    return bound * torch.tanh(raw / bound)


def merge_batch(state: State, state_size: int) -> None:
    """Average the first half of every state's features over the batch (3.2.6)."""
    half = state_size // 2
    for states in (state.h, state.c):
        for i, s in enumerate(states):
            shared = s[..., :half].mean(dim=1, keepdim=True).expand_as(s[..., :half])
            states[i] = torch.cat([shared, s[..., half:]], dim=-1)


def step(
    spec: NetworkSpec, params: Params, state: State, x: Tensor, y: Tensor
) -> Tensor:
    """One online-learning step: predict y from x, then receive the error.

    Args:
        state: updated in place.
        x: [P, N, H, W, C] inputs; y: [P, N, K] one-hot labels.

    Returns:
        The (bounded) logits [P, N, K] predicted before seeing y.
    """
    model, last = spec.model, len(spec.layers) - 1

    # Forward tick, first layer to last; backward messages travel one tick later.
    fwd = input_messages(x, model.message_size)
    fwd_inputs = []
    for index in range(len(spec.layers)):
        fwd_inputs.append(fwd)
        fwd, bwd = layer_update(
            spec, index, params, state, fwd, state.backward_in[index]
        )
        if index > 0:
            state.backward_in[index - 1] = bwd
    logits = bound_logits(fwd[..., model.output_index], model.output_bound)

    # The error of this prediction: fed back now (backward pass) or next step.
    error = error_messages(logits, y, model.message_size, model.feed_label)
    if not model.backward_pass:
        state.backward_in[last] = error
    else:
        bwd = error
        for index in range(last, -1, -1):
            _, bwd = layer_update(
                spec, index, params, state, fwd_inputs[index], bwd, backward=True
            )
            if index > 0:
                state.backward_in[index - 1] = bwd
        # The last layer's incoming error stays zero: it was consumed here.

    if x.shape[1] > 1:
        merge_batch(state, model.state_size)
    return logits


def run_episode(
    spec: NetworkSpec,
    params: Params,
    x: Tensor,
    y: Tensor,
    state: State,
) -> Tensor:
    """Run an episode of online learning and return every prediction.

    Args:
        params: meta-parameters with a leading P axis (or 1, broadcast).
        x: [P, T, N, H, W, C] inputs; y: [P, T, N, K] one-hot labels.
        state: the initial state (see `initial_state`), updated in place.

    Returns:
        logits [P, T, N, K].
    """
    logits = [step(spec, params, state, x[:, t], y[:, t]) for t in range(x.shape[1])]
    return torch.stack(logits, dim=1)
