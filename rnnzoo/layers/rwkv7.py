"""RWKV-7 "Goose": the generalised delta rule with a vector-valued decay and in-context learning rate.

Peng, Zhang, Goldstein et al. (2025), "RWKV-7 "Goose" with Expressive Dynamic State Evolution". The state's
transition is diagonal plus rank one, ``Diag(w_t) - κ̂_t (κ̂_t ⊙ a_t)^T`` (in RWKV's ``d_v × d_k`` layout),
computed by :mod:`rnnzoo.ops.dplr_delta_rule`; each projection reads a learned per-channel mix of the current
and the previous input (the token shift), whose last input the layer keeps in its state.
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
from .common import head_size, merge_heads, split_heads
from .engines import DPLREngine, DPLRInputs

__all__ = ["RWKV7", "RWKV7State"]

DECAY_SCALE = math.exp(-0.5)  # log w_t = -e^{-1/2} σ(·): w_t ∈ (e^{-e^{-1/2}}, 1) ≈ (0.545, 1)
MIX_POWERS = (0.2, 0.9, 0.7, 0.7, 0.9, 0.2)  # token-shift init 1 - (i / d_model)^p for r, w, k, v, a, g


@dataclass
class RWKV7State(RecurrentState):
    """``shift``: the last input ``x_{t-1}`` ``(batch, d_model)`` (zeros before the first token); ``S``: the
    engine's state ``(batch, heads, d_k, d_v)``, RWKV's ``d_v × d_k`` state transposed."""

    engine_fields = ("S",)
    shift: Tensor
    S: Tensor


def _low_rank(given: int | None, default: int, name: str) -> int:
    return default if given is None else check_int("RWKV7", name, given)


@register(
    "rwkv7",
    family="delta rule",
    paper='Peng et al. 2025, RWKV-7 "Goose" with Expressive Dynamic State Evolution',
    tier=2,
)
class RWKV7(EngineLayer):
    """RWKV-7's time mixing, per head (``d_k = d_v``; RWKV's state ``S' = S^T``)::

        x^c_t = x_t + μ_c ⊙ (x_{t-1} - x_t)            for c in r, w, k, v, a, g   (token shift)
        r_t, k_t, v_t = W_r x^r_t, W_k x^k_t, W_v x^v_t
        w_t = exp(-e^{-1/2} σ(w_0 + W_w2 tanh(W_w1 x^w_t)))   # per key dim, in (0.545, 1)
        a_t = σ(a_0 + W_a2 W_a1 x^a_t)                  # in-context learning rate, per key dim
        κ̂_t = L2(k_t ⊙ k_k),   k̃_t = k_t ⊙ (1 + (a_t - 1) ⊙ k_a)
        S'_t = S'_{t-1} (Diag(w_t) - κ̂_t (κ̂_t ⊙ a_t)^T) + v_t k̃_t^T,   o_t = S'_t r_t
        y_t = W_o ((GroupNorm_h(o_t) + (r_t · (ρ ⊙ k̃_t)) v_t) ⊙ W_g2 σ(W_g1 x^g_t))

    i.e. the generalised delta rule ``S_t = (Diag(w_t) + b_t a_t^T) S_{t-1} + k_t v_t^T`` with ``a = -κ̂``,
    ``b = κ̂ ⊙ a_t``, ``q = r`` (:class:`~rnnzoo.layers.engines.DPLREngine`), then the bonus term of the
    current token (``ρ`` = the reference's ``r_k``, per head) after a group norm per head (learned weight and
    bias), and an output gate. Attention width ``expand · d_model`` (1, as the reference) split over
    ``num_heads``; low-rank widths of the decay, in-context rate and gate as flash-linear-attention's
    ``RWKV7Attention`` (at least 32). The transition's eigenvalues are real and lie in ``(-1, 1)``: it is
    similar to ``Diag(w_t) - u u^T``, ``u = κ̂_t ⊙ a_t^{1/2}``, ``|u| < 1``; none is fixed at 1 or forced
    negative, so there is no ``negative_eigenvalues`` flag.

    Simplified from the reference (BlinkDL's RWKV-LM ``RWKV-v7``, fla's ``fla/layers/rwkv7.py``): no value
    residual (later layers' ``v`` mixed with the first layer's, which needs the first layer's ``v``; here every
    layer is as the first); the initialisation does not depend on the layer's depth (the token-shift mixes
    ``μ``, ``w_0``, ``a_0``, ``k_k``, ``k_a`` and ``ρ`` as the reference's first layer, weight matrices
    PyTorch's default instead of its zero and orthogonal ones, the group norm's weight 1); the group norm's
    ``ε`` is ``norm_eps`` itself (default 64e-5, the reference's value at its head size 64). For
    half-precision parameters the gates, the recurrence and the norm run in float32.

    State: :class:`RWKV7State` ``(shift, S)``. Operator (:meth:`materialize`): one group per head, mixing
    ``v`` into ``o`` (before the norm, the bonus and the gate).
    """

    engine = DPLREngine()

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        expand: float = 1.0,
        decay_low_rank_dim: int | None = None,
        a_low_rank_dim: int | None = None,
        gate_low_rank_dim: int | None = None,
        norm_eps: float = 64e-5,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        self.num_heads = check_int("RWKV7", "num_heads", num_heads)
        if not expand > 0:
            raise ValueError(f"RWKV7: `expand` must be > 0, got {expand!r}")
        if not norm_eps > 0:
            raise ValueError(f"RWKV7: `norm_eps` must be > 0, got {norm_eps!r}")
        dim = round(expand * d_model)
        self.head_dim = head_size("RWKV7", "attention width round(expand * d_model)", dim, num_heads)
        factor = self.head_dim / 64  # as fla: wider heads, wider low-rank maps
        rank = lambda scale, widen: max(32, round(scale * d_model**0.5 * (factor if widen else 1) / 32) * 32)
        decay_rank = _low_rank(decay_low_rank_dim, rank(2.5, True), "decay_low_rank_dim")
        a_rank = _low_rank(a_low_rank_dim, rank(2.5, True), "a_low_rank_dim")
        gate_rank = _low_rank(gate_low_rank_dim, rank(5.0, False), "gate_low_rank_dim")

        self.mix = nn.Parameter(torch.empty(len(MIX_POWERS), d_model))  # μ for r, w, k, v, a, g
        self.r_proj = nn.Linear(d_model, dim, bias=False)
        self.k_proj = nn.Linear(d_model, dim, bias=False)
        self.v_proj = nn.Linear(d_model, dim, bias=False)
        self.w_lora = nn.Sequential(nn.Linear(d_model, decay_rank, bias=False), nn.Tanh(), nn.Linear(decay_rank, dim))
        self.a_lora = nn.Sequential(nn.Linear(d_model, a_rank, bias=False), nn.Linear(a_rank, dim))
        self.g_lora = nn.Sequential(
            nn.Linear(d_model, gate_rank, bias=False), nn.Sigmoid(), nn.Linear(gate_rank, dim, bias=False)
        )
        self.k_k = nn.Parameter(torch.empty(dim))
        self.k_a = nn.Parameter(torch.empty(dim))
        self.r_k = nn.Parameter(torch.empty(num_heads, self.head_dim))  # ρ
        self.norm = nn.GroupNorm(num_heads, dim, eps=norm_eps)
        self.out_proj = nn.Linear(dim, d_model, bias=False)
        self._init_vectors()

    @torch.no_grad()
    def _init_vectors(self) -> None:
        """The reference's first-layer values of ``μ``, ``w_0``, ``a_0``, ``k_k``, ``k_a`` and ``ρ``."""
        d_model, dim, head = self.d_model, self.k_k.shape[0], self.head_dim
        depth = torch.arange(d_model, dtype=torch.float64) / d_model
        self.mix.copy_(torch.stack([1 - depth**p for p in MIX_POWERS]))
        channel = torch.arange(dim, dtype=torch.float64)
        linear = channel / max(dim - 1, 1) - 0.5  # -1/2 .. 1/2 over the channels
        half = (head - 1) / 2
        zigzag = ((channel % head) - half) / half if head > 1 else torch.zeros(dim, dtype=torch.float64)
        zigzag = zigzag * zigzag.abs()  # -1 .. 1 within each head
        self.w_lora[-1].bias.copy_(-6 + 6 * (linear + 0.5) + 0.5 + 2.5 * zigzag)
        self.a_lora[-1].bias.copy_(-0.19 + 0.3 * zigzag + 0.4 * linear)
        self.k_k.copy_(0.71 - 0.1 * linear)
        self.k_a.fill_(1.02)
        self.r_k.fill_(-0.04)

    def init_state(self, batch_size: int, device=None, dtype=None) -> RWKV7State:
        kw = self._state_kwargs(device, dtype)
        dtype = state_dtype(kw["dtype"])
        S = torch.zeros(batch_size, self.num_heads, self.head_dim, self.head_dim, device=kw["device"], dtype=dtype)
        return RWKV7State(torch.zeros(batch_size, self.d_model, device=kw["device"], dtype=dtype), S)

    def engine_inputs(self, x: Tensor, state: RWKV7State | None = None) -> tuple[DPLRInputs, tuple]:
        """``q = r``, ``k̃``, ``v``, ``a = -κ̂``, ``b = κ̂ ⊙ a_t`` and ``log w`` ``(batch, heads, time, head_dim)``
        in the state dtype, the token shift continuing from ``state.shift``; carries the new shift, the bonus term
        ``(r · (ρ ⊙ k̃)) v`` ``(batch, heads, time, head_dim)`` and the gate ``(batch, time, dim)``."""
        dtype, H = state_dtype(x.dtype), self.num_heads
        previous = x.new_zeros(x.shape[0], 1, x.shape[2]) if state is None else state.shift[:, None].to(x.dtype)
        delta = torch.cat([previous, x[:, :-1]], 1) - x  # x_{t-1} - x_t
        xr, xw, xk, xv, xa, xg = (x + delta * mu for mu in self.mix)
        heads = lambda t: split_heads(t, H, dtype)
        r, v = heads(self.r_proj(xr)), heads(self.v_proj(xv))
        log_w = -DECAY_SCALE * torch.sigmoid(heads(self.w_lora(xw)))
        rate = torch.sigmoid(heads(self.a_lora(xa)))  # a_t, the in-context learning rate
        per_head = lambda p: p.to(dtype).view(H, 1, self.head_dim)
        k = heads(self.k_proj(xk))
        kappa = F.normalize(k * per_head(self.k_k), dim=-1)  # κ̂
        k = k * (1 + (rate - 1) * per_head(self.k_a))
        bonus = (r * k * self.r_k.to(dtype)[:, None]).sum(-1, keepdim=True) * v
        inputs = DPLRInputs(r, k, v, -kappa, kappa * rate, log_w)
        return inputs, (x[:, -1].to(dtype), bonus, self.g_lora(xg))

    def read_output(self, x: Tensor, o: Tensor, S: Tensor, carry: tuple) -> tuple[Tensor, RWKV7State]:
        """``W_o`` of the group-normed outputs plus the bonus, gated."""
        shift, bonus, gate = carry
        o = merge_heads(o, o.dtype)
        weight, bias = (p.to(o.dtype) for p in (self.norm.weight, self.norm.bias))
        o = F.group_norm(o.flatten(0, 1), self.num_heads, weight, bias, self.norm.eps).view_as(o)
        o = o + merge_heads(bonus, o.dtype)
        return self.out_proj(o.to(x.dtype) * gate), RWKV7State(shift, S)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_heads={self.num_heads}, head_dim={self.head_dim}"
