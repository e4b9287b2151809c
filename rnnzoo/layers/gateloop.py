"""GateLoop: linear attention with a fully data-controlled complex state transition.

Katsch (2023), "GateLoop: Fully Data-Controlled Linear Recurrence for Sequence
Modeling". Each key dim of each head decays by ``α_t = σ(·) e^{iθ_t}``, a
magnitude and a phase both computed from the token: engine 3 with a complex
per-key decay ``log α_t = log σ(·) + iθ_t``, complex ``q, k`` and a complex state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ..registry import register
from .base import EngineLayer, MatrixState, state_dtype
from .common import key_value_dims, norm_gate, split_heads
from .engines import MatrixEngine, MatrixInputs

__all__ = ["GateLoop"]


@register(
    "gateloop",
    family="gated linear attention",
    paper="Katsch 2023, GateLoop: Fully Data-Controlled Linear Recurrence for Sequence Modeling",
    tier=2,
)
class GateLoop(EngineLayer):
    """The GateLoop layer, per head and key dim::

        q_t, k_t = (W_q x_t) / sqrt(d_k), W_k x_t     (complex: real and imaginary parts projected)
        v_t = W_v x_t
        α_t = σ(W_a x_t + b_a) · exp(i (W_θ x_t + b_θ))  # magnitude in (0, 1), phase from x
        S_t = Diag(α_t) S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t   (complex; no conjugation)
        y_t = W_o (RMSNorm_h(Re o_t) ⊙ swish(W_g x_t))

    As in the paper: complex ``q, k`` and state, real ``v``, the magnitude
    through a sigmoid and the phase through the identity, biases on the gate
    projection only. The paper leaves the read-out to the model around the
    layer; here, as the other engine-3 layers (GLA), the real part of ``o_t``
    goes through a per-head RMSNorm and a swish output gate. Key size
    ``expand_k · d_model`` (default 0.5), value size ``expand_v · d_model``
    (default 1), both split over ``num_heads``; PyTorch's default initialisation.

    The recurrence runs in complex64 (complex128 for float64 parameters, and
    complex64 for half precision). State: ``MatrixState(S)``, ``S`` complex
    ``(batch, heads, d_k, d_v)``; ``transition_eigenvalues`` are the complex
    ``α_t``, ``|α_t| < 1``. Operator (:meth:`materialize`): one complex group per head.
    """

    engine = MatrixEngine()

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        norm_eps: float = 1e-5,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        self.num_heads = check_int("GateLoop", "num_heads", num_heads)
        dims = key_value_dims("GateLoop", d_model, num_heads, expand_k, expand_v)
        key_dim, value_dim, self.head_k, self.head_v = dims
        self.q_proj = nn.Linear(d_model, 2 * key_dim, bias=False)  # real parts, then imaginary parts
        self.k_proj = nn.Linear(d_model, 2 * key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        self.a_proj = nn.Linear(d_model, 2 * key_dim)  # magnitude logits, then phases
        self.g_proj = nn.Linear(d_model, value_dim, bias=False)
        self.out_proj = nn.Linear(value_dim, d_model, bias=False)
        self.norm = nn.RMSNorm(self.head_v, eps=norm_eps)

    def init_state(self, batch_size: int, device=None, dtype=None) -> MatrixState:
        kw = self._state_kwargs(device, dtype)
        shape = (batch_size, self.num_heads, self.head_k, self.head_v)
        return MatrixState(torch.zeros(shape, device=kw["device"], dtype=state_dtype(kw["dtype"], complex_state=True)))

    def engine_inputs(self, x: Tensor, state: MatrixState | None = None) -> tuple[MatrixInputs, None]:
        """Complex ``q / sqrt(d_k), k, v`` and ``log α = log σ(·) + iθ`` ``(batch, heads, time, d)``, in the
        complex state dtype."""
        dtype = state_dtype(x.dtype)
        heads = lambda t: split_heads(t, self.num_heads, dtype)
        q, k = (torch.complex(*map(heads, proj(x).chunk(2, -1))) for proj in (self.q_proj, self.k_proj))
        magnitude, phase = map(heads, self.a_proj(x).chunk(2, -1))
        log_alpha = torch.complex(F.logsigmoid(magnitude), phase)
        v = heads(self.v_proj(x)).to(q.dtype)
        return MatrixInputs(q * self.head_k**-0.5, k, v, log_alpha), None

    def read_output(self, x: Tensor, o: Tensor, S: Tensor, carry: None) -> tuple[Tensor, MatrixState]:
        return self.out_proj(norm_gate(o.real, self.g_proj(x), self.norm)), MatrixState(S)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_heads={self.num_heads}, head_k={self.head_k}, head_v={self.head_v}"
