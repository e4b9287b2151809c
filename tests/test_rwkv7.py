"""RWKV-7 and its engine, the diagonal-plus-low-rank delta rule (rnnzoo/ops/dplr_delta_rule.py).

The engine's chunkwise form against its loop (float64 tight, float32 within 1e-5 of the float64 loop; any
length, chunks that do not divide it, from a state, decays down to log w = -1e4; gradients); its operator; the
loop against a re-derivation of the public reference's recurrence in RWKV's own layout (state d_v × d_k). The
layer against a float64 loop of the paper's equations written here (not calling the engine), in every form and
from a given state; its eigenvalues against the transition that ``step`` applies.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import rnnzoo
from forms import assert_float32_close, assert_forms_agree, assert_matches, random_state, stepped
from rnnzoo.ops import dplr_delta_rule, dplr_delta_rule_reference, dplr_operator

TIGHT = dict(rtol=1e-10, atol=1e-10)
LENGTHS = [1, 7, 33]
CHUNKS = [None, 4, 5]  # 4 and 5 divide none of the lengths above 1
B, H, D_K, D_V = 2, 3, 4, 3


# -- the engine ------------------------------------------------------------------------------------------------


def log_decays(kind: str, length: int, gen: torch.Generator) -> torch.Tensor:
    """``(B, H, T, d_k)`` log decays: RWKV-7's range, strong ones (down to -20 a step), a reset of some key dims
    (-1e4 at one step) and decays alternating between -20 and -1e-4."""
    shape = (B, H, length, D_K)
    if kind == "rwkv":
        return -0.6065 * torch.rand(shape, generator=gen, dtype=torch.float64)
    if kind == "strong":
        return -20 * torch.rand(shape, generator=gen, dtype=torch.float64)
    log_w = torch.full(shape, -1e-4, dtype=torch.float64)
    if kind == "reset":
        log_w[:, :, min(2, length - 1), :2] = -1e4
    else:  # alternating
        log_w[:, :, ::2] = -20.0
    return log_w


DECAYS = ["rwkv", "strong", "reset", "alternating"]


def engine_inputs(length: int, decay: str, seed: int = 0) -> list[torch.Tensor]:
    """``q, k, v, a, b, log_w`` as RWKV-7 forms them: ``a = -κ̂``, ``b = κ̂ ⊙ rate``."""
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    kappa = F.normalize(randn(B, H, length, D_K), dim=-1)
    rate = torch.rand(B, H, length, D_K, generator=gen, dtype=torch.float64)
    q, k, v = randn(B, H, length, D_K), randn(B, H, length, D_K), randn(B, H, length, D_V)
    return [q, k, v, -kappa, kappa * rate, log_decays(decay, length, gen)]


def start_state(seed: int = 1) -> torch.Tensor:
    return torch.randn(B, H, D_K, D_V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("length", LENGTHS)
def test_chunkwise_is_the_loop_in_float64_and_float32(decay, length):
    args = engine_inputs(length, decay)
    for state in (None, start_state()):
        want_o, want_S = dplr_delta_rule_reference(*args, state)
        as32 = None if state is None else state.float()
        for chunk in CHUNKS:
            o, S = dplr_delta_rule(*args, state, chunk_size=chunk)
            torch.testing.assert_close(o, want_o, **TIGHT)
            torch.testing.assert_close(S, want_S, **TIGHT)
            o32, S32 = dplr_delta_rule(*(t.float() for t in args), as32, chunk_size=chunk)
            assert o32.dtype == S32.dtype == torch.float32
            assert_float32_close(o32, want_o)
            assert_float32_close(S32, want_S)


@pytest.mark.parametrize("decay", ["rwkv", "reset", "alternating"])
def test_chunkwise_gradients_are_the_loops(decay):
    args = [t.requires_grad_() for t in [*engine_inputs(33, decay), start_state()]]
    gen = torch.Generator().manual_seed(2)
    w_o = torch.randn(B, H, 33, D_V, generator=gen, dtype=torch.float64)
    w_S = torch.randn(B, H, D_K, D_V, generator=gen, dtype=torch.float64)

    def grads(fn, **kw):
        o, S = fn(*args, **kw)
        return torch.autograd.grad((o * w_o).sum() + (S * w_S).sum(), args)

    want = grads(dplr_delta_rule_reference)
    for chunk in (None, 5):
        got_all = grads(dplr_delta_rule, chunk_size=chunk)
        for name, got, ref in zip(["q", "k", "v", "a", "b", "log_w", "state"], got_all, want):
            torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9, msg=lambda m: f"d{name} (chunk {chunk}): {m}")


@pytest.mark.parametrize("decay", ["rwkv", "strong", "reset"])
@pytest.mark.parametrize("length", LENGTHS)
def test_operator_maps_the_values_to_the_outputs(decay, length):
    q, k, v, a, b, log_w = engine_inputs(length, decay)
    M = dplr_operator(q, k, a, b, log_w)
    assert M.shape == (B, H, length, length)
    assert torch.equal(M.triu(1), torch.zeros_like(M))
    torch.testing.assert_close(M @ v, dplr_delta_rule_reference(q, k, v, a, b, log_w)[0], **TIGHT)


def rwkv_layout_loop(r, w_raw, k, v, a, b, state=None):
    """The public reference's naive recurrence (flash-linear-attention, ``naive_recurrent_rwkv7``), re-derived
    in its own layout: per head a ``d_v × d_k`` state ``S``, decay ``exp(-exp(w_raw))`` on its key columns,
    ``S <- S ⊙ w + (S a) b^T + v k^T``, ``o = S r``."""
    S = r.new_zeros(B, H, D_V, D_K) if state is None else state
    outs = []
    for t in range(r.shape[2]):
        decay = torch.exp(-torch.exp(w_raw[:, :, t]))[:, :, None, :]  # (B, H, 1, d_k)
        S_a = (S * a[:, :, t, None, :]).sum(-1)  # S a, (B, H, d_v)
        S = S * decay + S_a[..., :, None] * b[:, :, t, None, :] + v[:, :, t, :, None] * k[:, :, t, None, :]
        outs.append((S * r[:, :, t, None, :]).sum(-1))
    return torch.stack(outs, 2), S


@pytest.mark.parametrize("length", [1, 20])
def test_engine_is_the_public_reference_recurrence_transposed(length):
    gen = torch.Generator().manual_seed(3)
    r, k, v, a, b, _ = engine_inputs(length, "rwkv", seed=4)
    w_raw = torch.randn(B, H, length, D_K, generator=gen, dtype=torch.float64) - 1  # log w = -exp(w_raw)
    state = torch.randn(B, H, D_V, D_K, generator=gen, dtype=torch.float64)
    want_o, want_S = rwkv_layout_loop(r, w_raw, k, v, a, b, state)
    for fn in (dplr_delta_rule_reference, dplr_delta_rule):
        o, S = fn(r, k, v, a, b, -torch.exp(w_raw), state.mT)
        torch.testing.assert_close(o, want_o, **TIGHT)
        torch.testing.assert_close(S.mT, want_S, **TIGHT)


def test_engine_checks_its_arguments():
    q, k, v, a, b, log_w = engine_inputs(5, "rwkv")
    with pytest.raises(ValueError, match="`log_w` must be <= 0"):
        dplr_delta_rule(q, k, v, a, b, -log_w)
    with pytest.raises(ValueError, match="`a` must have the shape of `q`"):
        dplr_delta_rule_reference(q, k, v, a[..., :2], b, log_w)
    with pytest.raises(ValueError, match="`state` must have shape"):
        dplr_delta_rule(q, k, v, a, b, log_w, start_state()[..., :2])
    with pytest.raises(ValueError, match="`chunk_size` must be a positive int"):
        dplr_delta_rule(q, k, v, a, b, log_w, chunk_size=0)


# -- the layer -------------------------------------------------------------------------------------------------

D_MODEL = 8


def make(chunk_size: int | None = None, **kw):
    torch.manual_seed(0)
    layer = rnnzoo.create("rwkv7", d_model=D_MODEL, chunk_size=chunk_size, **kw).double()
    with torch.no_grad():  # away from the initialisation: the group norm's weight and bias, the token-shift mixes
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


def inputs(length: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, length, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def paper_loop(layer, x, shift=None, S=None):
    """The paper's equations token by token, in its layout (state ``S'`` ``d_v × d_k`` per head)::

        x^c = x_t + μ_c ⊙ (x_{t-1} - x_t);  r, k, v = W_r x^r, W_k x^k, W_v x^v
        w = exp(-e^{-1/2} σ(w_0 + W_w2 tanh(W_w1 x^w))),  a = σ(a_0 + W_a2 W_a1 x^a)
        κ̂ = normalize(k ⊙ k_k),  k̃ = k ⊙ (1 + (a - 1) ⊙ k_a)
        S' = S' (Diag(w) - κ̂ (a ⊙ κ̂)^T) + v k̃^T,  o = S' r
        y = W_o ((GroupNorm(o) + (Σ r ⊙ k̃ ⊙ r_k) v) ⊙ W_g2 σ(W_g1 x^g))
    """
    Hh, d = layer.num_heads, layer.head_dim
    lin = lambda module, u: u @ module.weight.T + (0 if module.bias is None else module.bias)
    heads = lambda u: u.unflatten(-1, (Hh, d))
    batch = x.shape[0]
    prev = x.new_zeros(batch, D_MODEL) if shift is None else shift
    S = x.new_zeros(batch, Hh, d, d) if S is None else S.mT  # the layer's state is S'^T
    ys = []
    for t in range(x.shape[1]):
        x_t = x[:, t]
        mixed = [x_t + mu * (prev - x_t) for mu in layer.mix]
        xr, xw, xk, xv, xa, xg = mixed
        r, k, v = (heads(u @ proj.weight.T) for u, proj in ((xr, layer.r_proj), (xk, layer.k_proj), (xv, layer.v_proj)))
        w_logit = lin(layer.w_lora[2], torch.tanh(lin(layer.w_lora[0], xw)))
        w = heads(torch.exp(-math.exp(-0.5) * torch.sigmoid(w_logit)))
        a = heads(torch.sigmoid(lin(layer.a_lora[1], lin(layer.a_lora[0], xa))))
        kappa = heads(xk @ layer.k_proj.weight.T * layer.k_k)
        kappa = kappa / kappa.norm(dim=-1, keepdim=True)
        k = k * (1 + (a - 1) * heads(layer.k_a))
        transition = torch.diag_embed(w) - kappa[..., :, None] * (a * kappa)[..., None, :]  # (B, H, d_k, d_k)
        S = S @ transition + v[..., :, None] * k[..., None, :]
        o = (S @ r[..., None])[..., 0]  # (B, H, d_v)
        mean, var = o.mean(-1, keepdim=True), o.var(-1, unbiased=False, keepdim=True)
        o = (o - mean) / torch.sqrt(var + layer.norm.eps) * heads(layer.norm.weight) + heads(layer.norm.bias)
        o = o + (r * k * layer.r_k).sum(-1, keepdim=True) * v
        gate = lin(layer.g_lora[2], torch.sigmoid(lin(layer.g_lora[0], xg)))
        ys.append(lin(layer.out_proj, o.flatten(1) * gate))
        prev = x_t
    return torch.stack(ys, 1), {"shift": prev, "S": S.mT}


@pytest.mark.parametrize("length", LENGTHS)
def test_every_form_is_the_papers_loop(length):
    x = inputs(length)
    with torch.no_grad():
        want_y, want_state = paper_loop(make(), x)
        for chunk in (4, 5):
            layer = make(chunk_size=chunk)
            assert_matches(*layer(x, mode="chunk"), want_y, want_state, **TIGHT)
        assert_matches(*layer(x, mode="recurrent"), want_y, want_state, **TIGHT)
        assert_matches(*stepped(layer, x), want_y, want_state, **TIGHT)


def test_forms_continue_from_a_given_state():
    layer = make(chunk_size=4)
    x = inputs(13)
    start = random_state(layer.init_state(2), "shift", "S")
    with torch.no_grad():
        want_y, want_state = paper_loop(layer, x, start.shift, start.S)
        assert_matches(*layer(x, start), want_y, want_state, **TIGHT)
        assert_matches(*stepped(layer, x, start), want_y, want_state, **TIGHT)
        first, state = layer(x[:, :6], start)
        second, state = layer(x[:, 6:], state)
        assert_matches(torch.cat([first, second], 1), state, want_y, want_state, **TIGHT)


def test_gradients_agree_in_every_form():
    assert_forms_agree(make(chunk_size=5), inputs(23), ["recurrent", "chunk", "split", "step"], rtol=1e-9, atol=1e-10)


def test_eigenvalues_are_real_in_the_unit_interval_and_those_step_applies():
    """From ``S = I`` and from 0 (``d_k = d_v``), one step differs by the transition itself: its eigenvalues are
    the reported ones, real and in (-1, 1)."""
    layer = make()
    x = 3 * inputs(40)
    eig = layer.transition_eigenvalues(x)
    assert eig.shape == (2, 40, layer.num_heads, layer.head_dim)
    assert eig.imag.abs().max() < 1e-9 and eig.real.abs().max() < 1
    zero = layer.init_state(2)
    identity = dataclasses.replace(zero, S=torch.eye(layer.head_dim, dtype=torch.float64).expand_as(zero.S).clone())
    x_t = x[:, 0]
    with torch.no_grad():
        transition = layer.step(x_t, identity)[1].S - layer.step(x_t, zero)[1].S
    stepped_eig = torch.linalg.eigvals(transition).real.sort(-1).values
    torch.testing.assert_close(stepped_eig, eig[:, 0].real.sort(-1).values, rtol=1e-9, atol=1e-12)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="`num_heads`=3 must divide"):
        rnnzoo.create("rwkv7", d_model=8, num_heads=3)
    with pytest.raises(ValueError, match="`expand` must be > 0"):
        rnnzoo.create("rwkv7", d_model=8, expand=0)
    with pytest.raises(ValueError, match="`decay_low_rank_dim` must be a positive int"):
        rnnzoo.create("rwkv7", d_model=8, decay_low_rank_dim=0)
    with pytest.raises(ValueError, match="`norm_eps` must be > 0"):
        rnnzoo.create("rwkv7", d_model=8, norm_eps=0.0)
