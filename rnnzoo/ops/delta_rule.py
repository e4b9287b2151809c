"""Engine 4: the (gated) delta rule, ``S_t = α_t (I - β_t k_t k_t^T) S_{t-1} + β_t k_t v_t^T``, ``o_t = S_t^T q_t``.

DeltaNet (Schlag et al. 2021; Yang et al. 2024, "Parallelizing Linear
Transformers with the Delta Rule over Sequence Length"), Gated DeltaNet (Yang,
Kautz, Hatamizadeh 2024) and DeltaProduct (Siems et al. 2025) reduce to it. Per
head, ``S`` is ``d_k × d_v``; ``k_t`` should be L2-normalised (the layers do it);
``β_t ∈ [0, 2]`` (``β > 1`` gives the transition a negative eigenvalue ``1 - β``);
``α_t`` is a scalar per head, given as ``log_alpha <= 0`` (``None``: α = 1).

Two forms, equal to float tolerance:

* :func:`delta_rule_reference`: the recurrent form, a loop over time.
* :func:`delta_rule`: the chunkwise form. Inside a chunk of C tokens, with
  ``γ_t`` the decay since the chunk start and ``S_0`` the state before it, the
  states are ``S_t = γ_t S_0 + Σ_{i<=t} (γ_t/γ_i) k_i x_i^T``, where the
  pseudo-values ``x`` solve the unit lower-triangular system
  ``(I + A) X = diag(β) (V - diag(γ) K S_0)``, ``A_ti = β_t (γ_t/γ_i) k_t·k_i``
  (i < t), the WY/UT form of the product of Householder-like transitions.
  With ``T = (I + A)^{-1} diag(β)``, ``U = T V`` and ``W = T diag(γ) K``, ``X = U - W S_0``;
  the chunk-end state ``S_C = (γ_C I - K̂^T W) S_0 + K̂^T U`` (``K̂ = K ⊙ γ_C/γ``)
  is carried across chunks, and the outputs are
  ``O = (diag(γ) Q - P W) S_0 + P U`` with ``P = tril(Q K^T ⊙ γ_t/γ_i)``.
  Every decay enters as a ratio ``γ_t/γ_i <= 1`` (exponent <= 0): no overflow
  for any T or decay strength.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_heads, check_int
from .gated_linear_attention import MIN_LOG_DECAY, _causal, _output_dtype

__all__ = ["delta_rule", "delta_rule_flops", "delta_rule_reference"]


def _check(q, k, v, beta, log_alpha, h0, where: str):
    if h0 is not None and (not isinstance(h0, Tensor) or not h0.is_floating_point()):
        raise TypeError(f"{where}: `h0` must be a floating-point torch.Tensor")
    batch, heads, _, d_k, d_v = check_heads(where, q=q, k=k, v=v, beta=beta, log_alpha=log_alpha)
    low, high = (float(x) for x in torch.aminmax(beta.detach()))
    if low < 0 or high > 2:
        raise ValueError(f"{where}: `beta` must lie in [0, 2], got values in [{low:.3g}, {high:.3g}]")
    if log_alpha is not None and float(log_alpha.detach().max()) > 0:
        raise ValueError(f"{where}: `log_alpha` must be <= 0 (decays α <= 1)")
    if h0 is not None and h0.shape != (batch, heads, d_k, d_v):
        raise ValueError(f"{where}: `h0` must have shape {(batch, heads, d_k, d_v)}, got {tuple(h0.shape)}")
    dtype = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    log_alpha = None if log_alpha is None else cast(log_alpha).clamp(min=MIN_LOG_DECAY)
    return cast(q), cast(k), cast(v), cast(beta), log_alpha, cast(h0)


def delta_rule_reference(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_alpha: Tensor | None = None, h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Reference loop for ``S_t = α_t (I - β_t k_t k_t^T) S_{t-1} + β_t k_t v_t^T``, ``o_t = S_t^T q_t``.

    Args:
        q, k: ``(batch, heads, time, d_k)`` (k L2-normalised for the usual delta rule).
        v: ``(batch, heads, time, d_v)``.
        beta: ``(batch, heads, time)`` in ``[0, 2]``.
        log_alpha: ``(batch, heads, time)``, ``<= 0``, or ``None`` (α = 1).
        h0: initial state ``(batch, heads, d_k, d_v)``; zeros if ``None``.

    Returns:
        ``(o, S)``: ``o`` ``(batch, heads, time, d_v)`` and the final state.
    """
    out_dtype = q.dtype
    q, k, v, beta, log_alpha, h0 = _check(q, k, v, beta, log_alpha, h0, "delta_rule_reference")
    batch, heads, length, d_k = q.shape
    S = q.new_zeros(batch, heads, d_k, v.shape[-1]) if h0 is None else h0
    alphas = [None] * length if log_alpha is None else torch.exp(log_alpha).unbind(2)
    outs = []
    for q_t, k_t, v_t, b_t, a_t in zip(q.unbind(2), k.unbind(2), v.unbind(2), beta.unbind(2), alphas):
        if a_t is not None:
            S = a_t[..., None, None] * S
        # S <- S + β k (v - S^T k)^T  ==  (I - β k k^T) S + β k v^T
        error = v_t - torch.einsum("bhkv,bhk->bhv", S, k_t)
        S = S + b_t[..., None, None] * k_t[..., :, None] * error[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q_t, S))
    return torch.stack(outs, 2).to(_output_dtype(out_dtype)), S


def _chunkwise(q, k, v, beta, log_alpha, h0, chunk: int) -> tuple[Tensor, Tensor]:
    batch, heads, length, d_k = q.shape
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    if log_alpha is None:
        log_alpha = torch.zeros_like(beta)
    if pad:  # padded steps: β = 0 (no update), α = 1 (no decay), q = 0
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        beta, log_alpha = F.pad(beta, (0, pad)), F.pad(log_alpha, (0, pad))
    q, k, v, beta, log_alpha = (t.unflatten(2, (n_chunks, chunk)) for t in (q, k, v, beta, log_alpha))

    causal = _causal(chunk, q.device)
    g = log_alpha.cumsum(-1)  # (B, H, N, C): log γ_t
    ratio = torch.exp((g[..., :, None] - g[..., None, :]).masked_fill(~causal, float("-inf")))  # γ_t/γ_i, i <= t
    # (I + A) X = diag(β)(V - diag(γ) K S_0), A strictly lower: A_ti = β_t (γ_t/γ_i) k_t·k_i
    A = (beta[..., :, None] * (k @ k.transpose(-1, -2)) * ratio).tril(-1)
    rhs = torch.cat([beta[..., None] * v, (beta * torch.exp(g))[..., None] * k], -1)  # one solve for U and W
    U, W = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True).split([v.shape[-1], d_k], -1)
    P = (q @ k.transpose(-1, -2)) * ratio  # causal, decayed scores (zero above the diagonal)
    gamma_last = torch.exp(g[..., -1])  # (B, H, N)
    k_end = k * torch.exp(g[..., -1:] - g)[..., None]  # K̂ = K ⊙ γ_C/γ
    eye = torch.eye(d_k, dtype=q.dtype, device=q.device)
    transition = gamma_last[..., None, None] * eye - k_end.transpose(-1, -2) @ W  # (B, H, N, d_k, d_k)
    update = k_end.transpose(-1, -2) @ U  # (B, H, N, d_k, d_v)
    # across chunks: S_j = transition_j S_{j-1} + update_j (dense d_k × d_k transitions: a short loop)
    S = q.new_zeros(batch, heads, d_k, v.shape[-1]) if h0 is None else h0
    starts = []
    for M_j, B_j in zip(transition.unbind(2), update.unbind(2)):
        starts.append(S)
        S = M_j @ S + B_j
    starts = torch.stack(starts, 2)
    out = (torch.exp(g)[..., None] * q - P @ W) @ starts + P @ U
    return out.flatten(2, 3)[:, :, :length], S


def default_chunk_size(length: int) -> int:
    """64 (measured at B=4, H=4, T=1024, d=64 on a 2-core CPU: C=32/64/128 took 108/105/127 ms
    forward+backward), or the next power of two >= T for shorter inputs."""
    return min(64, max(16, 1 << (max(length, 1) - 1).bit_length()))


def delta_rule_flops(batch: int, heads: int, length: int, d_k: int, d_v: int, chunk: int | None = None) -> int:
    """Floating-point operations of the chunkwise (WY) forward, per chunk of C: the matmuls
    ``K K^T``, ``Q K^T``, ``P W`` (``2 C² d_k`` each), ``P U`` (``2 C² d_v``), ``Q' S`` and ``K̂^T U``
    (``2 C d_k d_v`` each), ``K̂^T W`` (``2 C d_k²``), ``M S`` (``2 d_k² d_v``), and the triangular solve
    (``C² (d_k + d_v)``). Forward+backward is counted as three times this.
    """
    chunk = chunk or default_chunk_size(length)
    n_chunks = -(-length // chunk)
    per_chunk = 2 * (3 * chunk**2 * d_k + chunk**2 * d_v + 2 * chunk * d_k * d_v + chunk * d_k**2 + d_k**2 * d_v)
    return batch * heads * n_chunks * (per_chunk + chunk**2 * (d_k + d_v))


def delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    log_alpha: Tensor | None = None,
    h0: Tensor | None = None,
    *,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunkwise parallel form of :func:`delta_rule_reference` (same arguments and results).

    ``chunk_size`` defaults to :func:`default_chunk_size`.
    Half-precision inputs are computed in float32; outputs come back in the input
    dtype, the final state in float32. Gradients by autograd through the
    triangular solves and matmuls.
    """
    where = "delta_rule"
    if chunk_size is not None:
        check_int(where, "chunk_size", chunk_size)
    out_dtype = q.dtype
    q, k, v, beta, log_alpha, h0 = _check(q, k, v, beta, log_alpha, h0, where)
    chunk = chunk_size or default_chunk_size(q.shape[2])
    out, last = _chunkwise(q, k, v, beta, log_alpha, h0, chunk)
    return out.to(_output_dtype(out_dtype)), last
