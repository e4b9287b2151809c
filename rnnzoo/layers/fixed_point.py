"""Fixed-point RNN: a dense linear RNN reached by iterating a diagonal one with a channel mixer.

Movahedi, Sarnthein, Muça Cirone, Orvieto (2025), "Fixed-Point RNNs: Interpolating from Diagonal to Dense".
Diagonal transitions are fast to scan but cannot track non-commutative state (A5, S5); dense ones can but
cost O(d³) per token. The dense ``h_t = (I - Q_t)^{-1}(Λ_t h_{t-1} + b_t)`` is the fixed point of diagonal
scans, and the number of iterations is the knob between the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import register
from .base import DiagonalState, EngineLayer, state_dtype
from .engines import FixedPointEngine, FixedPointInputs

__all__ = ["FixedPointRNN"]


@register(
    "fixed_point_rnn",
    family="fixed-point RNN",
    paper="Movahedi et al. 2025, Fixed-Point RNNs: Interpolating from Diagonal to Dense",
    negative_eigenvalues=True,
    tier=2,
)
class FixedPointRNN(EngineLayer):
    """Fixed-point RNN token mixer, ``d_hidden = expand · d_model`` channels in ``num_heads`` heads:

    ``h^{(ℓ)}_t = Λ_t ⊙ h^{(ℓ)}_{t-1} + Q_t h^{(ℓ-1)}_t + B x_t`` for ``ℓ = 1..L`` (``L = num_iterations``,
    ``h^{(0)} = 0``), ``y_t = W_o (h^{(L)}_t ⊙ SiLU(W_z x_t))``, with per head

    * the mixer ``Q_t = ρ_t (I - 2 u_t u_t^T)``, ``ρ_t = ρ_max σ(w_ρ · x_t)``, ``u_t = W_u x_t / ‖W_u x_t‖``;
    * the diagonal ``Λ_t = (1 - ρ_t) λ_t``, ``λ_t = σ(W_λ x_t)`` (``2σ(W_λ x_t) - 1`` with
      ``negative_eigenvalues=True``), so that the dense fixed point ``A_t = (I - Q_t)^{-1} Λ_t`` has norm at
      most 1: ``(1 - ρ)(I - Q)^{-1}`` has eigenvalues 1 and ``(1 - ρ)/(1 + ρ)``.

    ``L = 1`` is a diagonal linear RNN; larger ``L`` approaches the dense RNN ``h_t = A_t h_{t-1} +
    (I - Q_t)^{-1} B x_t`` (the paper iterates until convergence; here ``L`` is fixed, so every form
    computes the same ``L``-th iterate). ``transition_eigenvalues`` are ``Λ_t``, those of the stacked
    iterates' transition (block lower-triangular with ``Λ_t`` on its diagonal).

    State: :class:`~rnnzoo.layers.base.DiagonalState`, ``h`` ``(batch, L, num_heads, d_head)``: every
    iterate's last value.
    """

    engine = FixedPointEngine()

    def __init__(
        self,
        d_model: int,
        expand: float = 1.0,
        num_heads: int = 2,
        num_iterations: int = 4,
        rho_max: float = 0.9,
        negative_eigenvalues: bool = False,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        if not expand > 0:
            raise ValueError(f"FixedPointRNN: `expand` must be > 0, got {expand}")
        d_hidden = max(1, round(expand * d_model))
        if not isinstance(num_heads, int) or num_heads < 1 or d_hidden % num_heads:
            raise ValueError(f"FixedPointRNN: `num_heads` must be an int >= 1 dividing d_hidden = {d_hidden}, got {num_heads!r}")
        if not isinstance(num_iterations, int) or num_iterations < 1:
            raise ValueError(f"FixedPointRNN: `num_iterations` must be an int >= 1, got {num_iterations!r}")
        if not 0 <= rho_max < 1:
            raise ValueError(f"FixedPointRNN: `rho_max` must be in [0, 1) (a contracting mixer), got {rho_max}")
        self.d_hidden, self.num_heads, self.head_dim = d_hidden, num_heads, d_hidden // num_heads
        self.num_iterations, self.rho_max, self.negative_eigenvalues = num_iterations, rho_max, negative_eigenvalues
        # λ logits, B x, u, z (gate): d_hidden each; ρ logits: one per head
        self.in_proj = nn.Linear(d_model, 4 * d_hidden + num_heads)
        self.out_proj = nn.Linear(d_hidden, d_model, bias=False)

    def init_state(self, batch_size: int, device=None, dtype=None) -> DiagonalState:
        kw = self._state_kwargs(device, dtype)
        shape = (batch_size, self.num_iterations, self.num_heads, self.head_dim)
        return DiagonalState(torch.zeros(shape, device=kw["device"], dtype=state_dtype(kw["dtype"])))

    def engine_inputs(self, x: Tensor, state: DiagonalState | None = None) -> tuple[FixedPointInputs, Tensor]:
        d, heads = self.d_hidden, self.num_heads
        lam, b, u, z, rho = self.in_proj(x).to(state_dtype(x.dtype)).split([d, d, d, d, heads], -1)
        lam = torch.sigmoid(lam)
        if self.negative_eigenvalues:
            lam = 2 * lam - 1
        rho = self.rho_max * torch.sigmoid(rho)
        split = lambda t: t.unflatten(-1, (heads, self.head_dim))  # noqa: E731
        lam = split(lam) * (1 - rho)[..., None]
        u = F.normalize(split(u), dim=-1)
        return FixedPointInputs(lam, split(b), rho, u, self.num_iterations), z

    def read_output(self, x: Tensor, h: Tensor, h_last: Tensor, z: Tensor) -> tuple[Tensor, DiagonalState]:
        return self.out_proj((h.flatten(-2) * F.silu(z)).to(x.dtype)), DiagonalState(h_last)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_hidden={self.d_hidden}, num_heads={self.num_heads}, "
            f"num_iterations={self.num_iterations}, rho_max={self.rho_max}, negative_eigenvalues={self.negative_eigenvalues}"
        )
