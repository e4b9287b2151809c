"""The block-diagonal linear recurrence ``h_t = A_t h_{t-1} + b_t`` with small k×k blocks per channel.

Each channel carries k coupled components (ParaLSTM's cell and hidden state: k = 2) and every channel has its
own k×k transition, so the state transition is block-diagonal. Layout: ``b`` and ``h`` are
``(batch, time, k, *channels)``, ``A`` is ``(batch, time, k, k, *channels)`` with ``A[:, t, i, j]`` the weight of
component j of ``h_{t-1}`` in component i of ``h_t``. This is engine 2 with matrix coefficients; Newton's method
(:mod:`rnnzoo.ops.newton`) solves it for cells whose Jacobian has this structure.

Two forms, equal to float tolerance:

* :func:`block_linear_scan_reference` - a loop over time, differentiated by autograd;
* :func:`block_linear_scan` - the two-level chunked scan of :mod:`rnnzoo.ops.linear_scan` with k×k products
  in place of scalar ones, and a hand-written backward.

Gradients: with ``r_t = dL/dh_t`` accumulated through the recurrence, ``r_t = g_t + A_{t+1}^T r_{t+1}`` (the
same scan run backwards in time on transposed blocks), ``dL/db_t = r_t``, ``dL/dA_t = r_t h_{t-1}^T``,
``dL/dh_0 = A_0^T r_0``. Real dtypes only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_int
from .linear_scan import default_chunk_size

__all__ = ["block_linear_scan", "block_linear_scan_reference", "block_matmul", "block_matvec", "block_scan_adjoint"]


def block_matvec(A: Tensor, h: Tensor) -> Tensor:
    """``A h`` per channel: ``A`` ``(batch, time, k, k, *channels)``, ``h`` ``(batch, time, k, *channels)``."""
    return (A * h.unsqueeze(2)).sum(3)


def block_matmul(A2: Tensor, A1: Tensor) -> Tensor:
    """``A2 A1`` per channel, both ``(batch, time, k, k, *channels)``."""
    return (A2.unsqueeze(4) * A1.unsqueeze(2)).sum(3)


def _check_inputs(A: Tensor, b: Tensor, h0: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate shapes and dtypes; return ``(A, b, h0)`` in one real compute dtype (half precision -> float32)."""
    for name, t in (("A", A), ("b", b), ("h0", h0)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"block_linear_scan: `{name}` must be a torch.Tensor, got {type(t).__name__}")
        if t is not None and not t.is_floating_point():
            raise TypeError(f"block_linear_scan: `{name}` must be a real floating-point tensor, got dtype {t.dtype}")
    if b.dim() < 3:
        raise ValueError(f"block_linear_scan: `b` must have shape (batch, time, k, *channels), got {tuple(b.shape)}")
    if b.shape[1] == 0:
        raise ValueError("block_linear_scan: the time dimension (dim 1) of `b` is empty; need at least one step")
    batch, length, k, *channels = b.shape
    want = (batch, length, k, k, *channels)
    try:
        A = A.expand(want)
    except RuntimeError:
        raise ValueError(
            f"block_linear_scan: `A` must have shape (batch, time, k, k, *channels) = {want}, got {tuple(A.shape)}"
        ) from None
    if h0 is not None and tuple(h0.shape) != (batch, k, *channels):
        raise ValueError(
            f"block_linear_scan: `h0` must have shape (batch, k, *channels) = {(batch, k, *channels)}, "
            f"got {tuple(h0.shape)}"
        )
    dtype = torch.promote_types(A.dtype, b.dtype)
    if h0 is not None:
        dtype = torch.promote_types(dtype, h0.dtype)
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    return A.to(dtype), b.to(dtype), (None if h0 is None else h0.to(dtype))


def block_linear_scan_reference(A: Tensor, b: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Reference loop for ``h_t = A_t h_{t-1} + b_t`` (differentiated by autograd).

    Args:
        A: ``(batch, time, k, k, *channels)`` (or broadcastable to it).
        b: ``(batch, time, k, *channels)``.
        h0: ``(batch, k, *channels)``; zeros if ``None``.

    Returns:
        ``(h, h_last)``: all states, shaped like ``b``, and the final state.
    """
    A, b, h0 = _check_inputs(A, b, h0)
    h = torch.zeros_like(b[:, :1]) if h0 is None else h0.unsqueeze(1)
    hs = []
    for a_t, b_t in zip(A.split(1, dim=1), b.split(1, dim=1)):
        h = b_t + block_matvec(a_t, h)
        hs.append(h)
    out = torch.cat(hs, dim=1)
    return out, out[:, -1]


def _loop_forward(A: Tensor, b: Tensor, h0: Tensor | None, out: Tensor) -> None:
    """Sequential scan writing ``out[:, t] = A_t out[:, t-1] + b_t``; ``h0`` is ``(batch, 1, k, *channels)``."""
    prev = h0
    for a_t, b_t, o_t in zip(A.split(1, dim=1), b.split(1, dim=1), out.split(1, dim=1)):
        if prev is None:
            o_t.copy_(b_t)
        else:
            torch.add(b_t, block_matvec(a_t, prev), out=o_t)
        prev = o_t


def _scan_forward(A: Tensor, b: Tensor, h0: Tensor | None, chunk_size: int | None) -> Tensor:
    """All states; ``h0`` ``(batch, 1, k, *channels)`` or ``None``. The algorithm of ``linear_scan._scan_forward``."""
    length = b.shape[1]
    out = torch.empty_like(b)
    chunk = chunk_size or default_chunk_size(length)
    if length < 4 * chunk:
        _loop_forward(A, b, h0, out)
        return out
    n_chunks = length // chunk
    main = n_chunks * chunk
    A_c = A[:, :main].unflatten(1, (n_chunks, chunk)).unbind(2)  # C views of (B, N, k, k, ...)
    b_c = b[:, :main].unflatten(1, (n_chunks, chunk)).unbind(2)
    out_c = out[:, :main].unflatten(1, (n_chunks, chunk)).unbind(2)

    # (1) every chunk from a zero state: end state s and transition product p
    s, p = b_c[0], A_c[0]
    for a_t, b_t in zip(A_c[1:], b_c[1:]):
        s = b_t + block_matvec(a_t, s)
        p = block_matmul(a_t, p)
    # (2) chunk-level recurrence H_j = p_j H_{j-1} + s_j, solved by the same scan
    ends = _scan_forward(p, s, h0, chunk_size)
    first = torch.zeros_like(ends[:, :1]) if h0 is None else h0
    starts = torch.cat([first, ends[:, :-1]], dim=1)
    # (3) every chunk again from its true initial state, writing the outputs
    prev = starts
    for a_t, b_t, o_t in zip(A_c, b_c, out_c):
        torch.add(b_t, block_matvec(a_t, prev), out=o_t)
        prev = o_t
    if main < length:
        _loop_forward(A[:, main:], b[:, main:], ends[:, -1:], out[:, main:])
    return out


def _loop_backward(A: Tensor, g: Tensor, g_next: Tensor | None, out: Tensor) -> None:
    """Reverse loop ``out_t = g_t + A_{t+1}^T out_{t+1}``, where ``A_T^T out_T := g_next`` ``(batch, 1, k, ...)``."""
    A_t, g_t, o_t = A.split(1, dim=1), g.split(1, dim=1), out.split(1, dim=1)
    last = len(g_t) - 1
    if g_next is None:
        o_t[last].copy_(g_t[last])
    else:
        torch.add(g_t[last], g_next, out=o_t[last])
    for t in range(last - 1, -1, -1):
        torch.add(g_t[t], block_matvec(A_t[t + 1].transpose(2, 3), o_t[t + 1]), out=o_t[t])


def block_scan_adjoint(A: Tensor, g: Tensor, g_next: Tensor | None, chunk_size: int | None = None) -> Tensor:
    """Solve ``r_t = g_t + A_{t+1}^T r_{t+1}`` backwards in time, with ``A_T^T r_T := g_next`` (``(batch, k, ...)``
    or ``None``): the chunked algorithm of ``linear_scan._scan_backward`` with k×k blocks."""
    length = g.shape[1]
    out = torch.empty(g.shape, dtype=g.dtype, device=g.device)
    chunk = chunk_size or default_chunk_size(length)
    g_next = None if g_next is None else g_next.unsqueeze(1)
    if length < 4 * chunk:
        _loop_backward(A, g, g_next, out)
        return out
    n_chunks = length // chunk
    main = n_chunks * chunk
    if main < length:  # the ragged tail comes last in time, so first in the reverse scan
        _loop_backward(A[:, main:], g[:, main:], g_next, out[:, main:])
        g_next = block_matvec(A[:, main : main + 1].transpose(2, 3), out[:, main : main + 1])
    A4 = A[:, :main].unflatten(1, (n_chunks, chunk))
    A_c = [a.transpose(2, 3) for a in A4.unbind(2)]  # C views of (B, N, k, k, ...), transposed
    g_c = g[:, :main].unflatten(1, (n_chunks, chunk)).unbind(2)
    out_c = out[:, :main].unflatten(1, (n_chunks, chunk)).unbind(2)

    # (1) every chunk from a zero incoming gradient: value s at its first step, and the product
    # p = A_1^T ... A_{C-1}^T that carries a gradient arriving at its last step to its first
    s, p = g_c[-1], None
    for t in range(chunk - 1, 0, -1):
        s = g_c[t - 1] + block_matvec(A_c[t], s)
        p = A_c[t] if p is None else block_matmul(A_c[t], p)
    # (2) chunk-level adjoint R_j = s_j + p_j A_{j+1,0}^T R_{j+1}: the same scan on coefficients A_{j+1,0} p_j^T
    first = A4[:, :, 0]
    coeff = torch.zeros_like(first)
    coeff[:, 1:] = block_matmul(first[:, 1:], p[:, :-1].transpose(2, 3))
    last_in = None if g_next is None else block_matvec(p[:, -1:], g_next).squeeze(1)
    starts = block_scan_adjoint(coeff, s, last_in, chunk_size)
    # gradient arriving at each chunk's last step from the chunk after it
    last = torch.zeros_like(starts[:, :1]) if g_next is None else g_next
    incoming = torch.cat([block_matvec(A_c[0][:, 1:], starts[:, 1:]), last], dim=1)
    # (3) every chunk again, backwards, from its true incoming gradient
    torch.add(g_c[-1], incoming, out=out_c[-1])
    for t in range(chunk - 2, -1, -1):
        torch.add(g_c[t], block_matvec(A_c[t + 1], out_c[t + 1]), out=out_c[t])
    return out


class _BlockScan(torch.autograd.Function):
    """Chunked block scan with the adjoint backward (inputs already checked and cast)."""

    @staticmethod
    def forward(ctx, A: Tensor, b: Tensor, h0: Tensor | None, chunk_size: int | None) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        ctx.chunk_size = chunk_size
        h = _scan_forward(A, b, None if h0 is None else h0.unsqueeze(1), chunk_size)
        ctx.save_for_backward(A, h, h0)
        return h, h[:, -1].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h: Tensor | None, grad_last: Tensor | None):
        A, h, h0 = ctx.saved_tensors
        if grad_h is None and grad_last is None:
            return None, None, None, None
        r = block_scan_adjoint(A, torch.zeros_like(h) if grad_h is None else grad_h, grad_last, ctx.chunk_size)
        grad_A = grad_h0 = None
        if ctx.needs_input_grad[0]:
            first = torch.zeros_like(h[:, :1]) if h0 is None else h0.unsqueeze(1)
            h_prev = torch.cat([first, h[:, :-1]], dim=1)
            grad_A = r.unsqueeze(3) * h_prev.unsqueeze(2)  # [i, j] = r_i h_prev_j
        if h0 is not None and ctx.needs_input_grad[2]:
            grad_h0 = block_matvec(A[:, :1].transpose(2, 3), r[:, :1]).squeeze(1)
        return grad_A, r, grad_h0, None


def block_linear_scan(
    A: Tensor, b: Tensor, h0: Tensor | None = None, *, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Parallel (chunked) scan for ``h_t = A_t h_{t-1} + b_t`` with k×k blocks per channel, exact gradients.

    Same contract as :func:`block_linear_scan_reference`; half precision is computed in float32.
    ``chunk_size`` overrides :func:`~rnnzoo.ops.linear_scan.default_chunk_size` at every level (>= 2).

    Returns:
        ``(h, h_last)`` with ``h`` of ``b``'s shape and ``h_last = h[:, -1]``.
    """
    if chunk_size is not None:
        check_int("block_linear_scan", "chunk_size", chunk_size, minimum=2)
    A, b, h0 = _check_inputs(A, b, h0)
    return _BlockScan.apply(A, b, h0, chunk_size)
