"""Engine 2: the chunked scan equals the reference loop (values, final state, gradients)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnzoo.ops import linear_scan, linear_scan_reference
from rnnzoo.ops.linear_scan import default_chunk_size


def random_transition(shape, kind: str, dtype=torch.float64, device="cpu", gen=None):
    """Coefficients a_t of a chosen regime: gates in (0,1), signed, near 0/1/-1, complex."""
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    if kind == "gate":
        a = u
    elif kind == "signed":
        a = 2 * u - 1
    elif kind == "near_one":
        a = 1 - 1e-6 * u
    elif kind == "near_zero":
        a = 1e-6 * u
    elif kind == "near_minus_one":
        a = -1 + 1e-6 * u
    elif kind == "complex":
        phase = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 * math.pi
        a = u * torch.exp(1j * phase)
    else:
        raise ValueError(kind)
    if kind == "complex":
        return a.to(device=device, dtype=torch.complex128 if dtype == torch.float64 else torch.complex64)
    return a.to(device=device, dtype=dtype)


def _real_sum(z):
    """A real scalar that depends on every real and imaginary part of z."""
    return torch.view_as_real(z).sum() if z.is_complex() else z.sum()


def scan_and_grads(fn, a, b, h0, **kw):
    """Run a scan form and differentiate a fixed random loss of (h, h_last)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (a, b)]
    h0_leaf = None if h0 is None else h0.detach().clone().requires_grad_(True)
    h, h_last = fn(leaves[0], leaves[1], h0_leaf, **kw)
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(h.shape, generator=gen, dtype=torch.float64).to(h.device, h.real.dtype)
    w_last = torch.randn(h_last.shape, generator=gen, dtype=torch.float64).to(h.device, h.real.dtype)
    loss = _real_sum(h * w) + _real_sum(h_last * w_last)
    inputs = leaves + ([] if h0_leaf is None else [h0_leaf])
    grads = torch.autograd.grad(loss, inputs)
    return (h.detach(), h_last.detach(), *grads)


def assert_scan_matches_reference(a, b, h0, rtol=1e-9, atol=1e-11, **kw):
    got = scan_and_grads(linear_scan, a, b, h0, **kw)
    want = scan_and_grads(linear_scan_reference, a, b, h0)
    names = ["h", "h_last", "grad a", "grad b", "grad h0"]
    for name, x, y in zip(names, got, want):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


KINDS = ["gate", "signed", "near_one", "near_zero", "near_minus_one", "complex"]


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 3),
    length=st.integers(1, 300),
    state=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    kind=st.sampled_from(KINDS),
    with_h0=st.booleans(),
    chunk=st.sampled_from([None, 2, 3, 5, 16]),
    seed=st.integers(0, 2**16),
)
def test_scan_matches_reference_random_shapes(batch, length, state, kind, with_h0, chunk, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, length, *state)
    a = random_transition(shape, kind, gen=gen)
    b = torch.randn(shape, generator=gen, dtype=torch.float64).to(a.dtype)
    h0 = torch.randn((batch, *state), generator=gen, dtype=torch.float64).to(a.dtype) if with_h0 else None
    assert_scan_matches_reference(a, b, h0, chunk_size=chunk)


@pytest.mark.parametrize("length", [1, 2, 63, 64, 65, 127, 1031, 4099])
@pytest.mark.parametrize("kind", ["gate", "signed", "complex"])
def test_scan_matches_reference_edge_lengths(length, kind, device):
    """Lengths at and around chunk boundaries, and through two levels of recursion (4099)."""
    gen = torch.Generator().manual_seed(length)
    a = random_transition((2, length, 3), kind, gen=gen, device=device)
    b = torch.randn(2, length, 3, generator=gen, dtype=torch.float64).to(device, a.dtype)
    h0 = torch.randn(2, 3, generator=gen, dtype=torch.float64).to(device, a.dtype)
    assert_scan_matches_reference(a, b, h0)


def test_broadcast_transition_gradients_are_summed():
    """A time-invariant a (S4D) broadcasts over batch and time; its gradient sums over them."""
    a = random_transition((5,), "signed")
    b = torch.randn(3, 200, 5, dtype=torch.float64)
    assert_scan_matches_reference(a, b, None)


def test_gradcheck_float64():
    a = random_transition((2, 70, 2), "signed").requires_grad_(True)
    b = torch.randn(2, 70, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: linear_scan(*t, chunk_size=4), (a, b, h0))
    assert torch.autograd.gradcheck(lambda *t: linear_scan(*t), (a, b, h0))


def test_gradcheck_complex():
    a = random_transition((1, 40, 2), "complex").requires_grad_(True)
    b = torch.randn(1, 40, 2, dtype=torch.complex128, requires_grad=True)
    h0 = torch.randn(1, 2, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: linear_scan(*t, chunk_size=3), (a, b, h0))


def test_gradient_through_final_state_only():
    a = random_transition((2, 100, 3), "gate").requires_grad_(True)
    b = torch.randn(2, 100, 3, dtype=torch.float64, requires_grad=True)
    _, last = linear_scan(a, b)
    _, last_ref = linear_scan_reference(a, b)
    got = torch.autograd.grad(last.sum(), (a, b))
    want = torch.autograd.grad(last_ref.sum(), (a, b))
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("kind", ["near_one", "near_zero", "near_minus_one", "signed"])
def test_long_sequence_is_finite_and_accurate(kind, device):
    """T = 65,536 in float32 with extreme gates: finite, and equal to a float64 loop."""
    length = 65536
    gen = torch.Generator().manual_seed(0)
    a64 = random_transition((1, length, 4), kind, gen=gen)
    b64 = torch.randn(1, length, 4, generator=gen, dtype=torch.float64)
    a, b = a64.float().to(device), b64.float().to(device)
    a.requires_grad_(True)
    b.requires_grad_(True)
    h, last = linear_scan(a, b)
    (h.sum() + last.sum()).backward()
    for t in (h, last, a.grad, b.grad):
        assert torch.isfinite(t).all()
    want, _ = linear_scan(a64, b64)  # float64 scan, itself checked against the loop above
    scale = want.abs().max()
    assert (h.double().cpu() - want).abs().max() / scale < 1e-4


def test_long_sequence_reference_agrees():
    length = 65536
    gen = torch.Generator().manual_seed(1)
    a = random_transition((1, length, 2), "near_one", gen=gen)
    b = torch.randn(1, length, 2, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(linear_scan(a, b)[0], linear_scan_reference(a, b)[0])


def test_half_precision_computes_in_float32():
    gen = torch.Generator().manual_seed(0)
    a = random_transition((2, 500, 4), "gate", gen=gen, dtype=torch.float32)
    b = torch.randn(2, 500, 4, generator=gen)
    h, last = linear_scan(a.bfloat16(), b.bfloat16())
    assert h.dtype == torch.bfloat16 and last.dtype == torch.float32
    want, _ = linear_scan(a.bfloat16().float(), b.bfloat16().float())
    torch.testing.assert_close(last, want[:, -1])
    torch.testing.assert_close(h.float(), want, rtol=1e-2, atol=1e-2)


def test_default_chunk_size_range():
    sizes = [default_chunk_size(t) for t in (1, 100, 4096, 65536, 10**7)]
    assert all(16 <= c <= 64 for c in sizes) and sizes == sorted(sizes)


@pytest.mark.parametrize(
    "a_shape,b_shape,h0_shape,match",
    [
        ((2, 5, 3), (2, 5, 4), None, "does not broadcast"),
        ((5,), (5,), None, r"shape \(batch, time, \*state\)"),
        ((2, 0, 3), (2, 0, 3), None, "time dimension"),
        ((2, 5, 3), (2, 5, 3), (3, 3), r"`h0` must have shape"),
    ],
)
def test_bad_shapes(a_shape, b_shape, h0_shape, match):
    h0 = None if h0_shape is None else torch.zeros(h0_shape)
    for fn in (linear_scan, linear_scan_reference):
        with pytest.raises(ValueError, match=match):
            fn(torch.rand(a_shape), torch.rand(b_shape), h0)


def test_bad_dtypes_and_arguments():
    with pytest.raises(TypeError, match="`b` must be a floating or complex tensor"):
        linear_scan(torch.rand(2, 5, 3), torch.ones(2, 5, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="`a` must be a torch.Tensor"):
        linear_scan(0.5, torch.rand(2, 5, 3))
    with pytest.raises(ValueError, match="`chunk_size` must be an int >= 2"):
        linear_scan(torch.rand(2, 5, 3), torch.rand(2, 5, 3), chunk_size=1)
