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
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ..ops import linear_scan_operator
from ..registry import register
from .base import DiagonalState, SequenceLayer, channel_groups, diagonal_recurrence, state_dtype

__all__ = ["S4D"]


@register(
    "s4d",
    family="state-space model",
    engine="linear_scan",
    paper="Gu et al. 2022, On the Parameterization and Initialization of Diagonal State Space Models",
    negative_eigenvalues=False,
)
class S4D(SequenceLayer):
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
    faster: on 2 CPU threads (float32, batch 8, T=1024, d_model=64, d_state=64)
    about 55 ms vs 140 ms forward and 100 ms vs 750 ms forward plus backward;
    the scan materialises ``(batch, T, d_model, d_state/2)`` complex states.

    State: ``DiagonalState(h)`` with ``h`` complex, ``(batch, d_model, d_state // 2)``.
    """

    parallel_modes = ("conv", "scan")

    def __init__(
        self, d_model: int, d_state: int = 64, dt_min: float = 0.001, dt_max: float = 0.1, mode: str = "auto"
    ) -> None:
        super().__init__(d_model, mode)
        if check_int("S4D", "d_state", d_state) % 2:
            raise ValueError(f"S4D: `d_state` must be a positive even int (d_state/2 complex modes), got {d_state!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"S4D: need 0 < `dt_min` <= `dt_max`, got dt_min={dt_min}, dt_max={dt_max}")
        self.d_state, self.dt_min, self.dt_max = d_state, dt_min, dt_max
        n_modes = d_state // 2
        log_dt = torch.rand(d_model) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        self.log_A_real = nn.Parameter(torch.full((d_model, n_modes), math.log(0.5)))
        self.A_imag = nn.Parameter(math.pi * torch.arange(n_modes, dtype=torch.float32).repeat(d_model, 1))
        self.C_re = nn.Parameter(torch.randn(d_model, n_modes) / math.sqrt(2))
        self.C_im = nn.Parameter(torch.randn(d_model, n_modes) / math.sqrt(2))
        self.D = nn.Parameter(torch.randn(d_model))
        self.out_proj = nn.Linear(d_model, 2 * d_model)

    def init_state(self, batch_size: int, device=None, dtype=None) -> DiagonalState:
        kw = self._state_kwargs(device, dtype)
        dtype = state_dtype(kw["dtype"], complex_state=True)
        return DiagonalState(torch.zeros(batch_size, self.d_model, self.d_state // 2, device=kw["device"], dtype=dtype))

    def discretize(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(ΔA, Ā, B̄, C)``, each complex ``(d_model, d_state // 2)``, in at least float32."""
        real = state_dtype(self.log_dt.dtype)
        A = torch.complex(-torch.exp(self.log_A_real.to(real)), self.A_imag.to(real))
        dtA = torch.exp(self.log_dt.to(real))[:, None] * A
        A_bar = torch.exp(dtA)
        return dtA, A_bar, (A_bar - 1) / A, torch.complex(self.C_re.to(real), self.C_im.to(real))

    def _ssm(self, u: Tensor, h0: Tensor | None, mode: str) -> tuple[Tensor, Tensor]:
        """``(z, h_last)``, ``z_t = 2·Re(Σ_n C_n h_{t,n}) + D ⊙ u_t``, from ``u`` (``x`` in the state dtype)."""
        if mode == "conv":
            z, h_last = self._conv(u, h0)
        else:
            _, A_bar, B_bar, C = self.discretize()
            h, h_last = diagonal_recurrence(A_bar, B_bar * u[..., None], h0, mode)  # h: (B, T, H, N/2)
            z = 2 * torch.einsum("bthn,hn->bth", h, C).real
        return z + self.D.to(u.dtype) * u, h_last

    def _forward(self, x: Tensor, state: DiagonalState | None, mode: str) -> tuple[Tensor, DiagonalState]:
        z, h_last = self._ssm(x.to(state_dtype(x.dtype)), None if state is None else state.h, mode)
        return F.glu(self.out_proj(F.gelu(z.to(x.dtype))), dim=-1), DiagonalState(h_last)

    def _materialize(self, x: Tensor) -> Tensor:
        """``M[b, c, t, s] = 2·Re(Σ_n C_{c,n} Ā_{c,n}^{t-s} B̄_{c,n}) + D_c δ_ts`` (the convolution kernel as a
        Toeplitz matrix), real, one group per channel ``(batch, d_model, T, T)``; the same for every input."""
        _, A_bar, B_bar, C = self.discretize()
        L = linear_scan_operator(A_bar, (1, x.shape[1], *A_bar.shape))  # (1, T, T, H, N/2)
        M = 2 * torch.einsum("btshn,hn->bhts", L, C * B_bar).real
        M = M + torch.diag_embed(self.D.to(M.dtype).unsqueeze(-1).expand(-1, x.shape[1]))
        return M.expand(x.shape[0], -1, -1, -1)

    def _transition_eigenvalues(self, x: Tensor) -> Tensor:
        """``Ā = exp(ΔA)`` (complex, ``|Ā| < 1``; conjugates implied) at every token,
        ``(batch, T, d_model, d_state // 2)``."""
        return self.discretize()[1].expand(*x.shape[:2], -1, -1)

    def _mixer_io(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``V = x_t``, ``Y = z_t`` (the SSM output with the skip term, before the GELU), ``(batch, d_model, T, 1)``."""
        u = x.to(state_dtype(x.dtype))
        return channel_groups(u, self._ssm(u, None, "conv")[0])

    def _conv(self, u: Tensor, h0: Tensor | None) -> tuple[Tensor, Tensor]:
        """Convolution form: the SSM outputs ``(B, T, H)`` and the final state, from ``u`` ``(B, T, H)``."""
        dtA, _, B_bar, C = self.discretize()
        T = u.shape[1]
        powers = torch.exp(dtA[..., None] * torch.arange(T + 1, device=u.device, dtype=u.dtype))  # Ā^k, (H, N/2, T+1)
        kernel = 2 * torch.einsum("hn,hnk->hk", C * B_bar, powers[..., :T]).real  # (H, T)
        u_t = u.transpose(1, 2)  # (B, H, T)
        z = torch.fft.irfft(torch.fft.rfft(u_t, n=2 * T) * torch.fft.rfft(kernel, n=2 * T), n=2 * T)[..., :T]
        # final state: Σ_k Ā^{T-1-k} B̄ x_k, a Vandermonde matmul over time per channel
        h_last = B_bar * torch.einsum("bhk,hnk->bhn", u_t.to(powers.dtype), powers[..., :T].flip(-1))
        if h0 is not None:
            h0 = h0.to(powers.dtype)
            z = z + 2 * torch.einsum("bhn,hnk->bhk", h0 * C, powers[..., 1:]).real
            h_last = h_last + powers[..., T] * h0
        return z.transpose(1, 2), h_last

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_state={self.d_state}, dt_min={self.dt_min}, dt_max={self.dt_max}"
