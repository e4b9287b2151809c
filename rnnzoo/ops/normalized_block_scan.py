"""The purely multiplicative block recurrence with a normalised state, ``h_t = A_t h_{t-1} / ‖A_t h_{t-1}‖``.

A linear map without an additive term changes a state's direction and its length independently: the
direction of ``A_t ⋯ A_1 h_0`` does not depend on how each ``A_t`` is scaled. The bilinear RNN (Ebrahimi &
Memisevic 2025) reads only that direction, so its state is kept at unit norm per group of channels, which
also keeps any product of transitions from overflowing or vanishing at any length.

Layout as :mod:`rnnzoo.ops.block_scan`: ``A`` ``(batch, time, k, k, channels)``, states
``(batch, time, k, channels)``; the channels are ``groups`` equal consecutive groups, and each group's
``k × channels/groups`` entries have unit Euclidean norm.

Two forms, equal to float tolerance:

* :func:`normalized_block_scan_reference` - normalise after every step;
* :func:`normalized_block_scan` - segments of ``chunk_size`` steps through the block scan
  (:func:`~rnnzoo.ops.block_linear_scan`, no additive term) from the last segment's normalised state, every
  state then normalised: the same directions, since normalising in between only rescales.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_int
from .block_scan import block_linear_scan, block_matvec

__all__ = ["normalize_groups", "normalized_block_scan", "normalized_block_scan_reference"]

DEFAULT_SEGMENT = 64


def normalize_groups(h: Tensor, groups: int) -> Tensor:
    """``h`` ``(..., k, channels)`` with each of the ``groups`` consecutive channel groups at unit norm
    (a zero group stays zero)."""
    g = h.unflatten(-1, (groups, -1))
    norm = torch.linalg.vector_norm(g, dim=(-3, -1), keepdim=True).clamp_min(torch.finfo(h.dtype).tiny)
    return (g / norm).flatten(-2)


def _check(A: Tensor, h0: Tensor, groups: int) -> None:
    if A.dim() != 5 or A.shape[2] != A.shape[3]:
        raise ValueError(f"normalized_block_scan: `A` must have shape (batch, time, k, k, channels), got {tuple(A.shape)}")
    if A.shape[1] == 0:
        raise ValueError("normalized_block_scan: the time dimension (dim 1) of `A` is empty; need at least one step")
    batch, _, k, _, channels = A.shape
    if tuple(h0.shape) != (batch, k, channels):
        raise ValueError(f"normalized_block_scan: `h0` must have shape {(batch, k, channels)}, got {tuple(h0.shape)}")
    check_int("normalized_block_scan", "groups", groups, minimum=1)
    if channels % groups:
        raise ValueError(f"normalized_block_scan: `groups` ({groups}) must divide the {channels} channels")


def normalized_block_scan_reference(A: Tensor, h0: Tensor, groups: int = 1) -> tuple[Tensor, Tensor]:
    """Loop over time: ``h_t = normalise(A_t h_{t-1})``, from ``normalise(h0)``.

    Args:
        A: ``(batch, time, k, k, channels)``.
        h0: ``(batch, k, channels)``, the initial state (need not be normalised).
        groups: number of channel groups normalised separately.

    Returns:
        ``(h, h_last)``: ``h`` ``(batch, time, k, channels)`` and the last state.
    """
    _check(A, h0, groups)
    h = normalize_groups(h0, groups).unsqueeze(1)
    hs = []
    for a_t in A.split(1, dim=1):
        h = normalize_groups(block_matvec(a_t, h), groups)
        hs.append(h)
    out = torch.cat(hs, dim=1)
    return out, out[:, -1]


def normalized_block_scan(
    A: Tensor, h0: Tensor, groups: int = 1, *, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Parallel form of :func:`normalized_block_scan_reference`: block scans over segments of ``chunk_size``
    steps (default 64), normalised at the end of each. ``A`` should be scaled so that a segment's product
    stays in range (the bilinear RNN divides each token's blocks by their RMS singular value)."""
    _check(A, h0, groups)
    if chunk_size is not None:
        check_int("normalized_block_scan", "chunk_size", chunk_size, minimum=1)
    segment = chunk_size or DEFAULT_SEGMENT
    h = normalize_groups(h0, groups)
    outs = []
    for a in A.split(segment, dim=1):
        states, _ = block_linear_scan(a, torch.zeros_like(a[:, :, 0]), h)
        states = normalize_groups(states, groups)
        outs.append(states)
        h = states[:, -1]
    out = torch.cat(outs, dim=1)
    return out, out[:, -1]
