"""The diagonal-plus-low-rank (generalised) delta rule, engine 4 with a per-key decay and free low-rank factors:
``S_t = (Diag(w_t) + b_t a_t^T) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t``.

RWKV-7 (Peng et al. 2025, "RWKV-7 "Goose" with Expressive Dynamic State Evolution") writes the state the
other way round, ``d_v × d_k``: ``S'_t = S'_{t-1} (Diag(w_t) + a_t b_t^T) + v_t k_t^T``, ``o_t = S'_t q_t``
(``q`` is RWKV's receptance ``r``). Here, as in every rnnzoo engine, ``S = S'^T`` is ``d_k × d_v`` per head;
the transition ``Diag(w_t) + b_t a_t^T`` is the transpose of RWKV's and has the same eigenvalues. The decay
``w_t ∈ (0, 1]^{d_k}`` is given in log space, ``log_w <= 0``; ``a, b`` are free (RWKV-7: ``a = -κ̂``,
``b = κ̂ ⊙ a_gate``). The gated delta rule (engine 4) is ``w = α 1``, ``a = -k``, ``b = αβ k`` with keys ``β k``.

Two forms, equal to float tolerance:

* :func:`dplr_delta_rule_reference`: the recurrent form, a loop over time.
* :func:`dplr_delta_rule`: the chunkwise form. Inside a chunk of C tokens from the state ``S_0``, with
  ``g_t`` the cumulative log decay (per key dim) after token t and ``x_t = a_t^T S_{t-1}`` the pseudo-values::

      S_t = e^{g_t} ⊙ S_0 + Σ_{i<=t} e^{g_t - g_i} ⊙ (k_i v_i^T + b_i x_i^T)
      (I - A_ab) X = A_ak V + (A ⊙ e^{g_{t-1}}) S_0          # unit lower-triangular: the WY/UT form
      O = (Q ⊙ e^{g_t}) S_0 + A_qk V + A_qb X

  with ``A_uz[t, i] = Σ_d u_td z_id e^{g_t - g_i}`` for ``u = q`` (``i <= t``) and
  ``A_uz[t, i] = Σ_d u_td z_id e^{g_{t-1} - g_i}`` for ``u = a`` (``i < t``). One triangular solve gives
  ``[U, W] = (I - A_ab)^{-1} [A_ak V, A ⊙ e^{g_{t-1}}]``, ``X = U + W S_0``, and the chunk becomes an affine
  map of its start state: ``O = O_0 + Q_S S_0`` and ``S_C = M S_0 + H`` with ``M = Diag(e^{g_C}) + B̂^T W``,
  ``H = K̂^T V + B̂^T U`` (``K̂, B̂ = K, B ⊙ e^{g_C - g_i}``). All of it is batched over the chunks but the pass
  ``S_{j+1} = M_j S_j + H_j``, a ``d_k × d_k`` by ``d_k × d_v`` matmul per chunk.

Any decay strength is safe. Running sums are taken in float64 within each chunk. Factors on
the chunk boundaries (``e^{g_t}``, ``e^{g_C - g_i}``) are ratios ``<= 1``. The C×C matrices factor each ratio
``e^{g_t - g_i}`` as ``(u_t e^{g_t - r}) · (z_i e^{r - g_i})`` around a reference ``r``, the cumulative decay
before the first token of a sub-block of c rows: every row factor is ``<= 1``, keys before the sub-block get
factors ``<= 1``, and keys inside it (up to its second-last token: the last only meets later rows) at most
``e^{range}``, the sub-block's decay but for its last token. c starts at C and is halved while it is even
until that range stays within ``e^{MAX_EXPONENT}`` (else 1) (c = 1 needs no bound: a row meets no key of its own
sub-block, the diagonal ``q_t · k_t``, ``q_t · b_t`` being added exactly). Errors therefore scale with
``MAX_EXPONENT`` at most, never with the chunk's total decay, and nothing overflows (``log_w`` as low as
``MIN_LOG_DECAY``). The chunkwise form is differentiated by autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_heads, check_int, checking_values
from .dtypes import compute_dtype, output_dtype
from .gated_linear_attention import MAX_EXPONENT, MIN_LOG_DECAY, least_padding_chunk

__all__ = ["default_chunk_size", "dplr_delta_rule", "dplr_delta_rule_reference", "dplr_operator"]


def _check(q, k, v, a, b, log_w, state, where: str):
    """Validate shapes (and ``log_w <= 0``); return the inputs in the compute dtype, ``log_w`` clamped."""
    batch, heads, length, d_k, d_v = check_heads(where, q=q, k=k, v=v)
    for name, t in (("a", a), ("b", b), ("log_w", log_w)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{where}: `{name}` must be a floating-point torch.Tensor")
        if t.shape != q.shape:
            raise ValueError(f"{where}: `{name}` must have the shape of `q` {tuple(q.shape)}, got {tuple(t.shape)}")
    if state is not None:
        if not isinstance(state, Tensor) or not state.is_floating_point():
            raise TypeError(f"{where}: `state` must be a floating-point torch.Tensor")
        if state.shape != (batch, heads, d_k, d_v):
            raise ValueError(f"{where}: `state` must have shape {(batch, heads, d_k, d_v)}, got {tuple(state.shape)}")
    if checking_values() and float(log_w.detach().max()) > 0:
        raise ValueError(f"{where}: `log_w` must be <= 0 (decays w <= 1)")
    dtype = compute_dtype(q.dtype)
    cast = lambda t: None if t is None else t.to(dtype)
    return cast(q), cast(k), cast(v), cast(a), cast(b), cast(log_w).clamp(min=MIN_LOG_DECAY), cast(state)


# ----------------------------------------------------------------------------
# recurrent form


def dplr_delta_rule_reference(
    q: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, log_w: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Reference loop: ``S_t = Diag(w_t) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T``, ``o_t = S_t^T q_t``.

    Args:
        q, k, a, b: ``(batch, heads, time, d_k)``.
        v: ``(batch, heads, time, d_v)``.
        log_w: the log decay per key dim, ``(batch, heads, time, d_k)``, ``<= 0``.
        state: initial state ``(batch, heads, d_k, d_v)`` (RWKV's state transposed); zeros if ``None``.

    Returns:
        ``(o, S)``: outputs ``(batch, heads, time, d_v)`` and the final state.
    """
    out_dtype = q.dtype
    q, k, v, a, b, log_w, state = _check(q, k, v, a, b, log_w, state, "dplr_delta_rule_reference")
    batch, heads, _, d_k = q.shape
    S = q.new_zeros(batch, heads, d_k, v.shape[-1]) if state is None else state
    outs = []
    steps = (t.unbind(2) for t in (q, k, v, a, b, torch.exp(log_w)))
    for q_t, k_t, v_t, a_t, b_t, w_t in zip(*steps):
        read = torch.einsum("bhk,bhkv->bhv", a_t, S)  # a_t^T S_{t-1}
        S = w_t[..., None] * S + b_t[..., :, None] * read[..., None, :] + k_t[..., :, None] * v_t[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q_t, S))
    return torch.stack(outs, 2).to(output_dtype(out_dtype, S.dtype)), S


# ----------------------------------------------------------------------------
# chunkwise form


def _running_log_decay(log_w: Tensor) -> Tensor:
    """``(M, C, d_k)`` -> ``G`` ``(M, C + 1, d_k)`` in float64: ``G[:, 0] = 0`` and ``G[:, t + 1]`` the
    cumulative log decay after token t (``g_t`` of the module docstring, 0-based)."""
    return F.pad(log_w.to(torch.float64).cumsum(1), (0, 0, 1, 0))


def _sub_block_size(G: Tensor) -> int:
    """The sub-block size c: C, halved while it is even, until every sub-block's decay, from before its first
    token to its second-last token, is at most ``MAX_EXPONENT`` (see the module docstring), else 1; 1 (safe for
    any decay) while tracing, where the decays cannot be read."""
    size = G.shape[1] - 1
    if not checking_values():
        return 1
    G = G.detach()
    while size > 1:
        span = G[:, 0:-1:size] - G[:, size - 1 :: size]  # G[jc] - G[(j + 1) c - 1]
        if float(span.max()) <= MAX_EXPONENT:
            break
        size = size // 2 if size % 2 == 0 else 1
    return size


def _intra(q: Tensor, k: Tensor, a: Tensor, b: Tensor, G: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The strictly lower C×C matrices ``A_qk, A_qb, A_ak, A_ab`` (module docstring; ``A_qk``, ``A_qb``
    without their diagonals) of chunks ``(M, C, d_k)``, with sub-blocks of ``size`` rows."""
    count, chunk, d_k = q.shape
    n = chunk // size
    ref = G[:, 0:-1:size]  # (M, n, d_k): the log decay before each sub-block
    blocked = lambda t: t.view(count, n, size, d_k)
    q_exponent = blocked(G[:, 1:]) - ref[:, :, None]  # g_t - r <= 0
    a_exponent = blocked(G[:, :-1]) - ref[:, :, None]  # g_{t-1} - r <= 0
    k_exponent = ref[:, :, None] - G[:, None, 1:]  # r - g_i, (M, n, C, d_k)
    # keys from a sub-block's last token on meet no row of it (strictly lower): their exponents are unbounded
    position = torch.arange(chunk, device=q.device)
    later = position >= (torch.arange(n, device=q.device)[:, None] + 1) * size - 1
    k_exponent = k_exponent.masked_fill(later[..., None], float("-inf"))
    to_dtype = lambda x: torch.exp(x).to(q.dtype)
    rows = torch.cat([blocked(q) * to_dtype(q_exponent), blocked(a) * to_dtype(a_exponent)], 2)
    k_factor = to_dtype(k_exponent)
    keys = torch.cat([k[:, None] * k_factor, b[:, None] * k_factor], 2)
    scores = rows @ keys.mT  # (M, n, 2 size, 2 C): rows q then a, columns k then b
    strict = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril(-1)
    blocks = scores.unflatten(2, (2, size)).unflatten(-1, (2, chunk))  # (M, n, 2, size, 2, C)
    part = lambda row, col: blocks[:, :, row, :, col].reshape(count, chunk, chunk) * strict
    return part(0, 0), part(0, 1), part(1, 0), part(1, 1)


def _diagonal(u: Tensor, z: Tensor) -> Tensor:
    """``Diag(u_t · z_t)`` ``(M, C, C)`` from ``(M, C, d)``."""
    return torch.diag_embed(torch.linalg.vecdot(u, z))


def _chunkwise(q, k, v, a, b, log_w, state, chunk: int) -> tuple[Tensor, Tensor]:
    batch, heads, length, d_k = q.shape
    d_v = v.shape[-1]
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    if pad:  # padded steps: w = 1 and a = b = k = 0 (the identity transition, no update), q = 0
        q, k, v, a, b, log_w = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v, a, b, log_w))
    flat = lambda t: t.reshape(-1, chunk, t.shape[-1])  # (M = B·H·N, C, ·)
    q, k, v, a, b = map(flat, (q, k, v, a, b))
    G = _running_log_decay(flat(log_w))
    A_qk, A_qb, A_ak, A_ab = _intra(q, k, a, b, G, _sub_block_size(G))
    A_qk, A_qb = A_qk + _diagonal(q, k), A_qb + _diagonal(q, b)
    decay = lambda x: torch.exp(x).to(q.dtype)
    to_end = decay(G[:, -1:] - G[:, 1:])  # e^{g_C - g_i} <= 1
    # [U, W] = (I - A_ab)^{-1} [A_ak V, A ⊙ e^{g_{t-1}}]  (unitriangular: the diagonal of -A_ab is not read)
    rhs = torch.cat([A_ak @ v, a * decay(G[:, :-1])], -1)
    u, w = torch.linalg.solve_triangular(-A_ab, rhs, upper=False, unitriangular=True).split([d_v, d_k], -1)
    out = A_qk @ v + A_qb @ u  # from a zero start state
    if n_chunks == 1 and state is None:
        last = (k * to_end).mT @ v + (b * to_end).mT @ u
        return out.view(batch, heads, chunk, d_v)[:, :, :length], last.view(batch, heads, d_k, d_v)
    b_end = b * to_end
    per_head = lambda t: t.view(batch * heads, n_chunks, *t.shape[1:])
    transitions = per_head(torch.diag_embed(decay(G[:, -1])) + b_end.mT @ w)  # M = Diag(e^{g_C}) + B̂^T W
    updates = per_head((k * to_end).mT @ v + b_end.mT @ u)  # H = K̂^T V + B̂^T U
    S = q.new_zeros(batch * heads, d_k, d_v) if state is None else state.reshape(batch * heads, d_k, d_v)
    starts = []
    for j in range(n_chunks):
        starts.append(S)
        S = torch.baddbmm(updates[:, j], transitions[:, j], S)
    starts = torch.stack(starts, 1).view(-1, d_k, d_v)
    out = torch.baddbmm(out, q * decay(G[:, 1:]) + A_qb @ w, starts)  # + (Q ⊙ e^{g_t} + A_qb W) S_0
    out = out.view(batch, heads, n_chunks * chunk, d_v)[:, :, :length]
    return out, S.view(batch, heads, d_k, d_v)


def default_chunk_size(length: int, d_k: int = 64, d_v: int = 64) -> int:
    """The whole sequence when it is at most the largest chunk, else :func:`least_padding_chunk` up to it: at
    most 64 and at most the power of two at or above the wider head dim (at least 16; from 8 for head dims
    <= 16).

    Per token, a chunk's C×C matrices cost ``O(C (d_k + d_v))`` and its share of the pass over chunks
    ``O(d_k² d_v / C)``: C near the head dims balances them (as engine 4's chunks).
    """
    width = 1 << (max(d_k, d_v, 1) - 1).bit_length()
    largest = min(64, max(16, width))
    if length <= largest:
        return length  # one chunk: no padding and no pass over chunks
    return least_padding_chunk(length, largest, 8 if width <= 16 else 16)


def dplr_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    log_w: Tensor,
    state: Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunkwise parallel form of :func:`dplr_delta_rule_reference` (same arguments and results).

    ``chunk_size`` defaults to :func:`default_chunk_size` of the length and head dims. Half-precision inputs
    are computed in float32; outputs come back in the input dtype, the final state in float32. Gradients by
    autograd through the chunked form.
    """
    where = "dplr_delta_rule"
    if chunk_size is not None:
        check_int(where, "chunk_size", chunk_size)
    out_dtype = q.dtype
    q, k, v, a, b, log_w, state = _check(q, k, v, a, b, log_w, state, where)
    chunk = chunk_size or default_chunk_size(q.shape[2], q.shape[-1], v.shape[-1])
    out, last = _chunkwise(q, k, v, a, b, log_w, state, chunk)
    return out.to(output_dtype(out_dtype, out.dtype)), last


def dplr_operator(q: Tensor, k: Tensor, a: Tensor, b: Tensor, log_w: Tensor) -> Tensor:
    """The T×T operator of the engine for given q, k, a, b and decays: ``o = M @ v`` from a zero state.

    ``M[b, h, t, s] = q_t^T G_t G_{t-1} ⋯ G_{s+1} k_s`` (``G_r = Diag(w_r) + b_r a_r^T``) for ``s <= t``, else 0;
    computed as the chunkwise form's single chunk, ``M = A_qk + A_qb (I - A_ab)^{-1} A_ak``. Same argument
    shapes as :func:`dplr_delta_rule` (without ``v``); returns ``(batch, heads, T, T)``.
    """
    q, k, _, a, b, log_w, _ = _check(q, k, q[..., :1], a, b, log_w, None, "dplr_operator")
    batch, heads, length, d_k = q.shape
    flat = lambda t: t.reshape(-1, length, d_k)
    q, k, a, b = map(flat, (q, k, a, b))
    G = _running_log_decay(flat(log_w))
    A_qk, A_qb, A_ak, A_ab = _intra(q, k, a, b, G, _sub_block_size(G))
    mixed = torch.linalg.solve_triangular(-A_ab, A_ak, upper=False, unitriangular=True)
    M = A_qk + _diagonal(q, k) + (A_qb + _diagonal(q, b)) @ mixed
    return M.view(batch, heads, length, length)
