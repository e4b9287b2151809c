"""Mixture-of-Memories: several delta-rule memories, a router writing each token to its top k.

Du, Sun, Han, Zhou, Cheng (2025), "MoM: Linear Sequence Modeling with Mixture-of-Memories". One matrix
memory must hold everything a linear model recalls; MoM keeps ``num_memories`` of them, each with its own
key and value projections, and lets a router choose which memories each token writes to (a mixture of
experts over states), plus a shared memory every token writes to. Memories a token skips are untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ..registry import register
from .base import EngineLayer, state_dtype
from .common import dt_bias_init, key_value_dims, l2_normalize, norm_gate, split_heads
from .conv import CausalConv1d, qkv_short_convs
from .deltanet import DeltaNetState
from .engines import DeltaRuleEngine, DeltaRuleInputs

__all__ = ["MixtureOfMemories"]


@register(
    "mom",
    family="mixture of memories",
    paper="Du et al. 2025, MoM: Linear Sequence Modeling with Mixture-of-Memories",
    negative_eigenvalues=True,
    tier=2,
)
class MixtureOfMemories(EngineLayer):
    """MoM over Gated DeltaNet memories, per head and memory ``m`` (``M = num_memories``, plus memory 0,
    the shared one, with ``shared_memory=True``)::

        r_t = softmax(W_r x_t) over the M routed memories,  T_t = top_k(r_t),  w_{t,m} = r_{t,m} / Σ_{T_t} r
        q_t = L2(SiLU(conv(W_q x))_t)  (shared),   k^m_t, v^m_t = L2(SiLU(conv(W^m_k x))_t), SiLU(conv(W^m_v x))_t
        S^m_t = α^m_t (I - β^m_t k^m_t k^m_t^T) S^m_{t-1} + β^m_t k^m_t v^m_t^T    if m ∈ T_t (or m shared)
        S^m_t = S^m_{t-1}                                                        otherwise
        o_t = Σ_{m ∈ T_t} w_{t,m} S^m_t^T q_t  (+ S^0_t^T q_t),   y_t = W_o (RMSNorm_h(o_t) ⊙ SiLU(W_g x_t))

    with Gated DeltaNet's ``β = σ(W_β x)`` (``2σ`` with ``negative_eigenvalues``) and
    ``log α = -softplus(W_a x + dt_bias) exp(A_log)`` per memory and head. A skipped memory is a delta step
    with ``β = 0`` and ``α = 1``, so all memories run on engine 4 at once, as extra heads: every form, the
    state and the operator are engine 4's. The routing is discrete (top k); gradients reach the router
    through the weights ``w``, as in the paper.

    State: :class:`~rnnzoo.layers.deltanet.DeltaNetState`, ``S`` ``(batch, memories·heads, d_k, d_v)``
    memory-major. Operator (:meth:`materialize`): one group per (memory, head).
    """

    engine = DeltaRuleEngine()

    def __init__(
        self,
        d_model: int,
        num_heads: int = 2,
        num_memories: int = 4,
        top_k: int = 2,
        shared_memory: bool = True,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        d_conv: int = 4,
        norm_eps: float = 1e-5,
        negative_eigenvalues: bool = False,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        owner = type(self).__name__
        self.num_heads = check_int(owner, "num_heads", num_heads)
        self.num_memories = check_int(owner, "num_memories", num_memories)
        self.top_k = check_int(owner, "top_k", top_k)
        if top_k > num_memories:
            raise ValueError(f"{owner}: `top_k` must be <= num_memories ({num_memories}), got {top_k}")
        check_int(owner, "d_conv", d_conv)
        key_dim, value_dim, self.head_k, self.head_v = key_value_dims(owner, d_model, num_heads, expand_k, expand_v)
        self.shared_memory, self.negative_eigenvalues = shared_memory, negative_eigenvalues
        self.total_memories = m = num_memories + int(shared_memory)
        self.router = nn.Linear(d_model, num_memories, bias=False)
        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, m * key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, m * value_dim, bias=False)
        self.b_proj = nn.Linear(d_model, m * num_heads, bias=False)
        self.a_proj = nn.Linear(d_model, m * num_heads, bias=False)
        self.q_conv = CausalConv1d(key_dim, d_conv, bias=False)
        self.k_conv = CausalConv1d(m * key_dim, d_conv, bias=False)
        self.v_conv = CausalConv1d(m * value_dim, d_conv, bias=False)
        self.A_log = nn.Parameter((16 * (1 - torch.rand(m * num_heads))).log())
        self.dt_bias = nn.Parameter(dt_bias_init(m * num_heads))
        self.g_proj = nn.Linear(d_model, value_dim, bias=False)
        self.norm = nn.RMSNorm(self.head_v, eps=norm_eps)
        self.out_proj = nn.Linear(value_dim, d_model, bias=False)

    def init_state(self, batch_size: int, device=None, dtype=None) -> DeltaNetState:
        kw = self._state_kwargs(device, dtype)
        shape = (batch_size, self.total_memories * self.num_heads, self.head_k, self.head_v)
        S = torch.zeros(shape, device=kw["device"], dtype=state_dtype(kw["dtype"]))
        convs = (conv.init_state(batch_size, **kw) for conv in (self.q_conv, self.k_conv, self.v_conv))
        return DeltaNetState(*convs, S)

    def routing(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(written, weight)`` ``(batch, T, memories)``: which memories each token writes to, and each
        memory's weight in the read-out (the router's softmax renormalised over the top k, which is the softmax
        of the top-k logits; 1 for the shared memory). Chosen on the logits, which tie only when the inputs do
        (softmax scores of large logits underflow to equal zeros). Computed in the state dtype even under
        autocast, as mixture-of-experts routers are: a half-precision logit would send tokens elsewhere."""
        dtype = state_dtype(x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.to(dtype), self.router.weight.to(dtype))
        top, index = logits.topk(self.top_k, -1)
        weight = torch.zeros_like(logits).scatter(-1, index, torch.softmax(top, -1))
        written = torch.zeros_like(logits).scatter(-1, index, 1.0)
        if self.shared_memory:
            weight, written = F.pad(weight, (1, 0), value=1.0), F.pad(written, (1, 0), value=1.0)
        return written, weight

    def engine_inputs(self, x: Tensor, state: DeltaNetState | None = None) -> tuple[DeltaRuleInputs, tuple]:
        """Engine-4 inputs with the memories as heads (memory-major): ``q`` repeated per memory, ``β`` and
        ``log α`` zero where a memory is skipped; carries the read-out weights and the new conv states."""
        dtype, H, M = state_dtype(x.dtype), self.num_heads, self.total_memories
        outs = qkv_short_convs(self, x, state)
        q = l2_normalize(split_heads(F.silu(outs[0][0]), H, dtype)).repeat(1, M, 1, 1)
        k = l2_normalize(split_heads(F.silu(outs[1][0]), M * H, dtype))
        v = split_heads(F.silu(outs[2][0]), M * H, dtype)
        written, weight = self.routing(x)
        per_head = written.repeat_interleave(H, -1).transpose(1, 2)  # (B, M·H, T)
        beta = self.b_proj(x).to(dtype).sigmoid().transpose(1, 2) * (2 if self.negative_eigenvalues else 1)
        dt = F.softplus(self.a_proj(x).to(dtype) + self.dt_bias.to(dtype)).transpose(1, 2)
        log_alpha = dt * -torch.exp(self.A_log.to(dtype))[:, None]
        inputs = DeltaRuleInputs(q, k, v, beta * per_head, log_alpha * per_head)
        return inputs, (weight, tuple(c for _, c in outs))

    def read_output(self, x: Tensor, o: Tensor, S: Tensor, carry: tuple) -> tuple[Tensor, DeltaNetState]:
        """The memories' reads ``o`` ``(B, M·H, T, d_v)`` weighted and summed per head, normed and gated."""
        weight, convs = carry
        o = o.unflatten(1, (self.total_memories, self.num_heads))
        o = torch.einsum("bmhtd,btm->bhtd", o, weight.to(o.dtype))
        return self.out_proj(norm_gate(o, self.g_proj(x), self.norm)), DeltaNetState(*convs, S)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_heads={self.num_heads}, num_memories={self.num_memories}, "
            f"top_k={self.top_k}, shared_memory={self.shared_memory}, head_k={self.head_k}, head_v={self.head_v}, "
            f"negative_eigenvalues={self.negative_eigenvalues}"
        )
