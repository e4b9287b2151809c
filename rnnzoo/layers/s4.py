"""S4: the linear state space layer with a HiPPO-LegS state matrix in diagonal-plus-low-rank form.

Gu, Goel, Ré (2022), "Efficiently Modeling Long Sequences with Structured State Spaces" (S4); Gu, Johnson,
Goel, Saab, Dao, Rudra, Ré (2021), "Combining Recurrent, Convolutional, and Continuous-time Models with Linear
State-Space Layers" (LSSL). Each channel is an independent linear time-invariant system whose state matrix
starts as HiPPO-LegS, kept as ``Λ - P P^*`` (normal plus rank one) and discretised by the bilinear transform.
Its two forms are the recurrence with the dense ``Ā`` and the long convolution with its impulse response,
computed with the Cauchy kernel and the Woodbury identity at the roots of unity (:mod:`rnnzoo.ops.s4_kernel`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.s4_kernel import nplr_legs
from ..registry import register
from .base import DiagonalState, state_dtype
from .engines import DPLRSSMEngine, DPLRSSMInputs
from .lti_ssm import TimeInvariantSSM

__all__ = ["S4"]


@register(
    "s4",
    family="state-space model",
    paper=(
        "Gu, Goel, Ré 2022, Efficiently Modeling Long Sequences with Structured State Spaces (S4); "
        "Gu et al. 2021, LSSL"
    ),
    tier=2,
)
class S4(TimeInvariantSSM):
    """S4, per channel (``d_model`` of them) with ``d_state`` states, kept as ``d_state / 2`` complex modes
    (conjugates implied):

    ``A = Λ - P P^*`` with ``Λ = -exp(log_A_real) + i·A_imag``, ``Δ = exp(log_dt)``,
    ``Ā = (I - Δ/2 A)^{-1}(I + Δ/2 A)``, ``B̄ = (I - Δ/2 A)^{-1} Δ B``,
    ``h_t = Ā h_{t-1} + B̄ x_t``, ``z_t = Re(C h_t) + D ⊙ x_t = 2·Re(Σ_n C_n h_{t,n}) + D ⊙ x_t``,
    ``y_t = GLU(W GELU(z_t) + b)`` with ``W`` of shape ``(2 d_model, d_model)``.

    Initialisation (S4's ``"legs"``): ``Λ, P, B`` from HiPPO-LegS, ``A = V (Λ - P P^*) V^*`` and ``B = V B̃``
    with ``V`` unitary (:func:`~rnnzoo.ops.s4_kernel.nplr_legs`), the same for every channel; ``B`` is HiPPO's
    unclipped (S4 clips ``Im B̃`` to ``±2`` by default). ``log Δ`` uniform in ``[log dt_min, log dt_max]``,
    ``C`` complex standard normal, ``D ~ N(0, 1)``. ``Λ, P, B, C, Δ`` are learned per channel, ``P`` tied on
    both sides of the rank-one term as in S4, and ``Re Λ < 0`` keeps ``A``'s Hermitian part negative
    definite, so ``|eig(Ā)| < 1``. The output is the standalone module's GELU, linear layer to ``2 d_model`` and
    GLU, as S4D (dropout left out).

    Modes: ``"conv"`` (what ``"auto"`` uses: S4's kernel, applied with ``rfft``/``irfft`` zero-padded to
    ``2T``; the final state and an initial state's contribution ``Re(C Ā^{t+1} h0)`` come from the same
    generating functions, :func:`~rnnzoo.ops.s4_kernel.dplr_ssm_convolution`) and ``"recurrent"`` (the loop
    with the dense ``Ā``). There is no scan: ``Ā`` is dense, so a scan would carry ``d_state × d_state``
    transitions.

    State: ``DiagonalState(h)``, ``h`` complex ``(batch, d_model, d_state // 2)``, the first half of the
    conjugate-symmetric state in the basis where ``A = Λ - P P^*``. :meth:`transition_eigenvalues`: the
    ``d_state`` eigenvalues of ``Ā`` per channel, ``(batch, T, d_model, d_state)``, in conjugate pairs. (HiPPO-LegS's
    eigenvectors are nearly parallel, so its eigenvalues are ill-conditioned in ``Λ, P``: at ``d_state = 64``,
    rounding the parameters to float32 moves those of ``Ā`` by up to about 0.5, still inside the unit disc.)
    """

    engine = DPLRSSMEngine()

    def __init__(
        self, d_model: int, d_state: int = 64, dt_min: float = 0.001, dt_max: float = 0.1, mode: str = "auto"
    ) -> None:
        super().__init__(d_model, d_state, dt_min, dt_max, mode)
        Lambda, P, B, _ = nplr_legs(d_state)
        per_channel = lambda t: t.to(torch.float32).repeat(d_model, 1)
        self.log_A_real = nn.Parameter(per_channel(torch.log(-Lambda.real)))
        self.A_imag = nn.Parameter(per_channel(Lambda.imag))
        self.P_re, self.P_im = nn.Parameter(per_channel(P.real)), nn.Parameter(per_channel(P.imag))
        self.B_re, self.B_im = nn.Parameter(per_channel(B.real)), nn.Parameter(per_channel(B.imag))

    def ssm(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(Λ, P, B, C, Δ)``: complex ``(d_model, d_state // 2)`` each and ``Δ`` ``(d_model,)``, in at least
        float32."""
        real = self.real_dtype()
        pair = lambda re, im: torch.complex(re.to(real), im.to(real))
        Lambda = pair(-torch.exp(self.log_A_real), self.A_imag)
        dt = torch.exp(self.log_dt.to(real))
        return Lambda, pair(self.P_re, self.P_im), pair(self.B_re, self.B_im), self.readout(), dt

    def engine_inputs(self, x: Tensor, state: DiagonalState | None = None) -> tuple[DPLRSSMInputs, None]:
        """The SSM of every channel on ``u = x`` in the state dtype; the engine's output is ``z``."""
        u = x.to(state_dtype(x.dtype))
        return DPLRSSMInputs(u, *self.ssm(), self.D.to(u.dtype)), None
