"""What S4 and S4D share: per-channel linear time-invariant systems with complex modes and a GLU output."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from .base import DiagonalState, EngineLayer, state_dtype

__all__ = ["TimeInvariantSSM"]


class TimeInvariantSSM(EngineLayer):
    """``d_model`` independent single-input systems of ``d_state`` real states, kept as ``d_state / 2`` complex
    modes (conjugates implied), read out as ``z_t = 2·Re(Σ_n C_n h_{t,n}) + D ⊙ x_t`` and
    ``y_t = GLU(W GELU(z_t) + b)`` with ``W`` of shape ``(2 d_model, d_model)`` (the S4 papers' standalone
    block, dropout left out).

    Holds what the S4 family shares: the step ``Δ = exp(log_dt)`` with ``log Δ`` uniform in
    ``[log dt_min, log dt_max]``, ``C`` complex standard normal, ``D ~ N(0, 1)``, the output projection, and the
    state ``DiagonalState(h)``, ``h`` complex ``(batch, d_model, d_state // 2)``. Subclasses add the state matrix
    and ``engine_inputs``.
    """

    def __init__(self, d_model: int, d_state: int, dt_min: float, dt_max: float, mode: str) -> None:
        super().__init__(d_model, mode)
        name = type(self).__name__
        if check_int(name, "d_state", d_state) % 2:
            raise ValueError(f"{name}: `d_state` must be a positive even int (d_state/2 complex modes), got {d_state!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"{name}: need 0 < `dt_min` <= `dt_max`, got dt_min={dt_min}, dt_max={dt_max}")
        self.d_state, self.dt_min, self.dt_max = d_state, dt_min, dt_max
        n_modes = d_state // 2
        self.log_dt = nn.Parameter(torch.rand(d_model) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.C_re = nn.Parameter(torch.randn(d_model, n_modes) / math.sqrt(2))
        self.C_im = nn.Parameter(torch.randn(d_model, n_modes) / math.sqrt(2))
        self.D = nn.Parameter(torch.randn(d_model))
        self.out_proj = nn.Linear(d_model, 2 * d_model)

    def real_dtype(self) -> torch.dtype:
        """The real dtype the system is computed in: the parameters', at least float32."""
        return state_dtype(self.log_dt.dtype)

    def readout(self) -> Tensor:
        """``C``, complex ``(d_model, d_state // 2)``."""
        real = self.real_dtype()
        return torch.complex(self.C_re.to(real), self.C_im.to(real))

    def init_state(self, batch_size: int, device=None, dtype=None) -> DiagonalState:
        kw = self._state_kwargs(device, dtype)
        dtype = state_dtype(kw["dtype"], complex_state=True)
        return DiagonalState(torch.zeros(batch_size, self.d_model, self.d_state // 2, device=kw["device"], dtype=dtype))

    def read_output(self, x: Tensor, z: Tensor, h_last: Tensor, carry: None) -> tuple[Tensor, DiagonalState]:
        return F.glu(self.out_proj(F.gelu(z.to(x.dtype))), dim=-1), DiagonalState(h_last)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_state={self.d_state}, dt_min={self.dt_min}, dt_max={self.dt_max}"
