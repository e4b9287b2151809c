"""The block-diagonal linear recurrence ``h_t = A_t h_{t-1} + b_t`` with small k×k blocks per channel.

Each channel carries k coupled components (ParaLSTM's cell and hidden state: k = 2) and every channel has its
own k×k transition, so the state transition is block-diagonal. Layout: ``b`` and ``h`` are
``(batch, time, k, *channels)``, ``A`` is ``(batch, time, k, k, *channels)`` with ``A[:, t, i, j]`` the weight of
component j of ``h_{t-1}`` in component i of ``h_t``. This is engine 2 with matrix coefficients; Newton's method
(:mod:`rnnzoo.ops.newton`) solves it for cells whose Jacobian has this structure.

Two forms, equal to float tolerance:

* :func:`block_linear_scan_reference` - a loop over time, differentiated by autograd;
* :func:`block_linear_scan` - the two-level chunked scan of :mod:`rnnzoo.ops.linear_scan`, run with k×k
  products in place of scalar ones (:data:`BLOCKS`), and a hand-written backward.

Gradients: with ``r_t = dL/dh_t`` accumulated through the recurrence, ``r_t = g_t + A_{t+1}^T r_{t+1}`` (the
same scan run backwards in time on transposed blocks), ``dL/db_t = r_t``, ``dL/dA_t = r_t h_{t-1}^T``,
``dL/dh_0 = A_0^T r_0``. Real dtypes only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_int
from .dtypes import compute_dtype
from .linear_scan import Transitions, scan_adjoint, scan_states
from .opaque import traceable

__all__ = [
    "BLOCKS", "block_affine", "block_linear_scan", "block_linear_scan_reference", "block_matmul", "block_matvec",
]  # fmt: skip


def block_matvec(A: Tensor, h: Tensor) -> Tensor:
    """``A h`` per channel: ``A`` ``(batch, time, k, k, *channels)``, ``h`` ``(batch, time, k, *channels)``.

    Summed column by column, ``Σ_j A[..., :, j] h_j`` (k is small): a product over all ``(i, j)`` then a sum over
    the middle dim j is about 1.6x slower on CPU (for ``block_matmul``: 2-4x, (8, 16, 2, 2, 256) blocks)."""
    out = A[:, :, :, 0] * h[:, :, :1]
    for j in range(1, A.shape[3]):
        out.addcmul_(A[:, :, :, j], h[:, :, j : j + 1])
    return out


def block_matmul(A2: Tensor, A1: Tensor) -> Tensor:
    """``A2 A1`` per channel, both ``(batch, time, k, k, *channels)``: ``Σ_j A2[..., :, j] ⊗ A1[..., j, :]``."""
    out = A2[:, :, :, :1] * A1[:, :, :1]
    for j in range(1, A2.shape[3]):
        out.addcmul_(A2[:, :, :, j : j + 1], A1[:, :, j : j + 1])
    return out


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
    dtype = compute_dtype(A.dtype, b.dtype, *(() if h0 is None else (h0.dtype,)))
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


def block_affine(b: Tensor, A: Tensor, h: Tensor, out: Tensor | None = None) -> Tensor:
    """``b + A h`` per channel (into ``out``, which must not overlap ``h``): one ``addcmul`` per column of the
    blocks, with no intermediate ``A h``."""
    out = torch.addcmul(b, A[:, :, :, 0], h[:, :, :1], out=out)
    for j in range(1, A.shape[3]):
        out.addcmul_(A[:, :, :, j], h[:, :, j : j + 1])
    return out


BLOCKS = Transitions(
    affine=block_affine,
    apply=block_matvec,
    compose=block_matmul,
    transpose=lambda A: A.transpose(2, 3),
)


class _BlockScan(torch.autograd.Function):
    """Chunked block scan with the adjoint backward (inputs already checked and cast)."""

    @staticmethod
    def forward(ctx, A: Tensor, b: Tensor, h0: Tensor | None, chunk_size: int | None) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        ctx.chunk_size = chunk_size
        h = scan_states(A, b, h0, chunk_size, BLOCKS)
        ctx.save_for_backward(A, h, h0)
        return h, h[:, -1].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h: Tensor | None, grad_last: Tensor | None):
        A, h, h0 = ctx.saved_tensors
        if grad_h is None and grad_last is None:
            return None, None, None, None
        r = scan_adjoint(A, torch.zeros_like(h) if grad_h is None else grad_h, grad_last, ctx.chunk_size, BLOCKS)
        grad_A = grad_h0 = None
        if ctx.needs_input_grad[0]:
            first = torch.zeros_like(h[:, :1]) if h0 is None else h0.unsqueeze(1)
            h_prev = torch.cat([first, h[:, :-1]], dim=1)
            grad_A = r.unsqueeze(3) * h_prev.unsqueeze(2)  # [i, j] = r_i h_prev_j
        if h0 is not None and ctx.needs_input_grad[2]:
            grad_h0 = block_matvec(A[:, :1].transpose(2, 3), r[:, :1]).squeeze(1)
        return grad_A, r, grad_h0, None



def _block_scan_shapes(A: Tensor, b: Tensor, h0: Tensor | None, chunk_size: int | None) -> tuple[Tensor, Tensor]:
    h = torch.empty_like(b)
    return h, h[:, -1]


_block_scan = traceable(_BlockScan, _block_scan_shapes)

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
    return _block_scan(A, b, h0, chunk_size)
