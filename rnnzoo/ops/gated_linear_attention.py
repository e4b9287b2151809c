"""Engine 3: gated linear attention, ``S_t = Diag(α_t) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t``.

Per head, ``S`` is a ``d_k × d_v`` matrix. Linear attention (α = 1), RetNet
(constant α per head), Mamba-2 and mLSTM (a scalar α_t per head), GLA and HGRN2
(α_t per key dimension) all reduce to it. Two forms, equal to float tolerance:

* :func:`gated_linear_attention_reference`: the recurrent form, a loop over time.
* :func:`gated_linear_attention`: the chunkwise form (Yang et al. 2024, "Gated
  Linear Attention Transformers with Hardware-Efficient Training"). Cut time
  into chunks of C tokens; inside a chunk the outputs are a masked,
  decay-weighted attention matrix times V (matmuls); across chunks the state
  is carried by engine 2's scan over the chunk-end states.

Decays are given in log space, ``log_alpha <= 0``, with an optional sign (±1)
for negative eigenvalues: ``α = sign · exp(log_alpha)``. Within a chunk, with
``g_t`` the cumulative log decay since the chunk start, the weight of key s in
query t is ``exp(g_t - g_s)``. Scalar decays form that C×C matrix directly
(exponents <= 0: safe for any strength). Per-key decays factor it as
``(q_t e^{g_t - r}) · (k_s e^{r - g_s})`` with a reference ``r`` re-based at the
start of every sub-block of c tokens; c is the largest power of two for which
no factor can exceed ``e^{MAX_EXPONENT}`` (c = C for ordinary gates, down to
c = 1, the exact pairwise form, when some α_t -> 0). Nothing overflows for any
T or decay strength.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_int
from .linear_scan import linear_scan

__all__ = ["gated_linear_attention", "gated_linear_attention_reference", "gla_operator"]

MAX_EXPONENT = 60.0  # largest exponent a per-key factor may reach inside a sub-block (e^60 ~ 1e26)
MIN_LOG_DECAY = -1e4  # log decays are clamped here: exp(-1e4) is 0 in every dtype; keeps -inf out of cumsums


# ----------------------------------------------------------------------------
# checks


def _check(q, k, v, log_alpha, alpha_sign, h0, where: str):
    """Validate shapes; return inputs in the compute dtype (float32 for half precision)."""
    for name, t in (("q", q), ("k", k), ("v", v), ("log_alpha", log_alpha), ("alpha_sign", alpha_sign), ("h0", h0)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{where}: `{name}` must be a torch.Tensor, got {type(t).__name__}")
        if t is not None and name != "alpha_sign" and not t.is_floating_point():
            raise TypeError(f"{where}: `{name}` must be a floating-point tensor, got dtype {t.dtype}")
    if q.dim() != 4:
        raise ValueError(f"{where}: `q` must have shape (batch, heads, time, d_k), got {tuple(q.shape)}")
    batch, heads, length, d_k = q.shape
    if length == 0:
        raise ValueError(f"{where}: the time dimension (dim 2) is empty; need at least one step")
    if k.shape != q.shape:
        raise ValueError(f"{where}: `k` must have the shape of `q` {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"{where}: `v` must have shape (batch, heads, time, d_v) = ({batch}, {heads}, {length}, d_v), got {tuple(v.shape)}")
    d_v = v.shape[-1]
    if log_alpha is not None and log_alpha.shape not in ((batch, heads, length), (batch, heads, length, d_k)):
        raise ValueError(
            f"{where}: `log_alpha` must have shape (batch, heads, time) = {(batch, heads, length)} for a scalar "
            f"decay per head or (batch, heads, time, d_k) = {(batch, heads, length, d_k)} per key, got {tuple(log_alpha.shape)}"
        )
    if alpha_sign is not None and (log_alpha is None or alpha_sign.shape != log_alpha.shape):
        raise ValueError(f"{where}: `alpha_sign` needs `log_alpha` and must have its shape, got {tuple(alpha_sign.shape)}")
    if h0 is not None and h0.shape != (batch, heads, d_k, d_v):
        raise ValueError(f"{where}: `h0` must have shape (batch, heads, d_k, d_v) = {(batch, heads, d_k, d_v)}, got {tuple(h0.shape)}")
    if log_alpha is not None and bool((log_alpha > 0).any()):
        raise ValueError(f"{where}: `log_alpha` must be <= 0 (decays |α| <= 1)")
    dtype = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    if alpha_sign is not None:
        negative = alpha_sign if alpha_sign.dtype == torch.bool else alpha_sign < 0
        alpha_sign = torch.where(negative, -1.0, 1.0).to(dtype)
    if log_alpha is not None:
        log_alpha = log_alpha.to(dtype).clamp(min=MIN_LOG_DECAY)
    return cast(q), cast(k), cast(v), log_alpha, alpha_sign, cast(h0)


def _output_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else torch.float32


# ----------------------------------------------------------------------------
# recurrent form


def gated_linear_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_alpha: Tensor | None = None,
    h0: Tensor | None = None,
    *,
    alpha_sign: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Reference loop: ``S_t = Diag(α_t) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t``.

    Args:
        q, k: ``(batch, heads, time, d_k)``.
        v: ``(batch, heads, time, d_v)``.
        log_alpha: log decay, ``<= 0``: ``None`` (α = 1), ``(batch, heads, time)``
            (a scalar per head and step) or ``(batch, heads, time, d_k)`` (per key).
        h0: initial state ``(batch, heads, d_k, d_v)``; zeros if ``None``.
        alpha_sign: optional, ``log_alpha``'s shape: where negative (or True),
            ``α = -exp(log_alpha)`` (negative eigenvalues).

    Returns:
        ``(o, S)``: outputs ``(batch, heads, time, d_v)`` and the final state.
    """
    out_dtype = q.dtype
    q, k, v, log_alpha, alpha_sign, h0 = _check(q, k, v, log_alpha, alpha_sign, h0, "gated_linear_attention_reference")
    batch, heads, _, d_k = q.shape
    S = q.new_zeros(batch, heads, d_k, v.shape[-1]) if h0 is None else h0
    alpha = None
    if log_alpha is not None:
        alpha = torch.exp(log_alpha) if alpha_sign is None else alpha_sign * torch.exp(log_alpha)
        if alpha.dim() == 3:
            alpha = alpha.unsqueeze(-1)
    outs = []
    alphas = [None] * q.shape[2] if alpha is None else alpha.unbind(2)
    for q_t, k_t, v_t, a_t in zip(q.unbind(2), k.unbind(2), v.unbind(2), alphas):
        if a_t is not None:
            S = a_t[..., None] * S
        S = S + k_t[..., :, None] * v_t[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q_t, S))
    return torch.stack(outs, 2).to(_output_dtype(out_dtype)), S


# ----------------------------------------------------------------------------
# chunkwise form


def _sub_block_size(g: Tensor) -> int:
    """Largest power-of-two sub-block whose per-key factors stay below ``e^{MAX_EXPONENT}``.

    ``g`` is the within-chunk cumulative log decay ``(..., C, d_k)``, non-increasing
    along C; re-basing at a block's first token bounds every factor by the
    block's decay range ``g_first - g_last``. A block of one token has range 0.
    """
    size, g = g.shape[-2], g.detach()
    while size > 1:
        blocks = g.unflatten(-2, (-1, size))
        if float((blocks[..., 0, :] - blocks[..., -1, :]).max()) <= MAX_EXPONENT:
            break
        size = size // 2 if size % 2 == 0 else 1
    return size


def _intra_scalar(q, k, g, sign):
    """Within-chunk attention ``A[t, s] = (q_t · k_s) α_{s+1..t}`` for a scalar decay ``g`` ``(B, H, N, C)``."""
    C = q.shape[-2]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    scores = q @ k.transpose(-1, -2)
    if g is None:
        return scores.masked_fill(~causal, 0.0)
    decay = torch.exp((g[..., :, None] - g[..., None, :]).masked_fill(~causal, float("-inf")))
    if sign is not None:
        decay = decay * (sign[..., :, None] * sign[..., None, :])
    return scores * decay


def _intra_per_key(q, k, g, sign):
    """Within-chunk attention for a per-key decay ``g`` ``(B, H, N, C, d_k)``, re-based per sub-block."""
    C, d_k = q.shape[-2:]
    size = _sub_block_size(g)
    n = C // size
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    ref = g.unflatten(-2, (n, size))[..., :1, :]  # g at each sub-block's first token: (B, H, N, n, 1, d_k)
    q_scale = torch.exp(g.unflatten(-2, (n, size)) - ref)  # <= 1
    # keys scaled per query sub-block: exponent ref_i - g_s, masked (-inf) for keys after sub-block i
    k_exponent = ref - g.unsqueeze(-3)  # (B, H, N, n, C, d_k)
    later = torch.arange(C, device=q.device) >= (torch.arange(n, device=q.device)[:, None] + 1) * size
    k_scale = torch.exp(k_exponent.masked_fill(later[..., None], float("-inf")))
    if sign is not None:
        q_scale = q_scale * sign.unflatten(-2, (n, size))
        k_scale = k_scale * sign.unsqueeze(-3)
    q_t = q.unflatten(-2, (n, size)) * q_scale
    k_t = k.unsqueeze(-3) * k_scale
    scores = (q_t @ k_t.transpose(-1, -2)).flatten(-3, -2)  # (B, H, N, C, C)
    return scores.masked_fill(~causal, 0.0)


def _chunkwise(q, k, v, log_alpha, alpha_sign, h0, chunk: int) -> tuple[Tensor, Tensor]:
    batch, heads, length, d_k = q.shape
    d_v = v.shape[-1]
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    per_key = log_alpha is not None and log_alpha.dim() == 4
    if pad:  # padded steps: k = v = 0 (no contribution), α = 1 (no decay)
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        if log_alpha is not None:
            widths = (0, 0, 0, pad) if per_key else (0, pad)
            log_alpha = F.pad(log_alpha, widths)
            alpha_sign = None if alpha_sign is None else F.pad(alpha_sign, widths, value=1.0)
    chunked = lambda t: None if t is None else t.unflatten(2, (n_chunks, chunk))  # noqa: E731
    q, k, v, log_alpha, alpha_sign = map(chunked, (q, k, v, log_alpha, alpha_sign))
    time_dim = -2 if per_key else -1

    if log_alpha is None:
        g = sign = None
        scores = _intra_scalar(q, k, None, None)
        q_inter, k_state, chunk_decay = q, k, None
    else:
        g = log_alpha.cumsum(time_dim)
        sign = None if alpha_sign is None else alpha_sign.cumprod(time_dim)
        g_last = g.narrow(time_dim, chunk - 1, 1)
        q_factor, k_factor = torch.exp(g), torch.exp(g_last - g)  # both <= 1
        chunk_decay = torch.exp(g_last.squeeze(time_dim))
        if sign is not None:
            sign_last = sign.narrow(time_dim, chunk - 1, 1)
            q_factor, k_factor = q_factor * sign, k_factor * sign * sign_last
            chunk_decay = chunk_decay * sign_last.squeeze(time_dim)
        if per_key:
            scores = _intra_per_key(q, k, g, sign)
        else:
            scores = _intra_scalar(q, k, g, sign)
            q_factor, k_factor = q_factor[..., None], k_factor[..., None]
        q_inter, k_state = q * q_factor, k * k_factor

    # chunk-end states S_j = Diag(decay_j) S_{j-1} + K_j^T V_j: engine 2's scan over chunks
    updates = (k_state.transpose(-1, -2) @ v).transpose(1, 2)  # (B, N, H, d_k, d_v)
    if chunk_decay is None:
        decay = torch.ones((), dtype=q.dtype, device=q.device)
    else:
        decay = chunk_decay.transpose(1, 2)  # (B, N, H) or (B, N, H, d_k)
        decay = decay[..., None, None] if not per_key else decay[..., None]
    ends, last = linear_scan(decay, updates, h0)
    first = torch.zeros_like(ends[:, :1]) if h0 is None else h0.unsqueeze(1)
    starts = torch.cat([first, ends[:, :-1]], 1).transpose(1, 2)  # (B, H, N, d_k, d_v)
    out = q_inter @ starts + scores @ v
    return out.flatten(2, 3)[:, :, :length], last


def default_chunk_size(length: int) -> int:
    """Chunk length: 64 (measured on a 2-core CPU at B=4, H=4, d_k=d_v=64), shorter for short inputs."""
    return min(64, max(16, 1 << (max(length, 1) - 1).bit_length()))


def gated_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_alpha: Tensor | None = None,
    h0: Tensor | None = None,
    *,
    alpha_sign: Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunkwise parallel form of :func:`gated_linear_attention_reference` (same arguments and results).

    ``chunk_size`` overrides :func:`default_chunk_size`. Half-precision inputs
    are computed in float32; outputs come back in the input dtype, the final
    state in float32.
    """
    where = "gated_linear_attention"
    if chunk_size is not None:
        check_int(where, "chunk_size", chunk_size)
    out_dtype = q.dtype
    q, k, v, log_alpha, alpha_sign, h0 = _check(q, k, v, log_alpha, alpha_sign, h0, where)
    chunk = chunk_size or default_chunk_size(q.shape[2])
    out, last = _chunkwise(q, k, v, log_alpha, alpha_sign, h0, chunk)
    return out.to(_output_dtype(out_dtype)), last


def gla_operator(
    q: Tensor, k: Tensor, log_alpha: Tensor | None = None, *, alpha_sign: Tensor | None = None
) -> Tensor:
    """The T×T operator of engine 3 for given q, k and decays: ``o = M @ v`` (from a zero state).

    ``M[b, h, t, s] = Σ_d q_td k_sd Π_{r=s+1..t} α_{r,d}`` for ``s <= t``, else 0:
    the "implicit attention" matrix of the layer (Dynamical Systems Framework;
    Hydra's matrix-mixer view). Same argument shapes as
    :func:`gated_linear_attention` (without ``v``); returns ``(batch, heads, T, T)``.
    """
    dummy_v = q[..., :1]
    q, k, _, log_alpha, alpha_sign, _ = _check(q, k, dummy_v, log_alpha, alpha_sign, None, "gla_operator")
    one_chunk = lambda t: None if t is None else t.unsqueeze(2)  # noqa: E731  the whole sequence as one chunk
    q, k, log_alpha, alpha_sign = map(one_chunk, (q, k, log_alpha, alpha_sign))
    if log_alpha is None:
        return _intra_scalar(q, k, None, None).squeeze(2)
    time_dim = -2 if log_alpha.dim() == 5 else -1
    g = log_alpha.cumsum(time_dim)
    sign = None if alpha_sign is None else alpha_sign.cumprod(time_dim)
    intra = _intra_per_key if log_alpha.dim() == 5 else _intra_scalar
    return intra(q, k, g, sign).squeeze(2)
