"""Batches of (input, target) windows from a flat token array, for a causal LM.

* :func:`random_windows`: ``batch_size`` windows of ``context + 1`` tokens at uniform random offsets (the
  targets are the inputs shifted by one), the usual LM batch.
* :class:`StatefulStreams`: each batch row a contiguous stream through its own stretch of the tokens, the
  windows of a row following each other, so the model's recurrent state can be carried (detached) from one
  window to the next: truncated backpropagation through time, which recurrent models allow and attention does
  not. :attr:`StatefulStreams.position` (and ``state_dict``) resumes it exactly.

Both take ``rows``, a slice of the batch's rows to build: one process's share of a global batch in data-parallel
training (:mod:`rnnzoo.train.distributed`). The rows kept are exactly those the whole batch would hold there,
and the generator advances as for the whole batch, so the processes' shares together are the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._checks import check_int

__all__ = ["StatefulStreams", "random_windows"]


def _window(tokens: np.ndarray, starts: np.ndarray, context: int) -> tuple[Tensor, Tensor]:
    rows = np.stack([np.asarray(tokens[s : s + context + 1], dtype=np.int64) for s in starts])
    rows = torch.from_numpy(rows)
    return rows[:, :-1], rows[:, 1:]


def random_windows(
    tokens: np.ndarray, batch_size: int, context: int, generator: torch.Generator, rows: slice | None = None
) -> tuple[Tensor, Tensor]:
    """``(x, y)``, each ``(batch_size, context)`` int64: windows at offsets drawn from ``generator``; with
    ``rows``, only those rows of the batch (all ``batch_size`` offsets are drawn either way)."""
    check_int("random_windows", "batch_size", batch_size)
    check_int("random_windows", "context", context)
    if len(tokens) < context + 1:
        raise ValueError(f"random_windows: {len(tokens)} tokens cannot fill a window of context {context} + 1")
    starts = torch.randint(len(tokens) - context, (batch_size,), generator=generator).numpy()
    return _window(tokens, starts[rows or slice(None)], context)


@dataclass
class StatefulStreams:
    """Row ``i`` of every batch reads the stretch ``[i·L, (i+1)·L)`` of the tokens (``L = len // batch_size``)
    window after window; after the last whole window of the stretches it starts again from their beginnings.

    Iterating yields ``(x, y, fresh)``: ``fresh`` is True for the first window of a pass, where a carried state
    must be reset. ``position`` counts the windows served, so a run resumes by setting it. With ``rows`` (a slice
    of ``range(batch_size)``) only those streams are read: one process's share of the global batch.
    """

    tokens: np.ndarray
    batch_size: int
    context: int
    position: int = 0
    rows: slice | None = None

    def __post_init__(self) -> None:
        check_int("StatefulStreams", "batch_size", self.batch_size)
        check_int("StatefulStreams", "context", self.context)
        self.stretch = len(self.tokens) // self.batch_size
        self.windows_per_pass = (self.stretch - 1) // self.context
        if self.windows_per_pass < 1:
            raise ValueError(
                f"StatefulStreams: {len(self.tokens)} tokens give {self.batch_size} streams of {self.stretch}, "
                f"too short for one window of context {self.context} + 1"
            )

    def __iter__(self):
        return self

    def __next__(self) -> tuple[Tensor, Tensor, bool]:
        window = self.position % self.windows_per_pass
        starts = np.arange(self.batch_size)[self.rows or slice(None)] * self.stretch + window * self.context
        self.position += 1
        return (*_window(self.tokens, starts, self.context), window == 0)

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])
