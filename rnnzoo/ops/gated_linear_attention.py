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

Complex decays (GateLoop) come as a complex ``log_alpha = log|α| + iθ`` (the
bound ``<= 0`` is on the real part), with complex q, k, v and state; outputs
are then complex. The running sums are taken in complex128 and the factors
above bound by the real part alone; per-key complex decays take the autograd
path of sub-blocks (the hand-written backward is real only). Under
torch.compile, PyTorch's decomposition of complex adds (inductor's, also in
``aot_eager_decomp_partition``) fails on some gradients of the scalar-decay path:
complex decays compile per key only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_int, checking_values
from .decay import log_ratios, running_sum
from .dtypes import compute_dtype, output_dtype
from .linear_scan import linear_scan, scan_adjoint, scan_states
from .opaque import traceable

__all__ = ["chunk_flops", "default_chunk_size", "gated_linear_attention", "gated_linear_attention_reference", "gla_operator"]

MAX_EXPONENT = 60.0  # largest exponent a per-key factor may reach inside a sub-block (e^60 ~ 1e26)
MIN_LOG_DECAY = -1e4  # log decays are clamped here: exp(-1e4) is 0 in every dtype; keeps -inf out of cumsums
REAL_PART = {torch.complex64: torch.float32, torch.complex128: torch.float64}  # (dtype.to_real: not traceable)


# ----------------------------------------------------------------------------
# checks


def _check(q, k, v, log_alpha, alpha_sign, h0, where: str):
    """Validate shapes; return inputs in the compute dtype (float32 for half precision)."""
    for name, t in (("q", q), ("k", k), ("v", v), ("log_alpha", log_alpha), ("alpha_sign", alpha_sign), ("h0", h0)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{where}: `{name}` must be a torch.Tensor, got {type(t).__name__}")
        if t is not None and name != "alpha_sign" and not (t.is_floating_point() or t.is_complex()):
            raise TypeError(f"{where}: `{name}` must be a floating-point or complex tensor, got dtype {t.dtype}")
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
    clamp = log_alpha is not None  # while tracing: always (it changes nothing above MIN_LOG_DECAY)
    if log_alpha is not None and checking_values():
        lowest, highest = (float(x) for x in torch.aminmax(log_alpha.detach().real))
        if highest > 0:
            raise ValueError(f"{where}: `log_alpha` must be <= 0 (decays |α| <= 1; the real part if complex)")
        clamp = lowest < MIN_LOG_DECAY
    dtype = compute_dtype(q.dtype)
    if any(t is not None and t.is_complex() for t in (q, k, v, log_alpha, h0)):
        dtype = compute_dtype(dtype, torch.complex64)
    real = REAL_PART.get(dtype, dtype)
    cast = lambda t: None if t is None else t.to(dtype)
    if alpha_sign is not None:
        negative = alpha_sign if alpha_sign.dtype == torch.bool else alpha_sign < 0
        alpha_sign = torch.where(negative, -1.0, 1.0).to(real)
    if log_alpha is not None:
        log_alpha = log_alpha.to(dtype if log_alpha.is_complex() else real)
        if clamp and log_alpha.is_complex():
            log_alpha = torch.complex(log_alpha.real.clamp(min=MIN_LOG_DECAY), log_alpha.imag)
        elif clamp:
            log_alpha = log_alpha.clamp(min=MIN_LOG_DECAY)
    return cast(q), cast(k), cast(v), log_alpha, alpha_sign, cast(h0)


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
    return torch.stack(outs, 2).to(output_dtype(out_dtype, S.dtype)), S


# ----------------------------------------------------------------------------
# chunkwise form


def _running_sum(log_alpha: Tensor, dim: int = -1) -> Tensor:
    """:func:`~rnnzoo.ops.decay.running_sum`, in complex128 for a complex ``log_alpha``."""
    return log_alpha.to(torch.complex128).cumsum(dim) if log_alpha.is_complex() else running_sum(log_alpha, dim)


def _log_ratios(log_alpha: Tensor) -> Tensor:
    """:func:`~rnnzoo.ops.decay.log_ratios`, from a complex128 running sum for a complex ``log_alpha``."""
    if not log_alpha.is_complex():
        return log_ratios(log_alpha)
    g = _running_sum(log_alpha)
    return (g[..., :, None] - g[..., None, :]).to(log_alpha.dtype)


def _chunk_decay_fits(log_alpha: Tensor) -> bool:
    """Whether every chunk of a chunked per-key ``log_alpha`` ``(B, H, N, C, d_k)`` decays by at most
    ``e^{-MAX_EXPONENT}`` after its first token, so one re-basing per chunk is safe."""
    return log_alpha.shape[-2] == 1 or float(log_alpha.detach().real[..., 1:, :].sum(-2).min()) >= -MAX_EXPONENT


def _sub_block_size(g: Tensor) -> int:
    """Largest power-of-two sub-block whose per-key factors stay below ``e^{MAX_EXPONENT}``.

    ``g`` is the within-chunk cumulative log decay ``(..., C, d_k)``, non-increasing
    along C; re-basing at a block's first token bounds every factor by the
    block's decay range ``g_first - g_last``. A block of one token has range 0.
    """
    size, g = g.shape[-2], g.detach().real
    if not checking_values():  # a compiled graph cannot read the decays: blocks of one token fit any decay
        return 1
    while size > 1:
        blocks = g.unflatten(-2, (-1, size))
        if float((blocks[..., 0, :] - blocks[..., -1, :]).max()) <= MAX_EXPONENT:
            break
        size = size // 2 if size % 2 == 0 else 1
    return size


def causal_mask(size: int, device) -> Tensor:
    """``(size, size)`` bool, True on and below the diagonal."""
    return torch.ones(size, size, dtype=torch.bool, device=device).tril()


def _intra_scalar(q, k, log_decay, sign):
    """Within-chunk attention ``A[t, s] = (q_t · k_s) α_{s+1..t}`` for a scalar decay, from its
    :func:`~rnnzoo.ops.decay.log_ratios` ``(B, H, N, C, C)`` (``None``: α = 1)."""
    causal = causal_mask(q.shape[-2], q.device)
    scores = q @ k.transpose(-1, -2)
    if log_decay is None:
        return scores.masked_fill(~causal, 0.0)
    decay = torch.exp(log_decay.masked_fill(~causal, float("-inf")))
    if sign is not None:
        decay = decay * (sign[..., :, None] * sign[..., None, :])
    return scores * decay


def _rebased_per_key(q, k, g, sign):
    """Per-key decays re-based at the first token of every sub-block (see the module docstring).

    ``g`` ``(B, H, N, C, d_k)`` is the within-chunk cumulative log decay. Returns
    ``(q_t, k_t, ref)``: ``q_t = q ⊙ σ_t e^{g_t - r_i}`` ``(B, H, N, n, c, d_k)`` for
    sub-block i, ``k_t = k ⊙ σ_s e^{r_i - g_s}`` ``(B, H, N, n, C, d_k)`` (zero for
    keys after sub-block i), and ``r`` ``(B, H, N, n, 1, d_k)``, so that
    ``q_t[i] @ k_t[i]^T`` is sub-block i's rows of the decayed attention matrix.
    """
    C = q.shape[-2]
    size = _sub_block_size(g)
    n = C // size
    ref = g.unflatten(-2, (n, size))[..., :1, :]
    k_exponent = ref - g.unsqueeze(-3)
    if n > 1:  # keys after sub-block i: exponent could overflow and the weight is 0 anyway
        later = torch.arange(C, device=q.device) >= (torch.arange(n, device=q.device)[:, None] + 1) * size
        k_exponent = k_exponent.masked_fill(later[..., None], float("-inf"))
    # g may be float64 (see _chunkwise): the exponents are differences of running sums
    q_scale, k_scale = torch.exp(g.unflatten(-2, (n, size)) - ref).to(q.dtype), torch.exp(k_exponent).to(q.dtype)
    if sign is not None:
        q_scale = q_scale * sign.unflatten(-2, (n, size))
        k_scale = k_scale * sign.unsqueeze(-3)
    return q.unflatten(-2, (n, size)) * q_scale, k.unsqueeze(-3) * k_scale, ref


def _intra_per_key(q, k, g, sign):
    """Within-chunk attention ``(B, H, N, C, C)`` for a per-key decay ``g`` ``(B, H, N, C, d_k)``."""
    q_t, k_t, _ = _rebased_per_key(q, k, g, sign)
    scores = (q_t @ k_t.transpose(-1, -2)).flatten(-3, -2)
    return scores.masked_fill(~causal_mask(q.shape[-2], q.device), 0.0)


def chunk_states(decay: Tensor | None, updates: Tensor, h0: Tensor | None) -> tuple[Tensor, Tensor]:
    """Chunk-start states from ``S_j = decay_j ⊙ S_{j-1} + U_j`` (engine 2's scan over chunks).

    ``updates`` ``(B, H, N, d_k, d_v)``, ``decay`` broadcastable to it or ``None`` (1).
    Returns the state before each chunk ``(B, H, N, d_k, d_v)`` and the final state.
    """
    if updates.shape[2] == 1:  # one chunk: no scan
        start = torch.zeros_like(updates) if h0 is None else h0.unsqueeze(2)
        last = updates[:, :, 0] if h0 is None else updates[:, :, 0] + (h0 if decay is None else decay[:, :, 0] * h0)
        return start, last
    updates = updates.transpose(1, 2)
    decay = torch.ones((), dtype=updates.dtype, device=updates.device) if decay is None else decay.transpose(1, 2)
    ends, last = linear_scan(decay, updates, h0)
    first = torch.zeros_like(ends[:, :1]) if h0 is None else h0.unsqueeze(1)
    return torch.cat([first, ends[:, :-1]], 1).transpose(1, 2), last


def _chunkwise(q, k, v, log_alpha, alpha_sign, h0, chunk: int) -> tuple[Tensor, Tensor]:
    length = q.shape[2]
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    per_key = log_alpha is not None and log_alpha.dim() == 4
    if pad:  # padded steps: k = v = 0 (no contribution), α = 1 (no decay)
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        if log_alpha is not None:
            widths = (0, 0, 0, pad) if per_key else (0, pad)
            log_alpha = F.pad(log_alpha, widths)
            alpha_sign = None if alpha_sign is None else F.pad(alpha_sign, widths, value=1.0)
    chunked = lambda t: None if t is None else t.unflatten(2, (n_chunks, chunk))
    q, k, v, log_alpha, alpha_sign = map(chunked, (q, k, v, log_alpha, alpha_sign))

    if log_alpha is None:  # α = 1: plain causal linear attention inside, a running sum across
        starts, last = chunk_states(None, k.transpose(-1, -2) @ v, h0)
        out = _intra_scalar(q, k, None, None) @ v
        if h0 is not None or n_chunks > 1:
            out = out + q @ starts
        return out.flatten(2, 3)[:, :, :length], last

    if not per_key:  # scalar decay per head: the C×C decay matrix is formed directly
        g = _running_sum(log_alpha)  # float64 (rnnzoo.ops.decay): exact ratios after a strong decay
        sign = None if alpha_sign is None else alpha_sign.cumprod(-1)
        g_last = g[..., -1:]
        q_factor, k_factor, chunk_decay = (torch.exp(x).to(q.dtype) for x in (g, g_last - g, g_last))
        if sign is not None:
            q_factor, k_factor = q_factor * sign, k_factor * sign * sign[..., -1:]
            chunk_decay = chunk_decay * sign[..., -1:]
        updates = (k * k_factor[..., None]).transpose(-1, -2) @ v
        starts, last = chunk_states(chunk_decay[..., None], updates, h0)
        out = _intra_scalar(q, k, _log_ratios(log_alpha), sign) @ v
        if h0 is not None or n_chunks > 1:
            out = out + (q * q_factor[..., None]) @ starts
        return out.flatten(2, 3)[:, :, :length], last

    # per-key decay: q and k re-based per sub-block
    # one sub-block per chunk where the decays allow (real inputs: its backward is hand-written); a compiled
    # graph cannot read them and takes sub-blocks of one token, which any decay allows
    if checking_values() and not q.is_complex() and _chunk_decay_fits(log_alpha):
        return _per_key_chunkwise(q, k, v, log_alpha, alpha_sign, h0, length)
    # strong decays (some chunk decays by more than e^-MAX_EXPONENT): several sub-blocks per chunk.
    # The factors that take the chunk-start state into sub-block i (e^{r_i}) and the last
    # sub-block's keys to the chunk end (e^{g_last - r_last}) act on the small d_k × d_v states. The running
    # sum is taken in float64: every factor's exponent is a difference of two of its terms, and a strong
    # decay makes them large (a float32 sum past -1e4 would carry ~1e-3 into each exponent).
    g = _running_sum(log_alpha, -2)
    sign = None if alpha_sign is None else alpha_sign.cumprod(-2)
    q_t, k_t, ref = _rebased_per_key(q, k, g, sign)
    g_last = g[..., -1, :]  # (B, H, N, d_k)
    to_end = torch.exp(g_last - ref[..., -1, 0, :]).to(q.dtype)
    chunk_decay = torch.exp(g_last).to(q.dtype)
    if sign is not None:
        to_end = to_end * sign[..., -1, :]
        chunk_decay = chunk_decay * sign[..., -1, :]
    updates = to_end[..., None] * (k_t[..., -1, :, :].transpose(-1, -2) @ v)
    starts, last = chunk_states(chunk_decay[..., None], updates, h0)  # (B, H, N, d_k, d_v)
    into_block = torch.exp(ref).to(q.dtype).transpose(-1, -2) * starts.unsqueeze(-3)  # (B, H, N, n, d_k, d_v)
    scores = (q_t @ k_t.transpose(-1, -2)).flatten(-3, -2).masked_fill(~causal_mask(chunk, q.device), 0.0)
    out = (q_t @ into_block).flatten(-3, -2) + scores @ v
    return out.flatten(2, 3)[:, :, :length], last


GROUP_BYTES = 1 << 20  # per-key chunkwise: each thread's share of a group's C×C scores (a core's L2 cache)


def _groups(like: Tensor, chunk: int, width: int) -> list[slice]:
    """Slices of the chunks (dim 0 of ``like``) into groups whose ``chunk × width`` blocks fill
    :data:`GROUP_BYTES` per CPU thread (one group on other devices).

    The per-chunk matmuls and element-wise steps run group by group, so a
    group's tensors are reused from cache instead of every tensor of all
    chunks streaming through memory once per step.
    """
    count = like.shape[0]
    size = max(1, torch.get_num_threads() * GROUP_BYTES // (chunk * width * like.element_size()))
    size = size if like.device.type == "cpu" else count
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


def _block_cumsum_(x: Tensor, reverse: bool = False, block: int = 16) -> tuple[Tensor, Tensor]:
    """Cumulative sum of ``x`` ``(M, C, d)`` along C (from the end if ``reverse``), in two parts, in place.

    Turns ``x`` into the sums within blocks of ``block`` rows, returned as
    ``(M, n, block, d)``, and returns each block's offset ``(M, n, 1, d)``, the
    total of the blocks before it (after it if ``reverse``): their sum is the
    cumulative sum. A loop down the rows of all blocks at once, then one over
    the block totals; ``torch.cumsum`` along a middle dimension runs a scalar
    loop per column (1.7x slower here).
    """
    count, length, width = x.shape
    if length % block:
        block = length
    within = x.view(count, length // block, block, width)
    rows = within.unbind(2)
    for i in range(block - 2, -1, -1) if reverse else range(1, block):
        rows[i].add_(rows[i + 1 if reverse else i - 1])
    totals = rows[0 if reverse else -1]  # (M, n, d)
    offsets = torch.zeros_like(totals)
    done = offsets.unbind(1)
    order = list(range(len(done) - 1, -1, -1) if reverse else range(len(done)))
    for before, i in zip(order, order[1:]):
        torch.add(done[before], totals[:, before], out=done[i])
    return within, offsets.unsqueeze(2)


def _relative_log_decay(log_alpha: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """The cumulative log decay ``g`` within each chunk of ``log_alpha`` ``(M, C, d_k)``, summed in float64.

    Returns ``g - r`` in ``dtype`` ``(M, C, d_k)`` for the mid-chunk reference
    ``r = g_{C/2}``, and ``r`` and ``g_C`` in float64 ``(M, 1, d_k)``. (A float32
    sum over a 128-token chunk carries ~1e-5 absolute error into the exponents.)
    """
    within, offsets = _block_cumsum_(log_alpha.to(torch.float64, copy=True))
    block, mid = within.shape[2], log_alpha.shape[1] // 2
    ref = within[:, mid // block, mid % block, None] + offsets[:, mid // block]
    last = within[:, -1, -1, None] + offsets[:, -1]
    relative = within.add_(offsets.sub_(ref.unsqueeze(1))).flatten(1, 2)
    return relative.to(dtype), ref, last


def _by_sequence(x: Tensor, seqs: int) -> Tensor:
    """Per-chunk rows ``(M, 1, d_k)`` as columns, sequence by sequence: ``(seqs, N, d_k, 1)``."""
    return x.view(seqs, -1, *x.shape[1:]).transpose(-1, -2)


def _boundary_coefficients(decay: Tensor, seqs: int) -> Tensor:
    """Chunk decays ``D`` ``(M, 1, d_k)`` as the coefficients of the scan over chunk boundaries,
    ``(seqs, N + 1, d_k, 1)`` (the first coefficient, unused, repeats the second)."""
    decay = _by_sequence(decay, seqs)
    return torch.cat([decay[:, :1], decay], 1)


class _PerKeyChunkwise(torch.autograd.Function):
    """Chunkwise GLA for per-key decays re-based once per chunk, with a hand-written backward.

    Inputs are chunked ``(B, H, N, C, d)``; ``log_alpha`` ``(B, H, N, C, d_k)`` with
    every chunk's decay range within ``MAX_EXPONENT``. Per chunk, with
    ``g = cumsum(log α)``, ``r = g_{C/2}`` (mid-chunk: factors within ``e^{±range/2}``)
    and ``e = σ e^{g - r}``::

        q~ = q ⊙ e,  k~ = k ⊘ e,  A = tril(q~ k~^T),  U = k~^T v
        S_0 = h0,  S_{j+1} = D_j ⊙ S_j + W_j,  D = σ_C e^{g_C},  W = σ_C e^{g_C - r} ⊙ U
        o = q~ (e^{r} ⊙ S_j) + A v

    with the states at the chunk boundaries from engine 2's scan. The backward
    runs the same matmuls transposed and engine 2's reverse scan; ``d log α``
    is the reverse cumulative sum of ``d g``. The B·H·N chunks form one batch,
    processed in cache-sized groups (:func:`_groups`) apart from the scan.
    """

    @staticmethod
    def forward(ctx, q, k, v, log_alpha, alpha_sign, h0, length):
        batch, heads, n_chunks, chunk, d_k = q.shape
        d_v, seqs, count = v.shape[-1], batch * heads, batch * heads * n_chunks
        q, k, v = q.reshape(count, chunk, d_k), k.reshape(count, chunk, d_k), v.reshape(count, chunk, d_v)
        e, ref, g_last = _relative_log_decay(log_alpha.reshape(count, chunk, d_k), q.dtype)  # e: g - r for now
        to_end, decay, e_ref = (torch.exp(x).to(q.dtype) for x in (g_last - ref, g_last, ref))  # (M, 1, d_k)
        sign = None if alpha_sign is None else alpha_sign.reshape(count, chunk, d_k).cumprod(1)
        if sign is not None:
            to_end, decay = to_end * sign[:, -1:], decay * sign[:, -1:]
        q_t, k_t, out = q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
        scores, updates = q.new_empty(count, chunk, chunk), q.new_empty(count, d_k, d_v)
        for part in _groups(q, chunk, max(chunk, d_k, d_v)):
            e_g = e[part].exp_()
            if sign is not None:
                e_g.mul_(sign[part])
            torch.mul(q[part], e_g, out=q_t[part])
            torch.div(k[part], e_g, out=k_t[part])  # the range check keeps e^{g - r} >= e^-MAX_EXPONENT
            torch.bmm(q_t[part], k_t[part].transpose(-1, -2), out=scores[part]).tril_()
            torch.bmm(k_t[part].transpose(-1, -2), v[part], out=updates[part])
            torch.bmm(scores[part], v[part], out=out[part])
        inputs = q.new_empty(seqs, n_chunks + 1, d_k, d_v)  # S_0 = h0, then the W_j
        inputs[:, 0] = 0.0 if h0 is None else h0.reshape(seqs, d_k, d_v)
        torch.mul(updates.view_as(inputs[:, 1:]), _by_sequence(to_end, seqs), out=inputs[:, 1:])
        states = scan_states(_boundary_coefficients(decay, seqs).expand_as(inputs), inputs, None)
        into = (states[:, :-1] * _by_sequence(e_ref, seqs)).view(count, d_k, d_v)  # e^{r} ⊙ S_j
        out.baddbmm_(q_t, into)
        ctx.save_for_backward(q, k, v, e, q_t, k_t, scores, updates, states, into, e_ref, to_end, decay)
        ctx.shape, ctx.length, ctx.has_h0 = (batch, heads, n_chunks, chunk, d_k, d_v), length, h0 is not None
        last = states[:, -1].reshape(batch, heads, d_k, d_v).clone()
        return out.view(batch, heads, n_chunks * chunk, d_v)[:, :, :length], last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_last):
        q, k, v, e, q_t, k_t, scores, updates, states, into, e_ref, to_end, decay = ctx.saved_tensors
        batch, heads, n_chunks, chunk, d_k, d_v = ctx.shape
        seqs, count = batch * heads, q.shape[0]
        pad = n_chunks * chunk - ctx.length
        grad_o = (F.pad(grad_out, (0, 0, 0, pad)) if pad else grad_out).reshape(count, chunk, d_v)
        # o = q~ into + A v,  A = tril(q~ k~^T)
        grad_q, grad_k, grad_v, grad_into = (x.new_empty(x.shape) for x in (q, k, v, into))
        groups = _groups(q, chunk, max(chunk, d_k, d_v))
        for part in groups:
            grad_scores = torch.bmm(grad_o[part], v[part].transpose(-1, -2)).tril_()
            torch.bmm(scores[part].transpose(-1, -2), grad_o[part], out=grad_v[part])
            torch.bmm(grad_scores, k_t[part], out=grad_q[part]).baddbmm_(grad_o[part], into[part].transpose(-1, -2))
            torch.bmm(grad_scores.transpose(-1, -2), q_t[part], out=grad_k[part])
            torch.bmm(q_t[part].transpose(-1, -2), grad_o[part], out=grad_into[part])
        grad_ref = (into * grad_into).sum(-1)  # into = e^{r} ⊙ S_j   (M, d_k)
        # reverse scan over the boundaries: R_j = dL/dS_j = e^{r_j} ⊙ d into_j + D_j ⊙ R_{j+1}
        grads = torch.empty_like(states)
        torch.mul(grad_into.view_as(grads[:, 1:]), _by_sequence(e_ref, seqs), out=grads[:, :-1])
        grads[:, -1] = 0.0 if grad_last is None else grad_last.reshape(seqs, d_k, d_v)
        grad_states = scan_adjoint(_boundary_coefficients(decay, seqs).expand_as(grads), grads, None)
        grad_h0 = grad_states[:, 0].reshape(batch, heads, d_k, d_v) if ctx.has_h0 else None
        grad_next = grad_states[:, 1:]  # dL/dS_{j+1}, S_{j+1} = D_j ⊙ S_j + to_end_j ⊙ U_j
        grad_decay = (grad_next * states[:, :-1]).sum(-1).view(count, d_k)
        grad_to_end = (grad_next * updates.view_as(grad_next)).sum(-1).view(count, d_k)
        grad_updates = (grad_next * _by_sequence(to_end, seqs)).view(count, d_k, d_v)
        # q~ = q ⊙ e, k~ = k ⊘ e: dq = dq~ ⊙ e, dk = dk~ ⊘ e, and dL/dg = q ⊙ dq - k ⊙ dk
        grad_g = q.new_empty(q.shape)
        for part in groups:
            grad_v[part].baddbmm_(k_t[part], grad_updates[part])
            grad_k[part].baddbmm_(v[part], grad_updates[part].transpose(-1, -2)).div_(e[part])
            grad_q_part = grad_q[part].mul_(e[part])
            torch.mul(grad_q_part, q[part], out=grad_g[part]).addcmul_(grad_k[part], k[part], value=-1)
        # to_end = σ_C e^{g_C - r}, D = σ_C e^{g_C}, r = g_{C/2}
        to_end_grad = to_end[:, 0] * grad_to_end
        grad_g[:, chunk // 2] += grad_ref - grad_g.sum(1) - to_end_grad
        grad_g[:, -1] += to_end_grad + decay[:, 0] * grad_decay
        within, offsets = _block_cumsum_(grad_g, reverse=True)  # d log α: the reverse cumulative sum of dL/dg
        shape = (batch, heads, n_chunks, chunk)
        grad_log_alpha = within.add_(offsets).view(*shape, d_k)
        grad_q, grad_k, grad_v = grad_q.view(*shape, d_k), grad_k.view(*shape, d_k), grad_v.view(*shape, d_v)
        return grad_q, grad_k, grad_v, grad_log_alpha, None, grad_h0, None



def _per_key_shapes(q, k, v, log_alpha, alpha_sign, h0, length) -> tuple[Tensor, Tensor]:
    batch, heads, _, _, d_k = q.shape
    d_v = v.shape[-1]
    return v.new_empty(batch, heads, length, d_v), v.new_empty(batch, heads, d_k, d_v)


_per_key_chunkwise = traceable(_PerKeyChunkwise, _per_key_shapes)

def chunk_flops(
    batch: int, heads: int, length: int, d_k: int, d_v: int, chunk: int | None = None, per_key: bool = True
) -> int:
    """Floating-point operations of the chunkwise forward (matmuls, one chunk-size sub-block).

    Per padded token: ``2 C d_k`` (scores) + ``2 C d_v`` (scores @ v) + ``2 d_k d_v``
    (q @ state) + ``2 d_k d_v`` (k^T v), the full C×C scores counted (the masked
    half is computed). The backward runs each matmul twice more: forward+backward
    is three times this.
    """
    chunk = chunk or default_chunk_size(length, per_key, d_k, d_v)
    padded = -(-length // chunk) * chunk
    return batch * heads * padded * 2 * (chunk * d_k + chunk * d_v + 2 * d_k * d_v)


def least_padding_chunk(length: int, largest: int, smallest: int = 16) -> int:
    """The largest power of two in ``[smallest, largest]`` that pads ``length`` to at most 1/8 more
    steps than the least-padding one.

    Padded steps cost as much as real ones: at T = 40 a chunk of 64 computes 64 steps, one of 16
    computes 48 (so 16); at T = 1000, 1024 steps against 1008 (so 64, with a quarter of the
    sequential steps over chunks). Without padding (T a multiple of ``largest``) it is ``largest``.
    """
    sizes = [smallest << i for i in range(max(largest // smallest, 1).bit_length())]
    padded = {c: -(-length // c) * c for c in sizes}
    least = min(padded.values())
    return max(c for c in sizes if 8 * padded[c] <= 9 * least)


def default_chunk_size(length: int, per_key: bool = False, d_k: int = 64, d_v: int = 64) -> int:
    """Chunk length: at most 128 for per-key decays, 64 otherwise, and at most twice the power of two at
    or above the wider head dim (at least 16); within that, :func:`least_padding_chunk`.

    Larger chunks run fewer sequential steps and larger matmuls (closer to the machine's peak rate) but
    compute more masked C×C scores: at head dims of 64 the balance is 64 for a scalar or no decay and up
    to 128 for per-key decays. Thin heads (4-16 wide) take C = 16: the C×C scores would cost far more than
    the ``d_k × d_v`` states they replace. For per-key
    decays :func:`gated_linear_attention` halves the chunk (down to 16) while some chunk
    decays by more than ``e^{-MAX_EXPONENT}``, which keeps the fast path. A scalar or no decay takes the
    whole sequence as one chunk when it fits under that bound: no padding and no pass over chunks.
    """
    width = 2 << (max(d_k, d_v, 1) - 1).bit_length()
    largest = min(128 if per_key else 64, max(16, width))
    if not per_key and length <= largest:
        return length  # one chunk: no padding and no pass over chunks
    return least_padding_chunk(length, largest)


def _fitting_chunk(log_alpha: Tensor, chunk: int) -> int:
    """Halve ``chunk`` (not below 16) until every chunk of a per-key ``log_alpha`` passes :func:`_chunk_decay_fits`."""
    if not checking_values():  # a compiled graph cannot read the decays: 16, where its one-token sub-blocks cost least
        return min(chunk, 16)
    while chunk > 16:
        pad = (-log_alpha.shape[2]) % chunk
        padded = F.pad(log_alpha, (0, 0, 0, pad)) if pad else log_alpha
        if _chunk_decay_fits(padded.unflatten(2, (-1, chunk))):
            break
        chunk //= 2
    return chunk


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

    ``chunk_size`` overrides :func:`default_chunk_size` (of the length and head dims). Half-precision inputs
    are computed in float32; outputs come back in the input dtype, the final
    state in float32.
    """
    where = "gated_linear_attention"
    if chunk_size is not None:
        check_int(where, "chunk_size", chunk_size)
    out_dtype = q.dtype
    q, k, v, log_alpha, alpha_sign, h0 = _check(q, k, v, log_alpha, alpha_sign, h0, where)
    per_key = log_alpha is not None and log_alpha.dim() == 4
    if per_key and q.is_complex() and q.shape[-1] == 1:
        # one complex key dim: run as two, the second with a zero key (and so a zero row of the state), as
        # torch.compile's decomposition of complex adds fails on the gradients' size-1 trailing dims
        q, k, log_alpha = (F.pad(t, (0, 1)) for t in (q, k, log_alpha))
        alpha_sign = None if alpha_sign is None else F.pad(alpha_sign, (0, 1), value=1.0)
        h0 = None if h0 is None else F.pad(h0, (0, 0, 0, 1))
        out, last = gated_linear_attention(q, k, v, log_alpha, h0, alpha_sign=alpha_sign, chunk_size=chunk_size)
        return out, last[..., :1, :]
    chunk = chunk_size or default_chunk_size(q.shape[2], per_key, q.shape[-1], v.shape[-1])
    if per_key and chunk_size is None:
        chunk = _fitting_chunk(log_alpha, chunk)
    out, last = _chunkwise(q, k, v, log_alpha, alpha_sign, h0, chunk)
    return out.to(output_dtype(out_dtype, out.dtype)), last


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
    one_chunk = lambda t: None if t is None else t.unsqueeze(2)
    q, k, log_alpha, alpha_sign = map(one_chunk, (q, k, log_alpha, alpha_sign))
    if log_alpha is None:
        return _intra_scalar(q, k, None, None).squeeze(2)
    if log_alpha.dim() == 5:  # per key: running sums in float64, as the chunkwise form's strong-decay path
        sign = None if alpha_sign is None else alpha_sign.cumprod(-2)
        return _intra_per_key(q, k, _running_sum(log_alpha, -2), sign).squeeze(2)
    sign = None if alpha_sign is None else alpha_sign.cumprod(-1)
    return _intra_scalar(q, k, _log_ratios(log_alpha), sign).squeeze(2)
