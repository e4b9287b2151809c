"""Engine 3 with exponential input gates and a normaliser: the mLSTM cell of xLSTM.

Beck et al. (2024), "xLSTM: Extended Long Short-Term Memory". Per head, with a
scalar forget gate ``f_t`` and an exponential input gate ``i_t = exp(ĩ_t)``::

    C_t = f_t C_{t-1} + i_t k_t v_t^T,   n_t = f_t n_{t-1} + i_t k_t
    h_t = C_t^T q_t / max(|n_t · q_t|, 1)

``i_t`` is unbounded, so both forms carry a stabiliser ``m_t = max(log f_t +
m_{t-1}, ĩ_t)`` and store ``C̃ = C e^{-m}``, ``ñ = n e^{-m}``; then
``h_t = C̃_t^T q_t / max(|ñ_t · q_t|, e^{-m_t})``, the same value with every
exponential ``<= 1``. ``h`` does not depend on ``m``, so the stabiliser's
running maximum is held constant under differentiation (the gradients stay
exact, and the stored state is differentiated at fixed ``m``).

The chunkwise form is engine 3's scalar-decay algorithm: inside a chunk, with
``g_t`` the cumulative ``log f`` and ``a_s = ĩ_s - g_s``, the row stabiliser is
``m_t = g_t + b_t`` with ``b_t = max(M_prev, max_{s<=t} a_s)``, and key s enters
row t with weight ``exp(a_s - b_t) <= 1``; the normaliser rides along as a
column of ones appended to v; chunk-end states pass through engine 2's scan.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_heads, check_int, checking_values
from .decay import log_ratios
from .dtypes import compute_dtype, output_dtype
from .gated_linear_attention import causal_mask, chunk_states, default_chunk_size

__all__ = ["mlstm_chunkwise", "mlstm_operator", "mlstm_reference"]

State = tuple[Tensor, Tensor, Tensor]  # (C̃ (B, H, d_k, d_v), ñ (B, H, d_k), m (B, H))


def _check(q, k, v, log_f, log_i, state, where: str):
    for name, t in (("log_f", log_f), ("log_i", log_i)):
        if t is None:
            raise TypeError(f"{where}: `{name}` must be a floating-point torch.Tensor, got None")
    batch, heads, length, d_k, d_v = check_heads(where, q=q, k=k, v=v, log_f=log_f, log_i=log_i)
    if checking_values() and bool((log_f > 0).any()):
        raise ValueError(f"{where}: `log_f` must be <= 0 (forget gates in (0, 1])")
    if state is not None:
        want = ((batch, heads, d_k, d_v), (batch, heads, d_k), (batch, heads))
        if len(state) != 3 or any(s.shape != w for s, w in zip(state, want)):
            got = [tuple(s.shape) for s in state]
            raise ValueError(f"{where}: `state` must be (C {want[0]}, n {want[1]}, m {want[2]}), got {got}")
    dtype = compute_dtype(q.dtype)
    cast = lambda t: t.to(dtype)
    state = None if state is None else tuple(map(cast, state))
    return cast(q), cast(k), cast(v), cast(log_f), cast(log_i), state


def mlstm_reference(
    q: Tensor, k: Tensor, v: Tensor, log_f: Tensor, log_i: Tensor, state: State | None = None
) -> tuple[Tensor, State]:
    """The stabilised mLSTM recurrence, one step at a time.

    Args:
        q, k: ``(batch, heads, time, d_k)`` (scale q beforehand if wanted).
        v: ``(batch, heads, time, d_v)``.
        log_f: log forget gate ``(batch, heads, time)``, ``<= 0``.
        log_i: input-gate pre-activation ``ĩ`` (log input gate) ``(batch, heads, time)``.
        state: ``(C̃, ñ, m)`` or ``None`` (zeros, as in xLSTM).

    Returns:
        ``(h, state)``: ``h`` ``(batch, heads, time, d_v)`` and the final ``(C̃, ñ, m)``.
    """
    out_dtype = q.dtype
    q, k, v, log_f, log_i, state = _check(q, k, v, log_f, log_i, state, "mlstm_reference")
    batch, heads, _, d_k = q.shape
    if state is None:
        state = (q.new_zeros(batch, heads, d_k, v.shape[-1]), q.new_zeros(batch, heads, d_k), q.new_zeros(batch, heads))
    C, n, m = state
    outs = []
    for q_t, k_t, v_t, lf, li in zip(q.unbind(2), k.unbind(2), v.unbind(2), log_f.unbind(2), log_i.unbind(2)):
        m_new = torch.maximum(lf + m, li).detach()
        f, i = torch.exp(lf + m - m_new), torch.exp(li - m_new)
        C = f[..., None, None] * C + i[..., None, None] * (k_t[..., :, None] * v_t[..., None, :])
        n = f[..., None] * n + i[..., None] * k_t
        m = m_new
        num = torch.einsum("bhk,bhkv->bhv", q_t, C)
        den = (n * q_t).sum(-1).abs().maximum(torch.exp(-m))
        outs.append(num / den[..., None])
    return torch.stack(outs, 2).to(output_dtype(out_dtype, C.dtype)), (C, n, m)


def mlstm_chunkwise(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_f: Tensor,
    log_i: Tensor,
    state: State | None = None,
    *,
    chunk_size: int | None = None,
) -> tuple[Tensor, State]:
    """Chunkwise parallel form of :func:`mlstm_reference` (same arguments and results).

    ``chunk_size`` defaults to engine 3's choice for a scalar decay
    (:func:`~rnnzoo.ops.gated_linear_attention.default_chunk_size` of the length and head dims).
    """
    where = "mlstm_chunkwise"
    if chunk_size is not None:
        check_int(where, "chunk_size", chunk_size)
    out_dtype = q.dtype
    q, k, v, log_f, log_i, state = _check(q, k, v, log_f, log_i, state, where)
    batch, heads, length, d_k = q.shape
    d_v = v.shape[-1]
    chunk = min(chunk_size or default_chunk_size(length, False, d_k, d_v + 1), length)
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    v = torch.cat([v, torch.ones_like(v[..., :1])], -1)  # the normaliser n is the last column of the state
    if pad:  # padded steps: f = 1, i = 0 (exp(-inf)): they change nothing
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        log_f, log_i = F.pad(log_f, (0, pad)), F.pad(log_i, (0, pad), value=float("-inf"))
    q, k, v, log_f, log_i = (t.unflatten(2, (n_chunks, chunk)) for t in (q, k, v, log_f, log_i))
    if state is None:
        state = (q.new_zeros(batch, heads, d_k, d_v), q.new_zeros(batch, heads, d_k), q.new_zeros(batch, heads))
    C0, n0, m0 = state
    dtype = q.dtype
    # The log-space bookkeeping (running sums, stabilisers, exponents) runs in float64: every exponent is a
    # difference of running sums, whose float32 rounding grows with the decay (~1e-3 after a reset of -1e4).
    log_f, log_i, m0 = log_f.to(torch.float64), log_i.to(torch.float64), m0.to(torch.float64)
    exp = lambda t: torch.exp(t).to(dtype)

    g = log_f.cumsum(-1)  # (B, H, N, C)
    g_last = g[..., -1]
    a = log_i - g  # key s enters row t with log weight a_s + g_t
    with torch.no_grad():  # stabilisers: chunk-end M_j = max(M_{j-1} + g_last_j, max_s a_s + g_last_j)
        chunk_max = a.amax(-1) + g_last
        ends, M = [], m0
        for g_j, c_j in zip(g_last.unbind(-1), chunk_max.unbind(-1)):
            M = torch.maximum(M + g_j, c_j)
            ends.append(M)
        M_end = torch.stack(ends, -1)  # (B, H, N)
        b = torch.maximum(torch.cat([m0[..., None], M_end[..., :-1]], -1)[..., None], a.cummax(-1).values)
    # each chunk's start stabiliser: a constant but for the first, the incoming m, which scales the incoming
    # state (C = C̃ e^m) and so carries its gradient; b (the row stabiliser m_t = g_t + b_t) stays constant
    M_prev = torch.cat([m0[..., None], M_end[..., :-1]], -1)
    causal = causal_mask(chunk, q.device)
    # the C×C exponents: differences taken in float64, then exponentiated in the compute dtype
    weights = torch.exp((a[..., None, :] - b[..., :, None]).to(dtype).masked_fill_(~causal, float("-inf")))
    intra = (q @ k.transpose(-1, -2)) * weights
    # chunk-end states, stored relative to M_end: decay e^{M_prev + g_last - M_end}, keys e^{a_s + g_last - M_end}
    decay = exp(M_prev + g_last - M_end)
    updates = (k * exp(a + (g_last - M_end)[..., None])[..., None]).transpose(-1, -2) @ v
    S0 = torch.cat([C0, n0[..., None]], -1)
    starts, last = chunk_states(decay[..., None, None], updates, S0)
    out = exp(M_prev[..., None] - b)[..., None] * (q @ starts) + intra @ v  # (B, H, N, C, d_v + 1)
    m = g + b  # b is a constant; m keeps its dependence on g (through the floor e^{-m})
    h = out[..., :d_v] / out[..., d_v:].abs().maximum(exp(-m)[..., None])
    h = h.flatten(2, 3)[:, :, :length]
    return h.to(output_dtype(out_dtype, h.dtype)), (last[..., :d_v], last[..., d_v], M_end[..., -1].to(dtype))


def mlstm_operator(q: Tensor, k: Tensor, log_f: Tensor, log_i: Tensor) -> Tensor:
    """The mLSTM's T×T operator from a zero state: ``h = M @ v``.

    ``M[t, s] = w_ts (q_t · k_s) / max(|Σ_s' w_ts' (q_t · k_s')|, 1)`` for ``s <= t``,
    with ``w_ts = i_s Π_{r=s+1..t} f_r``; computed with a per-row maximum so no
    exponential exceeds 1. Returns ``(batch, heads, T, T)``.
    """
    q, k, _, log_f, log_i, _ = _check(q, k, q[..., :1], log_f, log_i, None, "mlstm_operator")
    causal = causal_mask(q.shape[2], q.device)
    log_w = (log_i[..., None, :] + log_ratios(log_f)).masked_fill(~causal, float("-inf"))
    m = log_w.amax(-1, keepdim=True).detach()
    scores = (q @ k.transpose(-1, -2)) * torch.exp(log_w - m)
    return scores / scores.sum(-1, keepdim=True).abs().maximum(torch.exp(-m))
