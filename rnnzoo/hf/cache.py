"""The cache of :class:`~rnnzoo.hf.RnnzooForCausalLM`: the model's recurrent state, not a key-value cache.

``generate()`` hands it from one forward to the next (``outputs.cache`` -> ``cache=``); it holds every block's
state after the tokens seen so far, so the next token costs one ``SequenceModel.step`` whatever the context
(attention's state is its own KV cache, which grows).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.utils._pytree as pytree

from ..layers.base import RecurrentState

__all__ = ["RnnzooCache"]


class RnnzooCache:
    """Every block's :class:`~rnnzoo.layers.base.RecurrentState` after ``length`` tokens (columns of
    ``input_ids``, padding included).

    A forward that is given a cache returns a new one and leaves it as it was, so a prompt's cache can be
    continued more than once. The attributes ``generate()`` reads of a cache are here: the length
    (:meth:`get_seq_length`), :meth:`reorder_cache` for beam search, and ``is_compileable`` /
    ``is_croppable`` (``False``: generation neither compiles the forward around it nor rolls it back).
    """

    is_compileable = False
    is_croppable = False

    def __init__(self, states: Sequence[RecurrentState], length: int) -> None:
        self.states = list(states)
        self.length = length

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """The number of tokens the state has seen (the same for every layer)."""
        return self.length

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep the batch rows ``beam_idx`` of every state, in that order (beam search's choice of beams)."""
        self.states = pytree.tree_map(lambda t: t.index_select(0, beam_idx.to(t.device)), self.states)

    def __repr__(self) -> str:
        kinds = ", ".join(type(s).__name__ for s in self.states)
        return f"RnnzooCache(length={self.length}, states=[{kinds}])"
