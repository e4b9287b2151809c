"""Within-chunk decay ratios from log decays, accurate whatever the chunk's total decay.

A chunkwise engine weighs key ``s`` in row ``t`` by ``Π_{s<j<=t} α_j = exp(g_t - g_s)``, ``g`` the running sum
of ``log α``. In float32 that difference carries ``g``'s rounding error, which grows with ``|g|``: after one
strong decay (a reset, ``log α = -1e4``) every later ratio in the chunk is off by ~``|g| · 6e-8`` (1e-4
relative). The running sum is therefore taken in float64 (error ~``|g| · 1e-16``, nil for any decay the
engines accept) and only the differences are cast back: as cheap as the float32 differences at chunk sizes
up to 64, far cheaper than summing every segment on its own.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["log_ratios", "running_sum"]


def running_sum(log_alpha: Tensor, dim: int = -1) -> Tensor:
    """``g = cumsum(log α)`` along ``dim`` in float64 (cast results back with ``.to(log_alpha.dtype)``)."""
    return log_alpha.to(torch.float64).cumsum(dim)


def log_ratios(log_alpha: Tensor) -> Tensor:
    """``(..., C)`` -> ``(..., C, C)``: entry ``[t, s]`` is ``g_t - g_s = Σ_{s<j<=t} log α_j`` for ``s <= t``, in
    ``log_alpha``'s dtype. Above the diagonal it is minus the sum from ``t`` to ``s``, positive: mask it."""
    g = running_sum(log_alpha)
    return (g[..., :, None] - g[..., None, :]).to(log_alpha.dtype)
