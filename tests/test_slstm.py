"""sLSTM: the fused kernel against the reference loop and finite differences, the stabiliser against the
unstabilised equations in float64, extreme gates, long sequences, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rnnzoo
from rnnzoo.layers.slstm import SLSTM, SLSTMState, forget_bias_init
from rnnzoo.ops.slstm import slstm, slstm_reference

GATES = ["sigmoid", "exp"]


def engine_inputs(batch, length, heads, d_head, scale=2.0, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    gates = scale * torch.randn(batch, length, heads, 4, d_head, generator=gen, dtype=torch.float64)
    R = torch.randn(heads, d_head, 4, d_head, generator=gen, dtype=torch.float64) / d_head**0.5
    h, c, m = (torch.randn(batch, heads, d_head, generator=gen, dtype=torch.float64) for _ in range(3))
    n = 1 + torch.rand(batch, heads, d_head, generator=gen, dtype=torch.float64)  # a reachable state has n >= 1
    return gates.to(dtype), R.to(dtype), tuple(t.to(dtype) for t in (h, c, n, m))


def run(engine, gates, R, state, forget_gate):
    """Outputs, final state and the gradients of a fixed random loss of all of them."""
    gates, R = gates.clone().requires_grad_(), R.clone().requires_grad_()
    state = None if state is None else tuple(t.clone().requires_grad_() for t in state)
    hs, final = engine(gates, R, state, forget_gate)
    gen = torch.Generator().manual_seed(9)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in (hs, *final))
    loss.backward()
    grads = [gates.grad, R.grad, *([] if state is None else [t.grad for t in state])]
    return [hs.detach(), *(t.detach() for t in final), *grads]


@pytest.mark.parametrize("forget_gate", GATES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 1, 2, 3), (3, 13, 2, 3), (2, 37, 4, 2)])
@pytest.mark.parametrize("from_zero", [True, False])
def test_fused_matches_reference(forget_gate, shape, from_zero):
    gates, R, state = engine_inputs(*shape)
    state = None if from_zero else state
    ref = run(slstm_reference, gates, R, state, forget_gate)
    got = run(slstm, gates, R, state, forget_gate)
    for a, b in zip(got, ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("forget_gate", GATES)
def test_fused_backward_against_finite_differences(forget_gate):
    gates, R, state = engine_inputs(2, 6, 2, 2, scale=1.0, seed=3)
    inputs = [t.requires_grad_() for t in (gates, R, *state)]

    def fn(gates, R, h, c, n, m):
        hs, final = slstm(gates, R, (h, c, n, m), forget_gate)
        return hs, *final

    assert torch.autograd.gradcheck(fn, inputs)


def unstabilised(gates, R, forget_gate):
    """The paper's equations without the stabiliser: true input gate exp(ĩ), cell C and normaliser N."""
    batch, _, heads, _, d_head = gates.shape
    h, C, N = (gates.new_zeros(batch, heads, d_head) for _ in range(3))
    hs = []
    for g_t in gates.unbind(1):
        i_raw, f_raw, z_raw, o_raw = (g_t + torch.einsum("bhj,hjgk->bhgk", h, R)).unbind(2)
        f = torch.sigmoid(f_raw) if forget_gate == "sigmoid" else torch.exp(f_raw)
        C = f * C + torch.exp(i_raw) * torch.tanh(z_raw)
        N = f * N + torch.exp(i_raw)
        h = torch.sigmoid(o_raw) * C / N
        hs.append(h)
    return torch.stack(hs, 1), C, N


@pytest.mark.parametrize("forget_gate", GATES)
@pytest.mark.parametrize("engine", [slstm, slstm_reference])
def test_stabiliser_is_exact(forget_gate, engine):
    gates, R, _ = engine_inputs(2, 25, 2, 3, scale=3.0, seed=1)  # gates up to ~±10: exp(ĩ) fits in float64
    want, C, N = unstabilised(gates, R, forget_gate)
    hs, (h, c, n, m) = engine(gates, R, None, forget_gate)
    torch.testing.assert_close(hs, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c * torch.exp(m), C, rtol=1e-12, atol=1e-12)  # c, n are C, N scaled by exp(-m)
    torch.testing.assert_close(n * torch.exp(m), N, rtol=1e-12, atol=1e-12)
    assert (n >= 1).all()


@pytest.mark.parametrize("forget_gate", GATES)
def test_extreme_gates_stay_finite_and_accurate_in_float32(forget_gate):
    gates, R, _ = engine_inputs(2, 300, 2, 4, scale=60.0, seed=2)  # exp(ĩ) alone would overflow float32
    want = slstm_reference(gates, R, None, forget_gate)[0]
    got = run(slstm, gates.float(), R.float(), None, forget_gate)
    assert all(torch.isfinite(t).all() for t in got)
    # under the exponential forget gate m grows like a sum of f̃ (here to ~3000), and float32 keeps the
    # log-gates a - m only to ~|m| 2^-24: the looser tolerance is float32's, the reference loop's too
    tol = dict(rtol=1e-4, atol=1e-5) if forget_gate == "sigmoid" else dict(rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(got[0].double(), want, **tol)


def test_long_sequence_with_recurrence_is_finite():
    gates, R, _ = engine_inputs(1, 16384, 2, 2, scale=10.0, dtype=torch.float32, seed=4)
    with torch.no_grad():
        hs, final = slstm(gates, 3 * R, None, "exp")
    assert torch.isfinite(hs).all() and all(torch.isfinite(t).all() for t in final)
    assert hs.abs().max() <= 1  # |h| = |σ(õ) C / N| <= 1: C is a convex combination of tanh values


@pytest.mark.parametrize("forget_gate", GATES)
def test_layer_follows_the_equations(forget_gate):
    torch.manual_seed(0)
    layer = rnnzoo.create("slstm", d_model=8, num_heads=2, d_hidden=12, forget_gate=forget_gate).double()
    with torch.no_grad():
        layer.R.normal_(0, 0.5)  # the official initialisation R = 0 would leave the recurrence untested
    x = torch.randn(2, 19, 8, dtype=torch.float64)
    gates = F.linear(x, layer.in_proj.weight, layer.in_proj.bias).view(2, 19, 2, 4, 6)
    h, C, N = unstabilised(gates, layer.R, forget_gate)
    for mode in ("fused", "recurrent"):
        y, state = layer(x, mode=mode)
        torch.testing.assert_close(y, layer.out_proj(h.flatten(2)), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(state.c * state.m.exp(), C, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(state.n * state.m.exp(), N, rtol=1e-12, atol=1e-12)


def test_layer_forms_agree_with_a_recurrence():
    from forms import assert_forms_agree

    torch.manual_seed(1)
    layer = rnnzoo.create("slstm", d_model=8, num_heads=2, forget_gate="exp").double()
    with torch.no_grad():
        layer.R.normal_(0, 0.5)
    x = torch.randn(2, 41, 8, dtype=torch.float64)
    assert_forms_agree(layer, x, ["recurrent", "fused", "split", "step"], split=17)


def test_initialisation_and_state():
    layer = SLSTM(8, num_heads=2)
    bias = layer.in_proj.bias.view(2, 4, 4)
    assert torch.equal(bias[:, 1], forget_bias_init(4).expand(2, 4))
    assert bias[:, [0, 2, 3]].abs().sum() == 0 and layer.R.abs().sum() == 0
    torch.testing.assert_close(forget_bias_init(5)[[0, -1]], torch.tensor([5.0, -7.0]))
    assert forget_bias_init(1).tolist() == [5.0]
    state = layer.init_state(3)
    assert isinstance(state, SLSTMState) and state.h.shape == (3, 2, 4)
    assert (state.m == float("-inf")).all() and not state.n.any()


def test_bad_arguments():
    with pytest.raises(ValueError, match="`num_heads`=3 must divide d_hidden=8"):
        SLSTM(8, num_heads=3)
    with pytest.raises(ValueError, match="`forget_gate` must be one of"):
        SLSTM(8, forget_gate="relu")
    with pytest.raises(ValueError, match="`num_heads` must be a positive int"):
        SLSTM(8, num_heads=0)
    gates, R, state = engine_inputs(2, 5, 2, 3)
    with pytest.raises(ValueError, match=r"`gates` must have shape \(batch, time, heads, 4, d_head\)"):
        slstm(gates[..., :3, :], R)
    with pytest.raises(ValueError, match=r"`R` must have shape \(heads, d_head, 4, d_head\) = \(2, 3, 4, 3\)"):
        slstm(gates, R[:1])
    with pytest.raises(ValueError, match="time dimension"):
        slstm(gates[:, :0], R)
    with pytest.raises(ValueError, match="state `n` must be a torch.float64 tensor of shape"):
        slstm(gates, R, (state[0], state[1], state[2][:1], state[3]))
    with pytest.raises(TypeError, match="`R` has dtype torch.float32"):
        slstm(gates, R.float())
    with pytest.raises(TypeError, match="`gates` must be float32 or float64"):
        slstm(gates.bfloat16(), R.bfloat16())
