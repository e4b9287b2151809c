"""HGRN: a gated linear RNN whose forget gate has a lower bound that rises with depth.

Qin, Yang, Zhong (2023), "Hierarchically Gated Recurrent Neural Network for
Sequence Modeling" (NeurIPS).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import register
from .base import DiagonalState, EngineLayer, state_dtype
from .common import lower_bound_buffer
from .engines import DiagonalEngine, DiagonalInputs

__all__ = ["HGRN"]


@register(
    "hgrn",
    family="gated linear RNN",
    paper="Qin et al. 2023, Hierarchically Gated Recurrent Neural Network for Sequence Modeling",
    negative_eigenvalues=True,
)
class HGRN(EngineLayer):
    """HGRN token mixer:

    ``f_t = γ + (1 - γ) σ(W_f x_t)``, ``c_t = SiLU(W_c x_t)``,
    ``h_t = f_t ⊙ h_{t-1} + (1 - f_t) ⊙ c_t``,
    ``y_t = W_o (RMSNorm(h_t) ⊙ SiLU(W_g x_t))``.

    ``lower_bound`` is γ: a float or a ``(d_hidden,)`` tensor in [0, 1). In a
    stack, the paper makes it learned and increasing with depth (a cumulative
    softmax over layers), so upper layers keep long-range memory; a model
    around this layer passes each layer its bound.

    Follows the real-valued formulation of the flash-linear-attention
    implementation: the paper's complex phase on h_t is omitted, and the
    output gate is a SiLU gate on an RMS-normalised state.
    With ``negative_eigenvalues=True`` the transition becomes ``2 f_t - 1``
    (the input weight stays ``1 - f_t``).

    State: ``DiagonalState(h)``, ``h`` of shape ``(batch, d_hidden)``.
    """

    engine = DiagonalEngine()
    renamed_arguments = {"expansion": "expand"}

    def __init__(
        self,
        d_model: int,
        expand: float = 1.0,
        lower_bound: float | Tensor = 0.0,
        negative_eigenvalues: bool = False,
        norm_eps: float = 1e-5,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        if not expand > 0:
            raise ValueError(f"HGRN: `expand` must be > 0, got {expand}")
        self.d_hidden = max(1, round(expand * d_model))
        self.register_buffer("lower_bound", lower_bound_buffer("HGRN", lower_bound, self.d_hidden))
        self.negative_eigenvalues = negative_eigenvalues
        self.in_proj = nn.Linear(d_model, 3 * self.d_hidden, bias=False)  # c, f, g
        self.norm = nn.RMSNorm(self.d_hidden, eps=norm_eps)
        self.out_proj = nn.Linear(self.d_hidden, d_model, bias=False)

    def init_state(self, batch_size: int, device=None, dtype=None) -> DiagonalState:
        kw = self._state_kwargs(device, dtype)
        return DiagonalState(torch.zeros(batch_size, self.d_hidden, device=kw["device"], dtype=state_dtype(kw["dtype"])))

    def engine_inputs(self, x: Tensor, state: DiagonalState | None = None) -> tuple[DiagonalInputs, Tensor]:
        """``h_t = a_t ⊙ h_{t-1} + w_t ⊙ v_t`` with ``a_t = f_t`` (or ``2 f_t - 1``), ``w_t = 1 - f_t``,
        ``v_t = c_t``; carries the output gate's pre-activation ``g_t``."""
        c, f, g = self.in_proj(x).split(self.d_hidden, dim=-1)
        f = self.lower_bound + (1 - self.lower_bound) * torch.sigmoid(f)
        return DiagonalInputs(2 * f - 1 if self.negative_eigenvalues else f, F.silu(c), 1 - f), g

    def read_output(self, x: Tensor, h: Tensor, h_last: Tensor, g: Tensor) -> tuple[Tensor, DiagonalState]:
        return self.out_proj(self.norm(h) * F.silu(g)), DiagonalState(h_last)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_hidden={self.d_hidden}, negative_eigenvalues={self.negative_eigenvalues}"
