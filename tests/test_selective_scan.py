"""Engine 2, selective form: the chunked selective scan equals its reference loop and the plain linear scan."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnzoo.ops import linear_scan_reference, selective_scan, selective_scan_reference
from rnnzoo.ops.selective_scan import default_selective_chunk


def make_inputs(batch=2, length=11, d_inner=5, d_state=3, *, seed=0, dtype=torch.float64, device="cpu",
                h0=True, D=True, dt_scale=1.0):  # fmt: skip
    """Mamba-like inputs: Δ > 0 (softplus), A < 0, B, C, u, D and h0 Gaussian."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64)

    u = randn(batch, length, d_inner)
    delta = dt_scale * F.softplus(randn(batch, length, d_inner))
    A = -torch.exp(randn(d_inner, d_state))
    B, C = randn(batch, length, d_state), randn(batch, length, d_state)
    tensors = [u, delta, A, B, C, randn(d_inner) if D else None, randn(batch, d_inner, d_state) if h0 else None]
    return [None if t is None else t.to(device, dtype) for t in tensors]


def outputs_and_grads(fn, inputs, **kw):
    """``(y, h_last, *grads)`` for a fixed random loss of ``(y, h_last)``; grads of every non-None input."""
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in inputs]
    y, h_last = fn(*leaves, **kw)
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.device, y.dtype)
    w_last = torch.randn(h_last.shape, generator=gen, dtype=torch.float64).to(y.device, h_last.dtype)
    loss = (y * w).sum() + (h_last * w_last).sum()
    grads = torch.autograd.grad(loss, [t for t in leaves if t is not None])
    return (y.detach(), h_last.detach(), *grads)


def assert_matches_reference(inputs, rtol=1e-9, atol=1e-11, **kw):
    negative = kw.get("negative_eigenvalues", False)
    got = outputs_and_grads(selective_scan, inputs, **kw)
    want = outputs_and_grads(selective_scan_reference, inputs, negative_eigenvalues=negative)
    given = [n for n, t in zip(["u", "delta", "A", "B", "C", "D", "h0"], inputs) if t is not None]
    names = ["y", "h_last"] + [f"grad {n}" for n in given]
    assert len(got) == len(want) == len(names)
    for name, x, y in zip(names, got, want):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("length", [1, 2, 7, 8, 9, 40])
@pytest.mark.parametrize("chunk", [None, 1, 3, 8])
@pytest.mark.parametrize("negative_eigenvalues", [False, True])
def test_matches_reference(length, chunk, negative_eigenvalues):
    """T = 1, T shorter than, equal to and not a multiple of the chunk; both transitions."""
    inputs = make_inputs(length=length, seed=length)
    assert_matches_reference(inputs, chunk_size=chunk, negative_eigenvalues=negative_eigenvalues)


@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("with_D", [False, True])
def test_optional_inputs(with_h0, with_D):
    assert_matches_reference(make_inputs(length=13, h0=with_h0, D=with_D), chunk_size=4)


@pytest.mark.parametrize("dt_scale", [1e-4, 30.0])
def test_extreme_step_sizes(dt_scale):
    """Δ → 0 (a_t → 1, the state is kept) and Δ large (a_t → 0 or, with negative eigenvalues, → -1)."""
    for negative in (False, True):
        inputs = make_inputs(length=20, dt_scale=dt_scale, seed=3)
        assert_matches_reference(inputs, chunk_size=6, negative_eigenvalues=negative)


def test_equals_discretised_linear_scan():
    """The same numbers as building a_t = exp(Δ_t A), b_t = Δ_t u_t B_t and running the plain scan."""
    u, delta, A, B, C, D, h0 = make_inputs(length=17, seed=5)
    for negative in (False, True):
        a = torch.exp(delta.unsqueeze(-1) * A)
        a = 2 * a - 1 if negative else a
        h, h_last = linear_scan_reference(a, (delta * u).unsqueeze(-1) * B.unsqueeze(-2), h0)
        y = torch.einsum("btdn,btn->btd", h, C) + D * u
        got_y, got_last = selective_scan(u, delta, A, B, C, D, h0, negative_eigenvalues=negative, chunk_size=5)
        torch.testing.assert_close(got_y, y)
        torch.testing.assert_close(got_last, h_last)


def test_float32_matches_float64():
    inputs64 = make_inputs(batch=3, length=50, d_inner=8, d_state=4, seed=11)
    inputs32 = [None if t is None else t.float() for t in inputs64]
    for negative in (False, True):
        y, h = selective_scan(*inputs32, negative_eigenvalues=negative)
        y_ref, h_ref = selective_scan_reference(*inputs64, negative_eigenvalues=negative)
        assert y.dtype == h.dtype == torch.float32
        torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(h.double(), h_ref, rtol=1e-4, atol=1e-4)


def test_half_precision_computes_in_float32():
    inputs = [None if t is None else t.to(torch.bfloat16) for t in make_inputs(length=9)]
    y, h_last = selective_scan(*inputs)
    assert y.dtype == torch.bfloat16 and h_last.dtype == torch.float32
    y_ref, _ = selective_scan_reference(*inputs)
    torch.testing.assert_close(y, y_ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("negative_eigenvalues", [False, True])
def test_gradcheck_float64(negative_eigenvalues):
    inputs = [t.requires_grad_(True) for t in make_inputs(batch=2, length=7, d_inner=3, d_state=2, seed=2)]
    fn = lambda *t: selective_scan(*t, negative_eigenvalues=negative_eigenvalues, chunk_size=3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


def test_gradient_through_final_state_only():
    inputs = make_inputs(length=10, seed=4)
    for fn in (selective_scan, selective_scan_reference):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        leaves_grads = torch.autograd.grad(fn(*leaves)[1].sum(), leaves, allow_unused=True)
        if fn is selective_scan:
            got = leaves_grads
        else:
            want = leaves_grads
    for x, y in zip(got, want):
        if y is None:  # D does not reach the final state: zero (or None) gradient
            assert x is None or torch.count_nonzero(x) == 0
        else:
            torch.testing.assert_close(x, y)


def test_causal():
    """y_t depends on inputs at steps <= t only."""
    u, delta, A, B, C, D, h0 = make_inputs(length=12, seed=6)
    y, _ = selective_scan(u, delta, A, B, C, D, h0, chunk_size=5)
    t = 6
    u2, d2, B2, C2 = (x.clone() for x in (u, delta, B, C))
    for x in (u2, d2, B2, C2):
        x[:, t + 1 :] += 1.0
    y2, _ = selective_scan(u2, d2, A, B2, C2, D, h0, chunk_size=5)
    torch.testing.assert_close(y2[:, : t + 1], y[:, : t + 1], rtol=0, atol=0)
    assert not torch.allclose(y2[:, t + 1 :], y[:, t + 1 :])


def test_split_sequence_equals_whole():
    """Running in two pieces, the final state handed on, gives the whole sequence's outputs."""
    u, delta, A, B, C, D, h0 = make_inputs(length=15, seed=8)
    y, h = selective_scan(u, delta, A, B, C, D, h0, chunk_size=4)
    y1, h1 = selective_scan(u[:, :6], delta[:, :6], A, B[:, :6], C[:, :6], D, h0, chunk_size=4)
    y2, h2 = selective_scan(u[:, 6:], delta[:, 6:], A, B[:, 6:], C[:, 6:], D, h1, chunk_size=4)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y)
    torch.testing.assert_close(h2, h)


def test_device(device):
    inputs = make_inputs(length=21, seed=9, device=device)
    assert_matches_reference(inputs, negative_eigenvalues=True)


def test_default_chunk_is_bounded():
    assert default_selective_chunk(64, 58, 16) == 4
    assert default_selective_chunk(1, 1, 1) == 64
    assert default_selective_chunk(64, 4096, 64) == 1


def test_bad_inputs():
    u, delta, A, B, C, D, h0 = make_inputs()
    with pytest.raises(ValueError, match="A"):
        selective_scan(u, delta, A[:, :2].T, B, C)
    with pytest.raises(ValueError, match="h0"):
        selective_scan(u, delta, A, B, C, D, h0[:1])
    with pytest.raises(ValueError, match="time"):
        selective_scan(u[:, :0], delta[:, :0], A, B[:, :0], C[:, :0])
    with pytest.raises(TypeError, match="u"):
        selective_scan(u.long(), delta, A, B, C)
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan(u, delta, A, B, C, chunk_size=0)
