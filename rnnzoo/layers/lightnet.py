"""LightNet: gated linear attention whose decay is the additive normaliser of a running softmax over time.

Qin, Sun, Sun, Li, Yang, Shen, Zhong (2024), "You Only Scan Once: Efficient
Multi-dimension Sequential Modeling with LightNet". The keys are normalised by
a running log-sum-exp ``z_t`` of themselves, which makes the state a softmax-like
running average: ``S_t = Σ_{s<=t} exp(k_s - z_t) v_s^T``. That is engine 3 with a
per-key decay ``α_t = exp(z_{t-1} - z_t)``; ``z_t`` is a recurrence of its own,
carried in the state beside ``S``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ..registry import register
from .base import EngineLayer, RecurrentState, state_dtype
from .common import head_size, merge_heads, split_heads
from .engines import MatrixEngine, MatrixInputs

__all__ = ["LightNet", "LightNetState"]


@dataclass
class LightNetState(RecurrentState):
    """``z``: the running log-sum-exp of the keys ``(batch, heads, d_k)``, ``-inf`` before the first token;
    ``S``: the engine's state ``(batch, heads, d_k, d_v)``."""

    engine_fields = ("S",)
    z: Tensor
    S: Tensor


@register(
    "lightnet",
    family="gated linear attention",
    paper="Qin et al. 2024, You Only Scan Once: Efficient Multi-dimension Sequential Modeling with LightNet",
    tier=2,
)
class LightNet(EngineLayer):
    """LightNet's token mixer (as flash-linear-attention's ``LightNetAttention``), per head and key dim::

        q_t, k_t, v_t = SiLU(W_q x_t) / sqrt(d_k), W_k x_t, W_v x_t
        z_t = log Σ_{s<=t} exp(k_s) = logaddexp(z_{t-1}, k_t),   z_0 = -inf
        α_t = exp(z_{t-1} - z_t),   k'_t = exp(k_t - z_t)            # α_t + k'_t = 1
        S_t = Diag(α_t) S_{t-1} + k'_t v_t^T,   o_t = S_t^T q_t
        y_t = W_o (RMSNorm(o_t of every head) ⊙ SiLU(W_g2 W_g1 x_t))  # W_g1: d_model -> r, low rank

    With ``d_t = k_t - z_{t-1}`` the decay and key are ``log α_t = logsigmoid(-d_t)``
    and ``k'_t = σ(d_t)``: no difference of two large log-sum-exps is formed, so
    they stay exact however large ``z`` grows. The first token (``z_0 = -inf``)
    gets ``α_1 = 0``, ``k'_1 = 1``. ``d_k = d_v = d_model / num_heads``; the norm
    spans all heads, ``r = gate_low_rank_dim`` (128, as the reference), no biases,
    PyTorch's default initialisation; the reference's optional short convolutions
    are left out (off by default there). For half-precision parameters the keys'
    normaliser, the recurrence and the norm run in float32.

    State: :class:`LightNetState` ``(z, S)``; a sequence split anywhere, or run
    token by token, gives the one-pass result. Operator (:meth:`materialize`):
    one group per head.
    """

    engine = MatrixEngine()

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        gate_low_rank_dim: int = 128,
        norm_eps: float = 1e-5,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        self.num_heads = check_int("LightNet", "num_heads", num_heads)
        check_int("LightNet", "gate_low_rank_dim", gate_low_rank_dim)
        self.head_dim = head_size("LightNet", "d_model", d_model, num_heads)
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.g_proj = nn.Sequential(
            nn.Linear(d_model, gate_low_rank_dim, bias=False), nn.Linear(gate_low_rank_dim, d_model, bias=False)
        )
        self.norm = nn.RMSNorm(d_model, eps=norm_eps)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch_size: int, device=None, dtype=None) -> LightNetState:
        kw = self._state_kwargs(device, dtype)
        shape = (batch_size, self.num_heads, self.head_dim)
        dtype = state_dtype(kw["dtype"])
        z = torch.full(shape, float("-inf"), device=kw["device"], dtype=dtype)
        return LightNetState(z, torch.zeros(*shape, self.head_dim, device=kw["device"], dtype=dtype))

    def engine_inputs(self, x: Tensor, state: LightNetState | None = None) -> tuple[MatrixInputs, Tensor]:
        """``q``, the normalised keys ``k'``, ``v`` and ``log α`` ``(batch, heads, time, head_dim)`` in the state
        dtype, continuing the running log-sum-exp from ``state.z``; carries the last ``z``."""
        dtype = state_dtype(x.dtype)
        q, k, v = (split_heads(proj(x), self.num_heads, dtype) for proj in (self.q_proj, self.k_proj, self.v_proj))
        z_prev = k.new_full(k[:, :, 0].shape, float("-inf")) if state is None else state.z  # z_0 = -inf
        z = torch.logaddexp(z_prev.unsqueeze(2), k.logcumsumexp(2))  # z_t, (B, H, T, d_k)
        d = k - torch.cat([z_prev.unsqueeze(2), z[:, :, :-1]], 2)  # k_t - z_{t-1}
        inputs = MatrixInputs(F.silu(q) * self.head_dim**-0.5, torch.sigmoid(d), v, F.logsigmoid(-d))
        return inputs, z[:, :, -1]

    def read_output(self, x: Tensor, o: Tensor, S: Tensor, z: Tensor) -> tuple[Tensor, LightNetState]:
        o = merge_heads(o, o.dtype)
        o = F.rms_norm(o, self.norm.normalized_shape, self.norm.weight.to(o.dtype), self.norm.eps)
        return self.out_proj(o.to(x.dtype) * F.silu(self.g_proj(x))), LightNetState(z, S)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_heads={self.num_heads}, head_dim={self.head_dim}"
