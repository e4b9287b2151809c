"""mLSTM: the stabilised chunkwise kernel equals the loop, and the layer equals the paper's equations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import rnnzoo
from forms import assert_float32_close, strong_decay_cases
from rnnzoo.ops.gated_linear_attention import default_chunk_size
from rnnzoo.ops.mlstm import mlstm_chunkwise, mlstm_operator, mlstm_reference


def inputs(batch, heads, length, d_k, d_v, gate_scale, seed, with_state):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    q, k, v = rand(batch, heads, length, d_k), rand(batch, heads, length, d_k), rand(batch, heads, length, d_v)
    log_f = F.logsigmoid(3 * rand(batch, heads, length))
    log_i = gate_scale * rand(batch, heads, length)
    state = (rand(batch, heads, d_k, d_v), rand(batch, heads, d_k), gate_scale * rand(batch, heads)) if with_state else None
    return (q, k, v, log_f, log_i), state


def outputs_and_grads(fn, tensors, state, **kw):
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    state_leaves = None if state is None else tuple(t.clone().requires_grad_(True) for t in state)
    h, (C, n, m) = fn(*leaves, state_leaves, **kw)
    gen = torch.Generator().manual_seed(3)
    loss = (h * torch.randn(h.shape, generator=gen, dtype=h.dtype)).sum() + (C * torch.randn(C.shape, generator=gen, dtype=C.dtype)).sum() + n.sum()
    wrt = leaves + ([] if state_leaves is None else list(state_leaves))  # m too: it scales the incoming state
    return [h, C, n, m, *torch.autograd.grad(loss, wrt)]


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 2),
    heads=st.integers(1, 3),
    length=st.integers(1, 140),
    d_k=st.integers(1, 5),
    d_v=st.integers(1, 4),
    gate_scale=st.sampled_from([0.1, 1.0, 30.0]),
    chunk=st.sampled_from([1, 5, 16, 64]),
    with_state=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_chunkwise_matches_loop(batch, heads, length, d_k, d_v, gate_scale, chunk, with_state, seed):
    tensors, state = inputs(batch, heads, length, d_k, d_v, gate_scale, seed, with_state)
    got = outputs_and_grads(mlstm_chunkwise, tensors, state, chunk_size=chunk)
    want = outputs_and_grads(mlstm_reference, tensors, state)
    for i, (x, y) in enumerate(zip(got, want)):
        # absolute error relative to the tensor's scale: with input gates of ±30 a gradient's entries cancel terms
        # of e^30 size, so small entries carry errors of ~1e-11 x the largest one (float64)
        atol = 1e-10 * max(1.0, y.abs().max().item())
        torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-8, atol=atol, msg=lambda m: f"output {i}: {m}")


def test_huge_input_gates_stay_finite():
    """ĩ up to 500 would overflow exp() in float32 without the stabiliser."""
    tensors, _ = inputs(1, 2, 300, 4, 4, 500.0, 0, False)
    h, (C, n, m) = mlstm_chunkwise(*(t.float() for t in tensors))
    assert all(torch.isfinite(t).all() for t in (h, C, n, m))
    want, _ = mlstm_reference(*tensors)
    torch.testing.assert_close(h.double(), want, rtol=1e-4, atol=1e-4)


def test_gradcheck():
    tensors, state = inputs(1, 2, 19, 3, 2, 2.0, 1, True)
    leaves = [t.requires_grad_(True) for t in tensors]
    fn = lambda *t: mlstm_chunkwise(*t, state, chunk_size=8)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, leaves)


def test_operator_times_values_is_the_output():
    (q, k, v, log_f, log_i), _ = inputs(2, 3, 40, 4, 5, 3.0, 2, False)
    M = mlstm_operator(q, k, log_f, log_i)
    assert (M.triu(1) == 0).all()
    torch.testing.assert_close(M @ v, mlstm_reference(q, k, v, log_f, log_i)[0])


def test_layer_matches_paper_equations():
    """The block, written out per step without the stabiliser (float64, moderate gates)."""
    torch.manual_seed(0)
    layer = rnnzoo.create("mlstm", d_model=8, num_heads=2).double()
    with torch.no_grad():
        layer.gates.weight.normal_(0, 0.3)
    x = torch.randn(2, 60, 8, dtype=torch.float64)
    y, _ = layer(x)

    x_in, z = layer.up_proj(x).chunk(2, -1)
    w = layer.conv.weight[:, 0]  # (d_inner, K)
    padded = F.pad(x_in, (0, 0, layer.d_conv - 1, 0))
    u = F.silu(sum(w[:, j] * padded[:, j : j + 60] for j in range(layer.d_conv)) + layer.conv.bias)
    q, k, v = layer.q_proj(u), layer.k_proj(u) / math.sqrt(layer.d_head), layer.v_proj(x_in)
    i_pre, f_pre = layer.gates(torch.cat([q, k, v], -1)).chunk(2, -1)  # (B, T, H)
    H, D = layer.num_heads, layer.d_head
    C = torch.zeros(2, H, D, D, dtype=torch.float64)
    n = torch.zeros(2, H, D, dtype=torch.float64)
    hs = []
    for t in range(60):
        q_t, k_t, v_t = (a[:, t].view(2, H, D) for a in (q, k, v))
        f, i = torch.sigmoid(f_pre[:, t]), torch.exp(i_pre[:, t])
        C = f[..., None, None] * C + i[..., None, None] * k_t[..., :, None] * v_t[..., None, :]
        n = f[..., None] * n + i[..., None] * k_t
        num = torch.einsum("bhk,bhkv->bhv", q_t, C)
        hs.append((num / (n * q_t).sum(-1).abs().clamp(min=1)[..., None]).flatten(1))
    h = torch.stack(hs, 1)
    h = layer.norm(h.flatten(0, 1)).view_as(h)
    want = layer.down_proj((h + layer.skip * u) * F.silu(z))
    torch.testing.assert_close(y, want)


def test_bad_arguments():
    with pytest.raises(ValueError, match="must be divisible by `num_heads`=3"):
        rnnzoo.create("mlstm", d_model=8, num_heads=3)
    q = torch.randn(1, 2, 5, 3)
    with pytest.raises(ValueError, match="`log_f` must have shape"):
        mlstm_chunkwise(q, q, q, torch.zeros(1, 2, 4), torch.zeros(1, 2, 5))
    with pytest.raises(ValueError, match="`log_f` must be <= 0"):
        mlstm_reference(q, q, q, torch.ones(1, 2, 5), torch.zeros(1, 2, 5))
    with pytest.raises(ValueError, match="`state` must be"):
        mlstm_chunkwise(q, q, q, torch.zeros(1, 2, 5), torch.zeros(1, 2, 5), (torch.zeros(1, 2, 3, 3),) * 3)


@pytest.mark.parametrize("length", [1, 40])
def test_automatic_chunk_is_the_explicit_one(length):
    """The default chunk is engine 3's choice for a scalar decay (16 at T = 40 with thin heads, so
    T is padded to 48); it gives what that chunk given explicitly gives, and the loop's results."""
    tensors, state = inputs(2, 3, length, 6, 5, 1.0, length, True)
    chunk = min(default_chunk_size(length, False, 6, 6), length)
    auto = outputs_and_grads(mlstm_chunkwise, tensors, state)
    explicit = outputs_and_grads(mlstm_chunkwise, tensors, state, chunk_size=chunk)
    for x, y in zip(auto, explicit):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    for x, y in zip(auto, outputs_and_grads(mlstm_reference, tensors, state)):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("case", ["reset", "alternating"])
def test_float32_stays_accurate_after_a_strong_forget_inside_a_chunk(case):
    (q, k, v, _, log_i), state = inputs(2, 2, 64, 8, 8, 1.0, 0, True)
    log_f = strong_decay_cases((2, 2, 64))[case]
    want, (C, _, m) = mlstm_reference(q, k, v, log_f, log_i, state)
    got, (C32, _, m32) = mlstm_chunkwise(*(t.float() for t in (q, k, v, log_f, log_i)), tuple(s.float() for s in state))
    assert_float32_close(got, want)
    assert_float32_close(C32 * m32.double().exp()[..., None, None], C * m.exp()[..., None, None])  # the true memory
    operator = mlstm_operator(q.float(), k.float(), log_f.float(), log_i.float())
    assert_float32_close(operator @ v.float(), mlstm_reference(q, k, v, log_f, log_i)[0])
