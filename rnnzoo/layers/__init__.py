"""One nn.Module per model (or close family), each feeding an engine from ``rnnzoo.ops``.

Importing this package registers every layer with :mod:`rnnzoo.registry`.
"""

from .base import DiagonalState, RecurrentState, SequenceLayer
from .mingru import MinGRU, MinLSTM

__all__ = ["DiagonalState", "RecurrentState", "SequenceLayer", "MinGRU", "MinLSTM"]
