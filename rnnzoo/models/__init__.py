"""Models built from the layers: :class:`SequenceModel`, a token-level causal LM or per-position classifier
around any registered layer; :func:`size_model` to compare models at equal parameter count (within 3%) or equal
recurrent state size, :func:`state_size` to count that state, and :func:`size_d_model` (``d_model`` only)."""

from .sequence_model import MLP, Block, SequenceModel, holds_cache, size_d_model, size_model, state_size

__all__ = ["MLP", "Block", "SequenceModel", "holds_cache", "size_d_model", "size_model", "state_size"]
