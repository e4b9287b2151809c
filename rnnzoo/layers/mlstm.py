"""mLSTM: the matrix-memory LSTM of xLSTM, with exponential input gates and a normaliser.

Beck, Pöppel, Spanring, Auer, Prudnikova, Kopp, Klambauer, Brandstetter,
Hochreiter (2024), "xLSTM: Extended Long Short-Term Memory". The cell is gated
linear attention with a scalar forget gate per head (engine 3), run by the
stabilised kernel in :mod:`rnnzoo.ops.mlstm`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ..registry import register
from .base import EngineLayer, RecurrentState, state_dtype
from .conv import CausalConv1d
from .engines import MLSTMEngine, MLSTMInputs

__all__ = ["MLSTM", "MLSTMState"]


@dataclass
class MLSTMState(RecurrentState):
    """``conv`` ``(batch, d_inner, d_conv - 1)``; the stabilised cell: ``C`` ``(batch, heads, d_head, d_head)``,
    ``n`` ``(batch, heads, d_head)``, ``m`` ``(batch, heads)`` (``C = C̃ e^m`` is the true memory)."""

    engine_fields = ("C", "n", "m")
    conv: Tensor
    C: Tensor
    n: Tensor
    m: Tensor


class _HeadwiseLinear(nn.Module):
    """Block-diagonal linear map (xLSTM's ``LinearHeadwiseExpand``): blocks of ``block`` channels mix separately."""

    def __init__(self, dim: int, block: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim // block, block, block) / math.sqrt(block))

    def dense(self) -> Tensor:
        """The map as one ``(dim, dim)`` matrix acting on the right (``y = x @ dense()``): block ``h`` of the
        diagonal is ``weight[h]``, zeros elsewhere. One dense matmul over all channels runs faster on CPU than
        a batched matmul per block at small block sizes, and it can be fused with the maps that follow."""
        blocks, block, _ = self.weight.shape
        eye = torch.eye(blocks, dtype=self.weight.dtype, device=self.weight.device)
        return (eye[:, None, :, None] * self.weight[:, :, None, :]).reshape(blocks * block, blocks * block)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.dense().to(x.dtype)


@register(
    "mlstm",
    family="xLSTM",
    paper="Beck et al. 2024, xLSTM: Extended Long Short-Term Memory",
)
class MLSTM(EngineLayer):
    """The mLSTM block (xLSTM, Fig. 10), per head with ``d_head = d_inner / num_heads``::

        x, z     = up_proj(input)                        # d_model -> 2 d_inner
        u        = SiLU(CausalConv1d(x))
        q, k, v  = W_q u, W_k u / sqrt(d_head), W_v x    # block-diagonal (blocks of qkv_block channels)
        ĩ_t, f̃_t = W_i [q, k, v] + b_i, W_f [q, k, v] + b_f   # a scalar per head
        C_t = f_t C_{t-1} + e^{ĩ_t} k_t v_t^T,  n_t = f_t n_{t-1} + e^{ĩ_t} k_t,  f_t = σ(f̃_t)
        h_t = C_t^T q_t / max(|n_t · q_t|, 1)           # stabilised: see rnnzoo.ops.mlstm
        out = down_proj((GroupNorm(h) + skip ⊙ u) ⊙ SiLU(z))

    Initialisation as the official code: forget-gate bias ``linspace(3, 6)`` over
    heads and zero gate weights, input-gate bias ``N(0, 0.1)``, ``skip = 1``. The
    paper scales ``k`` by ``1/sqrt(d_head)`` (so does this layer). ``expand``
    defaults to 2 (the paper's projection factor), ``num_heads`` to 4.

    State: :class:`MLSTMState`. The mixer output for :meth:`mixer_io` is ``h``
    (before the group norm); groups are heads.
    """

    engine = MLSTMEngine()

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        expand: float = 2,
        d_conv: int = 4,
        qkv_block: int = 4,
        norm_eps: float = 1e-5,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        check_int("MLSTM", "num_heads", num_heads)
        check_int("MLSTM", "d_conv", d_conv)
        check_int("MLSTM", "qkv_block", qkv_block)
        self.num_heads, self.d_conv = num_heads, d_conv
        self.d_inner = max(1, round(expand * d_model))
        if self.d_inner % num_heads or self.d_inner % qkv_block:
            raise ValueError(
                f"MLSTM: expand * d_model = {self.d_inner} must be divisible by `num_heads`={num_heads} "
                f"and `qkv_block`={qkv_block}"
            )
        self.d_head = self.d_inner // num_heads
        self.up_proj = nn.Linear(d_model, 2 * self.d_inner)
        self.conv = CausalConv1d(self.d_inner, d_conv)
        self.q_proj, self.k_proj, self.v_proj = (_HeadwiseLinear(self.d_inner, qkv_block) for _ in range(3))
        self.gates = nn.Linear(3 * self.d_inner, 2 * num_heads)  # input gate ĩ, forget gate f̃
        self.norm = nn.GroupNorm(num_heads, self.d_inner, eps=norm_eps, affine=True)
        self.skip = nn.Parameter(torch.ones(self.d_inner))
        self.down_proj = nn.Linear(self.d_inner, d_model)
        with torch.no_grad():
            self.gates.weight.zero_()
            self.gates.bias[:num_heads].normal_(0.0, 0.1)
            self.gates.bias[num_heads:] = torch.linspace(3.0, 6.0, num_heads)

    def init_state(self, batch_size: int, device=None, dtype=None) -> MLSTMState:
        kw = self._state_kwargs(device, dtype)
        heads = (batch_size, self.num_heads)
        zeros = dict(device=kw["device"], dtype=state_dtype(kw["dtype"]))
        return MLSTMState(
            self.conv.init_state(batch_size, **kw),
            torch.zeros(*heads, self.d_head, self.d_head, **zeros),
            torch.zeros(*heads, self.d_head, **zeros),
            torch.zeros(*heads, **zeros),
        )

    def engine_inputs(self, x: Tensor, state: MLSTMState | None = None) -> tuple[MLSTMInputs, tuple]:
        """``q, k, v`` per head and the gates ``log_f = log σ(f̃)``, ``log_i = ĩ`` in the state dtype; carries the
        conv output ``u`` (the learnable skip), the gate branch ``z`` and the new conv buffer."""
        x_in, z = self.up_proj(x).chunk(2, dim=-1)
        u, conv = self.conv(x_in, None if state is None else state.conv)
        u = F.silu(u)
        q, k, v, gates = self._projections(u, x_in)
        log_i, f = gates.transpose(1, 2).chunk(2, dim=1)  # (B, H, T) each
        dtype = state_dtype(x.dtype)
        heads = lambda t: t.unflatten(-1, (self.num_heads, self.d_head)).transpose(1, 2).to(dtype)
        return MLSTMInputs(heads(q), heads(k), heads(v), F.logsigmoid(f.to(dtype)), log_i.to(dtype)), (u, z, conv)

    def _projections(self, u: Tensor, x_in: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``q = W_q u``, ``k = W_k u / sqrt(d_head)``, ``v = W_v x_in`` and the gate pre-activations
        ``W_i,f [q, k, v] + b`` ``(B, T, 2·heads)``, by two matmuls: the gates' weights are composed with the
        block-diagonal maps beforehand (``[q, k, gates from q, k]`` from ``u``, ``[v, gates from v]`` from ``x_in``)."""
        d, dtype = self.d_inner, u.dtype
        w_q, w_k, w_v = self.q_proj.dense(), self.k_proj.dense() / math.sqrt(self.d_head), self.v_proj.dense()
        g_q, g_k, g_v = self.gates.weight.split(d, dim=1)  # (2·heads, d) each
        from_u = torch.cat([w_q, w_k, w_q @ g_q.T + w_k @ g_k.T], 1).to(dtype)
        from_x = torch.cat([w_v, w_v @ g_v.T], 1).to(dtype)
        q, k, gates_qk = (u @ from_u).split([d, d, 2 * self.num_heads], -1)
        v, gates_v = (x_in @ from_x).split([d, 2 * self.num_heads], -1)
        return q, k, v, gates_qk + gates_v + self.gates.bias.to(dtype)

    def _group_norm(self, h: Tensor) -> Tensor:
        """``self.norm`` (GroupNorm over heads) per token, as a layer norm over each head's channels."""
        h = F.layer_norm(h.unflatten(-1, (self.num_heads, self.d_head)), (self.d_head,), eps=self.norm.eps)
        return torch.addcmul(self.norm.bias.to(h.dtype), h.flatten(-2), self.norm.weight.to(h.dtype))

    def read_output(self, x: Tensor, h: Tensor, final: tuple, carry: tuple) -> tuple[Tensor, MLSTMState]:
        u, z, conv = carry
        h = self._group_norm(h.transpose(1, 2).flatten(-2).to(x.dtype))  # per token and head: no statistics across time
        return self.down_proj((h + self.skip * u) * F.silu(z)), MLSTMState(conv, *final)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_heads={self.num_heads}, d_inner={self.d_inner}, d_conv={self.d_conv}"
