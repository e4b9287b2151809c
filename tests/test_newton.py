"""Engine 1: Newton's method equals the sequential loop (states, final state, gradients); the block scan."""

from __future__ import annotations

import warnings

import pytest
import torch

from rnnzoo.ops import (
    block_linear_scan, block_linear_scan_reference, nonlinear_recurrence, nonlinear_recurrence_reference
)  # fmt: skip
from rnnzoo.ops.newton import (
    MIN_CHUNK, SEQUENTIAL_BELOW, NewtonConvergenceWarning, NewtonInfo, default_chunk_size, default_tolerance
)

# -- toy cells: a diagonal one and one with 2x2 blocks ------------------------------------------------------------


def tanh_cell(h, x, a, *, jacobian=False):
    """``h_t = tanh(a ⊙ h_{t-1} + x_t)``: diagonal Jacobian ``a (1 - h_t²)``."""
    out = torch.tanh(a * h + x)
    return out, (a * (1 - out * out) if jacobian else None)


def rotation_cell(h, x, w, *, jacobian=False):
    """State ``(..., 2, d)``: ``h_t = tanh(W h_{t-1} + x_t)`` with ``W = [[w0, -w1], [w1, w0]]`` per channel."""
    u, v = h.unbind(-2)
    w0, w1 = w.unbind(0)
    out = torch.tanh(torch.stack([w0 * u - w1 * v, w1 * u + w0 * v], dim=-2) + x)
    if not jacobian:
        return out, None
    d = 1 - out * out
    rows = torch.stack([torch.stack([w0, -w1]), torch.stack([w1, w0])])  # (2, 2, d)
    return out, d.unsqueeze(-2) * rows


def problem(cell_name: str, batch: int, length: int, d: int = 3, seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    if cell_name == "tanh":
        cell, state = tanh_cell, (d,)
        params = [(0.5 + 0.8 * torch.rand(d, generator=gen, dtype=torch.float64))]
    else:
        cell, state = rotation_cell, (2, d)
        params = [0.7 * torch.randn(2, d, generator=gen, dtype=torch.float64)]
    x = torch.randn(batch, length, *state, generator=gen, dtype=torch.float64)
    h0 = torch.randn(batch, *state, generator=gen, dtype=torch.float64)
    return cell, [x.to(dtype)], h0.to(dtype), [p.to(dtype) for p in params]


def states_and_grads(fn, cell, xs, h0, params, **kw):
    """States, final state and the gradients (xs, h0, params) of a fixed random loss of both."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (*xs, h0, *params)]
    n = len(xs)
    out = fn(cell, leaves[:n], leaves[n], leaves[n + 1 :], **kw)
    h, h_last = out[0], out[1]
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(h.shape, generator=gen, dtype=torch.float64).to(h.dtype)
    w_last = torch.randn(h_last.shape, generator=gen, dtype=torch.float64).to(h.dtype)
    grads = torch.autograd.grad((h * w).sum() + (h_last * w_last).sum(), leaves)
    return (h.detach(), h_last.detach(), *grads)


def assert_newton_matches_loop(cell, xs, h0, params, rtol=1e-9, atol=1e-11, **kw):
    got = states_and_grads(nonlinear_recurrence, cell, xs, h0, params, **kw)
    want = states_and_grads(nonlinear_recurrence_reference, cell, xs, h0, params)
    names = ["h", "h_last", *[f"grad xs[{i}]" for i in range(len(xs))], "grad h0"]
    names += [f"grad params[{i}]" for i in range(len(params))]
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


# -- Newton vs the loop -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell_name", ["tanh", "rotation"])
@pytest.mark.parametrize("length", [1, 2, 7, 64, 257])
@pytest.mark.parametrize("chunk", [None, 1, 3, 16])
def test_newton_matches_loop_float64(cell_name, length, chunk):
    """Every chunk size, DEER (1) included; lengths not multiples of the chunk leave a ragged tail."""
    cell, xs, h0, params = problem(cell_name, 2, length, seed=length)
    assert_newton_matches_loop(cell, xs, h0, params, chunk_size=chunk)


@pytest.mark.parametrize("cell_name", ["tanh", "rotation"])
def test_newton_matches_loop_float32(cell_name):
    cell, xs, h0, params = problem(cell_name, 3, 300, dtype=torch.float32)
    assert_newton_matches_loop(cell, xs, h0, params, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length,chunk", [(1, None), (7, 3), (64, 16), (257, None), (300, 1)])
def test_a_cells_own_vjp_replaces_autograd(length, chunk):
    """A cell with a ``vjp`` attribute gets its gradients from it (here hand-written for the tanh cell), and they
    equal the loop's by autograd."""
    calls = []

    def cell(h, x, a, *, jacobian=False):
        return tanh_cell(h, x, a, jacobian=jacobian)

    def vjp(h, x, a, lam):
        calls.append(h.shape)
        g = lam * (1 - torch.tanh(a * h + x) ** 2)
        return g, (g * h).sum(tuple(range(h.dim() - 1)))

    cell.vjp = vjp
    _, xs, h0, params = problem("tanh", 2, length, seed=length)
    assert_newton_matches_loop(cell, xs, h0, params, chunk_size=chunk)
    assert calls


@pytest.mark.parametrize("length,chunk", [(1, None), (7, 3), (64, 16), (300, 1)])
def test_residuals_reach_the_vjp_of_the_chunk_steps(length, chunk):
    """A cell may return residuals with its Jacobian; its vjp gets them at the final sweep's chunk steps (none at
    the ragged tail's steps) and the gradients are the loop's."""
    given = []

    def cell(h, x, a, *, jacobian=False):
        out, jac = tanh_cell(h, x, a, jacobian=jacobian)
        return (out, jac, out) if jacobian else (out, None)  # residuals: the step's tanh

    def vjp(h, x, a, lam, residuals=None):
        given.append(residuals is not None)
        out = torch.tanh(a * h + x) if residuals is None else residuals
        g = lam * (1 - out * out)
        return g, (g * h).sum(tuple(range(h.dim() - 1)))

    cell.vjp = vjp
    _, xs, h0, params = problem("tanh", 2, length, seed=length)
    assert_newton_matches_loop(cell, xs, h0, params, chunk_size=chunk)
    steps = min(chunk or length, length)  # per chunk; the tail is what the chunks leave
    assert given.count(True) == steps and given.count(False) == length % steps


def test_gradients_only_where_needed_and_through_final_state():
    cell, xs, h0, params = problem("tanh", 2, 50)
    x = xs[0].clone().requires_grad_(True)
    _, last, _ = nonlinear_recurrence(cell, [x], h0, params)
    (grad,) = torch.autograd.grad(last.sum(), x)
    x_ref = xs[0].clone().requires_grad_(True)
    _, last_ref = nonlinear_recurrence_reference(cell, [x_ref], h0, params)
    torch.testing.assert_close(grad, torch.autograd.grad(last_ref.sum(), x_ref)[0])
    h, _, _ = nonlinear_recurrence(cell, xs, h0, params)  # nothing requires grad: no graph
    assert not h.requires_grad


@pytest.mark.parametrize("cell_name", ["tanh", "rotation"])
@pytest.mark.parametrize("length,chunk", [(1, None), (50, 7), (300, 1)])
def test_gradient_of_h0_alone(cell_name, length, chunk):
    """With nothing else requiring grad the backward still runs both adjoint sweeps for ``∂L/∂h0``."""
    cell, xs, h0, params = problem(cell_name, 2, length, seed=length)
    grads = []
    for solve in (nonlinear_recurrence, nonlinear_recurrence_reference):
        start = h0.clone().requires_grad_(True)
        kw = {"chunk_size": chunk} if solve is nonlinear_recurrence else {}
        h, last = solve(cell, xs, start, params, **kw)[:2]
        grads.append(torch.autograd.grad((h * h).sum() + last.sum(), start)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cell_name", ["tanh", "rotation"])
@pytest.mark.parametrize("length,chunk", [(1, None), (50, 7), (300, 1)])
def test_scratch_xs_take_their_gradient_and_are_rebuilt_for_a_second_backward(cell_name, length, chunk):
    """With ``rebuild_xs`` the backward writes the gradient of ``xs`` over them; a second backward
    (``retain_graph``) gets fresh ones from ``rebuild_xs`` and the same gradients, the loop's."""
    cell, xs, h0, params = problem(cell_name, 2, length, seed=length)
    source = xs[0].clone().requires_grad_(True)
    scratch = source * 2  # an intermediate the caller does not read again
    rebuilt = []

    def rebuild():
        rebuilt.append(torch.is_grad_enabled())
        return [source.detach() * 2]

    h, last, _ = nonlinear_recurrence(cell, [scratch], h0, params, chunk_size=chunk, rebuild_xs=rebuild)
    loss = (h * h).sum() + last.sum()
    (first,) = torch.autograd.grad(loss, source, retain_graph=True)
    assert rebuilt == []
    (second,) = torch.autograd.grad(loss, source)
    assert rebuilt == [False], "rebuilt once, under no grad"
    reference = xs[0].clone().requires_grad_(True)
    h_ref, last_ref = nonlinear_recurrence_reference(cell, [reference * 2], h0, params)
    (want,) = torch.autograd.grad((h_ref * h_ref).sum() + last_ref.sum(), reference)
    torch.testing.assert_close(first, want, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(second, want, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(scratch.detach(), want / 2, rtol=1e-9, atol=1e-12)  # ∂L/∂scratch, over it


def test_exact_after_as_many_iterations_as_chunks():
    """After k iterations the first k chunks are exact: n_chunks iterations converge even with no tolerance stop
    (an expanding cell, |a| up to 5, that Newton does not settle earlier)."""
    cell, xs, h0, params = problem("tanh", 2, 40)
    xs, params = [0.3 * xs[0]], [4 * params[0]]
    with pytest.warns(NewtonConvergenceWarning):
        nonlinear_recurrence(cell, xs, h0, params, chunk_size=4, tol=1e-300, max_iters=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h, _, info = nonlinear_recurrence(cell, xs, h0, params, chunk_size=4, tol=1e-300, max_iters=10)
    assert info.converged and info.iterations == 10 and info.chunk_size == 4
    torch.testing.assert_close(h, nonlinear_recurrence_reference(cell, xs, h0, params)[0], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("chunk,most", [(None, 3), (1, 12)])
def test_converges_in_few_iterations_and_reports_them(chunk, most):
    cell, xs, h0, params = problem("tanh", 2, 1024, d=8)
    h, _, info = nonlinear_recurrence(cell, xs, h0, params, chunk_size=chunk)
    assert info.converged and 1 <= info.iterations <= most, info
    assert info.update <= default_tolerance(torch.float64)
    torch.testing.assert_close(h, nonlinear_recurrence_reference(cell, xs, h0, params)[0], rtol=1e-9, atol=1e-11)


def test_non_convergence_warns_and_falls_back_to_the_loop():
    cell, xs, h0, params = problem("rotation", 2, 1000)
    with pytest.warns(NewtonConvergenceWarning, match="did not converge in 1 iterations"):
        got = states_and_grads(nonlinear_recurrence, cell, xs, h0, params, max_iters=1)
    want = states_and_grads(nonlinear_recurrence_reference, cell, xs, h0, params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    with pytest.warns(NewtonConvergenceWarning):
        _, _, info = nonlinear_recurrence(cell, xs, h0, params, max_iters=1)
    assert not info.converged and info.iterations == 1 and info.update > default_tolerance(torch.float64)


def test_non_finite_update_falls_back():
    """A wrong (NaN) Jacobian derails Newton; the loop, which never uses it, still gives the answer."""

    def broken(h, x, a, *, jacobian=False):
        out, jac = tanh_cell(h, x, a, jacobian=jacobian)
        return out, (None if jac is None else jac * float("nan"))

    cell, xs, h0, params = problem("tanh", 1, 100)
    with pytest.warns(NewtonConvergenceWarning, match="nan"):
        h, _, info = nonlinear_recurrence(broken, xs, h0, params)
    assert not info.converged
    torch.testing.assert_close(h, nonlinear_recurrence_reference(cell, xs, h0, params)[0])


def test_long_sequence_float32_finite():
    cell, xs, h0, params = problem("rotation", 1, 16384, d=4, dtype=torch.float32)
    xs = [(10 * xs[0]).requires_grad_(True)]
    h, last, info = nonlinear_recurrence(cell, xs, h0, params)
    (h.sum() + last.sum()).backward()
    assert info.converged and torch.isfinite(h).all() and torch.isfinite(xs[0].grad).all()


def test_half_precision_computes_in_float32():
    cell, xs, h0, params = problem("tanh", 2, 100, dtype=torch.float32)
    h, last, _ = nonlinear_recurrence(cell, [xs[0].bfloat16()], h0.bfloat16(), params)
    assert h.dtype == last.dtype == torch.float32
    want, _ = nonlinear_recurrence_reference(cell, [xs[0].bfloat16().float()], h0.bfloat16().float(), params)
    torch.testing.assert_close(h, want, rtol=1e-5, atol=1e-5)


def test_default_chunk_size_and_tolerance():
    cpu = torch.device("cpu")
    assert [default_chunk_size(t, 16, cpu) for t in (1, 2, 13, 4096, 10**6)] == [1, 1, 4, 64, 1000]  # sqrt(T)
    assert default_chunk_size(4096, 8 * 256, cpu) == 128  # 2^16 numbers per chunk step
    assert default_chunk_size(100, 10**6, cpu) == 100  # never more than T
    assert default_chunk_size(4096, 16, torch.device("meta")) == 1  # DEER off the CPU
    assert default_tolerance(torch.float64) < default_tolerance(torch.float32)


# -- bad input ------------------------------------------------------------------------------------------------------


def test_bad_arguments():
    cell, xs, h0, params = problem("tanh", 2, 5)
    cases = [
        (ValueError, "`mode` must be one of", {"mode": "fast"}),
        (ValueError, "`max_iters` must be a positive int", {"max_iters": 0}),
        (ValueError, "`chunk_size` must be a positive int", {"chunk_size": 0}),
        (ValueError, "`tol` must be a positive float", {"tol": 0.0}),
    ]
    for error, match, kw in cases:
        with pytest.raises(error, match=match):
            nonlinear_recurrence(cell, xs, h0, params, **kw)
    with pytest.raises(TypeError, match="`xs` must be a non-empty sequence"):
        nonlinear_recurrence(cell, xs[0], h0, params)
    with pytest.raises(TypeError, match="`xs` must be a non-empty sequence"):
        nonlinear_recurrence(cell, [], h0, params)
    with pytest.raises(ValueError, match=r"`xs\[1\]` must have shape \(batch, time, ...\)"):
        nonlinear_recurrence(cell, [xs[0], xs[0][:, :3]], h0, params)
    with pytest.raises(ValueError, match="time dimension"):
        nonlinear_recurrence(cell, [xs[0][:, :0]], h0, params)
    with pytest.raises(ValueError, match=r"`h0` must have shape \(batch=2, \*state\)"):
        nonlinear_recurrence(cell, xs, h0[:1], params)
    with pytest.raises(TypeError, match=r"`params\[0\]` must be a real floating-point"):
        nonlinear_recurrence(cell, xs, h0, [torch.ones(3, dtype=torch.long)])
    with pytest.raises(TypeError, match="`cell` must be callable"):
        nonlinear_recurrence(None, xs, h0, params)


def test_bad_cells():
    _, xs, h0, params = problem("tanh", 2, 5)
    with pytest.raises(ValueError, match="must return a state of the shape it is given"):
        nonlinear_recurrence(lambda h, x, a, jacobian: (h[..., :2], h), xs, h0, params)
    with pytest.raises(ValueError, match=r"must return J of the state's shape .* \(diagonal\)"):
        nonlinear_recurrence(lambda h, x, a, jacobian: (h, None), xs, h0, params)
    with pytest.raises(ValueError, match=r"k×k blocks"):
        nonlinear_recurrence(lambda h, x, a, jacobian: (h, h[..., None]), xs, h0, params)


# -- the block scan -------------------------------------------------------------------------------------------------


def block_problem(batch, length, k=2, channels=(3,), seed=0):
    gen = torch.Generator().manual_seed(seed)
    A = 0.7 * torch.randn(batch, length, k, k, *channels, generator=gen, dtype=torch.float64)
    b = torch.randn(batch, length, k, *channels, generator=gen, dtype=torch.float64)
    h0 = torch.randn(batch, k, *channels, generator=gen, dtype=torch.float64)
    return A, b, h0


def block_scan_and_grads(fn, A, b, h0, **kw):
    leaves = [t.detach().clone().requires_grad_(True) for t in (A, b, h0)]
    h, last = fn(*leaves, **kw)
    gen = torch.Generator().manual_seed(3)
    loss = (h * torch.randn(h.shape, generator=gen, dtype=h.dtype)).sum() + (
        last * torch.randn(last.shape, generator=gen, dtype=h.dtype)
    ).sum()
    return (h.detach(), last.detach(), *torch.autograd.grad(loss, leaves))


@pytest.mark.parametrize("length", [1, 2, 63, 64, 65, 300, 1031])
@pytest.mark.parametrize("k,channels,chunk", [(2, (3,), None), (3, (2, 2), 3), (1, (), 2)])
def test_block_scan_matches_loop(length, k, channels, chunk):
    A, b, h0 = block_problem(2, length, k, channels, seed=length)
    got = block_scan_and_grads(block_linear_scan, A, b, h0, chunk_size=chunk)
    want = block_scan_and_grads(block_linear_scan_reference, A, b, h0)
    for name, x, y in zip(["h", "h_last", "grad A", "grad b", "grad h0"], got, want):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-11, msg=lambda m, name=name: f"{name}: {m}")


def test_block_scan_broadcast_transition_and_no_h0():
    A, b, _ = block_problem(3, 200)
    A = A[:1, :1].expand(3, 200, 2, 2, 3)  # one transition for every step and batch entry
    h, last = block_linear_scan(A, b)
    want, want_last = block_linear_scan_reference(A, b)
    torch.testing.assert_close(h, want)
    torch.testing.assert_close(last, want_last)


def test_block_scan_bad_inputs():
    A, b, h0 = block_problem(2, 5)
    with pytest.raises(ValueError, match=r"`A` must have shape \(batch, time, k, k, \*channels\)"):
        block_linear_scan(A[..., :2], b)
    with pytest.raises(ValueError, match=r"`b` must have shape \(batch, time, k, \*channels\)"):
        block_linear_scan(A, b[:, :, 0, 0])
    with pytest.raises(ValueError, match=r"`h0` must have shape \(batch, k, \*channels\)"):
        block_linear_scan(A, b, h0[:, :1])
    with pytest.raises(ValueError, match="time dimension"):
        block_linear_scan(A[:, :0], b[:, :0])
    with pytest.raises(TypeError, match="`b` must be a real floating-point tensor"):
        block_linear_scan(A, b.long())
    with pytest.raises(ValueError, match="`chunk_size` must be an int >= 2"):
        block_linear_scan(A, b, chunk_size=1)


# -- short sequences: the sequential solve ------------------------------------------------------------------------


@pytest.mark.parametrize("cell_name", ["tanh", "rotation"])
@pytest.mark.parametrize("length", [1, 40, SEQUENTIAL_BELOW - 1])
def test_short_sequences_solve_sequentially(cell_name, length):
    """Below ``SEQUENTIAL_BELOW`` steps (chunk size not given) the loop solves, reported as one chunk of T steps;
    states and every gradient (diagonal and 2×2-block Jacobians) are the reference loop's."""
    cell, xs, h0, params = problem(cell_name, 2, length, seed=length)
    _, _, info = nonlinear_recurrence(cell, xs, h0, params)
    assert info == NewtonInfo(1, True, 0.0, length)
    assert_newton_matches_loop(cell, xs, h0, params)


@pytest.mark.parametrize("cell_name", ["tanh", "rotation"])
def test_sequential_solve_gradcheck(cell_name):
    cell, xs, h0, params = problem(cell_name, 2, 6, d=2)
    leaves = [t.requires_grad_(True) for t in (*xs, h0, *params)]
    fn = lambda x, h, p: nonlinear_recurrence(cell, [x], h, [p])[:2]  # noqa: E731
    assert torch.autograd.gradcheck(fn, leaves)


def test_sequential_solve_vjp_gets_whole_sequence_and_residuals():
    """The sequential solve's backward evaluates the cell (with its residuals) and its vjp once, on all steps."""
    shapes = []

    def cell(h, x, a, *, jacobian=False):
        out, jac = tanh_cell(h, x, a, jacobian=jacobian)
        return (out, jac, out) if jacobian else (out, None)

    def vjp(h, x, a, lam, residuals=None):
        shapes.append((tuple(h.shape), residuals is not None))
        g = lam * (1 - residuals * residuals)
        return g, (g * h).sum(tuple(range(h.dim() - 1)))

    cell.vjp = vjp
    _, xs, h0, params = problem("tanh", 2, 30)
    assert_newton_matches_loop(cell, xs, h0, params)
    assert shapes == [((2, 30, 3), True)]


def test_default_chunk_size_short_and_uneven_sequences():
    """From 2 MIN_CHUNK steps on, chunks of at least MIN_CHUNK steps; chunks evened out so the tail is short."""
    cpu = torch.device("cpu")
    assert default_chunk_size(40, 64 * 38, cpu) == 20  # not round(sqrt(40)) = 6: two chunks of 20
    assert default_chunk_size(100, 16, cpu) == 16  # six chunks of 16, a tail of 4
    assert default_chunk_size(2 * MIN_CHUNK - 1, 16, cpu) == 6  # below 2 MIN_CHUNK: sqrt(T), evened (31 // 5)
    for length in (40, 100, 1000, 4099):
        chunk = default_chunk_size(length, 16, cpu)
        assert chunk >= MIN_CHUNK and length % chunk < length // chunk
