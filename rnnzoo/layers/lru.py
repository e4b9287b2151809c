"""LRU: the Linear Recurrent Unit, a complex diagonal linear RNN with a ring initialisation.

Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu, De (2023), "Resurrecting
Recurrent Neural Networks for Long Sequences". A linear recurrence with a
complex diagonal transition ``λ`` (exponentially parameterised so that
``|λ| < 1`` always), eigenvalues initialised uniformly on a ring, and a learned
input normalisation ``γ`` (engine 2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..registry import register
from .base import DiagonalState, EngineLayer, state_dtype
from .engines import DiagonalEngine, DiagonalInputs

__all__ = ["LRU"]


@register(
    "lru",
    family="linear RNN",
    paper="Orvieto et al. 2023, Resurrecting Recurrent Neural Networks for Long Sequences",
    negative_eigenvalues=False,
)
class LRU(EngineLayer):
    """LRU: ``λ = exp(-exp(ν_log) + i·exp(θ_log))``, ``h_t = λ ⊙ h_{t-1} + γ ⊙ (B x_t)``,
    ``y_t = Re(C h_t) + D ⊙ x_t``.

    ``γ = exp(γ_log)`` is learned, initialised to ``sqrt(1 - |λ|²)`` (the paper's
    normalisation). Ring initialisation as in the paper's reference code: ``|λ|²``
    uniform in ``[r_min², r_max²]`` (so ``λ`` is uniform on the ring in area),
    phase uniform in ``[0, max_phase]``; ``B`` (complex, ``d_state × d_model``)
    has real and imaginary parts ``N(0, 1/(2 d_model))``, ``C`` (complex,
    ``d_model × d_state``) ``N(0, 1/d_state)``, ``D ~ N(0, 1)``. The defaults
    ``r_min=0, r_max=1, max_phase=6.28`` are the reference code's; it sets no
    default for ``d_state``, 64 is ours.

    Parameters are real (``B_re``, ``B_im``, ...); the recurrence runs in
    complex64 (complex128 for float64 parameters). State: ``DiagonalState(h)``
    with ``h`` complex, ``(batch, d_state)``.
    """

    engine = DiagonalEngine()

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        r_min: float = 0.0,
        r_max: float = 1.0,
        max_phase: float = 6.28,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        check_int("LRU", "d_state", d_state)
        if not 0 <= r_min < r_max <= 1:
            raise ValueError(f"LRU: need 0 <= `r_min` < `r_max` <= 1, got r_min={r_min}, r_max={r_max}")
        if not max_phase > 0:
            raise ValueError(f"LRU: `max_phase` must be > 0, got {max_phase}")
        self.d_state, self.r_min, self.r_max, self.max_phase = d_state, r_min, r_max, max_phase
        # uniforms kept off 0 and 1 so that the logs below stay finite at r_min=0, r_max=1
        u1, u2 = (torch.rand(2, d_state) * (1 - 2e-6) + 1e-6).unbind(0)
        nu_log = torch.log(-0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2))
        theta_log = torch.log(max_phase * u2)
        self.nu_log = nn.Parameter(nu_log)
        self.theta_log = nn.Parameter(theta_log)
        self.gamma_log = nn.Parameter(0.5 * torch.log(-torch.expm1(-2 * torch.exp(nu_log))))  # log sqrt(1 - |λ|²)
        self.B_re = nn.Parameter(torch.randn(d_state, d_model) / math.sqrt(2 * d_model))
        self.B_im = nn.Parameter(torch.randn(d_state, d_model) / math.sqrt(2 * d_model))
        self.C_re = nn.Parameter(torch.randn(d_model, d_state) / math.sqrt(d_state))
        self.C_im = nn.Parameter(torch.randn(d_model, d_state) / math.sqrt(d_state))
        self.D = nn.Parameter(torch.randn(d_model))

    def init_state(self, batch_size: int, device=None, dtype=None) -> DiagonalState:
        kw = self._state_kwargs(device, dtype)
        dtype = state_dtype(kw["dtype"], complex_state=True)
        return DiagonalState(torch.zeros(batch_size, self.d_state, device=kw["device"], dtype=dtype))

    def eigenvalues(self) -> Tensor:
        """The diagonal transition ``λ`` (complex, ``(d_state,)``), computed in at least float32."""
        real = state_dtype(self.nu_log.dtype)
        return torch.exp(torch.complex(-torch.exp(self.nu_log.to(real)), torch.exp(self.theta_log.to(real))))

    def engine_inputs(self, x: Tensor, state: DiagonalState | None = None) -> tuple[DiagonalInputs, Tensor]:
        """``h_t = λ ⊙ h_{t-1} + γ ⊙ B x_t`` (complex; ``λ`` time-invariant); carries ``x`` in the state dtype.
        The operator's groups are the state modes, not the channels (``B`` and ``C`` mix channels)."""
        u = x.to(state_dtype(x.dtype))
        gamma = torch.exp(self.gamma_log.to(u.dtype))
        # γ ⊙ (B x): real and imaginary parts as two real matmuls
        B_re, B_im = gamma[:, None] * self.B_re.to(u.dtype), gamma[:, None] * self.B_im.to(u.dtype)
        b_re, b_im = ((u @ B.T).to(u.dtype) for B in (B_re, B_im))  # autocast may have run them in half precision
        return DiagonalInputs(self.eigenvalues(), torch.complex(b_re, b_im)), u

    def read_output(self, x: Tensor, h: Tensor, h_last: Tensor, u: Tensor) -> tuple[Tensor, DiagonalState]:
        y = h.real @ self.C_re.to(u.dtype).T - h.imag @ self.C_im.to(u.dtype).T + self.D.to(u.dtype) * u  # Re(C h) + D x
        return y.to(x.dtype), DiagonalState(h_last)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_state={self.d_state}, r_min={self.r_min}, r_max={self.r_max}, "
            f"max_phase={self.max_phase}"
        )
