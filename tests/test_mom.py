"""Mixture-of-Memories (Du et al. 2025) against its equations, written here memory by memory and token by token:
a routed memory takes a gated delta step, a skipped one is left as it was, the read-out weighs the routed
memories by their renormalised router scores (the shared memory by 1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rnnzoo
from forms import assert_forms_agree
from rnnzoo.layers import MixtureOfMemories

D_MODEL = 8


def make(**kw) -> MixtureOfMemories:
    torch.manual_seed(0)
    layer = rnnzoo.create("mom", d_model=D_MODEL, **kw).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


def causal_conv(u: torch.Tensor, conv) -> torch.Tensor:
    """Depthwise causal convolution of ``u`` ``(batch, T, channels)`` from a zero history."""
    w = conv.weight.squeeze(1)  # (channels, width)
    padded = F.pad(u, (0, 0, w.shape[1] - 1, 0))
    return sum(padded[:, i : i + u.shape[1]] * w[:, i] for i in range(w.shape[1]))


@torch.no_grad()
def paper_loop(layer: MixtureOfMemories, x: torch.Tensor):
    B, T, _ = x.shape
    H, M, R = layer.num_heads, layer.total_memories, layer.num_memories
    dk, dv = layer.head_k, layer.head_v
    shared = int(layer.shared_memory)
    q = F.silu(causal_conv(x @ layer.q_proj.weight.T, layer.q_conv)).view(B, T, H, dk)
    k = F.silu(causal_conv(x @ layer.k_proj.weight.T, layer.k_conv)).view(B, T, M, H, dk)
    v = F.silu(causal_conv(x @ layer.v_proj.weight.T, layer.v_conv)).view(B, T, M, H, dv)
    q, k = (u * torch.rsqrt(u.square().sum(-1, keepdim=True) + 1e-6) for u in (q, k))  # fla's l2norm
    beta = torch.sigmoid(x @ layer.b_proj.weight.T).view(B, T, M, H) * (2 if layer.negative_eigenvalues else 1)
    dt = F.softplus(x @ layer.a_proj.weight.T + layer.dt_bias).view(B, T, M, H)
    alpha = torch.exp(-dt * layer.A_log.exp().view(M, H))
    S = torch.zeros(B, M, H, dk, dv, dtype=x.dtype)
    outs = []
    for t in range(T):
        scores = torch.softmax(x[:, t] @ layer.router.weight.T, -1)
        o = torch.zeros(B, H, dv, dtype=x.dtype)
        for b in range(B):
            top = scores[b].topk(layer.top_k).indices.tolist()
            for m in range(M):
                routed = m - shared
                if m < shared or routed in top:
                    for h in range(H):
                        kk, vv, bb = k[b, t, m, h], v[b, t, m, h], beta[b, t, m, h]
                        S[b, m, h] = alpha[b, t, m, h] * (S[b, m, h] - bb * torch.outer(kk, kk @ S[b, m, h])) + bb * torch.outer(kk, vv)
                    w = 1.0 if m < shared else scores[b, routed] / scores[b, top].sum()
                    o[b] += w * torch.einsum("hk,hkv->hv", q[b, t], S[b, m])
        outs.append(o)
    o = torch.stack(outs, 2)  # (B, H, T, dv)
    o = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + layer.norm.eps) * layer.norm.weight
    y = (o.transpose(1, 2).flatten(2) * F.silu(x @ layer.g_proj.weight.T)) @ layer.out_proj.weight.T
    return y, S.flatten(1, 2)


@pytest.mark.parametrize("length", [1, 7, 33])
@pytest.mark.parametrize("kw", [{}, {"shared_memory": False, "top_k": 1, "negative_eigenvalues": True, "chunk_size": 5}])
def test_every_form_follows_the_equations(length, kw):
    layer = make(**kw)
    x = torch.randn(2, length, D_MODEL, dtype=torch.float64)
    want_y, want_S = paper_loop(layer, x)
    for mode in ("chunk", "recurrent"):
        y, state = layer(x, mode=mode)
        torch.testing.assert_close(y, want_y, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(state.S, want_S, rtol=1e-9, atol=1e-10)


def test_forms_agree_with_gradients():
    layer = make(chunk_size=4)
    assert_forms_agree(layer, torch.randn(2, 19, D_MODEL, dtype=torch.float64), ["chunk", "recurrent", "split", "step"],
                       rtol=1e-8, atol=1e-10)  # fmt: skip


def test_a_skipped_memory_keeps_its_state():
    layer = make(top_k=1)
    x = torch.randn(3, 5, D_MODEL, dtype=torch.float64)
    _, state = layer(x)
    x_t = torch.randn(3, D_MODEL, dtype=torch.float64)
    _, after = layer.step(x_t, state)
    written, weight = layer.routing(x_t[:, None])
    per_memory = (after.S - state.S).unflatten(1, (layer.total_memories, layer.num_heads)).abs().amax((2, 3, 4))
    assert (per_memory[written[:, 0] == 0] == 0).all()
    assert (per_memory[written[:, 0] == 1] > 0).all()
    torch.testing.assert_close(weight[:, 0, 1:].sum(-1), torch.ones(3, dtype=torch.float64))  # routed weights sum to 1
    assert (weight[:, 0, 0] == 1).all()  # the shared memory


def test_bad_arguments_name_themselves():
    for kw, name in (({"top_k": 5}, "top_k"), ({"num_memories": 0}, "num_memories"), ({"num_heads": 3}, "num_heads")):
        with pytest.raises(ValueError, match=name):
            rnnzoo.create("mom", d_model=8, **kw)
