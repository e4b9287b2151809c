"""One nn.Module per model (or close family), each feeding an engine from ``rnnzoo.ops``.

Importing this package registers every layer with :mod:`rnnzoo.registry`.
"""

from .aaren import Aaren
from .attention import Attention
from .base import BlockState, DiagonalState, MatrixState, RecurrentState, SequenceLayer
from .bilinear import BilinearRNN
from .block_lrnn import BlockLRNN
from .classic import GRU, LSTM, Elman
from .deltanet import DeltaNet, DeltaProduct, GatedDeltaNet
from .fixed_point import FixedPointRNN
from .gateloop import GateLoop
from .gla import GLA
from .hgrn import HGRN
from .hgrn2 import HGRN2
from .lightnet import LightNet
from .log_linear import LogLinearGatedDeltaNet, LogLinearMamba2
from .linear_attention import LinearAttention
from .lru import LRU
from .mamba import Mamba
from .mamba2 import Mamba2
from .mingru import MinGRU, MinLSTM
from .mlstm import MLSTM
from .mom import MixtureOfMemories
from .pararnn import ParaGRU, ParaLSTM
from .retnet import RetNet
from .rglru import Hawk
from .rwkv7 import RWKV7
from .s4 import S4
from .s4d import S4D
from .slstm import SLSTM
from .titans import TestTimeMemory

__all__ = [
    "BlockState", "DiagonalState", "MatrixState", "RecurrentState", "SequenceLayer",
    "Aaren", "Attention",
    "DeltaNet", "DeltaProduct", "GLA", "GatedDeltaNet", "HGRN", "HGRN2", "Hawk", "LinearAttention", "LRU", "MLSTM",
    "Mamba", "Mamba2", "MinGRU", "MinLSTM", "RetNet", "S4", "S4D",
    "Elman", "GRU", "LSTM", "SLSTM",
    "ParaGRU", "ParaLSTM",
    "GateLoop", "LightNet", "BilinearRNN", "FixedPointRNN", "MixtureOfMemories", "TestTimeMemory", "RWKV7",
    "LogLinearGatedDeltaNet", "LogLinearMamba2",
]  # fmt: skip
