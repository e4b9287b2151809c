"""S4: a time-invariant SSM with a diagonal-plus-low-rank state matrix, as a recurrence and as a convolution.

Gu, Goel, Ré (2022), "Efficiently Modeling Long Sequences with Structured State Spaces" (S4); Gu, Johnson,
Goel, Saab, Dao, Rudra, Ré (2021), "Combining Recurrent, Convolutional, and Continuous-time Models with
Linear State-Space Layers" (LSSL). Per channel, with ``N`` states::

    x'(t) = A x(t) + B u(t),   y(t) = Re(C x(t)),   A = Λ - P P^*   (Λ diagonal, complex; P a column)

HiPPO-LegS (:func:`hippo_legs`) is unitarily equivalent to such an ``A`` (:func:`nplr_legs`). The real system's
``Λ, P, B, C`` come in conjugate pairs: the functions here take the first half of each pair, ``(channels, N/2)``,
and the full vectors are ``[v, conj(v)]``. Bilinear discretisation with step ``Δ``::

    Ā = (I - Δ/2 A)^{-1} (I + Δ/2 A),   B̄ = (I - Δ/2 A)^{-1} Δ B,   h_t = Ā h_{t-1} + B̄ u_t,   z_t = Re(C h_t)

``(I - Δ/2 A)^{-1}`` is a diagonal-plus-rank-one matrix (Woodbury), so ``Ā = 2 (I - Δ/2 A)^{-1} - I`` costs
``O(N²)`` per channel (:func:`dplr_bilinear`). The state is conjugate-symmetric, ``[h, conj(h)]``: only ``h``
``(batch, channels, N/2)`` is kept, and ``z_t = 2·Re(Σ_n C_n h_{t,n})``.

The convolution form (:func:`dplr_ssm_convolution`, S4's Algorithm 1) evaluates the truncated generating
function ``K̂(z) = Σ_{k<L} C Ā^k B̄ z^k`` of the kernel at the ``L``-th roots of unity ``z^L = 1``, where
``Σ_{k<L} C Ā^k x z^k = C̃ (I - zĀ)^{-1} x`` with ``C̃ = C (I - Ā^L)``. With the bilinear ``Ā``,

    (I - zĀ)^{-1} B̄ = M(z)^{-1} Δ B,   (I - zĀ)^{-1} Ā = M(z)^{-1} (I + Δ/2 A),
    M(z) = (1 - z) I - (1 + z) Δ/2 A = D(z) + (1 + z) Δ/2 P P^*,

``D(z)`` diagonal: a Cauchy matrix ``D(z)^{-1}`` and one Woodbury correction per frequency. (S4 divides by
``1 + z`` instead, singular at ``z = -1``; ``M`` is not.) An inverse FFT turns ``K̂`` into the kernel. S4
learns ``C̃`` itself for a fixed length; here ``C`` is learned and ``Ā^L`` (``O(log L)`` products of dense
matrices per channel) computed for each call's length.

Precision: what depends on the parameters alone (``Ā, B̄``, ``Ā^L``, the resolvent and the kernel, no batch
dimension) is computed in float64 and returned in the inputs' dtype. HiPPO-LegS is far from normal (its
eigenvectors are nearly parallel): computed in float32, the Woodbury solves and the powers of ``Ā`` put the
float32 convolution ``1e-5`` (relative) from a float64 loop on tests/test_layers.py's reset test, twice the
float32 loop's error; computed in float64, both float32 forms stay within ``2e-6``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "dplr_bilinear", "dplr_ssm_convolution", "dplr_ssm_kernel", "dplr_ssm_reference", "hippo_legs", "nplr_legs",
]  # fmt: skip


# -- HiPPO-LegS and its normal-plus-low-rank form ----------------------------------------------


def hippo_legs(N: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """HiPPO-LegS (Gu et al. 2020, "HiPPO: Recurrent Memory with Optimal Polynomial Projections"):
    ``A_nk = -sqrt(2n+1) sqrt(2k+1)`` for ``n > k``, ``-(n+1)`` for ``n = k``, ``0`` for ``n < k``;
    ``B_n = sqrt(2n+1)``. Returns ``(A, B)``, ``(N, N)`` and ``(N,)``."""
    r = torch.sqrt(2 * torch.arange(N, dtype=dtype) + 1)
    A = -torch.tril(r[:, None] * r[None, :], -1) - torch.diag(torch.arange(1, N + 1, dtype=dtype))
    return A, r


def nplr_legs(N: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """HiPPO-LegS in normal-plus-low-rank form, in float64 (S4, Theorem 1): ``A = V (Λ - P P^*) V^*``,
    ``B = V B̃`` with ``V`` unitary, from the first half of each conjugate pair of modes.

    ``A + p p^T`` with ``p_n = sqrt(n + 1/2)`` is ``-I/2`` plus a skew-symmetric ``S``, diagonalised by the
    Hermitian ``-iS`` (``eigh``). Its eigenvalues pair as ``-1/2 ± iω``; as S4 does, the half with ``ω < 0`` is
    kept. Returns ``(Λ, P, B̃, V)``: ``(N/2,)`` each, complex, and ``V`` ``(N, N/2)``, so that the full unitary
    is ``[V, conj(V)]`` and the full vectors ``[Λ, conj(Λ)]``, ``[P, conj(P)]``, ``[B̃, conj(B̃)]``.
    """
    if N < 2 or N % 2:
        raise ValueError(f"nplr_legs: `N` must be an even int >= 2, got {N!r}")
    A, B = hippo_legs(N)
    p = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)
    skew = A + p[:, None] * p[None, :] + 0.5 * torch.eye(N, dtype=torch.float64)
    omega, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))  # ascending: the N/2 negative ω first
    V = V[:, : N // 2]
    Lambda = torch.complex(torch.full((N // 2,), -0.5, dtype=torch.float64), omega[: N // 2])
    project = V.conj().T
    return Lambda, project @ p.to(V.dtype), project @ B.to(V.dtype), V


# -- discretisation and the recurrence -----------------------------------------------------------


def _wide(t: Tensor) -> Tensor:
    """``t`` in float64 (complex128)."""
    return t.to(torch.complex128 if t.is_complex() else torch.float64)


def _pairs(x: Tensor) -> Tensor:
    """The full conjugate-symmetric vector ``[x, conj(x)]`` over the last dim."""
    return torch.cat([x, x.conj()], -1)


def _apply_A(Lambda: Tensor, P: Tensor, x: Tensor) -> Tensor:
    """``(Λ - P P^*) x`` for full vectors ``x`` ``(..., channels, N)``; ``Λ, P`` full ``(channels, N)``."""
    return Lambda * x - P * (P.conj() * x).sum(-1, keepdim=True)


def dplr_bilinear(Lambda: Tensor, P: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """The bilinear discretisation ``(Ā, B̄)`` of ``A = Λ - P P^*``, ``B`` for the full conjugate-symmetric
    state: ``Ā`` ``(channels, N, N)``, ``B̄`` ``(channels, N)``, complex; ``Λ, P, B`` complex ``(channels, N/2)``
    (first halves of the pairs), ``dt`` real ``(channels,)``.

    ``(I - Δ/2 A)^{-1} = E - Δ/2 (E P)(P^* E) / (1 + Δ/2 P^* E P)``, ``E = diag(1 / (1 - Δ/2 Λ))`` (Woodbury);
    ``Ā = 2 (I - Δ/2 A)^{-1} - I`` and ``B̄ = (I - Δ/2 A)^{-1} Δ B``. Computed in float64, returned in
    ``Λ``'s dtype.
    """
    dtype = Lambda.dtype
    A_bar, B_bar = _bilinear(*(_wide(t) for t in (Lambda, P, B, dt)))
    return A_bar.to(dtype), B_bar.to(dtype)


def _bilinear(Lambda: Tensor, P: Tensor, B: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`dplr_bilinear` in the inputs' dtype."""
    Lambda, P, B = _pairs(Lambda), _pairs(P), _pairs(B)
    half_dt = (dt / 2)[:, None]
    E = 1 / (1 - half_dt * Lambda)
    EP, PE = E * P, P.conj() * E
    scale = half_dt / (1 + half_dt * (PE * P).sum(-1, keepdim=True))  # (H, 1)
    inverse = torch.diag_embed(E) - scale[..., None] * EP[:, :, None] * PE[:, None, :]
    eye = torch.eye(Lambda.shape[-1], dtype=inverse.dtype, device=inverse.device)
    return 2 * inverse - eye, dt[:, None] * (inverse @ B[..., None]).squeeze(-1)


def dplr_ssm_reference(
    u: Tensor, A_bar: Tensor, B_bar: Tensor, C: Tensor, h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The loop ``h_t = Ā h_{t-1} + B̄ u_t``, ``z_t = 2·Re(Σ_n C_n h_{t,n})`` on the first half ``h`` of the
    conjugate-symmetric state ``[h, conj(h)]``: ``h_t = Ā_11 h_{t-1} + Ā_12 conj(h_{t-1}) + B̄_1 u_t`` with the
    blocks of the full ``Ā`` (:func:`dplr_bilinear`). ``u`` real ``(batch, T, channels)``, ``A_bar``
    ``(channels, N, N)``, ``B_bar`` ``(channels, N)``, ``C`` ``(channels, N/2)``, ``h0`` ``(batch, channels, N/2)``
    complex. Returns ``(z, h_last)``, ``(batch, T, channels)`` and ``(batch, channels, N/2)``."""
    n = C.shape[-1]
    same, crossed, B_in = A_bar[:, :n, :n], A_bar[:, :n, n:], B_bar[:, :n]
    h = u.new_zeros(u.shape[0], *C.shape, dtype=C.dtype) if h0 is None else h0.to(C.dtype)
    zs = []
    for u_t in u.unbind(1):
        # per channel, batch as the matmul's rows: a broadcast `Ā @ h` would copy Ā for every row and step
        h = torch.einsum("cnm,bcm->bcn", same, h) + torch.einsum("cnm,bcm->bcn", crossed, h.conj())
        h = h + B_in * u_t[..., None].to(C.dtype)
        zs.append(2 * (C * h).sum(-1).real)
    return torch.stack(zs, 1), h


# -- the convolution form ------------------------------------------------------------------------


def _reflect(x: Tensor) -> Tensor:
    """``x`` at frequency ``-m mod L`` over the last dim."""
    return torch.roll(x.flip(-1), 1, -1)


def _pair_sum(half: Tensor) -> Tensor:
    """A sum over the full state from its first half ``(..., L)`` over frequencies: a term's partner at
    frequency ``m`` is the conjugate of the term at ``-m`` (``Λ -> conj(Λ)``, ``z -> conj(z)``)."""
    return half + _reflect(half).conj()


class _Resolvent:
    """``M(z)^{-1}`` at ``z_m = exp(-2πi m / L)``, ``m < L``, by Woodbury: ``M = D + c P P^*`` with
    ``D_n = (1 - z) - (1 + z) Δ/2 Λ_n``, ``c = (1 + z) Δ/2``, so
    ``M^{-1} = R - c (R P)(P^* R) / (1 + c P^* R P)``, ``R = D^{-1}`` (a Cauchy matrix in ``Λ`` and ``z``).
    Never singular: ``D_n = 0`` needs ``Re Λ_n = 0``, and ``z = -1`` gives ``D = 2``, ``c = 0``."""

    def __init__(self, Lambda: Tensor, P: Tensor, dt: Tensor, L: int) -> None:
        angle = torch.arange(L, device=dt.device, dtype=dt.dtype) * (-2 * math.pi / L)
        self.z = torch.polar(torch.ones_like(angle), angle)  # (L,)
        half_dt = (dt / 2)[:, None, None]  # (H, 1, 1)
        self.R = 1 / ((1 - self.z) - (1 + self.z) * half_dt * Lambda[..., None])  # (H, n, L)
        self.c = ((1 + self.z) * half_dt)[:, 0]  # (H, L)
        self.P = P[..., None]  # (H, n, 1)
        self.denominator = 1 + self.c * _pair_sum((self.P.conj() * self.R * self.P).sum(-2))  # (H, L)

    def solve(self, y: Tensor) -> Tensor:
        """First half of ``M(z_m)^{-1} y`` for a conjugate-symmetric ``y`` (first half ``(H, n)``): ``(H, n, L)``."""
        Ry = self.R * y[..., None]
        s = _pair_sum((self.P.conj() * Ry).sum(-2)) / self.denominator  # (H, L)
        return Ry - (self.c * s)[:, None] * self.R * self.P

    def rows(self, c_tilde: Tensor) -> Tensor:
        """First half of the rows ``c̃ M(z_m)^{-1}`` for a conjugate-symmetric ``c̃`` (first half ``(H, n)``)."""
        cR = c_tilde[..., None] * self.R
        t = _pair_sum((cR * self.P).sum(-2)) / self.denominator  # (H, L)
        return cR - (self.c * t)[:, None] * self.P.conj() * self.R


def _frequency_domain(
    Lambda: Tensor, P: Tensor, B: Tensor, C: Tensor, dt: Tensor, L: int, rows: bool = False
) -> tuple[Tensor, ...]:
    """What the convolution form needs for length ``L``, computed in float64 and returned in the inputs' dtypes:
    ``(I - Ā^L, z, G, kernel, rows)`` with the roots of unity ``z`` ``(L,)``, ``G_m = M(z_m)^{-1} Δ B`` (first
    half, ``(H, n, L)``), the kernel ``K = IFFT_m(C̃ G_m)`` ``(H, L)``, real, for ``C̃ = C (I - Ā^L)``, and with
    ``rows`` the first half of the rows ``C̃ M(z_m)^{-1}`` ``(H, n, L)`` (else ``None``)."""
    dtype, real, n = Lambda.dtype, dt.dtype, Lambda.shape[-1]
    Lambda, P, B, C, dt = (_wide(t) for t in (Lambda, P, B, C, dt))
    A_bar, _ = _bilinear(Lambda, P, B, dt)
    eye = torch.eye(2 * n, dtype=A_bar.dtype, device=A_bar.device)
    truncation = eye - torch.linalg.matrix_power(A_bar, L)  # I - Ā^L, by repeated squaring
    c_tilde = (_pairs(C)[:, None, :] @ truncation)[:, 0, :n]
    resolvent = _Resolvent(Lambda, P, dt, L)
    G = resolvent.solve(dt[:, None] * B)
    kernel = torch.fft.ifft(_pair_sum((c_tilde[..., None] * G).sum(-2))).real
    c_rows = resolvent.rows(c_tilde).to(dtype) if rows else None
    return truncation.to(dtype), resolvent.z.to(dtype), G.to(dtype), kernel.to(real), c_rows


def dplr_ssm_kernel(Lambda: Tensor, P: Tensor, B: Tensor, C: Tensor, dt: Tensor, length: int) -> Tensor:
    """The impulse response ``K_k = Re(C Ā^k B̄)`` (full state, so twice the half's real part) for
    ``k < length``: ``(channels, length)``, real. ``Λ, P, B, C`` complex ``(channels, N/2)``, ``dt``
    ``(channels,)``."""
    return _frequency_domain(Lambda, P, B, C, dt, length)[3]


def dplr_ssm_convolution(
    u: Tensor, Lambda: Tensor, P: Tensor, B: Tensor, C: Tensor, dt: Tensor, h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(z, h_last)`` of :func:`dplr_ssm_reference` by the convolution form: ``u`` real ``(batch, T, channels)``,
    ``Λ, P, B, C`` complex ``(channels, N/2)``, ``dt`` ``(channels,)``, ``h0`` ``(batch, channels, N/2)``.

    ``z = K * u`` by ``rfft``/``irfft`` zero-padded to ``2T``. The final state ``Σ_k Ā^{T-1-k} B̄ u_k``, by
    Parseval over the ``T``-point DFT of the generating function ``(I - Ā^T)(I - zĀ)^{-1} B̄`` of ``Ā^j B̄``,
    is ``(I - Ā^T) v`` with ``v = (1/T) Σ_m z_m U_m G_m``, ``U = FFT(u)``. An initial state adds ``Ā^T h0`` to
    it and ``Re(C Ā^{t+1} h0) = IFFT_m(C̃ M(z_m)^{-1} (I + Δ/2 A) h0)_t`` to ``z_t``.
    """
    T, n = u.shape[1], Lambda.shape[-1]
    truncation, roots, G, kernel, c_rows = _frequency_domain(Lambda, P, B, C, dt, T, rows=h0 is not None)
    u_t = u.transpose(1, 2)  # (B, H, T)
    z = torch.fft.irfft(torch.fft.rfft(u_t, n=2 * T) * torch.fft.rfft(kernel, n=2 * T), n=2 * T)[..., :T]
    v = torch.einsum("hnm,bhm->bhn", G, torch.fft.fft(u_t) * roots) / T
    h_last = torch.einsum("hkn,bhn->bhk", truncation[:, :n], _pairs(v))
    if h0 is not None:
        h0 = h0.to(G.dtype)
        h_last = h0 + h_last - torch.einsum("hkn,bhn->bhk", truncation[:, :n], _pairs(h0))  # + Ā^T h0
        x0 = h0 + (dt / 2)[:, None] * _apply_A(_pairs(Lambda), _pairs(P), _pairs(h0))[..., :n]  # (I + Δ/2 A) h0
        z = z + torch.fft.ifft(_pair_sum(torch.einsum("hnm,bhn->bhm", c_rows, x0))).real
    return z.transpose(1, 2), h_last
