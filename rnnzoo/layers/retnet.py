"""RetNet: multi-scale retention, linear attention with a fixed decay per head and rotary positions.

Sun, Dong, Huang, Ma, Xia, Xue, Wang, Wei (2023), "Retentive Network: A
Successor to Transformer for Large Language Models". Retention is engine 3
with a constant scalar decay ``γ_h`` per head, trained with the chunkwise form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..registry import register
from .base import EngineLayer, RecurrentState, state_dtype
from .common import ROTARY_BASE, head_size, norm_gate, rotate_pairs, split_heads
from .engines import MatrixEngine, MatrixInputs

__all__ = ["RetNet", "RetNetState"]


@dataclass
class RetNetState(RecurrentState):
    """``S``: the retention state ``(batch, heads, d_k, d_v)``; ``position``: tokens seen so far
    ``(batch,)``, an integer (int64) count, which the rotary embedding of the next token needs."""

    engine_fields = ("S",)
    S: Tensor
    position: Tensor


@register(
    "retnet",
    family="linear attention",
    paper="Sun et al. 2023, Retentive Network: A Successor to Transformer for Large Language Models",
)
class RetNet(EngineLayer):
    """Multi-scale retention (RetNet's token mixer), for head ``h = 0 .. H-1`` at position ``n``::

        q_n = R_n W_q x_n,   k_n = R_n W_k x_n / sqrt(d_k),   v_n = W_v x_n
        S_n = γ_h S_{n-1} + k_n v_n^T,   γ_h = 1 - 2^{-5-h}
        o_n = S_n^T q_n
        y_n = W_o (swish(W_g x_n) ⊙ GroupNorm_h(o_n))

    ``R_n`` rotates each pair ``(u_{2i}, u_{2i+1})`` by the angle ``n θ_i``,
    ``θ_i = 10000^{-i / (d_k/2 - 1)}``: the paper's ``e^{inθ}`` (xPos, with γ in
    place of its scaling), as the reference code (torchscale) computes it. So
    ``q_n · k_m`` depends on ``n - m`` only, but ``R_n`` needs the absolute
    position: the state carries it, and any split of a sequence gives the same
    outputs. ``d_k = d_model / num_heads`` (even), ``d_v = expand_v · d_model / num_heads``.

    Choices, following the reference code (torchscale, ``multiscale_retention.py``):

    * GroupNorm is RMSNorm per head without affine parameters, ``eps = 1e-6``
      (the paper's GroupNorm; the reference switched to RMSNorm).
    * The reference's extra per-row rescalings of the retention scores (for
      fp16 range) are left out, as in flash-linear-attention: the per-head
      norm cancels them (up to its eps).
    * Projections have no biases and PyTorch's default initialisation (the
      reference uses Xavier with gain 2^-2.5).

    For half-precision parameters the recurrence, the rotary and the norm run in
    float32. State: :class:`RetNetState` (``S`` ``(batch, heads, d_k, d_v)``,
    ``position`` ``(batch,)``).
    """

    engine = MatrixEngine()

    def __init__(
        self, d_model: int, num_heads: int = 4, expand_v: float = 2.0, norm_eps: float = 1e-6, mode: str = "auto"
    ) -> None:
        super().__init__(d_model, mode)
        self.num_heads = check_int("RetNet", "num_heads", num_heads)
        self.head_k = head_size("RetNet", "d_model", d_model, num_heads)
        if self.head_k % 2:
            raise ValueError(f"RetNet: the key size per head d_model / num_heads = {self.head_k} must be even (rotary)")
        if not expand_v > 0:
            raise ValueError(f"RetNet: `expand_v` must be > 0, got {expand_v!r}")
        value_dim = round(expand_v * d_model)
        self.head_v = head_size("RetNet", "value dim round(expand_v * d_model)", value_dim, num_heads)
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        self.g_proj = nn.Linear(d_model, value_dim, bias=False)
        self.out_proj = nn.Linear(value_dim, d_model, bias=False)
        self.norm = nn.RMSNorm(self.head_v, eps=norm_eps, elementwise_affine=False)

    def init_state(self, batch_size: int, device=None, dtype=None) -> RetNetState:
        kw = self._state_kwargs(device, dtype)
        kw["dtype"] = state_dtype(kw["dtype"])
        S = torch.zeros(batch_size, self.num_heads, self.head_k, self.head_v, **kw)
        return RetNetState(S, torch.zeros(batch_size, dtype=torch.long, device=kw["device"]))

    def _rotate(self, u: Tensor, position: Tensor | None) -> Tensor:
        """``R_n u_n`` for ``u`` ``(batch, heads, time, d_k)`` whose first step is at ``position``
        ``(batch,)`` (0 if ``None``)."""
        steps = torch.arange(u.shape[2], device=u.device)[None]
        if position is not None:
            steps = position[:, None] + steps
        steps = steps.to(u.dtype)
        theta = ROTARY_BASE ** -torch.linspace(0, 1, self.head_k // 2, dtype=u.dtype, device=u.device)
        return rotate_pairs(u, (steps[..., None] * theta)[:, None])  # angles (batch, 1, time, d_k / 2)

    def engine_inputs(self, x: Tensor, state: RetNetState | None = None) -> tuple[MatrixInputs, Tensor]:
        """``(q, k, v, log γ)`` in the engine's layout and the state dtype, rotated from the state's position
        (0 without a state), which it carries; ``log γ`` ``(batch, heads, time)`` is an expanded view of the
        ``num_heads`` decays."""
        position = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if state is None else state.position
        dtype = state_dtype(x.dtype)
        q, k, v = (split_heads(proj(x), self.num_heads, dtype) for proj in (self.q_proj, self.k_proj, self.v_proj))
        q, k = self._rotate(q, position), self._rotate(k, position) * self.head_k**-0.5
        heads = torch.arange(self.num_heads, dtype=dtype, device=x.device)
        log_gamma = torch.log1p(-torch.exp2(-5 - heads))
        return MatrixInputs(q, k, v, log_gamma[:, None].expand(x.shape[0], -1, x.shape[1])), position

    def read_output(self, x: Tensor, o: Tensor, S: Tensor, position: Tensor) -> tuple[Tensor, RetNetState]:
        return self.out_proj(norm_gate(o, self.g_proj(x), self.norm)), RetNetState(S, position + x.shape[1])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_heads={self.num_heads}, head_k={self.head_k}, head_v={self.head_v}"
