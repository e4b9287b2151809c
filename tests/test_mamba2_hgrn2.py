"""Mamba-2 and HGRN2 beyond the generic layer tests: agreement with independent per-step
reimplementations, initialisation, negative eigenvalues, the materialised operator, arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnzoo.layers.hgrn2 import HGRN2
from rnnzoo.layers.mamba2 import Mamba2


def rms_norm(y: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps) * weight


def mamba2_reference(layer: Mamba2, x: torch.Tensor):
    """The Mamba-2 block token by token, per head, from the paper's equations."""
    batch, length, _ = x.shape
    d, n, g, hd, H = layer.d_inner, layer.d_state, layer.ngroups, layer.headdim, layer.num_heads
    width = d + 2 * g * n
    w_conv = layer.conv.weight[:, 0, :].T  # (d_conv, width), oldest tap first
    A = -torch.exp(layer.A_log)
    window = x.new_zeros(batch, layer.d_conv, width)
    S = x.new_zeros(batch, H, n, hd)
    outs = []
    for t in range(length):
        proj = x[:, t] @ layer.in_proj.weight.T
        z, xBC, dt = proj[:, :d], proj[:, d : d + width], proj[:, d + width :]
        window = torch.cat([window[:, 1:], xBC[:, None]], dim=1)
        xBC = F.silu((window * w_conv).sum(1) + layer.conv.bias)
        u, B, C = xBC[:, :d], xBC[:, d : d + g * n], xBC[:, d + g * n :]
        dt = F.softplus(dt + layer.dt_bias)  # (batch, H)
        ys = []
        for h in range(H):
            grp = h * g // H  # consecutive heads share a group
            B_h, C_h, u_h = B[:, grp * n : (grp + 1) * n], C[:, grp * n : (grp + 1) * n], u[:, h * hd : (h + 1) * hd]
            a = torch.exp(dt[:, h] * A[h])
            if layer.negative_eigenvalues:
                a = 2 * a - 1
            S[:, h] = a[:, None, None] * S[:, h] + B_h[:, :, None] * (dt[:, h, None] * u_h)[:, None, :]
            ys.append((C_h[:, :, None] * S[:, h]).sum(1) + layer.D[h] * u_h)
        y = torch.cat(ys, -1) * F.silu(z)
        outs.append(rms_norm(y, layer.norm.weight) @ layer.out_proj.weight.T)
    return torch.stack(outs, 1), window[:, 1:].transpose(1, 2), S


def hgrn2_reference(layer: HGRN2, x: torch.Tensor):
    """HGRN2 token by token, per head, with the gates written as in the paper (not in log space)."""
    batch, length, d = x.shape
    H, e = layer.num_heads, layer.expand_ratio
    bound = layer.lower_bound
    S = x.new_zeros(batch, H, e, e)
    outs = []
    for t in range(length):
        q, f, i = (x[:, t] @ layer.in_proj.weight.T).split(d, -1)
        f = bound + (1 - bound) * torch.sigmoid(f)
        a = 2 * f - 1 if layer.negative_eigenvalues else f
        q, k, a, i = (v.reshape(batch, H, e) for v in (F.silu(q), 1 - f, a, i))
        S = a[..., None] * S + k[..., None] * i[..., None, :]
        o = (q[..., None] * S).sum(-2).reshape(batch, d)
        outs.append(rms_norm(o, layer.norm.weight) @ layer.out_proj.weight.T)
    return torch.stack(outs, 1), S


def make(cls, d_model=8, **kw):
    torch.manual_seed(0)
    return cls(d_model, **kw).double()


def make_mamba2(negative=False):
    layer = make(Mamba2, d_state=5, headdim=4, ngroups=2, negative_eigenvalues=negative)  # 4 heads, 2 groups
    with torch.no_grad():  # strong, distinct decays per head so a mix-up of heads or groups shows
        layer.A_log.copy_(torch.linspace(0.0, 3.0, layer.num_heads))
        layer.dt_bias.copy_(torch.linspace(-1.0, 1.0, layer.num_heads))
    return layer


def make_hgrn2(negative=False):
    return make(HGRN2, expand_ratio=4, lower_bound=torch.linspace(0.0, 0.9, 8), negative_eigenvalues=negative)


@pytest.mark.parametrize("negative", [False, True])
def test_mamba2_matches_per_step_reference(negative):
    layer = make_mamba2(negative)
    x = torch.randn(2, 100, 8, dtype=torch.float64)
    y, state = layer(x, mode="chunk")
    y_ref, conv_ref, S_ref = mamba2_reference(layer, x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(state.conv, conv_ref)
    torch.testing.assert_close(state.ssm, S_ref)


@pytest.mark.parametrize("negative", [False, True])
def test_hgrn2_matches_per_step_reference(negative):
    layer = make_hgrn2(negative)
    x = torch.randn(2, 100, 8, dtype=torch.float64)
    y, state = layer(x, mode="chunk")
    y_ref, S_ref = hgrn2_reference(layer, x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(state.S, S_ref)


def test_mamba2_init():
    layer = Mamba2(64, dt_min=0.002, dt_max=0.05)
    assert (layer.d_state, layer.d_inner, layer.headdim, layer.num_heads) == (64, 128, 64, 2)
    dt = F.softplus(Mamba2(256, headdim=8, dt_min=0.002, dt_max=0.05).dt_bias.detach())  # 64 heads
    assert 0.002 * (1 - 1e-5) <= dt.min() and dt.max() <= 0.05 * (1 + 1e-5)
    assert dt.max() / dt.min() > 5  # log-uniform over the range, not a constant
    A = torch.exp(Mamba2(256, headdim=8).A_log.detach())
    assert 1 - 1e-5 <= A.min() and A.max() <= 16 * (1 + 1e-5) and A.max() - A.min() > 10
    assert torch.equal(layer.D.detach(), torch.ones(2))
    assert Mamba2(8).num_heads == 1 and Mamba2(8, num_heads=4).headdim == 4


def test_hgrn2_forget_gate_respects_lower_bound():
    layer = make_hgrn2()
    x = 30 * torch.randn(4, 50, 8, dtype=torch.float64)  # saturates σ: f reaches its bound
    with torch.no_grad():
        inputs = layer.engine_inputs(x)[0]
        k, log_f = inputs.k, inputs.log_alpha
    bound = layer.lower_bound.view(2, 1, 4)
    f = log_f.exp()
    assert (f >= bound * (1 - 1e-12)).all() and (f <= 1).all()
    assert ((f - bound).amin((0, 2)) < 1e-6).all()  # the bound is reached, not exceeded by a margin
    torch.testing.assert_close(k, 1 - f)
    assert HGRN2(256).num_heads == 2 and HGRN2(8).expand_ratio == 8


def decays(layer, negative: bool) -> torch.Tensor:
    """The signed decays α_t the layer feeds the engine for strong random inputs."""
    layer.negative_eigenvalues = negative
    with torch.no_grad():
        inputs = layer.engine_inputs(3 * torch.randn(4, 50, 8, dtype=torch.float64))[0]
    log_alpha, sign = inputs.log_alpha, inputs.sign
    return log_alpha.exp() if sign is None else torch.where(sign, -1.0, 1.0) * log_alpha.exp()


@pytest.mark.parametrize("factory", [make_mamba2, make_hgrn2])
def test_negative_eigenvalues_widen_the_decay(factory):
    layer = factory()
    a = decays(layer, negative=False)
    assert a.min() >= 0 and a.max() <= 1
    a = decays(layer, negative=True)
    assert -1 <= a.min() < -0.5 and a.max() <= 1


@pytest.mark.parametrize("factory", [make_mamba2, make_hgrn2])
@pytest.mark.parametrize("negative", [False, True])
def test_materialized_operator_reproduces_the_mixer(factory, negative):
    layer = factory(negative)
    x = torch.randn(2, 70, 8, dtype=torch.float64)
    M = layer.materialize(x)
    V, Y = layer.mixer_io(x)
    assert M.shape == (2, layer.num_heads, 70, 70)
    assert torch.equal(M, M.tril())
    torch.testing.assert_close(M @ V, Y)
    assert Y.abs().max() > 1e-3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"headdim": 5}, "`headdim`=5 must divide d_inner=16"),
        ({"num_heads": 3}, "`num_heads`=3 must divide d_inner=16"),
        ({"headdim": 4, "num_heads": 4}, "`headdim` or `num_heads`, not both"),
        ({"headdim": 8, "ngroups": 3}, "`ngroups`=3 must divide the number of heads 2"),
        ({"d_state": 0}, "`d_state` must be a positive int"),
        ({"expand": 0}, "`expand` must be > 0"),
        ({"A_init_range": (0.0, 4.0)}, "`A_init_range`"),
        ({"dt_min": 0.2}, "`dt_min` <= `dt_max`"),
    ],
)
def test_mamba2_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Mamba2(8, **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"expand_ratio": 3}, "`expand_ratio`=3 must divide d_model=8"),
        ({"expand_ratio": 0}, "`expand_ratio` must be a positive int"),
        ({"lower_bound": 1.0}, "`lower_bound` must lie in"),
        ({"lower_bound": torch.zeros(3)}, r"`lower_bound` must be a float or a \(8,\) tensor"),
    ],
)
def test_hgrn2_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HGRN2(8, **kwargs)


def test_state_shapes():
    s = Mamba2(8, d_state=5, d_conv=3, headdim=4, ngroups=2).init_state(3)
    assert s.conv.shape == (3, 16 + 2 * 2 * 5, 2) and s.ssm.shape == (3, 4, 5, 4)
    assert HGRN2(8, expand_ratio=4).init_state(3).S.shape == (3, 2, 4, 4)
