"""Mamba and Hawk beyond the generic layer tests: initialisation, the conv buffer,
negative eigenvalues, and agreement with independent per-step reimplementations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnzoo.layers import Hawk, Mamba
from rnnzoo.ops import selective_transition


def mamba_reference(layer: Mamba, x: torch.Tensor):
    """The Mamba block written out token by token from the paper's equations."""
    batch, length, _ = x.shape
    d, n, k, r = layer.d_inner, layer.d_state, layer.d_conv, layer.dt_rank
    w_conv = layer.conv.weight[:, 0, :].T  # (k, d), oldest tap first
    A = -torch.exp(layer.A_log)  # (d, n)
    window = x.new_zeros(batch, k, d)  # the last k conv inputs, oldest first
    h = x.new_zeros(batch, d, n)
    ys = []
    for t in range(length):
        xz = x[:, t] @ layer.in_proj.weight.T
        window = torch.cat([window[:, 1:], xz[:, None, :d]], dim=1)
        u = F.silu((window * w_conv).sum(1) + layer.conv.bias)
        proj = u @ layer.x_proj.weight.T
        dt_low, B, C = proj[:, :r], proj[:, r : r + n], proj[:, r + n :]
        dt = F.softplus(dt_low @ layer.dt_proj.weight.T + layer.dt_proj.bias)
        a = torch.exp(dt[:, :, None] * A)
        if layer.negative_eigenvalues:
            a = 2 * a - 1
        h = a * h + dt[:, :, None] * u[:, :, None] * B[:, None, :]
        y = (h * C[:, None, :]).sum(-1) + layer.D * u
        ys.append((y * F.silu(xz[:, d:])) @ layer.out_proj.weight.T)
    return torch.stack(ys, 1), window[:, 1:].transpose(1, 2), h


def hawk_reference(layer: Hawk, x: torch.Tensor):
    """The Hawk recurrent block written out token by token, with dense block-diagonal gate matrices."""
    batch, length, _ = x.shape
    k, block = layer.d_conv, layer.d_rnn // layer.num_heads
    W_a = torch.block_diag(*layer.gate_weight[:, :, :block])
    W_x = torch.block_diag(*layer.gate_weight[:, :, block:])
    b_a, b_x = layer.gate_bias[:, :block].flatten(), layer.gate_bias[:, block:].flatten()
    w_conv = layer.conv.weight[:, 0, :].T
    a_base = torch.sigmoid(layer.Lambda)
    window = x.new_zeros(batch, k, layer.d_rnn)
    h = x.new_zeros(batch, layer.d_rnn)
    ys = []
    for t in range(length):
        window = torch.cat([window[:, 1:], layer.in_proj(x[:, t])[:, None]], dim=1)
        u = (window * w_conv).sum(1) + layer.conv.bias
        r, i = torch.sigmoid(u @ W_a + b_a), torch.sigmoid(u @ W_x + b_x)
        a = a_base ** (8 * r)
        if layer.negative_eigenvalues:
            a = 2 * a - 1
        h = a * h + torch.sqrt(1 - a**2) * i * u
        ys.append(layer.out_proj(h * F.gelu(layer.gate_proj(x[:, t]), approximate="tanh")))
    return torch.stack(ys, 1), window[:, 1:].transpose(1, 2), h


def make(cls, d_model=8, **kw):
    torch.manual_seed(0)
    return cls(d_model, **kw).double()


@pytest.mark.parametrize("negative", [False, True])
def test_mamba_matches_per_step_reference(negative):
    layer = make(Mamba, negative_eigenvalues=negative)
    x = torch.randn(2, 300, 8, dtype=torch.float64)
    y, state = layer(x, mode="scan")
    y_ref, conv_ref, h_ref = mamba_reference(layer, x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(state.conv, conv_ref)
    torch.testing.assert_close(state.ssm, h_ref)


@pytest.mark.parametrize("negative", [False, True])
def test_hawk_matches_per_step_reference(negative):
    layer = make(Hawk, negative_eigenvalues=negative)
    with torch.no_grad():  # decays far from 1, so the sqrt(1 - a_t²) normaliser matters
        layer.Lambda.copy_(torch.linspace(-3, 3, layer.d_rnn))
    x = torch.randn(2, 300, 8, dtype=torch.float64)
    y, state = layer(x, mode="scan")
    y_ref, conv_ref, h_ref = hawk_reference(layer, x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(state.conv, conv_ref)
    torch.testing.assert_close(state.h, h_ref)


def test_mamba_init():
    layer = Mamba(64, d_state=8, dt_min=0.002, dt_max=0.05)
    assert layer.d_inner == 128 and layer.dt_rank == 4
    dt = F.softplus(layer.dt_proj.bias.detach())
    assert 0.002 * (1 - 1e-5) <= dt.min() and dt.max() <= 0.05 * (1 + 1e-5)
    assert dt.max() / dt.min() > 5  # log-uniform over the range, not a constant
    torch.testing.assert_close(-torch.exp(layer.A_log.detach()), -torch.arange(1.0, 9.0).expand(128, 8))
    assert torch.equal(layer.D.detach(), torch.ones(128))
    assert layer.dt_proj.weight.abs().max() <= 4**-0.5
    assert Mamba(17).dt_rank == 2


def test_hawk_init():
    layer = Hawk(96)
    assert layer.d_rnn == 128 and layer.num_heads == 4
    a_c = torch.sigmoid(layer.Lambda.detach().double()) ** Hawk.c
    assert 0.9 - 1e-6 <= a_c.min() < 0.92 and 0.98 < a_c.max() <= 0.999 + 1e-6
    assert Hawk(64).d_rnn == 88 and Hawk(8, num_heads=1).d_rnn == 11


@pytest.mark.parametrize("cls", [Mamba, Hawk])
@pytest.mark.parametrize("length", [2, 9])
def test_conv_state_is_last_conv_inputs(cls, length):
    layer = make(cls)
    x = torch.randn(2, length, 8, dtype=torch.float64)
    _, state = layer(x[:, :1])
    _, state = layer(x[:, 1:], state)
    width = layer.conv.channels
    conv_in = torch.cat([x.new_zeros(2, layer.d_conv - 1, width), layer.in_proj(x)[..., :width]], dim=1)
    torch.testing.assert_close(state.conv, conv_in[:, -(layer.d_conv - 1) :].transpose(1, 2).detach())


def transitions(layer, negative: bool) -> torch.Tensor:
    """The per-token transitions a_t the layer feeds the scan, for random conv outputs."""
    layer.negative_eigenvalues = negative
    u = 3 * torch.randn(4, 50, layer.conv.channels, dtype=torch.float64)
    with torch.no_grad():
        if isinstance(layer, Mamba):
            dt, A, _, _ = layer._selection(u)
            return selective_transition(dt, A, negative)
        return layer._transition(u)[0]


@pytest.mark.parametrize("cls", [Mamba, Hawk])
def test_negative_eigenvalues_widen_the_transition(cls):
    layer = make(cls)
    if cls is Hawk:  # at init a^c >= 0.9, so a_t >= 0.9: spread the decays to reach a_t < 1/2
        with torch.no_grad():
            layer.Lambda.copy_(torch.linspace(-3, 3, layer.d_rnn))
    a = transitions(layer, negative=False)
    assert a.min() > 0 and a.max() < 1
    a = transitions(layer, negative=True)
    assert -1 <= a.min() < 0 and a.max() < 1  # -1 once exp(Δ_t A) underflows


def test_hawk_gradients_finite_when_the_recurrence_gate_closes():
    """r_t = 0 makes a_t = 1, where d sqrt(1 - a_t²) is infinite; the capped derivative keeps grads finite."""
    layer = Hawk(8)
    block = layer.d_rnn // layer.num_heads
    with torch.no_grad():
        layer.gate_bias[:, :block] = -200.0  # σ(-200) underflows to 0 in float32
    x = torch.randn(2, 10, 8, requires_grad=True)
    y, _ = layer(x)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize(
    "cls,kwargs,match",
    [
        (Mamba, {"d_state": 0}, "`d_state` must be a positive int"),
        (Mamba, {"d_conv": 2.0}, "`d_conv` must be a positive int"),
        (Mamba, {"expand": 0}, "`expand` must be > 0"),
        (Mamba, {"dt_rank": "big"}, "`dt_rank` must be 'auto' or a positive int"),
        (Mamba, {"dt_min": 0.2}, "`dt_min` <= `dt_max`"),
        (Mamba, {"dt_scale": -1.0}, "`dt_scale` must be > 0"),
        (Hawk, {"num_heads": 0}, "`num_heads` must be a positive int"),
        (Hawk, {"d_conv": 0}, "`d_conv` must be a positive int"),
        (Hawk, {"d_rnn": 10}, "`d_rnn` must be a positive multiple of num_heads=4"),
    ],
)
def test_bad_constructor_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(8, **kwargs)


def test_state_shapes():
    mamba, hawk = Mamba(8, d_state=5, d_conv=3), Hawk(8)
    s = mamba.init_state(3)
    assert s.conv.shape == (3, 16, 2) and s.ssm.shape == (3, 16, 5)
    s = hawk.init_state(3)
    assert s.conv.shape == (3, 12, 3) and s.h.shape == (3, 12)
