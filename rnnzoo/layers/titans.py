"""Titans' neural memory with a linear memory, and Miras's alternative attentional biases.

* Titans: Behrouz, Zhong, Mirrokni (2025), "Titans: Learning to Memorize at Test Time".
* Miras: Behrouz, Razaviyayn, Zhong, Mirrokni (2025), "It's All Connected: A Journey Through Test-Time
  Memorization, Attentional Bias, Retention, and Online Optimization" (Yaad: the Huber objective; Moneta:
  the ℓ_p objective).

The memory is a ``d_k × d_v`` matrix per head, trained at test time by mini-batch gradient descent with
momentum and weight decay on the loss of reading ``v_t`` back from ``k_t``
(:mod:`rnnzoo.ops.test_time_memory`); the shell around it (short convolutions, L2-normalised q and k, output
norm and gate) is that of Titans' memory module and of :mod:`rnnzoo.layers.deltanet`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ..ops.test_time_memory import OBJECTIVES
from ..registry import register
from .base import EngineLayer, RecurrentState, state_dtype
from .common import head_size, l2_normalize, norm_gate, split_heads
from .conv import CausalConv1d, qkv_short_convs
from .engines import TestTimeMemoryEngine, TestTimeMemoryInputs

__all__ = ["TestTimeMemory", "TitansState"]


@dataclass
class TitansState(RecurrentState):
    """``conv_q, conv_k, conv_v``: the short convolutions' last ``d_conv - 1`` inputs
    ``(batch, channels, d_conv - 1)``; ``M0``, ``M``, ``U``: the memory at the start of the current mini-batch,
    the memory and the momentum ``(batch, heads, d_k, d_v)``; ``position``: tokens seen in the current
    mini-batch ``(batch,)`` (int64, in ``[0, memory_batch)``)."""

    engine_fields = ("M0", "M", "U", "position")
    conv_q: Tensor
    conv_k: Tensor
    conv_v: Tensor
    M0: Tensor
    M: Tensor
    U: Tensor
    position: Tensor


def _logit_log_uniform(size: int, low: float, high: float) -> Tensor:
    """Biases ``logit(r)``, ``r`` drawn log-uniformly in ``[low, high]``: a sigmoid gate starting at ``r``."""
    r = torch.empty(size).uniform_(math.log(low), math.log(high)).exp()
    return torch.log(r) - torch.log1p(-r)


@register(
    "titans",
    family="test-time memory",
    paper="Behrouz et al. 2025, Titans: Learning to Memorize at Test Time; "
    "Behrouz et al. 2025, It's All Connected (Miras)",
    tier=2,
)
class TestTimeMemory(EngineLayer):
    """Titans' long-term memory with a linear memory per head (the "memory as a layer" mixer)::

        q_t, k_t, v_t = L2(SiLU(conv_q(W_q x))_t), L2(SiLU(conv_k(W_k x))_t), SiLU(conv_v(W_v x))_t
        η_t, α_t = σ(W_η x_t + b_η), σ(W_α x_t + b_α)                      # per head
        θ_t = (1 - η_t) σ(W_θ x_t + b_θ) / b                                # b = memory_batch
        g_t = k_t ψ(M_0^T k_t - v_t)^T           # the loss's gradient at M_0, the mini-batch's first memory
        U_t = η_t U_{t-1} - θ_t g_t,   M_t = (1 - α_t) M_{t-1} + U_t,   o_t = M_t^T q_t
        y_t = W_o (RMSNorm_h(o_t) ⊙ SiLU(W_g x_t))

    Mini-batches are ``b = memory_batch`` tokens long, counted from the start of the sequence the state began
    with (``b = 1``: the gated delta rule with momentum, every gradient at the latest memory).
    ``objective`` picks the attentional bias and its ``ψ`` (elementwise on the residual ``e``): ``"l2"``,
    ``ψ(e) = e`` (Titans); ``"huber"``, ``ψ(e) = clamp(e, -delta, delta)`` (Miras's Yaad); ``"lp"``,
    ``ψ(e) = p |e|^{p-1} sign(e)`` (Miras's Moneta, ``p = 3`` there; ``p > 2`` grows faster than ℓ2 in the
    residual, so large residuals overshoot).

    The learning rate is Titans' sigmoid gate scaled by ``(1 - η_t) / b``: the momentum is an average of
    gradients and a mini-batch steps by the mean of its gradients, as mini-batch SGD with momentum usually
    is. Titans' unscaled ``θ_t ∈ (0, 1)`` sums ``b`` steps all taken at ``M_0``, amplified up to
    ``1 / (1 - η)`` by the momentum: beyond a step of about ``2 / b`` the memory overshoots and grows from
    one mini-batch to the next, which gates driven towards saturation (``η → 1``, ``θ → 1``) reach. With the
    scaling the transition over a mini-batch contracts for every value of the gates.

    As Titans' memory module: depthwise causal convs of width ``d_conv`` on q, k, v, SiLU, q and k
    L2-normalised per head; the gates are data-dependent scalars per head, kept in log space where they
    multiply (``log η = logsigmoid(·)``, ``log(1 - α) = logsigmoid(-·)``). ``d_k = d_v = expand · d_model /
    num_heads``. At initialisation ``σ(b_θ)``, η and α are log-uniform draws per head in ``[0.1, 0.5]``,
    ``[0.5, 0.9]`` and ``[1e-3, 1e-1]``. For half-precision parameters the memory, the norms and the state
    run in float32.

    State: :class:`TitansState`; a sequence split anywhere, or run token by token, gives the one-pass result.
    Operator (:meth:`materialize`, ``"l2"`` only): one group per head.
    """

    engine = TestTimeMemoryEngine()

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        expand: float = 1.0,
        d_conv: int = 4,
        memory_batch: int = 16,
        objective: str = "l2",
        delta: float = 1.0,
        p: float = 3.0,
        norm_eps: float = 1e-5,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        owner = type(self).__name__
        self.num_heads = check_int(owner, "num_heads", num_heads)
        check_int(owner, "d_conv", d_conv)
        self.memory_batch = check_int(owner, "memory_batch", memory_batch)
        if not expand > 0:
            raise ValueError(f"{owner}: `expand` must be > 0, got {expand!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"{owner}: `objective` must be one of {OBJECTIVES}, got {objective!r}")
        if not delta > 0:
            raise ValueError(f"{owner}: `delta` must be > 0, got {delta!r}")
        if not p >= 1:
            raise ValueError(f"{owner}: `p` must be >= 1, got {p!r}")
        self.objective, self.delta, self.p = objective, float(delta), float(p)
        dim = round(expand * d_model)
        self.head_dim = head_size(owner, "memory dim round(expand * d_model)", dim, num_heads)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d_model, dim, bias=False) for _ in range(3))
        self.q_conv, self.k_conv, self.v_conv = (CausalConv1d(dim, d_conv, bias=False) for _ in range(3))
        self.theta_proj, self.eta_proj, self.alpha_proj = (nn.Linear(d_model, num_heads) for _ in range(3))
        with torch.no_grad():
            for proj, (low, high) in zip(
                (self.theta_proj, self.eta_proj, self.alpha_proj), ((0.1, 0.5), (0.5, 0.9), (1e-3, 1e-1))
            ):
                proj.bias.copy_(_logit_log_uniform(num_heads, low, high))
        self.g_proj = nn.Linear(d_model, dim, bias=False)
        self.norm = nn.RMSNorm(self.head_dim, eps=norm_eps)
        self.out_proj = nn.Linear(dim, d_model, bias=False)

    def init_state(self, batch_size: int, device=None, dtype=None) -> TitansState:
        kw = self._state_kwargs(device, dtype)
        shape = (batch_size, self.num_heads, self.head_dim, self.head_dim)
        memory = [torch.zeros(shape, device=kw["device"], dtype=state_dtype(kw["dtype"])) for _ in range(3)]
        convs = (conv.init_state(batch_size, **kw) for conv in (self.q_conv, self.k_conv, self.v_conv))
        return TitansState(*convs, *memory, torch.zeros(batch_size, dtype=torch.long, device=kw["device"]))

    def engine_inputs(self, x: Tensor, state: TitansState | None = None) -> tuple[TestTimeMemoryInputs, tuple]:
        """The engine's inputs in the state dtype (``q, k, v`` ``(B, H, T, d)``, gates ``(B, H, T)``); carries the
        three new conv states."""
        dtype, H = state_dtype(x.dtype), self.num_heads
        outs = qkv_short_convs(self, x, state)
        q, k, v = (split_heads(F.silu(y), H, dtype) for y, _ in outs)
        theta, eta, alpha = (
            proj(x).to(dtype).transpose(1, 2) for proj in (self.theta_proj, self.eta_proj, self.alpha_proj)
        )  # (B, H, T) each
        rate = torch.sigmoid(-eta) * torch.sigmoid(theta) / self.memory_batch  # (1 - η) σ(·) / b
        inputs = TestTimeMemoryInputs(
            l2_normalize(q), l2_normalize(k), v, rate, F.logsigmoid(eta), F.logsigmoid(-alpha),
            self.memory_batch, self.objective, self.delta, self.p,
        )  # fmt: skip
        return inputs, tuple(c for _, c in outs)

    def read_output(self, x: Tensor, o: Tensor, final: tuple, convs: tuple) -> tuple[Tensor, TitansState]:
        """``W_o`` of the normed, gated per-head outputs ``o`` ``(B, H, T, d_v)``."""
        return self.out_proj(norm_gate(o, self.g_proj(x), self.norm)), TitansState(*convs, *final)

    def extra_repr(self) -> str:
        objective = {"l2": "", "huber": f", delta={self.delta}", "lp": f", p={self.p}"}[self.objective]
        return (
            f"{super().extra_repr()}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"memory_batch={self.memory_batch}, objective={self.objective!r}{objective}"
        )
