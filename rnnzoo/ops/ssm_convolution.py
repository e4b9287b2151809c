"""A time-invariant diagonal SSM as a long causal convolution (S4D's parallel form).

Per channel ``c`` and complex mode ``n`` (conjugate modes implied)::

    h_t = Ā ⊙ h_{t-1} + B̄ u_t,      z_t = 2·Re(Σ_n C_n h_{t,n})

has the impulse response ``K_k = 2·Re(Σ_n C_n B̄_n Ā_n^k)``, so ``z = K * u``. The
kernel comes from a Vandermonde product (``Ā^k = exp(k ΔA)``), the convolution
from ``rfft``/``irfft`` zero-padded to ``2T``. An initial state adds
``2·Re(Σ_n C_n Ā_n^{t+1} h0_n)``; the final state is ``Ā^T h0 + Σ_k Ā^{T-1-k} B̄ u_k``.
Gu, Goel, Ré (2022), "Efficiently Modeling Long Sequences with Structured State
Spaces"; Gu, Gupta, Goel, Ré (2022), "On the Parameterization and Initialization
of Diagonal State Space Models".
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["diagonal_ssm_convolution", "diagonal_ssm_kernel"]


def _powers(dtA: Tensor, count: int) -> Tensor:
    """``Ā^k = exp(k ΔA)`` for ``k = 0 .. count-1``: ``(channels, modes, count)``."""
    return torch.exp(dtA[..., None] * torch.arange(count, device=dtA.device, dtype=dtA.real.dtype))


def _kernel(B_bar: Tensor, C: Tensor, powers: Tensor) -> Tensor:
    """``K_k = 2·Re(Σ_n C_n B̄_n Ā_n^k)`` ``(channels, k)`` from the powers ``(channels, modes, k)``."""
    return 2 * torch.einsum("hn,hnk->hk", C * B_bar, powers).real


def diagonal_ssm_kernel(dtA: Tensor, B_bar: Tensor, C: Tensor, length: int) -> Tensor:
    """``K`` ``(channels, length)``, real: ``K_k = 2·Re(Σ_n C_n B̄_n exp(k ΔA_n))``; ``dtA, B_bar, C``
    complex ``(channels, modes)``."""
    return _kernel(B_bar, C, _powers(dtA, length))


def diagonal_ssm_convolution(
    u: Tensor, dtA: Tensor, B_bar: Tensor, C: Tensor, h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(z, h_last)``: the outputs ``(batch, T, channels)`` and the final state ``(batch, channels, modes)``
    (complex) for real inputs ``u`` ``(batch, T, channels)``; ``dtA, B_bar, C`` complex ``(channels, modes)``."""
    T = u.shape[1]
    powers = _powers(dtA, T + 1)  # Ā^k, (H, N, T+1)
    kernel = _kernel(B_bar, C, powers[..., :T])  # (H, T)
    u_t = u.transpose(1, 2)  # (B, H, T)
    z = torch.fft.irfft(torch.fft.rfft(u_t, n=2 * T) * torch.fft.rfft(kernel, n=2 * T), n=2 * T)[..., :T]
    # final state: Σ_k Ā^{T-1-k} B̄ u_k, a Vandermonde matmul over time per channel
    h_last = B_bar * torch.einsum("bhk,hnk->bhn", u_t.to(powers.dtype), powers[..., :T].flip(-1))
    if h0 is not None:
        h0 = h0.to(powers.dtype)
        z = z + 2 * torch.einsum("bhn,hnk->bhk", h0 * C, powers[..., 1:]).real
        h_last = h_last + powers[..., T] * h0
    return z.transpose(1, 2), h_last
