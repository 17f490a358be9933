"""The batched VSML learner against a naive per-cell loop (DESIGN.md 3.1-3.4)."""

import itertools

import pytest
import torch

from vsml.config import ConvLayerConfig, ModelConfig
from vsml.model import (
    DenseTicks,
    build_network,
    init_params,
    initial_state,
    run_episode,
)

# --- a naive reference, one sub-LSTM at a time (float64) -------------------


def naive_cell(rnn, x, h, c):
    """One sub-LSTM: x (2M), h, c (S) -> h, c."""
    z = torch.cat([x, h]) @ rnn["lstm_w"] + rnn["lstm_b"]
    S = h.shape[0]
    i, g, f, o = z[:S], z[S : 2 * S], z[2 * S : 3 * S], z[3 * S :]
    c = torch.sigmoid(f + 5) * c + torch.sigmoid(i - 5) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def naive_readout(rnn, h, which, layer_norm):
    out = h @ rnn[f"{which}_w"] + rnn[f"{which}_b"]
    if layer_norm:
        mean, var = out.mean(), out.var(unbiased=False)
        out = (out - mean) / torch.sqrt(var + 1e-5)
        out = out * rnn[f"{which}_ln_scale"] + rnn[f"{which}_ln_offset"]
    return out


def pool(values, aggregation):
    total = sum(values)
    return total / len(values) if aggregation == "mean" else total


def naive_dense(rnn, h, c, f, g, cfg):
    """h, c [A, B, S]; f [A, M]; g [B, M] -> h, c, f_next [B, M], g_next [A, M]."""
    A, B = h.shape[:2]
    h, c = h.clone(), c.clone()
    for a in range(A):
        for b in range(B):
            for _ in range(cfg.num_micro_ticks):
                h[a, b], c[a, b] = naive_cell(
                    rnn, torch.cat([f[a], g[b]]), h[a, b], c[a, b]
                )
    fo = [
        [naive_readout(rnn, h[a, b], "fwd", cfg.layer_norm) for b in range(B)]
        for a in range(A)
    ]
    bo = [
        [naive_readout(rnn, h[a, b], "bwd", cfg.layer_norm) for b in range(B)]
        for a in range(A)
    ]
    f_next = torch.stack(
        [pool([fo[a][b] for a in range(A)], cfg.aggregation) for b in range(B)]
    )
    g_next = torch.stack(
        [pool([bo[a][b] for b in range(B)], cfg.aggregation) for a in range(A)]
    )
    return h, c, f_next, g_next


def naive_conv(rnn, h, c, f, g, layer, cfg):
    """h, c [k, k, Cin, Cout, S]; f [H, W, Cin, M]; g [Ho, Wo, Cout, M]."""
    k, s = layer.kernel, layer.stride
    H, W, Cin, M = f.shape
    Ho, Wo, Cout = layer.out_height, layer.out_width, layer.out_channels
    left, _, top, _ = layer.padding()
    zero = torch.zeros(M, dtype=f.dtype)
    for _ in range(cfg.num_micro_ticks):
        new_h, new_c = torch.zeros_like(h), torch.zeros_like(c)
        per_pos = {}
        for y in range(Ho):
            for x in range(Wo):
                for i in range(k):
                    for j in range(k):
                        yy, xx = y * s + i - top, x * s + j - left
                        inside = 0 <= yy < H and 0 <= xx < W
                        for ci in range(Cin):
                            msg_f = f[yy, xx, ci] if inside else zero
                            for co in range(Cout):
                                hq, cq = naive_cell(
                                    rnn,
                                    torch.cat([msg_f, g[y, x, co]]),
                                    h[i, j, ci, co],
                                    c[i, j, ci, co],
                                )
                                per_pos[y, x, i, j, ci, co] = hq
                                new_h[i, j, ci, co] += hq / (Ho * Wo)
                                new_c[i, j, ci, co] += cq / (Ho * Wo)
        h, c = new_h, new_c
    f_next = torch.zeros(Ho, Wo, Cout, M, dtype=f.dtype)
    contributions = {}
    for y in range(Ho):
        for x in range(Wo):
            for co in range(Cout):
                outs = [
                    naive_readout(
                        rnn, per_pos[y, x, i, j, ci, co], "fwd", cfg.layer_norm
                    )
                    for i in range(k)
                    for j in range(k)
                    for ci in range(Cin)
                ]
                f_next[y, x, co] = pool(outs, cfg.aggregation)
            for i in range(k):
                for j in range(k):
                    yy, xx = y * s + i - top, x * s + j - left
                    if not (0 <= yy < H and 0 <= xx < W):
                        continue
                    for ci in range(Cin):
                        outs = [
                            naive_readout(
                                rnn, per_pos[y, x, i, j, ci, co], "bwd", cfg.layer_norm
                            )
                            for co in range(Cout)
                        ]
                        contributions.setdefault((yy, xx, ci), []).append(
                            pool(outs, cfg.aggregation)
                        )
    g_next = torch.zeros(H, W, Cin, M, dtype=f.dtype)
    for (yy, xx, ci), outs in contributions.items():
        g_next[yy, xx, ci] = pool(outs, cfg.aggregation)
    return h, c, f_next, g_next


def naive_layer(spec, index, rnn, h, c, f, g):
    layer = spec.layers[index]
    if hasattr(layer, "kernel"):
        f = f.reshape(layer.height, layer.width, layer.in_channels, -1)
        g = g.reshape(layer.out_height, layer.out_width, layer.out_channels, -1)
        return naive_conv(rnn, h, c, f, g, layer, spec.model)
    return naive_dense(
        rnn, h, c, f.reshape(layer.inputs, -1), g.reshape(layer.outputs, -1), spec.model
    )


def naive_episode(spec, params, h0, c0, x, y):
    """The online protocol of DESIGN.md 3.2, one member and example at a time."""
    cfg = spec.model
    P, T, N = x.shape[:3]
    L = len(spec.layers)
    M, S = cfg.message_size, cfg.state_size
    out = torch.zeros(P, T, N, spec.num_classes, dtype=x.dtype)
    for p in range(P):

        def rnn_for(layer, backward=False, p=p):
            idx = layer if cfg.layerwise_rnns else 0
            prefix = (
                "bwd" if backward and cfg.separate_backward_rnn else "fwd"
            ) + f"{idx}."
            return {
                k[len(prefix) :]: v[p]
                for k, v in params.items()
                if k.startswith(prefix)
            }

        h = [[h0[li][p, n].clone() for li in range(L)] for n in range(N)]
        c = [[c0[li][p, n].clone() for li in range(L)] for n in range(N)]
        bwd_in = [[None] * L for _ in range(N)]
        for t in range(T):
            for n in range(N):
                f = torch.zeros(*x.shape[3:], M, dtype=x.dtype)
                f[..., 0] = x[p, t, n]
                fwd_inputs = []
                for li in range(L):
                    fwd_inputs.append(f)
                    g = bwd_in[n][li]
                    if g is None:
                        g = torch.zeros(
                            _out_positions(spec.layers[li]), M, dtype=x.dtype
                        )
                    h[n][li], c[n][li], f, g_next = naive_layer(
                        spec, li, rnn_for(li), h[n][li], c[n][li], f, g
                    )
                    if li > 0:
                        bwd_in[n][li - 1] = g_next
                logits = f[..., cfg.output_index].reshape(-1)
                logits = cfg.output_bound * torch.tanh(logits / cfg.output_bound)
                out[p, t, n] = logits
                err = torch.zeros(spec.num_classes, M, dtype=x.dtype)
                err[:, 0] = (torch.softmax(logits, 0) - y[p, t, n]) / N
                if cfg.feed_label:
                    err[:, 1] = y[p, t, n]
                if cfg.backward_pass:
                    g = err
                    for li in range(L - 1, -1, -1):
                        h[n][li], c[n][li], _, g = naive_layer(
                            spec,
                            li,
                            rnn_for(li, True),
                            h[n][li],
                            c[n][li],
                            fwd_inputs[li],
                            g,
                        )
                        if li > 0:
                            bwd_in[n][li - 1] = g
                    bwd_in[n][L - 1] = torch.zeros_like(err)
                else:
                    bwd_in[n][L - 1] = err
            if N > 1:
                for states in (h, c):
                    for li in range(L):
                        shared = sum(states[n][li][..., : S // 2] for n in range(N)) / N
                        for n in range(N):
                            states[n][li] = torch.cat(
                                [shared, states[n][li][..., S // 2 :]], -1
                            )
    return out


def _out_positions(layer):
    if hasattr(layer, "kernel"):
        return layer.out_height * layer.out_width * layer.out_channels
    return layer.outputs


# --- the tests ------------------------------------------------------------

CASES = {
    "one_dense": dict(),
    "two_dense": dict(hidden_layers=[3]),
    "conv": dict(conv_layers=[ConvLayerConfig(channels=2, kernel_size=3, stride=2)]),
    "backward_pass": dict(hidden_layers=[3], backward_pass=True),
    "separate_backward": dict(
        hidden_layers=[3], backward_pass=True, separate_backward_rnn=True
    ),
    "no_feed_label": dict(feed_label=False),
    "layerwise": dict(hidden_layers=[3], layerwise_rnns=True),
    "layer_norm": dict(hidden_layers=[3], layer_norm=True),
    "sum_aggregation": dict(hidden_layers=[3], aggregation="sum"),
    "conv_backward_sum": dict(
        conv_layers=[ConvLayerConfig(channels=2, kernel_size=2, stride=1)],
        backward_pass=True,
        aggregation="sum",
        layer_norm=True,
    ),
}


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_batched_learner_matches_naive_loop(case, batch):
    """The batched learner's logits equal a per-cell loop (float64, allclose)."""
    torch.set_default_dtype(torch.float64)
    try:
        cfg = ModelConfig(
            message_size=4, state_size=6, num_micro_ticks=2, **CASES[case]
        )
        shape = (4, 3, 1) if cfg.conv_layers else (2, 3, 1)
        spec = build_network(cfg, shape, num_classes=3)
        gen = torch.Generator().manual_seed(0)
        params = init_params(spec, gen, population=2)
        # Scale up so gates and read-outs are far from their resting values.
        params = {
            k: v * 3 + 0.1 * torch.randn(v.shape, generator=gen)
            for k, v in params.items()
        }
        T = 3
        x = torch.randn(2, T, batch, *shape, generator=gen)
        y = torch.nn.functional.one_hot(
            torch.randint(0, 3, (2, T, batch), generator=gen), 3
        ).double()
        state = initial_state(spec, 2, batch, gen)
        h0 = [h.clone() for h in state.h]
        c0 = [c.clone() for c in state.c]
        got = run_episode(spec, params, x, y, state)
        want = naive_episode(spec, params, h0, c0, x, y)
        assert got.shape == (2, T, batch, 3)
        assert torch.allclose(got, want, atol=1e-9, rtol=1e-7)
        assert got.abs().max() > 1e-3  # the comparison is not between zeros
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("ticks", [1, 2, 3])
def test_dense_ticks_gradient_matches_autograd_through_the_cells(ticks):
    """DenseTicks' hand-written backward equals autograd through naive cells."""
    gen = torch.Generator().manual_seed(ticks)
    P, N, A, B, M, S = 2, 2, 3, 4, 2, 4

    def draw(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    rnn = {"lstm_w": draw(P, 2 * M + S, 4 * S), "lstm_b": draw(P, 4 * S)}
    f, g = draw(P, N, A, M), draw(P, N, B, M)
    h, c = draw(P, N, A, B, S), draw(P, N, A, B, S)
    leaves = [rnn["lstm_w"], rnn["lstm_b"], f, g, h, c]
    for leaf in leaves:
        leaf.requires_grad_()
    weights = draw(P, N, A, B, S)  # a loss that weights every state entry

    # DenseTicks, fed the row and column terms as the dense layer forms them.
    w = rnn["lstm_w"]
    row = torch.einsum("pnam,pmg->pnag", f, w[:, :M]) + rnn["lstm_b"][:, None, None]
    col = torch.einsum("pnbm,pmg->pnbg", g, w[:, M : 2 * M])
    h_new, c_new = DenseTicks.apply(row, col, w[:, -S:], h, c, ticks)
    fast = torch.autograd.grad((weights * (h_new + 2 * c_new)).sum(), leaves)

    # The naive reference: every cell on its own, autograd through all of it.
    loss = 0
    for p, n, a, b in itertools.product(range(P), range(N), range(A), range(B)):
        cell = {k: v[p] for k, v in rnn.items()}
        x = torch.cat([f[p, n, a], g[p, n, b]])
        hh, cc = h[p, n, a, b], c[p, n, a, b]
        for _ in range(ticks):
            hh, cc = naive_cell(cell, x, hh, cc)
        loss = loss + (weights[p, n, a, b] * (hh + 2 * cc)).sum()
    slow = torch.autograd.grad(loss, leaves)
    for got, want in zip(fast, slow, strict=True):
        assert torch.allclose(got, want, atol=1e-10)
