"""LRU and S4D beyond the generic layer tests: initialisations, and S4D's convolution form."""

from __future__ import annotations

import math

import pytest
import torch

import rnnzoo
from forms import assert_forms_agree
from rnnzoo.layers import LRU, S4D

# -- LRU ------------------------------------------------------------------------


@pytest.mark.parametrize("r_min,r_max,max_phase", [(0.4, 0.9, math.pi / 2), (0.0, 1.0, 6.28)])
def test_lru_ring_initialisation(r_min, r_max, max_phase):
    torch.manual_seed(0)
    layer = LRU(16, d_state=4096, r_min=r_min, r_max=r_max, max_phase=max_phase).double()
    lam = layer.eigenvalues()
    radius, phase = lam.abs(), torch.exp(layer.theta_log)
    assert radius.min() >= r_min and radius.max() <= r_max
    assert phase.min() >= 0 and phase.max() <= max_phase
    # uniform in area on the ring: |λ|² uniform on [r_min², r_max²]; phase uniform on [0, max_phase]
    torch.testing.assert_close(radius.square().mean().item(), (r_min**2 + r_max**2) / 2, rtol=0.03, atol=0.0)
    torch.testing.assert_close(phase.mean().item(), max_phase / 2, rtol=0.03, atol=0.0)
    if max_phase < math.pi:  # the complex λ itself has that phase
        assert lam.angle().min() >= 0 and lam.angle().max() <= max_phase
    torch.testing.assert_close(torch.exp(layer.gamma_log), torch.sqrt(1 - radius.square()))


def test_lru_projection_scales():
    torch.manual_seed(0)
    layer = LRU(64, d_state=1024)
    for name, var in [("B_re", 1 / 128), ("B_im", 1 / 128), ("C_re", 1 / 1024), ("C_im", 1 / 1024), ("D", 1.0)]:
        torch.testing.assert_close(getattr(layer, name).var().item(), var, rtol=0.2 if name == "D" else 0.03, atol=0.0)


def test_lru_impulse_response():
    """One input at t=0 decays as λ^t: y_t - D x_t = Re(C diag(λ^t) γ B x_0)."""
    torch.manual_seed(0)
    layer = LRU(4, d_state=6, r_min=0.5, r_max=0.95).double()
    x = torch.zeros(1, 10, 4, dtype=torch.float64)
    x[0, 0] = torch.randn(4, dtype=torch.float64)
    y, _ = layer(x)
    lam, gamma = layer.eigenvalues(), torch.exp(layer.gamma_log)
    B, C = torch.complex(layer.B_re, layer.B_im), torch.complex(layer.C_re, layer.C_im)
    h0 = gamma * (B @ x[0, 0].to(B.dtype))
    expected = torch.stack([(C @ (lam**t * h0)).real for t in range(10)]) + layer.D * x[0]
    torch.testing.assert_close(y[0], expected)


# -- S4D ------------------------------------------------------------------------


def test_s4d_lin_initialisation():
    torch.manual_seed(0)
    layer = S4D(32, d_state=16, dt_min=0.01, dt_max=0.05).double()
    dtA, A_bar, B_bar, _ = layer.discretize()
    dt = torch.exp(layer.log_dt)
    assert dt.min() >= 0.01 and dt.max() <= 0.05 and dt.max() / dt.min() > 2  # spread over the range
    A = dtA / dt[:, None]
    torch.testing.assert_close(A.real, torch.full((32, 8), -0.5, dtype=torch.float64))
    torch.testing.assert_close(A.imag, (math.pi * torch.arange(8, dtype=torch.float64)).expand(32, 8))
    torch.testing.assert_close(A_bar, torch.exp(dtA))
    torch.testing.assert_close(B_bar, (A_bar - 1) / A)  # zero-order hold with B = 1


@pytest.mark.parametrize("length,split", [(45, 19), (100, 37), (64, 1)])
def test_s4d_conv_matches_scan_and_recurrent(length, split):
    """With mode="conv", "split" runs the convolution from a nonzero state (T not a power of two)."""
    torch.manual_seed(0)
    layer = S4D(8, d_state=12, dt_min=0.01, dt_max=0.5, mode="conv").double()
    x = torch.randn(3, length, 8, dtype=torch.float64)
    assert_forms_agree(layer, x, ["recurrent", "conv", "scan", "split"], split=split)


def test_s4d_conv_from_random_state():
    torch.manual_seed(0)
    layer = S4D(8, d_state=10, dt_min=0.01, dt_max=0.5).double()
    x = torch.randn(2, 29, 8, dtype=torch.float64)
    h0 = torch.randn(2, 8, 5, dtype=torch.complex128)
    y_scan, s_scan = layer(x, rnnzoo.layers.DiagonalState(h0), mode="scan")
    y_conv, s_conv = layer(x, rnnzoo.layers.DiagonalState(h0), mode="conv")
    torch.testing.assert_close(y_conv, y_scan)
    torch.testing.assert_close(s_conv.h, s_scan.h)
    y_zero, _ = layer(x, mode="conv")
    assert (y_conv - y_zero).abs().max() > 1e-3  # the state did contribute


def test_s4d_conv_float32_long_sequence():
    torch.manual_seed(0)
    layer64 = S4D(8).double()
    layer32 = S4D(8).float()
    layer32.load_state_dict(layer64.state_dict())
    x = torch.randn(1, 3000, 8, dtype=torch.float64)
    y64, s64 = layer64(x, mode="recurrent")
    y32, s32 = layer32(x.float(), mode="conv")
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s32.h.to(torch.complex128), s64.h, rtol=1e-4, atol=1e-4)


# -- constructor arguments ----------------------------------------------------------


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("lru", {"d_state": 0}, "`d_state` must be a positive int"),
        ("lru", {"r_min": 0.9, "r_max": 0.9}, "`r_min` < `r_max`"),
        ("lru", {"r_min": 0.5, "r_max": 1.5}, "`r_max` <= 1"),
        ("lru", {"r_min": -0.1}, "0 <= `r_min`"),
        ("lru", {"max_phase": 0.0}, "`max_phase` must be > 0"),
        ("s4d", {"d_state": 7}, "`d_state` must be a positive even int"),
        ("s4d", {"d_state": 0}, "`d_state` must be a positive int"),
        ("s4d", {"dt_min": 0.1, "dt_max": 0.01}, "`dt_min` <= `dt_max`"),
        ("s4d", {"dt_min": 0.0}, "0 < `dt_min`"),
    ],
)
def test_bad_constructor_arguments(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        rnnzoo.create(name, d_model=8, **kwargs)
