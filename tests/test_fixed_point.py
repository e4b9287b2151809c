"""The fixed-point RNN (Movahedi et al. 2025) against its equations: the L-th iterate written here token by
token; one iteration is a diagonal RNN; many iterations reach the dense RNN the paper defines as the fixed
point, ``h_t = (I - Q_t)^{-1} (Λ_t h_{t-1} + B x_t)``, solved here with dense matrices."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rnnzoo
from forms import assert_forms_agree, assert_matches, stepped
from rnnzoo.layers import DiagonalState, FixedPointRNN
from rnnzoo.ops import fixed_point_scan, linear_scan_reference

D_MODEL = 8
TIGHT = dict(rtol=1e-10, atol=1e-12)


def make(**kw) -> FixedPointRNN:
    torch.manual_seed(0)
    layer = rnnzoo.create("fixed_point_rnn", d_model=D_MODEL, **kw).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


def coefficients(layer: FixedPointRNN, x_t: torch.Tensor):
    """``(Λ, Q, B x, z)`` for one token, ``Q`` as a dense ``(batch, heads, d_head, d_head)`` matrix."""
    d, H, n = layer.d_hidden, layer.num_heads, layer.head_dim
    proj = x_t @ layer.in_proj.weight.T + layer.in_proj.bias
    lam, bx, u, z, rho = proj.split([d, d, d, d, H], -1)
    lam = torch.sigmoid(lam) * 2 - 1 if layer.negative_eigenvalues else torch.sigmoid(lam)
    rho = layer.rho_max * torch.sigmoid(rho)
    lam = lam.view(-1, H, n) * (1 - rho)[..., None]
    u = F.normalize(u.view(-1, H, n), dim=-1)
    Q = rho[..., None, None] * (torch.eye(n, dtype=x_t.dtype) - 2 * u[..., :, None] * u[..., None, :])
    return lam, Q, bx.view(-1, H, n), z


def readout(layer, h, z):
    return (h.flatten(-2) * F.silu(z)) @ layer.out_proj.weight.T


@torch.no_grad()
def iterates_loop(layer: FixedPointRNN, x: torch.Tensor, state: torch.Tensor | None = None):
    """``h^{(ℓ)}_t = Λ_t h^{(ℓ)}_{t-1} + Q_t h^{(ℓ-1)}_t + B x_t``, ``h^{(0)} = 0``, with dense ``Q_t``."""
    B, T, _ = x.shape
    L = layer.num_iterations
    prev = torch.zeros(B, L, layer.num_heads, layer.head_dim, dtype=x.dtype) if state is None else state.clone()
    ys = []
    for t in range(T):
        lam, Q, bx, z = coefficients(layer, x[:, t])
        below = torch.zeros_like(bx)
        for ell in range(L):
            below = lam * prev[:, ell] + torch.einsum("bhij,bhj->bhi", Q, below) + bx
            prev[:, ell] = below
        ys.append(readout(layer, below, z))
    return torch.stack(ys, 1), prev


@torch.no_grad()
def dense_loop(layer: FixedPointRNN, x: torch.Tensor) -> torch.Tensor:
    """The fixed point: ``h_t = (I - Q_t)^{-1} (Λ_t h_{t-1} + B x_t)``."""
    B, T, _ = x.shape
    h = torch.zeros(B, layer.num_heads, layer.head_dim, dtype=x.dtype)
    eye = torch.eye(layer.head_dim, dtype=x.dtype)
    ys = []
    for t in range(T):
        lam, Q, bx, z = coefficients(layer, x[:, t])
        h = torch.linalg.solve(eye - Q, (lam * h + bx).unsqueeze(-1)).squeeze(-1)
        ys.append(readout(layer, h, z))
    return torch.stack(ys, 1)


@pytest.mark.parametrize("length", [1, 7, 33])
@pytest.mark.parametrize(
    "kw", [{}, {"num_iterations": 1, "chunk_size": 4}, {"num_iterations": 3, "negative_eigenvalues": True, "chunk_size": 5}]
)
def test_every_form_follows_the_equations(length, kw):
    layer = make(**kw)
    x = torch.randn(2, length, D_MODEL, dtype=torch.float64)
    h0 = torch.randn(2, layer.num_iterations, layer.num_heads, layer.head_dim, dtype=torch.float64)
    for start in (None, h0):
        want_y, want_h = iterates_loop(layer, x, start)
        state = None if start is None else DiagonalState(start)
        for mode in ("scan", "recurrent"):
            assert_matches(*layer(x, state, mode=mode), want_y, {"h": want_h}, **TIGHT)
        assert_matches(*stepped(layer, x, state), want_y, {"h": want_h}, **TIGHT)


def test_forms_agree_with_gradients():
    layer = make(num_iterations=3, negative_eigenvalues=True, chunk_size=4)
    assert_forms_agree(layer, torch.randn(2, 19, D_MODEL, dtype=torch.float64), ["scan", "recurrent", "split", "step"],
                       rtol=1e-9, atol=1e-11)  # fmt: skip


def test_one_iteration_is_a_diagonal_rnn():
    torch.manual_seed(3)
    lam, b, u = torch.rand(2, 9, 2, 3), torch.randn(2, 9, 2, 3), F.normalize(torch.randn(2, 9, 2, 3), dim=-1)
    h, last = fixed_point_scan(lam, b, torch.rand(2, 9, 2), u, num_iterations=1)
    want, want_last = linear_scan_reference(lam, b)
    torch.testing.assert_close(h, want)
    torch.testing.assert_close(last[:, 0], want_last)


def test_iterations_converge_to_the_dense_rnn():
    """The paper's claim for a contracting iteration: the error to the dense fixed point shrinks with L."""
    x = torch.randn(2, 24, D_MODEL, dtype=torch.float64)
    dense = dense_loop(make(rho_max=0.5), x)
    errors = []
    for L in (1, 4, 16, 64):
        layer = make(rho_max=0.5, num_iterations=L)
        with torch.no_grad():
            errors.append(float((layer(x)[0] - dense).abs().max()))
    assert errors[0] > 1e-2, errors  # a diagonal RNN is not the dense one
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-9, errors


def test_bad_arguments_name_themselves():
    for kw, name in (
        ({"num_iterations": 0}, "num_iterations"), ({"rho_max": 1.0}, "rho_max"), ({"num_heads": 3}, "num_heads"),
        ({"expand": 0}, "expand"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=name):
            rnnzoo.create("fixed_point_rnn", d_model=8, **kw)
    with pytest.raises(ValueError, match="state"):
        fixed_point_scan(torch.rand(1, 3, 1, 2), torch.rand(1, 3, 1, 2), torch.rand(1, 3, 1), torch.rand(1, 3, 1, 2),
                         torch.zeros(1, 1, 1, 2), num_iterations=2)  # fmt: skip
