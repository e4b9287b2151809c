"""GLA: gated linear attention, linear attention with a data-dependent decay per key dimension.

Yang, Wang, Shen, Panda, Kim (2024), "Gated Linear Attention Transformers with
Hardware-Efficient Training". Engine 3 with a per-key gate ``α_t``, trained with
the chunkwise form the paper introduces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ..registry import register
from .base import EngineLayer, MatrixState, state_dtype
from .common import key_value_dims, norm_gate, split_heads, widen_log_decay
from .engines import MatrixEngine, MatrixInputs

__all__ = ["GLA"]


@register(
    "gla",
    family="gated linear attention",
    paper="Yang et al. 2024, Gated Linear Attention Transformers with Hardware-Efficient Training",
    negative_eigenvalues=True,
)
class GLA(EngineLayer):
    """The GLA layer, per head::

        q_t, k_t, v_t = W_q x_t / sqrt(d_k), W_k x_t, W_v x_t
        α_t = σ(W_2 W_1 x_t + b)^{1/τ}                 # per key dim; W_1: d_model -> r, low rank
        S_t = Diag(α_t) S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t
        y_t = W_o (RMSNorm_h(o_t) ⊙ swish(W_g x_t))

    ``log α_t = logsigmoid(W_2 W_1 x_t + b) / τ`` with ``r = gate_low_rank_dim = 16``
    and ``τ = gate_logit_normalizer = 16`` (the paper's values). Key size
    ``expand_k · d_model`` (default 0.5), value size ``expand_v · d_model``
    (default 1), both split over ``num_heads``. As in the reference code
    (flash-linear-attention ``fla/layers/gla.py``): projections without biases
    (except ``b``) and PyTorch's default initialisation, RMSNorm per head with a
    learned weight, ``eps = 1e-5``; no short convolution, no feature map.

    With ``negative_eigenvalues=True`` the gate ``α_t ∈ (0, 1)`` becomes
    ``2 α_t - 1 ∈ (-1, 1)`` (Grazzi et al. 2024). For half-precision parameters
    the gates, the recurrence and the norm run in float32.

    State: ``MatrixState(S)``, ``S`` of shape ``(batch, heads, d_k, d_v)`` per head.
    """

    engine = MatrixEngine()

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        gate_low_rank_dim: int = 16,
        gate_logit_normalizer: float = 16.0,
        norm_eps: float = 1e-5,
        negative_eigenvalues: bool = False,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        self.num_heads = check_int("GLA", "num_heads", num_heads)
        check_int("GLA", "gate_low_rank_dim", gate_low_rank_dim)
        if not gate_logit_normalizer > 0:
            raise ValueError(f"GLA: `gate_logit_normalizer` must be > 0, got {gate_logit_normalizer!r}")
        key_dim, value_dim, self.head_k, self.head_v = key_value_dims("GLA", d_model, num_heads, expand_k, expand_v)
        self.gate_logit_normalizer = gate_logit_normalizer
        self.negative_eigenvalues = negative_eigenvalues
        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        self.g_proj = nn.Linear(d_model, value_dim, bias=False)
        self.gk_proj = nn.Sequential(  # W_1, then W_2 and b
            nn.Linear(d_model, gate_low_rank_dim, bias=False), nn.Linear(gate_low_rank_dim, key_dim)
        )
        self.out_proj = nn.Linear(value_dim, d_model, bias=False)
        self.norm = nn.RMSNorm(self.head_v, eps=norm_eps)

    def init_state(self, batch_size: int, device=None, dtype=None) -> MatrixState:
        kw = self._state_kwargs(device, dtype)
        shape = (batch_size, self.num_heads, self.head_k, self.head_v)
        return MatrixState(torch.zeros(shape, device=kw["device"], dtype=state_dtype(kw["dtype"])))

    def engine_inputs(self, x: Tensor, state: MatrixState | None = None) -> tuple[MatrixInputs, None]:
        """``q / sqrt(d_k), k, v`` and ``log|α|`` ``(batch, heads, time, d_k)`` with its sign (``None`` without
        negative eigenvalues), in the state dtype."""
        dtype = state_dtype(x.dtype)
        projections = (self.q_proj, self.k_proj, self.v_proj, self.gk_proj)
        q, k, v, gk = (split_heads(proj(x), self.num_heads, dtype) for proj in projections)
        log_alpha = F.logsigmoid(gk) / self.gate_logit_normalizer
        sign = None
        if self.negative_eigenvalues:
            log_alpha, sign = widen_log_decay(log_alpha)
        return MatrixInputs(q * self.head_k**-0.5, k, v, log_alpha, sign), None

    def read_output(self, x: Tensor, o: Tensor, S: Tensor, carry: None) -> tuple[Tensor, MatrixState]:
        return self.out_proj(norm_gate(o, self.g_proj(x), self.norm)), MatrixState(S)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_heads={self.num_heads}, head_k={self.head_k}, head_v={self.head_v}, "
            f"negative_eigenvalues={self.negative_eigenvalues}"
        )
