"""Block-diagonal input-dependent linear RNN: small dense transitions per head, so it can track state.

Fan, Chi, Rudnicky (2024), "Advancing Regular Language Reasoning in Linear Recurrent Neural Networks"
(NAACL; reference code: tinghanf/RegluarLRNN, ``block_model.py``). Diagonal transitions commute, so a diagonal
linear RNN cannot follow a non-commutative automaton; a k×k block per head can, and the paper's column
normalisation keeps the scan stable at lengths never trained on.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..registry import register
from .base import BlockState, EngineLayer, state_dtype
from .engines import BlockEngine, BlockInputs

__all__ = ["BlockLRNN"]


@register(
    "block_lrnn",
    family="block-diagonal linear RNN",
    paper="Fan et al. 2024, Advancing Regular Language Reasoning in Linear Recurrent Neural Networks",
    tier=2,
)
class BlockLRNN(EngineLayer):
    """Block-diagonal linear RNN token mixer, ``H = d_hidden / k`` heads of k×k blocks:

    ``Â_t = W_A x_t + c_A`` reshaped to ``(H, k, k)``, ``Ā_t = Â_t − mean_i Â_t[i, :]`` (each column sums to 0),
    ``A_t = Ā_t / max_j ‖Ā_t[:, j]‖_p`` per head (the largest column p-norm is 1),
    ``h_t = A_t h_{t-1} + W_v x_t + c_v``, ``y_t = W_o h_t``.

    ``norm_p`` is p: the paper's 1.2 (default) lets a block rotate the zero-sum plane with little decay; its
    eigenvalues are then bounded by ``k^(1 - 1/p)`` (1.26 for k = 4), while ``norm_p=1`` bounds the induced
    1-norm, and so every eigenvalue, by 1. The reference generates ``A_t`` and the values with two-layer MLPs
    and starts from a learned state; here both are linear maps of ``x_t`` (whose embedding is learned in a
    model) and the state starts at zero, as every rnnzoo layer's does.

    State: :class:`~rnnzoo.layers.base.BlockState`, ``h`` of shape ``(batch, k, H)``.
    """

    engine = BlockEngine()

    def __init__(
        self,
        d_model: int,
        expand: float = 1.0,
        block_size: int = 4,
        norm_p: float = 1.2,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        if not expand > 0:
            raise ValueError(f"BlockLRNN: `expand` must be > 0, got {expand}")
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"BlockLRNN: `block_size` must be an int >= 1, got {block_size!r}")
        if not norm_p >= 1:
            raise ValueError(f"BlockLRNN: `norm_p` must be >= 1 (a norm), got {norm_p}")
        heads = max(1, round(expand * d_model / block_size))
        self.block_size, self.num_heads, self.norm_p = block_size, heads, norm_p
        self.d_hidden = heads * block_size
        self.A_proj = nn.Linear(d_model, heads * block_size * block_size)
        self.v_proj = nn.Linear(d_model, self.d_hidden)
        self.out_proj = nn.Linear(self.d_hidden, d_model, bias=False)

    def init_state(self, batch_size: int, device=None, dtype=None) -> BlockState:
        kw = self._state_kwargs(device, dtype)
        shape = (batch_size, self.block_size, self.num_heads)
        return BlockState(torch.zeros(shape, device=kw["device"], dtype=state_dtype(kw["dtype"])))

    def transitions(self, x: Tensor) -> Tensor:
        """``A_t`` in the block scan's layout ``(batch, T, k, k, H)``: centred, column-normalised blocks.

        ``A_proj``'s outputs are ordered (row, column, head), so the reductions over a block's rows run over a
        leading dim with the heads contiguous."""
        k = self.block_size
        A = self.A_proj(x).unflatten(-1, (k, k, self.num_heads))
        A = A - A.mean(dim=2, keepdim=True)
        p = self.norm_p
        norms = A.abs().sum(2) if p == 1 else A.abs().pow(p).sum(2).pow(1 / p)  # (batch, T, k columns, H)
        scale = norms.amax(dim=2).clamp_min(torch.finfo(A.dtype).tiny)
        return A / scale[:, :, None, None]

    def engine_inputs(self, x: Tensor, state: BlockState | None = None) -> tuple[BlockInputs, None]:
        """``h_t = A_t h_{t-1} + b_t`` in the block scan's layout: ``A`` ``(batch, T, k, k, H)``, ``b_t = W_v x_t``."""
        b = self.v_proj(x).unflatten(-1, (self.num_heads, self.block_size)).movedim(2, -1)
        return BlockInputs(self.transitions(x), b.contiguous()), None

    def read_output(self, x: Tensor, h: Tensor, h_last: Tensor, carry: None) -> tuple[Tensor, BlockState]:
        return self.out_proj(h.movedim(2, -1).flatten(-2).to(x.dtype)), BlockState(h_last)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_heads={self.num_heads}, block_size={self.block_size}, norm_p={self.norm_p}"
