"""Engine 2: the diagonal linear recurrence ``h_t = a_t ⊙ h_{t-1} + b_t``.

Every engine-2 model (minGRU, minLSTM, LRU, S4D, Mamba, HGRN, RG-LRU) reduces
to this recurrence once its gates are computed. Two forms, equal to float
tolerance:

* :func:`linear_scan_reference` - the recurrent form, a Python loop over time
  (autograd differentiates it); the reference every other form is tested
  against.
* :func:`linear_scan` - the parallel form, a two-level chunked scan with a
  hand-written backward (a reverse scan), fast on CPU and GPU.

:func:`linear_scan_operator` gives the same map as a lower-triangular T×T
operator per state entry, ``h_t = Σ_s L[t, s] b_s``.

The chunked scan (Blelloch's scan specialised to two levels, applied
recursively): cut time into N chunks of C steps. (1) Inside every chunk at
once, run the recurrence from a zero state, keeping only the chunk's end
state ``s_j`` and the product of its coefficients ``p_j``. (2) The chunk ends
obey the same recurrence one level up, ``H_j = p_j H_{j-1} + s_j``: solve it by
calling the scan recursively on the N chunk summaries. (3) Run every chunk
again, now from its true initial state ``H_{j-1}``, writing the outputs. Each
pass is C vectorised steps over all chunks, so Python overhead is O(C + N)
operations instead of O(T), and nothing is divided or exponentiated: the
result is as accurate as the sequential loop for any a_t, real, negative or
complex, near 0 or near 1, at any length.

Gradients. With ``r_t = dL/dh_t`` accumulated through the recurrence,
``r_t = g_t + conj(a_{t+1}) r_{t+1}`` (a reverse scan of the same kind), and
``dL/db_t = r_t``, ``dL/da_t = r_t conj(h_{t-1})``, ``dL/dh_0 = conj(a_1) r_1``.
Complex tensors follow PyTorch's conjugate-Wirtinger convention.

Avoid ``x[:, t]`` indexing under autograd in loops: each slice's backward
allocates a full-size zero tensor. The loops here use ``unbind`` views and
write into preallocated outputs with ``out=``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_int
from .dtypes import compute_dtype, output_dtype
from .opaque import traceable

__all__ = [
    "DIAGONAL", "Transitions", "default_chunk_size", "linear_scan", "linear_scan_operator", "linear_scan_reference",
    "scan_adjoint", "scan_states",
]  # fmt: skip


# ----------------------------------------------------------------------------
# input checking shared by both forms


def _check_inputs(a: Tensor, b: Tensor, h0: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate shapes and dtypes; return (a, b, h0) cast to a common compute dtype.

    ``b`` is ``(batch, time, *state)``; ``a`` broadcasts to it (a constant
    transition, as in S4D, may be ``(*state)``); ``h0`` is ``(batch, *state)``.
    Half-precision inputs are computed in float32.
    """
    for name, t in (("a", a), ("b", b), ("h0", h0)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"linear_scan: `{name}` must be a torch.Tensor, got {type(t).__name__}")
        if t is not None and not (t.is_floating_point() or t.is_complex()):
            raise TypeError(f"linear_scan: `{name}` must be a floating or complex tensor, got dtype {t.dtype}")
    if b.dim() < 2:
        raise ValueError(f"linear_scan: `b` must have shape (batch, time, *state), got {tuple(b.shape)}")
    if b.shape[1] == 0:
        raise ValueError("linear_scan: the time dimension (dim 1) of `b` is empty; need at least one step")
    try:
        a = a.expand_as(b)
    except RuntimeError:
        raise ValueError(
            f"linear_scan: `a` of shape {tuple(a.shape)} does not broadcast to `b` of shape {tuple(b.shape)}"
        ) from None
    state_shape = (b.shape[0], *b.shape[2:])
    if h0 is not None and tuple(h0.shape) != state_shape:
        raise ValueError(f"linear_scan: `h0` must have shape (batch, *state) = {state_shape}, got {tuple(h0.shape)}")
    dtype = compute_dtype(a.dtype, b.dtype, *(() if h0 is None else (h0.dtype,)))
    return a.to(dtype), b.to(dtype), (None if h0 is None else h0.to(dtype))


# ----------------------------------------------------------------------------
# recurrent form


def linear_scan_reference(a: Tensor, b: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Reference loop for ``h_t = a_t ⊙ h_{t-1} + b_t`` (differentiated by autograd).

    Args:
        a: transition coefficients, broadcastable to ``b``; real or complex.
        b: inputs, ``(batch, time, *state)``.
        h0: initial state ``(batch, *state)``; zeros if ``None``.

    Returns:
        ``(h, h_last)``: all states ``(batch, time, *state)`` and the final state.
    """
    out_dtype = b.dtype
    a, b, h0 = _check_inputs(a, b, h0)
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0
    hs = []
    for a_t, b_t in zip(a.unbind(1), b.unbind(1)):
        h = torch.addcmul(b_t, a_t, h)
        hs.append(h)
    out = torch.stack(hs, dim=1)
    return out.to(output_dtype(out_dtype, out.dtype)), h


# ----------------------------------------------------------------------------
# parallel form: the chunked scan


def default_chunk_size(length: int) -> int:
    """Chunk size for a scan of ``length`` steps: about sqrt(T), clamped to [16, 64].

    Measured on a 2-core CPU at (8, 4096, 256) and (1, 65536, 64): 32-64 balances
    the per-step overhead of the within-chunk passes against the chunk count.
    """
    return int(min(64, max(16, 2 ** round(math.log2(max(length, 1)) / 2))))


@dataclass(frozen=True)
class Transitions:
    """How the scan's coefficients act, so one chunked algorithm serves every kind of transition.

    On tensors with two leading dims (batch, steps): ``affine(b, A, h, out=None) = b + A h`` (into ``out``),
    ``apply(A, h) = A h``, ``compose(A2, A1) = A2 A1`` and ``transpose(A)``, the coefficient of the adjoint
    recurrence. :data:`DIAGONAL` is engine 2's element-wise product; :mod:`rnnzoo.ops.block_scan` defines k×k
    blocks per channel.
    """

    affine: Callable[..., Tensor]
    apply: Callable[[Tensor, Tensor], Tensor]
    compose: Callable[[Tensor, Tensor], Tensor]
    transpose: Callable[[Tensor], Tensor]


DIAGONAL = Transitions(
    affine=lambda b, a, h, out=None: torch.addcmul(b, a, h, out=out),
    apply=torch.mul,
    compose=torch.mul,
    transpose=lambda a: a,  # complex coefficients are conjugated by the caller
)


def _loop_forward(ops: Transitions, a: Tensor, b: Tensor, h0: Tensor | None, out: Tensor) -> None:
    """Sequential scan writing ``out[:, t] = a_t out[:, t-1] + b_t`` in place; ``h0`` ``(batch, 1, ...)``."""
    prev = h0
    for a_t, b_t, o_t in zip(a.split(1, dim=1), b.split(1, dim=1), out.split(1, dim=1)):
        if prev is None:
            o_t.copy_(b_t)
        else:
            ops.affine(b_t, a_t, prev, out=o_t)
        prev = o_t


def _chunked_states(ops: Transitions, a: Tensor, b: Tensor, h0: Tensor | None, chunk_size: int | None) -> Tensor:
    """All states of ``h_t = a_t h_{t-1} + b_t``; ``a``, ``b`` ``(B, T, ...)`` of one dtype, ``h0`` ``(B, 1, ...)``."""
    length = b.shape[1]
    out = torch.empty(b.shape, dtype=b.dtype, device=b.device)
    chunk = chunk_size or default_chunk_size(length)
    if length < 4 * chunk:
        _loop_forward(ops, a, b, h0, out)
        return out
    n_chunks = length // chunk
    main = n_chunks * chunk
    a_c, b_c, out_c = (t[:, :main].unflatten(1, (n_chunks, chunk)).unbind(2) for t in (a, b, out))  # (B, N, ...)

    # (1) every chunk from a zero state: end state s and coefficient product p
    s, p = b_c[0], a_c[0]
    for a_t, b_t in zip(a_c[1:], b_c[1:]):
        s = ops.affine(b_t, a_t, s)
        p = ops.compose(a_t, p)
    # (2) chunk-level recurrence H_j = p_j H_{j-1} + s_j, solved by the same scan
    ends = _chunked_states(ops, p, s, h0, chunk_size)
    first = torch.zeros_like(ends[:, :1]) if h0 is None else h0
    starts = torch.cat([first, ends[:, :-1]], dim=1)
    # (3) every chunk again from its true initial state, writing the outputs
    prev = starts
    for a_t, b_t, o_t in zip(a_c, b_c, out_c):
        ops.affine(b_t, a_t, prev, out=o_t)
        prev = o_t
    if main < length:
        _loop_forward(ops, a[:, main:], b[:, main:], ends[:, -1:], out[:, main:])
    return out


def _loop_backward(ops: Transitions, a: Tensor, g: Tensor, g_next: Tensor | None, out: Tensor) -> None:
    """Reverse scan ``out_t = g_t + a_{t+1}^T out_{t+1}``, where ``a_T^T out_T := g_next`` ``(B, 1, ...)``."""
    a_t, g_t, o_t = a.split(1, dim=1), g.split(1, dim=1), out.split(1, dim=1)
    last = len(g_t) - 1
    if g_next is None:
        o_t[last].copy_(g_t[last])
    else:
        torch.add(g_t[last], g_next, out=o_t[last])
    for t in range(last - 1, -1, -1):
        ops.affine(g_t[t], ops.transpose(a_t[t + 1]), o_t[t + 1], out=o_t[t])


def _chunked_adjoint(ops: Transitions, a: Tensor, g: Tensor, g_next: Tensor | None, chunk_size: int | None) -> Tensor:
    """Solve the adjoint recurrence ``r_t = g_t + a_{t+1}^T r_{t+1}`` (``a_T^T r_T := g_next``, ``(B, 1, ...)``)."""
    length = g.shape[1]
    out = torch.empty(g.shape, dtype=g.dtype, device=g.device)
    chunk = chunk_size or default_chunk_size(length)
    if length < 4 * chunk:
        _loop_backward(ops, a, g, g_next, out)
        return out
    n_chunks = length // chunk
    main = n_chunks * chunk
    if main < length:  # the ragged tail comes last in time, so first in the reverse scan
        _loop_backward(ops, a[:, main:], g[:, main:], g_next, out[:, main:])
        g_next = ops.apply(ops.transpose(a[:, main : main + 1]), out[:, main : main + 1])
    a4 = a[:, :main].unflatten(1, (n_chunks, chunk))
    a_c = [ops.transpose(t) for t in a4.unbind(2)]  # C views of (B, N, ...), transposed
    g_c, out_c = (t[:, :main].unflatten(1, (n_chunks, chunk)).unbind(2) for t in (g, out))

    # (1) every chunk from a zero incoming gradient: value s at its first step, and the product
    # p = a_1^T ... a_{C-1}^T that carries a gradient arriving at its last step to its first
    s, p = g_c[-1], a_c[-1]
    for t in range(chunk - 1, 0, -1):
        s = ops.affine(g_c[t - 1], a_c[t], s)
        if t < chunk - 1:
            p = ops.compose(a_c[t], p)
    # (2) chunk-level adjoint R_j = s_j + p_j a_{j+1,0}^T R_{j+1}: the same scan on coefficients a_{j+1,0} p_j^T
    coeff = torch.zeros_like(a4[:, :, 0])
    coeff[:, 1:] = ops.compose(a4[:, 1:, 0], ops.transpose(p[:, :-1]))
    starts = _chunked_adjoint(ops, coeff, s, None if g_next is None else ops.apply(p[:, -1:], g_next), chunk_size)
    # gradient arriving at each chunk's last step from the chunk after it
    last = torch.zeros_like(starts[:, :1]) if g_next is None else g_next
    incoming = torch.cat([ops.apply(a_c[0][:, 1:], starts[:, 1:]), last], dim=1)
    # (3) every chunk again, backwards, from its true incoming gradient
    torch.add(g_c[-1], incoming, out=out_c[-1])
    for t in range(chunk - 2, -1, -1):
        ops.affine(g_c[t], a_c[t + 1], out_c[t + 1], out=out_c[t])
    return out


def scan_states(
    a: Tensor, b: Tensor, h0: Tensor | None, chunk_size: int | None = None, ops: Transitions = DIAGONAL
) -> Tensor:
    """The chunked scan's states ``(B, T, ...)`` without autograd: inputs already checked, of one dtype, ``a`` of
    ``b``'s shape (or expanded to it), ``h0`` ``(B, ...)`` or ``None``. For engines that build on the scan."""
    return _chunked_states(ops, a, b, None if h0 is None else h0.unsqueeze(1), chunk_size)


def scan_adjoint(
    a: Tensor, g: Tensor, g_next: Tensor | None, chunk_size: int | None = None, ops: Transitions = DIAGONAL
) -> Tensor:
    """The adjoint ``r_t = g_t + a_{t+1}^T r_{t+1}`` of :func:`scan_states` (``g_next = a_T^T r_T``, ``(B, ...)``
    or ``None``): ``r = dL/dh`` for ``g = ∂L/∂h`` (pass ``a.conj()`` for complex coefficients)."""
    return _chunked_adjoint(ops, a, g, None if g_next is None else g_next.unsqueeze(1), chunk_size)


class _LinearScan(torch.autograd.Function):
    """Chunked scan with the reverse-scan backward (inputs already checked and cast)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor | None, chunk_size: int | None) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        ctx.chunk_size = chunk_size
        h = scan_states(a, b, h0, chunk_size)
        ctx.save_for_backward(a, h, h0)
        return h, h[:, -1].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h: Tensor | None, grad_last: Tensor | None):
        a, h, h0 = ctx.saved_tensors
        if grad_h is None:
            if grad_last is None:
                return None, None, None, None
            grad_h = torch.zeros_like(h)
        a_adj = a.conj() if a.is_complex() else a
        r = scan_adjoint(a_adj, grad_h, grad_last, ctx.chunk_size)
        grad_a = grad_h0 = None
        if ctx.needs_input_grad[0]:
            h_prev = h.conj() if h.is_complex() else h
            grad_a = torch.empty_like(r)
            torch.mul(r[:, 1:], h_prev[:, :-1], out=grad_a[:, 1:])
            if h0 is None:
                grad_a[:, 0].zero_()
            else:
                torch.mul(r[:, 0], h0.conj() if h0.is_complex() else h0, out=grad_a[:, 0])
        if h0 is not None and ctx.needs_input_grad[2]:
            grad_h0 = a_adj[:, 0] * r[:, 0]
        return grad_a, r, grad_h0, None


def _scan_shapes(a: Tensor, b: Tensor, h0: Tensor | None, chunk_size: int | None) -> tuple[Tensor, Tensor]:
    h = b.new_empty(b.shape, dtype=torch.promote_types(a.dtype, b.dtype))
    return h, h[:, -1]


_linear_scan = traceable(_LinearScan, _scan_shapes)


def linear_scan(
    a: Tensor, b: Tensor, h0: Tensor | None = None, *, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Parallel (chunked) scan for ``h_t = a_t ⊙ h_{t-1} + b_t``, with exact gradients.

    Same contract as :func:`linear_scan_reference`: ``b`` is
    ``(batch, time, *state)``, ``a`` broadcasts to it (real, negative or
    complex), ``h0`` is ``(batch, *state)`` or ``None`` for zeros. Half
    precision is computed in float32; the states come back in the input's
    precision and the final state in float32. ``chunk_size`` overrides
    :func:`default_chunk_size` at every level of the recursion (>= 2).

    Returns:
        ``(h, h_last)`` with ``h`` of ``b``'s shape and ``h_last = h[:, -1]``.
    """
    if chunk_size is not None:
        check_int("linear_scan", "chunk_size", chunk_size, minimum=2)
    out_dtype = b.dtype
    a, b, h0 = _check_inputs(a, b, h0)
    h, h_last = _linear_scan(a, b, h0, chunk_size)
    return h.to(output_dtype(out_dtype, h.dtype)), h_last


# ----------------------------------------------------------------------------
# the recurrence as a T×T operator


def linear_scan_operator(a: Tensor, shape: Sequence[int] | None = None) -> Tensor:
    """The scan from a zero state as a lower-triangular operator: ``h_t = Σ_{s<=t} L[:, t, s] ⊙ b_s``.

    ``L[n, t, s, *state] = Π_{r=s+1..t} a_{n,r}`` for ``s <= t`` (1 on the
    diagonal), 0 above it. ``a`` broadcasts to ``shape = (batch, T, *state)``
    (default ``a.shape``) as it does to ``b`` in :func:`linear_scan`: a
    time-invariant transition ``(*state)`` takes ``shape=(1, T, *state)``.
    Real, negative or complex ``a``; autograd flows to ``a``.

    Computed by the engine itself: :func:`linear_scan` over ``T`` unit impulses
    at once (the source step ``s`` as an extra state dimension, ``b_t = δ_ts``),
    so ``L`` is exactly what the scan applies. Memory ``O(batch · T² · state)``.

    Returns:
        ``L`` of shape ``(batch, T, T, *state)`` (target step, then source step).
    """
    shape = tuple(a.shape if shape is None else shape)
    if len(shape) < 2:
        raise ValueError(f"linear_scan_operator: `shape` must be (batch, time, *state), got {shape}")
    try:
        a = a.expand(shape)
    except RuntimeError:
        raise ValueError(f"linear_scan_operator: `a` of shape {tuple(a.shape)} does not broadcast to {shape}") from None
    batch, length, *state = shape
    impulses = torch.eye(length, dtype=a.dtype, device=a.device).view(1, length, length, *(1,) * len(state))
    return linear_scan(a.unsqueeze(2), impulses.expand(batch, length, length, *state))[0]
