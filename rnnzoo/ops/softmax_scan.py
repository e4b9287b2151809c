"""Engine 5 (Aaren): causal softmax attention with a query fixed over time, as a prefix scan.

Feng, Tung, Hajimirsadeghi, Ahmed, Bengio, Mori (2024), "Attention as an RNN".
With one query per head, the score of token ``i`` is a scalar ``s_i`` that
does not depend on the reading step, so the many-to-many output ::

    o_t = Σ_{i<=t} exp(s_i) v_i / Σ_{i<=t} exp(s_i)

is an RNN with state ``(m_t, u_t, w_t)``: the running max of the scores, the
denominator and the numerator, both taken relative to ``exp(m_t)``::

    m_t = max_{i<=t} s_i,   u_t = Σ_{i<=t} exp(s_i - m_t),   w_t = Σ_{i<=t} exp(s_i - m_t) v_i,   o_t = w_t / u_t

Two partial results over adjacent spans A then B combine by the paper's
associative operator (:func:`softmax_combine`), the log-sum-exp trick::

    m = max(m_A, m_B),   u = u_A exp(m_A - m) + u_B exp(m_B - m),   w = w_A exp(m_A - m) + w_B exp(m_B - m)

and a token is the span ``(s_t, 1, v_t)``. Three forms, equal to float tolerance:

* :func:`softmax_scan_reference` - the recurrent form: the state combined with
  one token at a time (the RNN cell of the paper's Figure 2; autograd
  differentiates it). O(1) memory per step.
* :func:`softmax_scan` - the parallel prefix scan. The ``m`` part of the
  combine is a max-scan (``torch.cummax``, exact). Given every ``m_t``, the
  ``(u, w)`` parts combine linearly: ``u_t = exp(m_{t-1} - m_t) u_{t-1} +
  exp(s_t - m_t)`` and the same for ``w`` with ``exp(s_t - m_t) v_t``, a
  diagonal linear recurrence solved by engine 2's chunked scan
  (:func:`~rnnzoo.ops.linear_scan.linear_scan`, exact gradients). Every
  exponent is ``<= 0`` and the token that sets ``m_t`` contributes
  ``exp(0) = 1`` to ``u_t``, so nothing overflows, ``u_t >= 1`` and the
  division is safe at any length and any score range.
* :func:`softmax_scan_operator` - the same map as the T×T matrix of causal
  softmax weights, ``o = M @ v``.

Layout: scores ``s`` ``(batch, time, heads)``, values ``v``
``(batch, time, heads, d_v)``; the state ``m, u`` ``(batch, heads)``, ``w``
``(batch, heads, d_v)``. No tokens seen is ``(m, u, w) = (-inf, 0, 0)``.
Half precision is computed in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .dtypes import compute_dtype
from .linear_scan import linear_scan

__all__ = ["SoftmaxScanState", "softmax_combine", "softmax_scan", "softmax_scan_operator", "softmax_scan_reference"]

SoftmaxScanState = tuple[Tensor, Tensor, Tensor]  # (m, u, w)


def _check_inputs(
    where: str, s: Tensor, v: Tensor, state: SoftmaxScanState | None
) -> tuple[Tensor, Tensor, SoftmaxScanState | None]:
    """Validate shapes and dtypes naming the bad argument; return ``(s, v, state)`` in the compute dtype."""
    for name, t in (("s", s), ("v", v)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{where}: `{name}` must be a floating-point torch.Tensor")
    if s.dim() != 3:
        raise ValueError(f"{where}: `s` must have shape (batch, time, heads), got {tuple(s.shape)}")
    batch, length, heads = s.shape
    if length == 0:
        raise ValueError(f"{where}: the time dimension (dim 1) of `s` is empty; need at least one step")
    if v.dim() != 4 or v.shape[:3] != s.shape:
        raise ValueError(f"{where}: `v` must have shape ({batch}, {length}, {heads}, d_v), got {tuple(v.shape)}")
    dtype = compute_dtype(s.dtype, v.dtype)
    if state is None:
        return s.to(dtype), v.to(dtype), None
    if not isinstance(state, tuple) or len(state) != 3 or not all(isinstance(t, Tensor) for t in state):
        raise TypeError(f"{where}: `state` must be a tuple of tensors (m, u, w) or None")
    expected = {"m": (batch, heads), "u": (batch, heads), "w": (batch, heads, v.shape[-1])}
    for (name, shape), t in zip(expected.items(), state):
        if tuple(t.shape) != shape:
            raise ValueError(f"{where}: `state` part `{name}` must have shape {shape}, got {tuple(t.shape)}")
    return s.to(dtype), v.to(dtype), tuple(t.to(dtype) for t in state)


def softmax_combine(left: SoftmaxScanState, right: SoftmaxScanState) -> SoftmaxScanState:
    """The associative operator: ``(m, u, w)`` of span A followed by span B from each one's ``(m, u, w)``.

    ``m, u`` of any shape ``(*)``, ``w`` ``(*, d_v)``. A span with ``m = -inf``
    (and ``u = 0``, ``w = 0``) is the identity.
    """
    (m_a, u_a, w_a), (m_b, u_b, w_b) = left, right
    m = torch.maximum(m_a, m_b)
    scale_a, scale_b = torch.exp(m_a - m), torch.exp(m_b - m)
    return m, u_a * scale_a + u_b * scale_b, w_a * scale_a[..., None] + w_b * scale_b[..., None]


def softmax_scan_reference(
    s: Tensor, v: Tensor, state: SoftmaxScanState | None = None
) -> tuple[Tensor, SoftmaxScanState]:
    """Recurrent form: combine the state with one token ``(s_t, 1, v_t)`` at a time.

    Args:
        s: scores ``(batch, time, heads)``.
        v: values ``(batch, time, heads, d_v)``.
        state: ``(m, u, w)`` before the first token, or ``None`` for none seen.

    Returns:
        ``(o, (m, u, w))``: outputs ``(batch, time, heads, d_v)`` (in ``v``'s
        precision) and the final state (in the compute precision).
    """
    out_dtype = v.dtype
    s, v, state = _check_inputs("softmax_scan_reference", s, v, state)
    outputs = []
    for s_t, v_t in zip(s.unbind(1), v.unbind(1)):
        token = (s_t, torch.ones_like(s_t), v_t)
        state = token if state is None else softmax_combine(state, token)
        outputs.append(state[2] / state[1][..., None])
    return torch.stack(outputs, 1).to(out_dtype), state


def softmax_scan(s: Tensor, v: Tensor, state: SoftmaxScanState | None = None) -> tuple[Tensor, SoftmaxScanState]:
    """Parallel form: running max by ``torch.cummax``, then ``(u, w)`` by engine 2's chunked scan.

    Same contract as :func:`softmax_scan_reference`. Memory ``O(batch · time · heads · d_v)``.
    """
    out_dtype = v.dtype
    s, v, state = _check_inputs("softmax_scan", s, v, state)
    m = torch.cummax(s, dim=1).values
    if state is None:
        previous, h0 = torch.cat([m[:, :1], m[:, :-1]], 1), None  # the first step's transition meets a zero state
    else:
        m0, u0, w0 = state
        m = torch.maximum(m, m0[:, None])
        previous, h0 = torch.cat([m0[:, None], m[:, :-1]], 1), torch.cat([u0[..., None], w0], -1)
    decay = torch.exp(previous - m)  # exp(m_{t-1} - m_t), in [0, 1]
    weight = torch.exp(s - m)[..., None]  # exp(s_t - m_t), in (0, 1]
    h, h_last = linear_scan(decay[..., None], torch.cat([weight, weight * v], -1), h0)
    o = h[..., 1:] / h[..., :1]
    return o.to(out_dtype), (m[:, -1], h_last[..., 0], h_last[..., 1:])


def softmax_scan_operator(s: Tensor) -> Tensor:
    """The scan from no tokens as a matrix: ``o_t = Σ_{i<=t} M[:, :, t, i] v_i``.

    ``M[b, h, t, i] = exp(s_i - logsumexp_{j<=t} s_j)`` for ``i <= t``, 0 above the
    diagonal: the causal softmax of the scores. ``s`` ``(batch, time, heads)``;
    returns ``(batch, heads, time, time)``.
    """
    scores = s.transpose(1, 2)[..., None, :].expand(*s.shape[:1], s.shape[2], s.shape[1], s.shape[1])
    causal = torch.ones(s.shape[1], s.shape[1], dtype=torch.bool, device=s.device).tril()
    return torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
