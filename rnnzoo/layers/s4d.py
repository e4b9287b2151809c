"""S4D: a diagonal state space model, run as a scan or as a long causal convolution.

Gu, Gupta, Goel, Ré (2022), "On the Parameterization and Initialization of
Diagonal State Space Models". Each channel is an independent linear
time-invariant system with a complex diagonal ``A``, discretised by zero-order
hold. Being time-invariant, it has two parallel forms: the scan of engine 2
with a constant transition, and the convolution with its impulse response
(computed by a Vandermonde product and applied with the FFT).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..registry import register
from .base import DiagonalState, state_dtype
from .engines import DiagonalSSMEngine, DiagonalSSMInputs
from .lti_ssm import TimeInvariantSSM

__all__ = ["S4D"]


@register(
    "s4d",
    family="state-space model",
    paper="Gu et al. 2022, On the Parameterization and Initialization of Diagonal State Space Models",
    negative_eigenvalues=False,
)
class S4D(TimeInvariantSSM):
    """S4D, per channel (``d_model`` of them) and complex mode ``n`` (``d_state / 2``, conjugates implied):

    ``A = -exp(log_A_real) + i·A_imag``, ``Δ = exp(log_dt)``, ``Ā = exp(ΔA)``, ``B̄ = (Ā - 1)/A · B``,
    ``h_t = Ā ⊙ h_{t-1} + B̄ x_t``, ``z_t = 2·Re(Σ_n C_n h_{t,n}) + D ⊙ x_t``,
    ``y_t = GLU(W GELU(z_t) + b)`` with ``W`` of shape ``(2 d_model, d_model)``.

    As in the paper's minimal S4D code, ``B`` is absorbed into ``C`` (``B = 1``)
    and the output is the standalone module's GELU, a position-wise linear layer
    to ``2 d_model`` and a GLU (dropout left out). Initialisation: S4D-Lin
    ``A = -1/2 + iπn``, ``log Δ`` uniform in ``[log dt_min, log dt_max]``, ``C``
    complex standard normal, ``D ~ N(0, 1)``. (The reference code exempts ``A``
    and ``Δ`` from weight decay, optionally with their own learning rate; that
    is left to the optimiser set-up.)

    Modes: ``"conv"`` (what ``"auto"`` uses: kernel ``K_k = 2·Re(Σ_n C_n B̄_n Ā_n^k)``
    by a Vandermonde product, applied with ``rfft``/``irfft`` zero-padded to ``2T``;
    the initial state adds ``2·Re(Σ_n C_n Ā_n^{t+1} h0_n)`` and the final state is
    ``Ā^T h0 + Σ_k Ā^{T-1-k} B̄ x_k``), ``"scan"`` (engine 2 with ``Ā`` broadcast
    over batch and time) and ``"recurrent"``. The convolution is the
    faster (the README's speed table gives both): the scan materialises
    ``(batch, T, d_model, d_state/2)`` complex states.

    State: ``DiagonalState(h)`` with ``h`` complex, ``(batch, d_model, d_state // 2)``.
    """

    engine = DiagonalSSMEngine()

    def __init__(
        self, d_model: int, d_state: int = 64, dt_min: float = 0.001, dt_max: float = 0.1, mode: str = "auto"
    ) -> None:
        super().__init__(d_model, d_state, dt_min, dt_max, mode)
        n_modes = d_state // 2
        self.log_A_real = nn.Parameter(torch.full((d_model, n_modes), math.log(0.5)))
        self.A_imag = nn.Parameter(math.pi * torch.arange(n_modes, dtype=torch.float32).repeat(d_model, 1))

    def discretize(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(ΔA, Ā, B̄, C)``, each complex ``(d_model, d_state // 2)``, in at least float32."""
        real = self.real_dtype()
        A = torch.complex(-torch.exp(self.log_A_real.to(real)), self.A_imag.to(real))
        dtA = torch.exp(self.log_dt.to(real))[:, None] * A
        A_bar = torch.exp(dtA)
        return dtA, A_bar, (A_bar - 1) / A, self.readout()

    def engine_inputs(self, x: Tensor, state: DiagonalState | None = None) -> tuple[DiagonalSSMInputs, None]:
        """The SSM of every channel on ``u = x`` in the state dtype; the engine's output is ``z``."""
        dtA, _, B_bar, C = self.discretize()
        u = x.to(state_dtype(x.dtype))
        return DiagonalSSMInputs(u, dtA, B_bar, C, self.D.to(u.dtype)), None
