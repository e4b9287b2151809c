"""One nn.Module per model (or close family), each feeding an engine from ``rnnzoo.ops``.

Importing this package registers every layer with :mod:`rnnzoo.registry`.
"""

from .base import DiagonalState, RecurrentState, SequenceLayer
from .hgrn import HGRN
from .lru import LRU
from .mamba import Mamba
from .mingru import MinGRU, MinLSTM
from .rglru import Hawk
from .s4d import S4D

__all__ = [
    "DiagonalState", "RecurrentState", "SequenceLayer", "HGRN", "Hawk", "LRU", "Mamba", "MinGRU", "MinLSTM", "S4D"
]
