"""Bilinear RNN: the input selects a linear map that acts on the state, with no additive term.

Ebrahimi & Memisevic (2025), "Revisiting Bi-Linear State Transitions in Recurrent Neural Networks". The
state update ``h_{t,i} = Σ_{j,k} W_{ijk} h_{t-1,j} x_{t,k}`` is ``h_t = A(x_t) h_{t-1}`` with ``A(x)`` linear
in ``x``: the hidden units take part in the computation (a finite automaton's transition per input symbol)
instead of storing what was added to them. The paper's hierarchy of variants, from most to least expressive:
dense blocks, 2×2 rotations (commutative: modular addition), and real diagonals (parity).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..registry import register
from .base import BlockState, EngineLayer, state_dtype
from .engines import NormalizedBlockEngine, NormalizedBlockInputs

__all__ = ["BilinearRNN"]

STRUCTURES = ("block", "rotation", "diagonal")


@register(
    "bilinear",
    family="bilinear RNN",
    paper="Ebrahimi & Memisevic 2025, Revisiting Bi-Linear State Transitions in Recurrent Neural Networks",
    tier=2,
)
class BilinearRNN(EngineLayer):
    """Bilinear RNN token mixer over ``d_hidden = expand · d_model`` state channels:

    ``h_t = A(x_t) h_{t-1}``, ``A(x_t)`` block-diagonal with blocks linear in ``x_t`` (``structure``):

    * ``"block"``: dense ``block_size × block_size`` blocks, ``A = W_A x_t`` reshaped;
    * ``"rotation"``: 2×2 rotations by the angle ``θ_t = W_θ x_t`` (the paper's R2 blocks);
    * ``"diagonal"``: ``A = diag(W_A x_t)``, real, of either sign.

    The state is read normalised, ``y_t = W_o [h_t^{(g)} / ‖h_t^{(g)}‖]_g`` per head ``g`` (a group of
    channels), as the paper normalises its hidden state; it starts from a learned ``h_0``. A purely
    multiplicative update makes the output independent of any positive rescaling of ``A_t`` per head, so
    each token's blocks are divided by their RMS singular value (a rotation's is 1) and the state is kept at
    unit norm (:class:`~rnnzoo.layers.engines.NormalizedBlockEngine`): products of transitions stay in range
    at any length without changing what the layer computes.

    ``num_heads`` groups normalised together; by default one per block (``"block"``, ``"rotation"``) and
    one for the whole state (``"diagonal"``, where a single channel's direction is only its sign).
    ``transition_eigenvalues`` are those of the rescaled blocks.

    State: :class:`~rnnzoo.layers.base.BlockState`, ``h`` ``(batch, k, d_hidden / k)``, of unit norm per head.
    """

    engine = NormalizedBlockEngine()

    def __init__(
        self,
        d_model: int,
        expand: float = 1.0,
        structure: str = "block",
        block_size: int = 4,
        num_heads: int | None = None,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        if structure not in STRUCTURES:
            raise ValueError(f"BilinearRNN: `structure` must be one of {STRUCTURES}, got {structure!r}")
        if not expand > 0:
            raise ValueError(f"BilinearRNN: `expand` must be > 0, got {expand}")
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"BilinearRNN: `block_size` must be an int >= 1, got {block_size!r}")
        k = {"block": block_size, "rotation": 2, "diagonal": 1}[structure]
        blocks = max(1, round(expand * d_model / k))
        heads = (1 if structure == "diagonal" else blocks) if num_heads is None else num_heads
        if not isinstance(heads, int) or heads < 1 or blocks % heads:
            raise ValueError(f"BilinearRNN: `num_heads` must be an int >= 1 dividing the {blocks} blocks, got {num_heads!r}")
        self.structure, self.block_size, self.num_blocks, self.num_heads = structure, k, blocks, heads
        self.d_hidden = blocks * k
        # outputs ordered (row, column, block) so a block's entries sit on leading dims, blocks contiguous
        self.A_proj = nn.Linear(d_model, blocks if structure == "rotation" else k * k * blocks, bias=False)
        self.h0 = nn.Parameter(torch.randn(k, blocks) / math.sqrt(self.d_hidden))
        self.out_proj = nn.Linear(self.d_hidden, d_model, bias=False)
        with torch.no_grad():  # start near the identity map: every block I + small noise (rotations near 0)
            self.A_proj.weight.mul_(0.2)
            if structure != "rotation":
                self.A_proj.bias = nn.Parameter(torch.eye(k).flatten().repeat_interleave(blocks))

    def init_state(self, batch_size: int, device=None, dtype=None) -> BlockState:
        kw = self._state_kwargs(device, dtype)
        h0 = self.h0.to(device=kw["device"], dtype=state_dtype(kw["dtype"]))
        return BlockState(h0.expand(batch_size, -1, -1).clone())

    def transitions(self, x: Tensor) -> Tensor:
        """``A_t`` ``(batch, T, k, k, blocks)``, each head's blocks divided by their RMS singular value."""
        a = self.A_proj(x).to(state_dtype(x.dtype))
        if self.structure == "rotation":
            cos, sin = torch.cos(a), torch.sin(a)
            return torch.stack([torch.stack([cos, -sin], 2), torch.stack([sin, cos], 2)], 2)
        k = self.block_size
        A = a.unflatten(-1, (k, k, self.num_blocks))
        # the mean square singular value of a head is its squared Frobenius norm over its channels
        ms = A.square().sum((2, 3)).unflatten(-1, (self.num_heads, -1)).mean(-1) / k
        scale = ms.clamp_min(torch.finfo(A.dtype).tiny).rsqrt().repeat_interleave(self.num_blocks // self.num_heads, -1)
        return A * scale[:, :, None, None]

    def engine_inputs(self, x: Tensor, state: BlockState | None = None) -> tuple[NormalizedBlockInputs, None]:
        """The rescaled blocks, and the learned ``h_0`` to start from when no state is given."""
        A = self.transitions(x)
        return NormalizedBlockInputs(A, self.init_state(x.shape[0], x.device, A.dtype).h, self.num_heads), None

    def read_output(self, x: Tensor, h: Tensor, h_last: Tensor, carry: None) -> tuple[Tensor, BlockState]:
        return self.out_proj(h.movedim(2, -1).flatten(-2).to(x.dtype)), BlockState(h_last)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, structure={self.structure!r}, block_size={self.block_size}, "
            f"num_heads={self.num_heads}"
        )
