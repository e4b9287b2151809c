"""Within-chunk decay ratios from log decays, accurate whatever the chunk's total decay.

A chunkwise engine weighs key ``s`` in row ``t`` by ``Π_{s<j<=t} α_j``. Taken as ``exp(g_t - g_s)`` from the
running sum ``g = cumsum(log α)``, the exponent carries ``g``'s rounding error, which grows with ``|g|``: after
one strong decay (a reset, ``log α = -1e4``) every later ratio in the chunk is off by ~``|g| · eps`` (1e-4
relative in float32). Summing each segment on its own keeps the error to that of the segment's terms.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["segment_sums"]


def segment_sums(log_alpha: Tensor, dim: int = -1) -> Tensor:
    """``Σ_{s<j<=t} log α_j`` for every pair ``s <= t`` of positions along ``dim`` (0 for ``s >= t``).

    ``log_alpha`` ``(..., C)`` gives ``(..., C, C)`` indexed ``[t, s]``; with ``dim=-2``, ``(..., C, d)`` gives
    ``(..., C, C, d)`` (one matrix per channel). Entries above the diagonal are 0: mask them before use.
    """
    if dim == -2:
        return segment_sums(log_alpha.transpose(-1, -2)).movedim(-3, -1)
    size = log_alpha.shape[-1]
    later = torch.ones(size, size, dtype=torch.bool, device=log_alpha.device).tril_(-1)  # j > s
    return log_alpha.unsqueeze(-1).expand(*log_alpha.shape, size).masked_fill(~later, 0).cumsum(-2)
