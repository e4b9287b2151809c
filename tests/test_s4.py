"""S4 beyond the generic layer tests: HiPPO-LegS and its NPLR form, the kernel, the forms, and a loop written
from the equations with dense matrices."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import rnnzoo
from forms import assert_float32_close, assert_forms_agree
from rnnzoo.layers import S4, DiagonalState
from rnnzoo.ops import dplr_ssm_kernel, hippo_legs, nplr_legs

D_MODEL = 4


def make(d_state: int = 16, perturb: bool = False, **kw) -> S4:
    """A float64 layer; with ``perturb``, every SSM parameter moved off HiPPO-LegS (whose ``B`` is parallel to
    ``P``), so the Woodbury terms are generic."""
    torch.manual_seed(0)
    layer = S4(D_MODEL, d_state=d_state, **kw).double()
    if perturb:
        with torch.no_grad():
            for name in ("log_A_real", "A_imag", "P_re", "P_im", "B_re", "B_im"):
                getattr(layer, name).add_(0.3 * torch.randn_like(getattr(layer, name)))
    return layer


def dense_ssm(layer: S4) -> tuple[torch.Tensor, ...]:
    """``(A, B, C, Δ)`` of the full conjugate-symmetric system from the parameters, dense: ``A = diag(Λ) - P P^*``,
    ``Λ = -exp(log_A_real) + i·A_imag``, ``Δ = exp(log_dt)``."""
    full = lambda re, im: torch.cat([torch.complex(re, im), torch.complex(re, -im)], -1)
    Lambda = full(-torch.exp(layer.log_A_real), layer.A_imag)
    P, B, C = full(layer.P_re, layer.P_im), full(layer.B_re, layer.B_im), full(layer.C_re, layer.C_im)
    dt = torch.exp(layer.log_dt)
    return torch.diag_embed(Lambda) - P[:, :, None] * P.conj()[:, None, :], B, C, dt


def bilinear(A: torch.Tensor, B: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Ā = (I - Δ/2 A)^{-1}(I + Δ/2 A)``, ``B̄ = (I - Δ/2 A)^{-1} Δ B`` by dense solves."""
    eye = torch.eye(A.shape[-1], dtype=A.dtype)
    half = (dt / 2)[:, None, None]
    A_bar = torch.linalg.solve(eye - half * A, eye + half * A)
    B_bar = torch.linalg.solve(eye - half * A, dt[:, None, None] * B[..., None])[..., 0]
    return A_bar, B_bar


# -- (a) HiPPO-LegS and its normal-plus-low-rank form ---------------------------------------------


def test_hippo_legs_is_the_published_matrix():
    N = 7
    A, B = hippo_legs(N)
    for n in range(N):
        assert B[n] == pytest.approx(math.sqrt(2 * n + 1), rel=1e-15)
        for k in range(N):
            want = -math.sqrt(2 * n + 1) * math.sqrt(2 * k + 1) if n > k else -(n + 1.0) if n == k else 0.0
            assert A[n, k] == pytest.approx(want, rel=1e-15, abs=0.0), (n, k)


@pytest.mark.parametrize("N", [2, 8, 64])
def test_nplr_reconstructs_hippo_legs(N):
    A, B = hippo_legs(N)
    Lambda, P, B_tilde, V = nplr_legs(N)
    full = lambda v: torch.cat([v, v.conj()], -1)
    V = torch.cat([V, V.conj()], 1)
    torch.testing.assert_close(V.conj().T @ V, torch.eye(N, dtype=V.dtype), rtol=0, atol=1e-12)
    normal_plus_low_rank = torch.diag(full(Lambda)) - full(P)[:, None] * full(P).conj()[None, :]
    torch.testing.assert_close(V @ normal_plus_low_rank @ V.conj().T, A.to(V.dtype), rtol=0, atol=1e-8)
    torch.testing.assert_close(V @ full(B_tilde), B.to(V.dtype), rtol=0, atol=1e-8)
    # the normal part is -1/2 + iω, one of each conjugate pair (ω < 0, as S4); P is V^* sqrt(n + 1/2)
    torch.testing.assert_close(Lambda.real, torch.full((N // 2,), -0.5, dtype=torch.float64), rtol=0, atol=1e-10)
    assert (Lambda.imag < 0).all()
    p = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5).to(V.dtype)
    torch.testing.assert_close(full(P), V.conj().T @ p, rtol=0, atol=1e-10)


def test_nplr_rejects_an_odd_size():
    with pytest.raises(ValueError, match="`N` must be an even int"):
        nplr_legs(5)


# -- (b) the Cauchy/Woodbury kernel against powers of the dense Ā -----------------------------------


@pytest.mark.parametrize("perturb", [False, True])
@pytest.mark.parametrize("length", [1, 2, 7, 33, 64])
def test_kernel_equals_powers_of_dense_transition(perturb, length):
    layer = make(perturb=perturb, dt_min=0.01, dt_max=0.5)
    A, B, C, dt = dense_ssm(layer)
    A_bar, x = bilinear(A, B, dt)
    want = []
    for _ in range(length):  # K_k = Re(C Ā^k B̄)
        want.append((C * x).sum(-1).real)
        x = (A_bar @ x[..., None])[..., 0]
    got = dplr_ssm_kernel(*layer.ssm(), length)
    torch.testing.assert_close(got, torch.stack(want, -1), rtol=1e-9, atol=1e-12)


# -- (c) conv, recurrent, split and step agree ---------------------------------------------------------


@pytest.mark.parametrize("perturb", [False, True])
@pytest.mark.parametrize("length", [1, 7, 33])
def test_forms_agree(perturb, length):
    layer = make(d_state=16 if perturb else 64, perturb=perturb, dt_min=0.01, dt_max=0.5)
    x = torch.randn(2, length, D_MODEL, dtype=torch.float64)
    assert_forms_agree(layer, x, ["recurrent", "conv", "split", "step"], split=(length + 1) // 3 or None)


def test_conv_from_random_state():
    layer = make(perturb=True, dt_min=0.01, dt_max=0.5)
    x = torch.randn(2, 29, D_MODEL, dtype=torch.float64)
    h0 = torch.randn(2, D_MODEL, 8, dtype=torch.complex128)
    y_loop, s_loop = layer(x, DiagonalState(h0), mode="recurrent")
    y_conv, s_conv = layer(x, DiagonalState(h0), mode="conv")
    torch.testing.assert_close(y_conv, y_loop, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(s_conv.h, s_loop.h, rtol=1e-9, atol=1e-10)
    y_zero, _ = layer(x, mode="conv")
    assert (y_conv - y_zero).abs().max() > 1e-3  # the state did contribute


def test_conv_float32_long_sequence():
    torch.manual_seed(0)
    layer64 = S4(D_MODEL).double()
    layer32 = S4(D_MODEL).float()
    layer32.load_state_dict(layer64.state_dict())
    x = torch.randn(1, 1000, D_MODEL, dtype=torch.float64)
    inputs64, inputs32 = layer64.engine_inputs(x)[0], layer32.engine_inputs(x.float())[0]
    z64, h64 = layer64.engine.run(inputs64, None, "recurrent")
    z32, h32 = layer32.engine.run(inputs32, None, "conv")
    assert_float32_close(z32, z64, rel=1e-4)
    assert_float32_close(torch.view_as_real(h32), torch.view_as_real(h64), rel=1e-4)


# -- (d) a loop from the equations ---------------------------------------------------------------------


@pytest.mark.parametrize("from_state", [False, True])
def test_layer_equals_a_loop_written_from_the_equations(from_state):
    """``h_t = Ā h_{t-1} + B̄ x_t``, ``z_t = Re(C h_t) + D x_t`` on the full state with dense matrices,
    ``y_t = GLU(W GELU(z_t) + b)``."""
    layer = make(perturb=True, dt_min=0.01, dt_max=0.5)
    x = torch.randn(2, 20, D_MODEL, dtype=torch.float64)
    A, B, C, dt = dense_ssm(layer)
    A_bar, B_bar = bilinear(A, B, dt)
    h0 = torch.randn(2, D_MODEL, 8, dtype=torch.complex128) * from_state
    h = torch.cat([h0, h0.conj()], -1)
    zs = []
    for x_t in x.unbind(1):
        h = (A_bar @ h[..., None])[..., 0] + B_bar * x_t[..., None]
        zs.append((C * h).sum(-1).real + layer.D * x_t)
    y_want = F.glu(layer.out_proj(F.gelu(torch.stack(zs, 1))), dim=-1)
    torch.testing.assert_close(h[..., 8:], h[..., :8].conj())  # the full state stays conjugate-symmetric
    for mode in ("conv", "recurrent"):
        y, state = layer(x, DiagonalState(h0) if from_state else None, mode=mode)
        torch.testing.assert_close(y, y_want, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(state.h, h[..., :8], rtol=1e-9, atol=1e-11)


def test_mixer_output_leads_to_the_layer_output():
    layer = make()
    x = torch.randn(2, 12, D_MODEL, dtype=torch.float64)
    _, Y = layer.mixer_io(x)
    z = Y.squeeze(-1).transpose(1, 2)
    torch.testing.assert_close(F.glu(layer.out_proj(F.gelu(z)), dim=-1), layer(x)[0])


# -- (e) eigenvalues ------------------------------------------------------------------------------------


def test_initial_eigenvalues_lie_inside_the_unit_disc():
    for dt_min, dt_max in [(0.001, 0.1), (0.1, 1.0)]:
        layer = make(d_state=64, dt_min=dt_min, dt_max=dt_max)
        eig = layer.transition_eigenvalues(torch.randn(2, 3, D_MODEL, dtype=torch.float64))
        assert eig.shape == (2, 3, D_MODEL, 64) and eig.is_complex()
        assert eig.abs().max() < 1


def test_initial_eigenvalues_are_hippo_legs_discretised():
    """HiPPO-LegS is triangular with eigenvalues ``-1, ..., -N``; the bilinear map sends ``λ`` to
    ``(1 + Δλ/2) / (1 - Δλ/2)``, real. (Its eigenvectors are far from orthogonal, so the eigenvalues are
    ill-conditioned in ``Λ, P``: parameters rounded to float32 move them by ~1e-4 at ``N = 8`` and ~0.5 at
    ``N = 64``; here the float64 NPLR form at ``N = 8``.)"""
    N = 8
    layer = make(d_state=N, dt_min=0.01, dt_max=0.5)
    Lambda, P, B, _ = nplr_legs(N)
    with torch.no_grad():
        for name, value in [("log_A_real", torch.log(-Lambda.real)), ("A_imag", Lambda.imag), ("P_re", P.real),
                            ("P_im", P.imag), ("B_re", B.real), ("B_im", B.imag)]:  # fmt: skip
            getattr(layer, name).copy_(value.expand(D_MODEL, -1))
    eig = layer.transition_eigenvalues(torch.randn(1, 1, D_MODEL, dtype=torch.float64))[0, 0]
    half = (torch.exp(layer.log_dt) / 2)[:, None]
    lam = -torch.arange(1, N + 1, dtype=torch.float64)
    want = ((1 + half * lam) / (1 - half * lam)).sort(-1).values  # (d_model, N)
    torch.testing.assert_close(eig.real.sort(-1).values, want, rtol=0, atol=1e-9)
    assert eig.imag.abs().max() < 1e-9


def test_eigenvalues_are_those_of_the_step():
    """The step's transition is real-linear on the kept half ``h`` (``2·modes`` reals per channel): its matrix,
    from one step on each basis state, has the reported eigenvalues."""
    layer = make(d_state=8, perturb=True, dt_min=0.01, dt_max=0.5)
    x_t = torch.randn(1, D_MODEL, dtype=torch.float64)
    modes = 4
    zero = layer.step(x_t, layer.init_state(1))[1].h
    columns = []
    for j in range(2 * modes):  # real then imaginary parts
        h0 = torch.zeros(1, D_MODEL, modes, dtype=torch.complex128)
        h0[..., j % modes] = 1 if j < modes else 1j
        diff = layer.step(x_t, DiagonalState(h0))[1].h - zero  # (1, d_model, modes)
        columns.append(torch.cat([diff.real, diff.imag], -1)[0])
    transition = torch.stack(columns, -1)  # (d_model, 2 modes, 2 modes)
    want = torch.linalg.eigvals(transition)
    got = layer.transition_eigenvalues(x_t[:, None])[0, 0]
    distance = (got[:, :, None] - want[:, None, :]).abs()  # (d_model, got, want)
    assert distance.min(-1).values.max() < 1e-9 and distance.min(-2).values.max() < 1e-9


# -- constructor arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"d_state": 7}, "`d_state` must be a positive even int"),
        ({"d_state": 0}, "`d_state` must be a positive int"),
        ({"dt_min": 0.1, "dt_max": 0.01}, "`dt_min` <= `dt_max`"),
        ({"dt_min": 0.0}, "0 < `dt_min`"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rnnzoo.create("s4", d_model=8, **kwargs)
