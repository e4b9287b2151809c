"""Batches of sequences of different lengths: padded (an attention mask) or packed (``cu_seqlens``).

A padded batch ``(batch, time, ·)`` comes with ``attention_mask`` ``(batch, time)``: 1 (or True) at a token,
0 at padding, each row's tokens one run at the start (right padding) or at the end (left padding), rows free
to differ. A packed batch ``(1, total, ·)`` holds ``n`` sequences one after another, sequence ``i`` at
``cu_seqlens[i]:cu_seqlens[i + 1]`` (flash-linear-attention's convention; ``cu_seqlens`` ``(n + 1,)``,
starting at 0 and ending at ``total``).

The helpers here move rows between those layouts; :class:`~rnnzoo.layers.base.SequenceLayer` uses them to run
any layer over such batches, each sequence as if alone.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

import torch
from torch import Tensor

__all__ = ["Padding", "check_attention_mask", "check_cu_seqlens", "pack", "select_rows", "unpack"]

S = TypeVar("S")


@dataclasses.dataclass
class Padding:
    """Where each row's tokens lie: from ``start`` for ``length`` steps, in a row of ``time`` steps."""

    start: Tensor  # (batch,) long
    length: Tensor  # (batch,) long
    time: int

    @classmethod
    def of(cls, valid: Tensor) -> Padding:
        """From a checked boolean mask ``(batch, time)``."""
        length = valid.sum(1)
        start = torch.where(length > 0, valid.int().argmax(1), 0)
        return cls(start, length, valid.shape[1])

    def valid(self) -> Tensor:
        """The mask ``(batch, time)`` of the tokens."""
        steps = torch.arange(self.time, device=self.start.device)
        return (steps >= self.start[:, None]) & (steps < (self.start + self.length)[:, None])

    def aligned(self, to: str) -> tuple[Tensor, Tensor]:
        """``(index, inverse)`` ``(batch, time)``: ``x.gather(1, index)`` moves every row's tokens to the start
        (``to="start"``, right padding) or the end (``"end"``, left padding), rotating the row; ``inverse``
        moves them back."""
        steps = torch.arange(self.time, device=self.start.device)
        shift = self.start if to == "start" else self.start + self.length - self.time
        return (steps + shift[:, None]) % self.time, (steps - shift[:, None]) % self.time


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x`` ``(batch, time, *rest)`` reordered along time by ``index`` ``(batch, time)``."""
    return x.gather(1, index.view(*index.shape, *(1,) * (x.dim() - 2)).expand_as(x))


def check_attention_mask(mask: object, batch: int, time: int, where: str) -> Tensor:
    """``mask`` as a boolean ``(batch, time)`` tensor, or a ``ValueError``/``TypeError`` naming what is wrong."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{where}: `attention_mask` must be a (batch, time) tensor of 0/1, got {type(mask).__name__}")
    if tuple(mask.shape) != (batch, time):
        raise ValueError(f"{where}: `attention_mask` must have shape (batch, time) = {(batch, time)}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{where}: `attention_mask` must hold 0 (padding) and 1 (token) only")
        mask = mask != 0
    rows = mask.cpu()
    padding = Padding.of(rows)
    contiguous = (padding.valid() == rows).all(1)
    at_an_end = (padding.start == 0) | (padding.start + padding.length == time)
    bad = (~(contiguous & at_an_end)).nonzero()
    if len(bad):
        raise ValueError(
            f"{where}: row {int(bad[0, 0])} of `attention_mask` is not one run of tokens at the start (right "
            f"padding) or at the end (left padding) of the row: {rows[int(bad[0, 0])].int().tolist()}"
        )
    return mask


def check_cu_seqlens(cu_seqlens: object, batch: int, total: int, where: str) -> list[int]:
    """The sequences' boundaries as ints, or a clear error: ``cu_seqlens`` ``(n + 1,)`` integers from 0 to
    ``total``, non-decreasing, with a batch of one."""
    if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dtype not in (torch.int32, torch.int64) or cu_seqlens.dim() != 1:
        got = f"{cu_seqlens.dtype} of shape {tuple(cu_seqlens.shape)}" if isinstance(cu_seqlens, Tensor) else type(cu_seqlens).__name__
        raise TypeError(f"{where}: `cu_seqlens` must be a 1-d integer tensor (n + 1,) of sequence boundaries, got {got}")
    bounds = cu_seqlens.tolist()
    if batch != 1:
        raise ValueError(f"{where}: with `cu_seqlens` the input must be packed as a batch of 1, got batch {batch}")
    if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != total or any(b < a for a, b in zip(bounds, bounds[1:])):
        raise ValueError(
            f"{where}: `cu_seqlens` must rise from 0 to the packed length {total} (n + 1 boundaries), got {bounds}"
        )
    return bounds


def unpack(x: Tensor, bounds: list[int]) -> tuple[Tensor, Tensor]:
    """A packed ``(1, total, ·)`` input as a right-padded batch ``(n, longest, ·)`` and its mask."""
    lengths = [b - a for a, b in zip(bounds, bounds[1:])]
    longest = max(max(lengths), 1)
    padded = x.new_zeros(len(lengths), longest, *x.shape[2:])
    valid = torch.zeros(len(lengths), longest, dtype=torch.bool, device=x.device)
    for row, (a, b) in enumerate(zip(bounds, bounds[1:])):
        padded[row, : b - a] = x[0, a:b]
        valid[row, : b - a] = True
    return padded, valid


def pack(y: Tensor, bounds: list[int]) -> Tensor:
    """The inverse of :func:`unpack`: a right-padded ``(n, longest, ·)`` output packed as ``(1, total, ·)``."""
    return torch.cat([y[row, : b - a] for row, (a, b) in enumerate(zip(bounds, bounds[1:]))]).unsqueeze(0)


def select_rows(rows: Tensor, new: S, old: S) -> S:
    """The state holding ``new``'s rows where ``rows`` ``(batch,)`` is True and ``old``'s elsewhere (every
    tensor of a state is batch-first)."""
    def pick(a: Tensor, b: Tensor) -> Tensor:
        return torch.where(rows.view(-1, *(1,) * (a.dim() - 1)), a, b)

    return dataclasses.replace(old, **{k: pick(v, old.tensors()[k]) for k, v in new.tensors().items()})
