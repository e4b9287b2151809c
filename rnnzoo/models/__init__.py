"""Models built from the layers: :class:`SequenceModel`, a token-level causal LM or per-position classifier
around any registered layer, and :func:`size_d_model` to compare models at equal parameter count."""

from .sequence_model import MLP, Block, SequenceModel, size_d_model

__all__ = ["MLP", "Block", "SequenceModel", "size_d_model"]
