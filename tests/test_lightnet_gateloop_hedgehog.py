"""LightNet, GateLoop and linear attention's Hedgehog feature map against float64 loops written from the papers'
equations (not the engine): the parallel form (chunks that do not divide T) and ``step`` give the loop's outputs
and final state; LightNet's running log-sum-exp continues through the state; the parallel form's gradients are
the reference loop's. Also engine 3 with complex decays (GateLoop's), against its reference loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rnnzoo
from forms import assert_forms_agree, assert_matches, random_state, stepped
from rnnzoo.ops import gated_linear_attention, gated_linear_attention_reference

D_MODEL = 8
LENGTHS = [1, 7, 33]
CHUNKS = [4, 5]  # divide none of the lengths above 1
TIGHT = dict(rtol=1e-10, atol=1e-12)
HEDGEHOG = {"feature_map": "hedgehog"}


def make(name: str, chunk_size: int | None = None, **kw):
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=D_MODEL, chunk_size=chunk_size, **kw).double()
    with torch.no_grad():  # away from the initialisation: norms' weights, a learned (not identity) Hedgehog map
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


def inputs(length: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, length, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def heads(u: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(batch, time, H·d)`` -> ``(batch, time, H, d)``."""
    return u.unflatten(-1, (num_heads, -1))


# -- the papers' equations, one token at a time ---------------------------------------------------------------


def lightnet_loop(layer, x, z0=None, S0=None):
    """z_t = log(e^{z_0} + Σ_{s<=t} e^{k_s}), α_t = e^{z_{t-1} - z_t}, k'_t = e^{k_t - z_t},
    S_t = Diag(α_t) S_{t-1} + k'_t v_t^T, o_t = S_t^T q_t (q = SiLU(W_q x) / sqrt(d)),
    y_t = W_o (RMSNorm(o_t) ⊙ SiLU(W_g x_t))."""
    H, d = layer.num_heads, layer.head_dim
    q = heads(F.silu(x @ layer.q_proj.weight.T), H) / d**0.5
    k, v = heads(x @ layer.k_proj.weight.T, H), heads(x @ layer.v_proj.weight.T, H)
    batch = x.shape[0]
    z0 = torch.full((batch, H, d), float("-inf"), dtype=x.dtype) if z0 is None else z0
    S = torch.zeros(batch, H, d, d, dtype=x.dtype) if S0 is None else S0
    z_prev, outs = z0, []
    for t in range(x.shape[1]):
        z = torch.logsumexp(torch.cat([z0[:, None], k[:, : t + 1]], 1), 1)  # the whole prefix, every step
        alpha, k_feat = torch.exp(z_prev - z), torch.exp(k[:, t] - z)
        S = alpha[..., None] * S + k_feat[..., None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S).flatten(1))
        z_prev = z
    o = torch.stack(outs, 1)
    o = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + layer.norm.eps) * layer.norm.weight
    gate = x @ layer.g_proj[0].weight.T @ layer.g_proj[1].weight.T
    return (o * F.silu(gate)) @ layer.out_proj.weight.T, {"z": z_prev, "S": S}


def gateloop_loop(layer, x):
    """α_t = σ(W_a x_t + b_a) e^{i (W_θ x_t + b_θ)}, S_t = Diag(α_t) S_{t-1} + k_t v_t^T, o_t = S_t^T q_t (q, k
    complex), y_t = W_o (RMSNorm_h(Re o_t) ⊙ SiLU(W_g x_t))."""
    H, dk, dv = layer.num_heads, layer.head_k, layer.head_v
    cplx = lambda u: heads(torch.complex(*u.chunk(2, -1)), H)
    q, k = cplx(x @ layer.q_proj.weight.T) / dk**0.5, cplx(x @ layer.k_proj.weight.T)
    v = heads(x @ layer.v_proj.weight.T, H)
    magnitude, phase = (heads(u, H) for u in layer.a_proj(x).chunk(2, -1))
    alpha = torch.sigmoid(magnitude) * torch.exp(1j * phase)
    S = torch.zeros(x.shape[0], H, dk, dv, dtype=torch.complex128)
    outs = []
    for t in range(x.shape[1]):
        S = alpha[:, t, ..., None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        o = torch.einsum("bhk,bhkv->bhv", q[:, t], S).real
        outs.append(o * torch.rsqrt(o.square().mean(-1, keepdim=True) + layer.norm.eps) * layer.norm.weight)
    o = torch.stack(outs, 1).flatten(2)
    return (o * F.silu(x @ layer.g_proj.weight.T)) @ layer.out_proj.weight.T, {"S": S}


def hedgehog_loop(layer, x):
    """φ(u) = [softmax(W u + b), softmax(-(W u + b))] per head, S_t = S_{t-1} + φ(k_t) v_t^T,
    z_t = z_{t-1} + φ(k_t), o_t = S_t^T φ(q_t) / (φ(q_t)·z_t + 1e-6), y_t = W_o o_t."""
    H = layer.num_heads

    def phi(u):
        u = torch.einsum("bthi,hoi->btho", heads(u, H), layer.feature_weight) + layer.feature_bias[:, 0]
        return torch.cat([torch.softmax(u, -1), torch.softmax(-u, -1)], -1)

    q, k = phi(layer.q_proj(x)), phi(layer.k_proj(x))
    v = heads(layer.v_proj(x), H)
    S = torch.zeros(x.shape[0], H, 2 * layer.head_dim, layer.head_dim, dtype=x.dtype)
    z = torch.zeros(x.shape[0], H, 2 * layer.head_dim, dtype=x.dtype)
    outs = []
    for t in range(x.shape[1]):
        S, z = S + k[:, t, :, :, None] * v[:, t, :, None, :], z + k[:, t]
        numerator = torch.einsum("bhk,bhkv->bhv", q[:, t], S)
        outs.append((numerator / ((q[:, t] * z).sum(-1, keepdim=True) + 1e-6)).flatten(1))
    return layer.out_proj(torch.stack(outs, 1)), {"S": torch.cat([S, z[..., None]], -1)}


CASES = {
    "lightnet": ("lightnet", {}, lightnet_loop),
    "gateloop": ("gateloop", {}, gateloop_loop),
    "hedgehog": ("linear_attention", HEDGEHOG, hedgehog_loop),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("length", LENGTHS)
def test_parallel_form_and_step_are_the_papers_loop(case, length):
    name, kw, loop = CASES[case]
    x = inputs(length)
    with torch.no_grad():
        want_y, want_state = loop(make(name, **kw), x)
        for chunk in CHUNKS:
            layer = make(name, chunk_size=chunk, **kw)
            assert_matches(*layer(x, mode=layer.parallel_modes[0]), want_y, want_state, **TIGHT)
        assert_matches(*stepped(layer, x), want_y, want_state, **TIGHT)
        assert_matches(*layer(x, mode="recurrent"), want_y, want_state, **TIGHT)


@pytest.mark.parametrize("case", sorted(CASES))
def test_parallel_gradients_are_the_reference_loops(case):
    name, kw, _ = CASES[case]
    layer = make(name, chunk_size=5, **kw)
    assert_forms_agree(layer, inputs(33), ["recurrent", *layer.parallel_modes], rtol=1e-9, atol=1e-10)


def test_hedgehog_forms_agree():
    """The option the registry-wide tests do not see: every form, split and step, gradients included."""
    layer = make("linear_attention", **HEDGEHOG)
    for length in (1, 13, 67):
        assert_forms_agree(layer, inputs(length), ["recurrent", "chunk", "split", "step"])


# -- LightNet's running log-sum-exp in the state --------------------------------------------------------------


@pytest.mark.parametrize("split", [1, 6, 20, 32])
def test_lightnet_split_through_the_state_is_one_pass(split):
    layer = make("lightnet", chunk_size=5)
    x = inputs(33)
    with torch.no_grad():
        want_y, want_state = layer(x)
        first, state = layer(x[:, :split])
        second, state = layer(x[:, split:], state)
        stepped_y, stepped_state = stepped(layer, x[:, split:], layer(x[:, :split])[1])
    for y, s in ((torch.cat([first, second], 1), state), (torch.cat([first, stepped_y], 1), stepped_state)):
        assert_matches(y, s, want_y, want_state.tensors(), **TIGHT)


def test_lightnet_continues_from_a_given_state():
    """From a state with a finite ``z`` (a prefix already seen), the decay of the first token is
    ``e^{z_0 - z_1}``, not 0: the parallel form and step follow the loop started from that state."""
    layer = make("lightnet", chunk_size=4)
    x = inputs(7)
    start = random_state(layer.init_state(2), "z", "S")
    with torch.no_grad():
        want_y, want_state = lightnet_loop(layer, x, start.z, start.S)
        assert_matches(*layer(x, start), want_y, want_state, **TIGHT)
        assert_matches(*stepped(layer, x, start), want_y, want_state, **TIGHT)


def test_lightnet_state_starts_empty_and_keeps_large_keys_exact():
    """``init_state`` holds ``z = -inf`` (no tokens): the same as no state. Keys of 1e4 (``z`` as large) give
    finite outputs that match the loop in float64: no difference of two large log-sum-exps is taken."""
    layer = make("lightnet", chunk_size=5)
    assert torch.isneginf(layer.init_state(2).z).all()
    x = inputs(33)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, layer.init_state(2))[0], layer(x)[0], rtol=0, atol=0)
        layer.k_proj.weight.mul_(1e4)
        want_y, want_state = lightnet_loop(layer, x)
        y, state = layer(x)
    assert state.z.abs().max() > 1e3 and torch.isfinite(y).all()
    torch.testing.assert_close(y, want_y, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(state.S, want_state["S"], rtol=1e-9, atol=1e-10)


# -- engine 3 with complex decays --------------------------------------------------------------------------------


def complex_randn(*shape, gen):
    return torch.complex(*(torch.randn(*shape, generator=gen, dtype=torch.float64) for _ in range(2)))


@pytest.mark.parametrize("d_k", [1, 3])
@pytest.mark.parametrize("per_key", [True, False])
@pytest.mark.parametrize("strong", [False, True])
def test_complex_decays_chunkwise_is_the_reference_loop(d_k, per_key, strong):
    """``log α = log|α| + iθ``: outputs, final state and gradients of every input (complex, with an initial
    state) agree with the loop, for ordinary decays and for ones that vanish (``log|α| = -1e4``, -30)."""
    gen = torch.Generator().manual_seed(0)
    B, H, T, d_v = 2, 3, 37, 4
    shape = (B, H, T, d_k) if per_key else (B, H, T)
    magnitude = -torch.rand(shape, generator=gen, dtype=torch.float64) * (30.0 if strong else 0.5)
    if strong:
        magnitude[:, :, 5] = -1e4
    log_alpha = torch.complex(magnitude, 3 * torch.randn(shape, generator=gen, dtype=torch.float64))
    args = [complex_randn(*s, gen=gen) for s in ((B, H, T, d_k), (B, H, T, d_k), (B, H, T, d_v))]
    args += [log_alpha, complex_randn(B, H, d_k, d_v, gen=gen)]
    args = [a.requires_grad_() for a in args]
    w_o, w_S = complex_randn(B, H, T, d_v, gen=gen), complex_randn(B, H, d_k, d_v, gen=gen)

    def run(fn, **kw):
        o, S = fn(*args, **kw)
        grads = torch.autograd.grad((o * w_o).real.sum() + (S * w_S).real.sum(), args)
        return o, S, grads

    want = run(gated_linear_attention_reference)
    for chunk in (None, 5, 8):
        got = run(gated_linear_attention, chunk_size=chunk)
        assert got[0].dtype == torch.complex128
        for a, b in zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_complex_decay_checks_its_real_part():
    q = torch.randn(1, 1, 4, 2, dtype=torch.complex128)
    log_alpha = torch.complex(torch.full((1, 1, 4, 2), 0.1), torch.zeros(1, 1, 4, 2)).to(torch.complex128)
    with pytest.raises(ValueError, match="`log_alpha` must be <= 0"):
        gated_linear_attention(q, q, q, log_alpha)


def test_gateloop_eigenvalues_are_complex_gates_in_the_unit_disc():
    layer = make("gateloop")
    eig = layer.transition_eigenvalues(3 * inputs(20))
    assert eig.is_complex() and eig.shape == (2, 20, layer.num_heads, layer.head_k)
    assert eig.abs().max() < 1 and (eig.imag.abs() > 1e-3).any()


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="`feature_map` must be one of"):
        rnnzoo.create("linear_attention", d_model=8, feature_map="relu")
    with pytest.raises(ValueError, match="`num_heads`=3 must divide"):
        rnnzoo.create("lightnet", d_model=8, num_heads=3)
    with pytest.raises(ValueError, match="`gate_low_rank_dim` must be a positive int"):
        rnnzoo.create("lightnet", d_model=8, gate_low_rank_dim=0)
    with pytest.raises(ValueError, match="`expand_k` must be > 0"):
        rnnzoo.create("gateloop", d_model=8, expand_k=0)
