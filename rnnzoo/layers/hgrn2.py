"""HGRN2: HGRN with its state expanded by an outer product.

Qin, Yang, Sun, Shen, Li, Sun, Zhong (2024), "HGRN2: Gated Linear RNNs with
State Expansion". HGRN's forget gate becomes a per-key decay of a matrix state
and its input gate ``1 - f_t`` a key, so the layer is gated linear attention
(engine 3) with a decay per key dimension.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ..registry import register
from .base import EngineLayer, MatrixState, state_dtype
from .common import lower_bound_buffer, merge_heads, widen_log_decay
from .engines import MatrixEngine, MatrixInputs

__all__ = ["HGRN2"]


@register(
    "hgrn2",
    family="gated linear RNN",
    paper="Qin et al. 2024, HGRN2: Gated Linear RNNs with State Expansion",
    negative_eigenvalues=True,
)
class HGRN2(EngineLayer):
    """HGRN2 token mixer, per head (as flash-linear-attention's ``HGRN2Attention``)::

        f_t = γ + (1 - γ) σ(W_f x_t)                   # forget gate, per key dim, lower bound γ
        q_t = SiLU(W_q x_t),  k_t = 1 - f_t,  v_t = W_i x_t
        S_t = Diag(f_t) S_{t-1} + k_t v_t^T,  o_t = S_t^T q_t
        y_t = W_o RMSNorm(o_t)                          # norm over all heads, no output gate

    ``log f_t = logaddexp(log γ, log(1 - γ) + log σ(W_f x_t))`` stays in log
    space, and ``k_t = (1 - γ) σ(-W_f x_t)`` is computed without cancellation.
    ``lower_bound`` is γ, a float or a ``(d_model,)`` tensor in [0, 1): as in
    :class:`~rnnzoo.layers.hgrn.HGRN`, a model stacking layers passes each its
    bound (0 for the first layer, rising with depth).

    ``expand_ratio`` is the key dim of each head (the state expansion; 128 in
    fla), capped at ``d_model`` so a narrow layer has one head; it must divide
    ``d_model``. There are ``d_model / expand_ratio`` heads, each with a square
    ``expand_ratio × expand_ratio`` state. Unlike fla's kernel, ``q`` is not
    scaled by ``expand_ratio^{-1/2}`` (the paper has no scale; the RMSNorm that
    follows makes it irrelevant up to its eps).

    With ``negative_eigenvalues=True`` the decay becomes ``2 f_t - 1 ∈ (-1, 1)``;
    the key stays ``1 - f_t``. For half-precision parameters the gates, the
    recurrence and the state run in float32; ``y`` comes back in the input dtype.

    State: :class:`~rnnzoo.layers.base.MatrixState`, ``S`` ``(batch, num_heads,
    expand_ratio, expand_ratio)``. Operator (:meth:`materialize`): one group per head.
    """

    engine = MatrixEngine()

    def __init__(
        self,
        d_model: int,
        expand_ratio: int = 128,
        lower_bound: float | Tensor = 0.0,
        negative_eigenvalues: bool = False,
        norm_eps: float = 1e-5,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        expand_ratio = min(check_int("HGRN2", "expand_ratio", expand_ratio), d_model)
        if d_model % expand_ratio:
            raise ValueError(f"HGRN2: `expand_ratio`={expand_ratio} must divide d_model={d_model}")
        self.expand_ratio, self.num_heads = expand_ratio, d_model // expand_ratio
        self.register_buffer("lower_bound", lower_bound_buffer("HGRN2", lower_bound, d_model))
        self.negative_eigenvalues = negative_eigenvalues
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=False)  # q, f, i
        self.norm = nn.RMSNorm(d_model, eps=norm_eps)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch_size: int, device=None, dtype=None) -> MatrixState:
        kw = self._state_kwargs(device, dtype)
        shape = (batch_size, self.num_heads, self.expand_ratio, self.expand_ratio)
        return MatrixState(torch.zeros(shape, device=kw["device"], dtype=state_dtype(kw["dtype"])))

    def engine_inputs(self, x: Tensor, state: MatrixState | None = None) -> tuple[MatrixInputs, None]:
        """``q = SiLU(W_q x)``, ``k = 1 - f``, ``v = W_i x``, ``log|α|`` and its sign (``None`` unless negative
        eigenvalues), each ``(B, H, T, expand_ratio)``, in the state dtype."""
        dtype = state_dtype(x.dtype)
        q, f, v = self.in_proj(x).to(dtype).split(self.d_model, dim=-1)
        bound = self.lower_bound.to(dtype)
        log_bound = torch.log(bound.clamp_min(torch.finfo(dtype).tiny))  # γ = 0 -> a finite floor, no -inf
        log_f = torch.logaddexp(log_bound, torch.log1p(-bound) + F.logsigmoid(f)).clamp_max(0.0)
        k = (1 - bound) * torch.sigmoid(-f)
        sign = None
        if self.negative_eigenvalues:
            log_f, sign = widen_log_decay(log_f)
        heads = lambda t: None if t is None else t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        return MatrixInputs(heads(F.silu(q)), heads(k), heads(v), heads(log_f), heads(sign)), None

    def read_output(self, x: Tensor, o: Tensor, S: Tensor, carry: None) -> tuple[Tensor, MatrixState]:
        return self.out_proj(self.norm(merge_heads(o, x.dtype))), MatrixState(S)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_heads={self.num_heads}, expand_ratio={self.expand_ratio}, "
            f"negative_eigenvalues={self.negative_eigenvalues}"
        )
