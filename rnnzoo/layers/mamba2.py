"""Mamba-2: the SSD (state space duality) block.

Dao and Gu (2024), "Transformers are SSMs: Generalized Models and Efficient
Algorithms Through Structured State Space Duality". The SSM's transition is a
scalar per head, ``A_t = exp(Δ_t A_h) I``, so the layer is gated linear
attention (engine 3) with a scalar decay: ``q = C``, ``k = B``, ``v = Δ x``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ..registry import register
from .base import EngineLayer, RecurrentState, state_dtype
from .common import dt_bias_init, widen_log_decay
from .conv import CausalConv1d
from .engines import MatrixEngine, MatrixInputs

__all__ = ["Mamba2", "Mamba2State"]

DEFAULT_HEADDIM = 64


@dataclass
class Mamba2State(RecurrentState):
    """``conv``: the last ``d_conv - 1`` conv inputs ``(batch, d_inner + 2 ngroups d_state, d_conv - 1)``;
    ``ssm``: the SSM state ``S`` ``(batch, num_heads, d_state, headdim)``."""

    engine_fields = ("ssm",)
    conv: Tensor
    ssm: Tensor


@register(
    "mamba2",
    family="state-space model",
    paper="Dao & Gu 2024, Transformers are SSMs: Generalized Models and Efficient Algorithms Through "
    "Structured State Space Duality",
    negative_eigenvalues=True,
)
class Mamba2(EngineLayer):
    """The Mamba-2 block, as in the reference ``mamba2_simple.py``::

        z, xBC, dt = in_proj(input)                      # [z, x, B, C, dt]
        x, B, C = SiLU(CausalConv1d(xBC))                # depthwise, width d_conv
        Δ_t = softplus(dt_t + dt_bias),  A = -exp(A_log)  # one Δ and one A per head
        S_t = exp(Δ_t A) S_{t-1} + B_t (Δ_t x_t)^T       # per head: (d_state, headdim)
        y_t = S_t^T C_t + D ⊙ x_t
        out = out_proj(RMSNorm(y ⊙ SiLU(z)))             # gated norm, norm after the gate

    ``B_t, C_t`` (``d_state`` each) are shared by the heads of a group
    (``ngroups`` groups, consecutive heads per group). The decay stays in log
    space, ``log α_t = Δ_t A_h``. Initialisation follows the reference: ``A``
    uniform in ``A_init_range``, ``D = 1``, ``dt_bias`` the inverse softplus of
    Δ drawn log-uniformly in ``[dt_min, dt_max]`` (floored at 1e-4), default
    ``nn.Linear``/conv inits. Defaults are ``Mamba2Simple``'s (``d_state=64``,
    ``expand=2``, ``d_conv=4``, ``ngroups=1``, norm over all of ``d_inner``)
    except ``headdim``: 64, as in ``mamba2.py``, capped at ``d_inner`` so narrow
    layers have one head; or give ``num_heads`` instead.

    With ``negative_eigenvalues=True`` the decay ``α_t ∈ (0, 1)`` becomes
    ``2 α_t - 1 ∈ (-1, 1)`` (Grazzi et al. 2024). For half-precision parameters
    the gates, the recurrence and the state run in float32; ``y`` comes back in
    the input dtype.

    State: :class:`Mamba2State`. Operator (:meth:`materialize`): one group per
    head, mixing ``v = Δ x`` (the paper's SSD matrix is ``M diag(Δ)``, acting on ``x``).
    """

    engine = MatrixEngine()

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        d_conv: int = 4,
        expand: float = 2,
        headdim: int | None = None,
        num_heads: int | None = None,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        negative_eigenvalues: bool = False,
        norm_eps: float = 1e-5,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        check_int("Mamba2", "d_state", d_state)
        check_int("Mamba2", "d_conv", d_conv)
        check_int("Mamba2", "ngroups", ngroups)
        if not expand > 0:
            raise ValueError(f"Mamba2: `expand` must be > 0, got {expand!r}")
        d_inner = max(1, round(expand * d_model))
        if headdim is not None and num_heads is not None:
            raise ValueError("Mamba2: give `headdim` or `num_heads`, not both")
        if num_heads is not None:
            check_int("Mamba2", "num_heads", num_heads)
            if d_inner % num_heads:
                raise ValueError(f"Mamba2: `num_heads`={num_heads} must divide d_inner={d_inner} (expand * d_model)")
            headdim = d_inner // num_heads
        elif headdim is None:
            headdim = min(DEFAULT_HEADDIM, d_inner)
        check_int("Mamba2", "headdim", headdim)
        if d_inner % headdim:
            raise ValueError(f"Mamba2: `headdim`={headdim} must divide d_inner={d_inner} (expand * d_model)")
        if (d_inner // headdim) % ngroups:
            raise ValueError(f"Mamba2: `ngroups`={ngroups} must divide the number of heads {d_inner // headdim}")
        if not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"Mamba2: need 0 < low <= high in `A_init_range`, got {A_init_range!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"Mamba2: need 0 < `dt_min` <= `dt_max`, got dt_min={dt_min!r}, dt_max={dt_max!r}")
        self.d_state, self.d_conv, self.d_inner, self.headdim = d_state, d_conv, d_inner, headdim
        self.num_heads, self.ngroups = d_inner // headdim, ngroups
        self.negative_eigenvalues = negative_eigenvalues

        conv_dim = d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, d_inner + conv_dim + self.num_heads, bias=False)
        self.conv = CausalConv1d(conv_dim, d_conv, bias=True)
        self.dt_bias = nn.Parameter(dt_bias_init(self.num_heads, dt_min, dt_max))  # softplus(dt_bias) = Δ
        self.A_log = nn.Parameter(torch.empty(self.num_heads).uniform_(*A_init_range).log())
        self.D = nn.Parameter(torch.ones(self.num_heads))
        self.norm = nn.RMSNorm(d_inner, eps=norm_eps)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def init_state(self, batch_size: int, device=None, dtype=None) -> Mamba2State:
        kw = self._state_kwargs(device, dtype)
        shape = (batch_size, self.num_heads, self.d_state, self.headdim)
        ssm = torch.zeros(shape, device=kw["device"], dtype=state_dtype(kw["dtype"]))
        return Mamba2State(self.conv.init_state(batch_size, **kw), ssm)

    def engine_inputs(self, x: Tensor, state: Mamba2State | None = None) -> tuple[MatrixInputs, tuple]:
        """SSD as engine 3, in the state dtype: ``q = C``, ``k = B`` ``(B, H, T, d_state)``, ``v = Δ x``
        ``(B, H, T, headdim)``, ``log α = Δ A`` ``(B, H, T)`` (widened, with its sign, for negative eigenvalues).
        Carries ``x`` per head (for the ``D`` skip), the gate branch ``z`` and the new conv state."""
        dtype = state_dtype(x.dtype)
        z, xBC, dt = self.in_proj(x).split([self.d_inner, self.conv.channels, self.num_heads], dim=-1)
        xBC, conv_state = self.conv(xBC, None if state is None else state.conv)
        n = self.ngroups * self.d_state
        u, B, C = F.silu(xBC).to(dtype).split([self.d_inner, n, n], dim=-1)
        dt = F.softplus(dt.to(dtype) + self.dt_bias.to(dtype)).transpose(1, 2)  # (B, H, T)
        log_alpha = dt * -torch.exp(self.A_log.to(dtype))[:, None]
        u = u.unflatten(-1, (self.num_heads, self.headdim)).transpose(1, 2)
        groups = lambda t: t.unflatten(-1, (self.ngroups, self.d_state)).transpose(1, 2)
        q, k = (groups(t).repeat_interleave(self.num_heads // self.ngroups, 1) for t in (C, B))  # consecutive heads
        sign = None
        if self.negative_eigenvalues:
            log_alpha, sign = widen_log_decay(log_alpha)
        return MatrixInputs(q, k, dt[..., None] * u, log_alpha, sign), (u, z, conv_state)

    def read_output(self, x: Tensor, o: Tensor, S: Tensor, carry: tuple) -> tuple[Tensor, Mamba2State]:
        u, z, conv = carry
        y = (o + self.D[:, None, None] * u).transpose(1, 2).flatten(2).to(x.dtype)
        return self.out_proj(self.norm(y * F.silu(z))), Mamba2State(conv, S)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
            f"num_heads={self.num_heads}, headdim={self.headdim}, ngroups={self.ngroups}, "
            f"negative_eigenvalues={self.negative_eigenvalues}"
        )
