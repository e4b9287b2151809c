"""Mamba: the selective state-space (S6) block.

Gu and Dao (2023), "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces". A diagonal SSM whose step size Δ_t and projections B_t, C_t depend on
the input; once discretised it is a diagonal linear recurrence (engine 2) over
a ``(d_inner, d_state)`` state per token, trained with the selective scan
(:func:`~rnnzoo.ops.selective_scan`), which discretises inside its chunks so that
no ``(batch, T, d_inner, d_state)`` tensor is ever built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ..registry import register
from .base import EngineLayer, RecurrentState, state_dtype
from .common import dt_bias_init
from .conv import CausalConv1d
from .engines import SelectiveEngine, SelectiveInputs

__all__ = ["Mamba", "MambaState"]


@dataclass
class MambaState(RecurrentState):
    """``conv``: the last ``d_conv - 1`` conv inputs ``(batch, d_inner, d_conv - 1)``;
    ``ssm``: the SSM state ``h`` ``(batch, d_inner, d_state)``."""

    engine_fields = ("ssm",)
    conv: Tensor
    ssm: Tensor


@register(
    "mamba",
    family="state-space model",
    paper="Gu & Dao 2023, Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
    negative_eigenvalues=True,
)
class Mamba(EngineLayer):
    """The Mamba block, as in the reference ``mamba_simple.py``::

        x, z = in_proj(input)                              # d_model -> 2 d_inner
        u    = SiLU(CausalConv1d(x))                       # depthwise, width d_conv
        Δ_t  = softplus(dt_proj(W_Δ u_t)),  B_t = W_B u_t,  C_t = W_C u_t   (x_proj = [W_Δ; W_B; W_C])
        h_t  = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t          # per channel, A = -exp(A_log)
        y_t  = C_t · h_t + D ⊙ u_t
        out  = out_proj(y ⊙ SiLU(z))                       # d_inner -> d_model

    ``A`` is discretised by zero-order hold, ``B`` by Euler, as in the paper.
    Initialisation follows the reference: ``A_log = log(1..d_state)`` per channel
    (S4D-real), ``D = 1``, ``dt_proj`` weight uniform in ``±dt_scale / sqrt(dt_rank)``
    and bias the inverse softplus of Δ drawn log-uniformly in ``[dt_min, dt_max]``
    (floored at 1e-4). ``dt_rank="auto"`` is ``ceil(d_model / 16)``;
    ``d_inner = round(expand * d_model)``.

    With ``negative_eigenvalues=True`` the transition ``exp(Δ_t A) ∈ (0, 1)``
    becomes ``2 exp(Δ_t A) - 1 ∈ (-1, 1)`` (Grazzi et al. 2024); the input term
    is unchanged. For half-precision parameters the discretisation, the scan and
    the state run in float32 (as the reference kernel does).

    State: :class:`MambaState` (``conv`` ``(batch, d_inner, d_conv - 1)``,
    ``ssm`` ``(batch, d_inner, d_state)``).
    """

    engine = SelectiveEngine()

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_scale: float = 1.0,
        negative_eigenvalues: bool = False,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        check_int("Mamba", "d_state", d_state)
        check_int("Mamba", "d_conv", d_conv)
        if not expand > 0:
            raise ValueError(f"Mamba: `expand` must be > 0, got {expand!r}")
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        elif isinstance(dt_rank, str):
            raise ValueError(f"Mamba: `dt_rank` must be 'auto' or a positive int, got {dt_rank!r}")
        else:
            check_int("Mamba", "dt_rank", dt_rank)
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"Mamba: need 0 < `dt_min` <= `dt_max`, got dt_min={dt_min!r}, dt_max={dt_max!r}")
        if not dt_scale > 0:
            raise ValueError(f"Mamba: `dt_scale` must be > 0, got {dt_scale!r}")
        self.d_state, self.d_conv, self.dt_rank = d_state, d_conv, dt_rank
        self.d_inner = max(1, round(expand * d_model))
        self.negative_eigenvalues = negative_eigenvalues

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv = CausalConv1d(self.d_inner, d_conv, bias=True)
        self.x_proj = nn.Linear(self.d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1.0, d_state + 1)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

        with torch.no_grad():
            bound = dt_scale * dt_rank**-0.5
            self.dt_proj.weight.uniform_(-bound, bound)
            self.dt_proj.bias.copy_(dt_bias_init(self.d_inner, dt_min, dt_max))  # softplus(bias) = Δ

    def init_state(self, batch_size: int, device=None, dtype=None) -> MambaState:
        kw = self._state_kwargs(device, dtype)
        ssm = torch.zeros(batch_size, self.d_inner, self.d_state, device=kw["device"], dtype=state_dtype(kw["dtype"]))
        return MambaState(self.conv.init_state(batch_size, **kw), ssm)

    def engine_inputs(self, x: Tensor, state: MambaState | None = None) -> tuple[SelectiveInputs, tuple[Tensor, Tensor]]:
        """The selective SSM over ``u = SiLU(CausalConv1d(x))`` (:meth:`_selection`), in the state dtype; carries the
        gate branch ``z`` and the new conv state."""
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u, conv = self.conv(u, None if state is None else state.conv)
        u = F.silu(u)
        dt, A, B, C = self._selection(u)
        D = self.D.to(dt.dtype)
        return SelectiveInputs(u.to(dt.dtype), dt, A, B, C, D, self.negative_eigenvalues), (z, conv)

    def _selection(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(Δ, A, B, C)`` from the conv output ``u`` ``(B, T, d_inner)``, in the state dtype: the step sizes
        ``Δ_t = softplus(dt_proj(W_Δ u_t))`` ``(B, T, d_inner)``, ``A = -exp(A_log)`` ``(d_inner, d_state)`` and
        the projections ``B_t``, ``C_t`` ``(B, T, d_state)``."""
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dtype = state_dtype(u.dtype)
        dt = F.softplus(self.dt_proj(dt).to(dtype))
        return dt, -torch.exp(self.A_log.to(dtype)), B.to(dtype), C.to(dtype)

    def read_output(self, x: Tensor, y: Tensor, h_last: Tensor, carry: tuple[Tensor, Tensor]) -> tuple[Tensor, MambaState]:
        z, conv = carry
        return self.out_proj(y.to(x.dtype) * F.silu(z)), MambaState(conv, h_last)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
            f"dt_rank={self.dt_rank}, negative_eigenvalues={self.negative_eigenvalues}"
        )
