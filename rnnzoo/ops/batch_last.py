"""The batch-last layout of the fused loops: each step's tensors with the batch (and heads) innermost.

A loop over time at small shapes (tens of steps, heads a few to a few tens wide) costs what its per-step
ops cost, and on CPU those run far below their rate when the innermost dimension is a head dim of 7–16:
``bmm`` on thousands of 9×9 matrices, or broadcasts whose inner loop is 9 long. With the batch innermost,
every per-step tensor is ``(d, ..., B·H)``, each op one contiguous, vectorised pass over a few tens of
kilobytes that stay in cache, and a contraction over a head dim is a product and a sum over an outer dim.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["from_batch_last", "to_batch_last"]


def to_batch_last(t: Tensor) -> Tensor:
    """``(B, H, T, *dims)`` -> ``(T, *dims, B·H)``, contiguous."""
    batch, heads, length, *dims = t.shape
    order = (2, *range(3, t.dim()), 0, 1)
    return t.permute(order).reshape(length, *dims, batch * heads).contiguous()


def from_batch_last(t: Tensor, batch: int, heads: int) -> Tensor:
    """``(..., B·H)`` -> ``(B, H, ...)``, a view (the inverse of :func:`to_batch_last` for ``(T, *dims, B·H)``,
    and of a state's ``(*dims, B·H)``)."""
    lead = t.dim() - 1
    return t.view(*t.shape[:-1], batch, heads).permute(lead, lead + 1, *range(lead))
