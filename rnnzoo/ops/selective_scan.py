"""Engine 2, selective form: Mamba's scan without its ``(batch, time, d_inner, d_state)`` tensors.

Gu and Dao (2023), "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces", section 3.3 (the hardware-aware scan). Per inner channel ``d`` and
state entry ``n``::

    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t        h_t ∈ R^{d_inner × d_state}
    y_t = C_t · h_t + D ⊙ u_t                       (sum over the state entries)

with ``u_t, Δ_t ∈ R^{d_inner}``, ``B_t, C_t ∈ R^{d_state}`` and ``A`` ``(d_inner, d_state)``
(zero-order hold for ``A``, Euler for ``B``). With ``negative_eigenvalues`` the
transition is ``2 exp(Δ_t A) - 1 ∈ (-1, 1)`` instead (Grazzi et al. 2024).

Written as :func:`~rnnzoo.ops.linear_scan` it needs the discretised
``a_t = exp(Δ_t A)``, ``b_t = Δ_t B_t u_t`` and the states ``h_t``, each
``d_state`` times the size of the input, in the forward and again as gradients
in the backward; on a CPU the element-wise passes over them are most of the
layer's time. Two forms, equal to float tolerance:

* :func:`selective_scan_reference` - a Python loop over time that discretises
  one step at a time (autograd differentiates it).
* :func:`selective_scan` - the same recurrence cut into chunks of time with a
  hand-written backward. Only one chunk's ``a``, ``b``, ``h`` and ``dL/dh``
  ``(chunk, batch, d_state, d_inner)`` exist at once; the forward saves its
  inputs and the state at each chunk's start, and the backward recomputes the
  chunk from there (the paper's recomputation, done per chunk instead of in
  SRAM). Memory beyond the inputs is ``d_state · d_inner`` per chunk, not per
  token.

Gradients (per chunk, backwards over the chunks). With ``r_t = dL/dh_t`` and
``q_t = a_t ⊙ r_t``::

    r_t = C_t ⊗ dy_t + q_{t+1}                          (a reverse scan, q carried across chunks)
    dC_t = Σ_d h_t dy_t,   dB_t = Σ_d r_t Δ_t u_t,   d(Δu)_t = Σ_n r_t B_t
    X_t = q_t ⊙ h_{t-1}   (r_t ⊙ h_{t-1} ⊙ 2 exp(Δ_t A) = (q_t + r_t) ⊙ h_{t-1} with negative eigenvalues)
    dΔ_t = Σ_n X_t A + u_t d(Δu)_t,   dA = Σ_{b,t} X_t Δ_t,   dh_0 = q_1

Choices. Inside a chunk the state is laid out ``(time, batch, d_state,
d_inner)``: each step is one contiguous block, and every sum over ``d_state``
or ``d_inner`` except ``Σ_n X_t A`` is a batched row-vector product
(``C_t^T h_t``, ``dy_t^T h_t^T``), which reads the block once. ``exp(x)`` is
computed as ``exp2(x log2 e)``, the same value to rounding and a faster kernel
in PyTorch's CPU build. The chunk holds about 2^18 state entries (a few blocks
of that size fit in a core's L2 cache) unless ``chunk_size`` says otherwise;
every block of that size lives in a workspace reused by all chunks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_int
from .dtypes import compute_dtype, output_dtype
from .opaque import traceable

__all__ = ["default_selective_chunk", "selective_scan", "selective_scan_reference", "selective_transition"]

_LOG2_E = 1.0 / math.log(2.0)


# ----------------------------------------------------------------------------
# input checking shared by both forms


def _check_inputs(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, h0: Tensor | None
) -> tuple[Tensor, ...]:
    """Validate shapes; return every input cast to one real compute dtype (half precision -> float32)."""
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "h0": h0}
    for name, t in named.items():
        if t is not None and not (isinstance(t, Tensor) and t.is_floating_point()):
            got = f"dtype {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
            raise TypeError(f"selective_scan: `{name}` must be a real floating-point torch.Tensor, got {got}")
    if u.dim() != 3 or u.shape[1] == 0:
        raise ValueError(f"selective_scan: `u` must be (batch, time, d_inner) with time >= 1, got {tuple(u.shape)}")
    batch, length, d_inner = u.shape
    if A.dim() != 2 or A.shape[0] != d_inner:
        raise ValueError(f"selective_scan: `A` must be (d_inner, d_state) = ({d_inner}, d_state), got {tuple(A.shape)}")
    d_state = A.shape[1]
    expected = {
        "delta": (u.shape, delta),
        "B": ((batch, length, d_state), B),
        "C": ((batch, length, d_state), C),
        "D": ((d_inner,), D),
        "h0": ((batch, d_inner, d_state), h0),
    }
    for name, (shape, t) in expected.items():
        if t is not None and tuple(t.shape) != tuple(shape):
            raise ValueError(f"selective_scan: `{name}` must have shape {tuple(shape)}, got {tuple(t.shape)}")
    dtype = compute_dtype(*(t.dtype for t in (u, delta, A, B, C, D, h0) if t is not None))
    return tuple(None if t is None else t.to(dtype) for t in (u, delta, A, B, C, D, h0))


# ----------------------------------------------------------------------------
# recurrent form


def selective_transition(delta: Tensor, A: Tensor, negative_eigenvalues: bool = False) -> Tensor:
    """The discretised transition ``a = exp(Δ A)`` (zero-order hold), or ``2 exp(Δ A) - 1`` with
    ``negative_eigenvalues``: ``delta`` ``(..., d_inner)`` and ``A`` ``(d_inner, d_state)`` give
    ``(..., d_inner, d_state)``."""
    a = torch.exp(delta.unsqueeze(-1) * A)
    return 2 * a - 1 if negative_eigenvalues else a


def selective_scan_reference(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    h0: Tensor | None = None,
    *,
    negative_eigenvalues: bool = False,
) -> tuple[Tensor, Tensor]:
    """Reference loop for the selective scan (differentiated by autograd), one step discretised at a time.

    Args:
        u: input ``(batch, time, d_inner)``.
        delta: step sizes ``Δ`` ``(batch, time, d_inner)`` (positive in Mamba, after softplus).
        A: continuous-time transition ``(d_inner, d_state)`` (negative in Mamba).
        B, C: input and output projections ``(batch, time, d_state)``.
        D: skip ``(d_inner,)``, or ``None`` for none.
        h0: initial state ``(batch, d_inner, d_state)``; zeros if ``None``.
        negative_eigenvalues: transition ``2 exp(Δ_t A) - 1`` instead of ``exp(Δ_t A)``.

    Returns:
        ``(y, h_last)``: ``y`` ``(batch, time, d_inner)`` and the final state ``(batch, d_inner, d_state)``.
    """
    out_dtype = u.dtype
    u, delta, A, B, C, D, h0 = _check_inputs(u, delta, A, B, C, D, h0)
    h = u.new_zeros(u.shape[0], *A.shape) if h0 is None else h0
    ys = []
    for u_t, d_t, B_t, C_t in zip(u.unbind(1), delta.unbind(1), B.unbind(1), C.unbind(1)):
        a_t = selective_transition(d_t, A, negative_eigenvalues)
        h = a_t * h + (d_t * u_t).unsqueeze(-1) * B_t.unsqueeze(-2)
        ys.append((h * C_t.unsqueeze(-2)).sum(-1))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + D * u
    return y.to(output_dtype(out_dtype, y.dtype)), h


# ----------------------------------------------------------------------------
# chunked form


def default_selective_chunk(batch: int, d_inner: int, d_state: int) -> int:
    """Steps per chunk: about 2^18 state entries (``chunk · batch · d_state · d_inner``), clamped to [1, 64].

    Smaller chunks keep the chunk's few ``(chunk, batch, d_state, d_inner)`` blocks near the cache; larger ones
    spend fewer Python-level operations per step.
    """
    return int(min(64, max(1, 2**18 // max(1, batch * d_state * d_inner))))


def _transition(delta: Tensor, A2: Tensor, negative_eigenvalues: bool, out: Tensor) -> Tensor:
    """:func:`selective_transition` in the chunked form's layout, written into ``out`` ``(l, batch, d_state,
    d_inner)``, for ``delta`` ``(l, batch, d_inner)`` and ``A2 = A log2(e)`` ``(d_state, d_inner)``."""
    torch.mul(delta.unsqueeze(-2), A2, out=out)
    out.exp2_()
    if negative_eigenvalues:
        out.mul_(2).sub_(1)
    return out


def _chunk_states(a: Tensor, v: Tensor, B: Tensor, h: Tensor) -> Tensor:
    """Run one chunk from the start state already in ``h[0]``, writing ``h[1:]`` in place; returns ``h``.

    ``a`` ``(l, batch, d_state, d_inner)``, ``v = Δ u`` ``(l, batch, d_inner)``, ``B`` ``(l, batch, d_state)``,
    ``h`` ``(l + 1, batch, d_state, d_inner)``.
    """
    torch.mul(B.unsqueeze(-1), v.unsqueeze(-2), out=h[1:])  # b_t = Δ_t u_t B_t
    for t in range(a.shape[0]):
        torch.addcmul(h[t + 1], a[t], h[t], out=h[t + 1])
    return h


def _time_major(*xs: Tensor) -> tuple[Tensor, ...]:
    """``(batch, time, k) -> (time, batch, k)``, contiguous."""
    return tuple(x.transpose(0, 1).contiguous() for x in xs)


def _chunks(length: int, chunk: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` covering ``range(length)`` in steps of ``chunk``."""
    return [(s, min(s + chunk, length)) for s in range(0, length, chunk)]


class _SelectiveScan(torch.autograd.Function):
    """Chunked selective scan: saves inputs and chunk-start states, recomputes each chunk in the backward.

    Every ``(chunk, batch, d_state, d_inner)`` block lives in a workspace allocated once per call and reused by
    every chunk (``out=`` and in-place operations), so the blocks stay where the cache has them.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, h0, negative_eigenvalues: bool, chunk: int):
        uT, dT, BT, CT = _time_major(u, delta, B, C)  # (T, batch, ·)
        length, batch, d_inner = uT.shape
        d_state = A.shape[1]
        chunk = min(chunk, length)
        A2 = (A * _LOG2_E).t().contiguous()  # (d_state, d_inner)
        vT = dT * uT
        spans = _chunks(length, chunk)
        starts = u.new_empty(len(spans), batch, d_state, d_inner)  # the state at each chunk's start
        work_a = u.new_empty(chunk, batch, d_state, d_inner)
        work_h = u.new_empty(chunk + 1, batch, d_state, d_inner)
        if h0 is None:
            work_h[0].zero_()
        else:
            work_h[0].copy_(h0.transpose(1, 2))
        yT = torch.empty_like(uT)
        for j, (s, e) in enumerate(spans):
            starts[j].copy_(work_h[0])
            a = _transition(dT[s:e], A2, negative_eigenvalues, work_a[: e - s])
            h = _chunk_states(a, vT[s:e], BT[s:e], work_h[: e - s + 1])
            torch.matmul(CT[s:e].unsqueeze(-2), h[1:], out=yT[s:e].unsqueeze(-2))  # y_t = C_t · h_t
            work_h[0].copy_(h[-1])
        if D is not None:
            yT.addcmul_(uT, D)
        ctx.negative_eigenvalues, ctx.chunk = negative_eigenvalues, chunk
        ctx.has_D, ctx.has_h0 = D is not None, h0 is not None
        ctx.save_for_backward(uT, dT, A, BT, CT, D, starts)
        return yT.transpose(0, 1), work_h[0].transpose(1, 2).clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor, grad_last: Tensor):
        uT, dT, A, BT, CT, D, starts = ctx.saved_tensors
        length, batch, d_inner = uT.shape
        d_state, chunk = A.shape[1], ctx.chunk
        A2 = (A * _LOG2_E).t().contiguous()
        At = A.t().contiguous()
        vT = dT * uT
        gT = grad_y.transpose(0, 1).contiguous()  # dL/dy, (T, batch, d_inner)
        g_v, g_B, g_C = torch.empty_like(uT), torch.empty_like(BT), torch.empty_like(CT)
        g_delta = torch.empty_like(dT)
        work_a, work_r, work_q = (uT.new_empty(chunk, batch, d_state, d_inner) for _ in range(3))
        work_h = uT.new_empty(chunk + 1, batch, d_state, d_inner)
        sum_A = uT.new_zeros(chunk, batch, d_state, d_inner)  # Σ over chunks of X_t Δ_t, summed once at the end
        q_next = grad_last.transpose(1, 2).contiguous()  # a_{t+1} ⊙ r_{t+1} arriving at the chunk's last step
        for j, (s, e) in reversed(list(enumerate(_chunks(length, chunk)))):
            l = e - s
            a = _transition(dT[s:e], A2, ctx.negative_eigenvalues, work_a[:l])
            work_h[0].copy_(starts[j])
            h = _chunk_states(a, vT[s:e], BT[s:e], work_h[: l + 1])
            r, q, g, C_t = work_r[:l], work_q[:l], gT[s:e].unsqueeze(-2), CT[s:e].unsqueeze(-1)
            # r_t = C_t ⊗ dy_t + q_{t+1},  q_t = a_t ⊙ r_t
            for t in range(l - 1, -1, -1):
                torch.addcmul(q[t + 1] if t < l - 1 else q_next, C_t[t], g[t], out=r[t])
                torch.mul(a[t], r[t], out=q[t])
            q_next = q[0].clone()
            torch.matmul(BT[s:e].unsqueeze(-2), r, out=g_v[s:e].unsqueeze(-2))  # Σ_n B_t r_t
            torch.matmul(vT[s:e].unsqueeze(-2), r.transpose(-1, -2), out=g_B[s:e].unsqueeze(-2))  # Σ_d r_t Δ_t u_t
            torch.matmul(g, h[1:].transpose(-1, -2), out=g_C[s:e].unsqueeze(-2))  # Σ_d h_t dy_t
            # X_t = r_t ⊙ h_{t-1} ⊙ ∂a_t/∂(Δ_t A), written over q
            if ctx.negative_eigenvalues:
                q.add_(r)  # r ⊙ (a + 1)
            X = q.mul_(h[:-1])
            sum_A[:l].addcmul_(X, dT[s:e].unsqueeze(-2))
            torch.sum(X.mul_(At), dim=-2, out=g_delta[s:e])
        g_delta.addcmul_(g_v, uT)
        g_u = g_v.mul_(dT)
        g_D = None
        if ctx.has_D:
            g_u.addcmul_(gT, D)
            g_D = (gT * uT).sum((0, 1))
        g_h0 = q_next.transpose(1, 2) if ctx.has_h0 else None
        return (
            g_u.transpose(0, 1), g_delta.transpose(0, 1), sum_A.sum((0, 1)).t(), g_B.transpose(0, 1),
            g_C.transpose(0, 1), g_D, g_h0, None, None,
        )  # fmt: skip



def _selective_scan_shapes(u, delta, A, B, C, D, h0, negative_eigenvalues, chunk) -> tuple[Tensor, Tensor]:
    return torch.empty_like(u), u.new_empty(u.shape[0], u.shape[2], A.shape[1])


_selective_scan = traceable(_SelectiveScan, _selective_scan_shapes)

def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    h0: Tensor | None = None,
    *,
    negative_eigenvalues: bool = False,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunked selective scan with a hand-written backward; same contract as :func:`selective_scan_reference`.

    ``chunk_size`` (>= 1) overrides :func:`default_selective_chunk`. Half precision is computed in float32;
    ``y`` comes back in the input's precision and the final state in float32.

    Returns:
        ``(y, h_last)``: ``y`` ``(batch, time, d_inner)`` and the final state ``(batch, d_inner, d_state)``.
    """
    if chunk_size is not None:
        check_int("selective_scan", "chunk_size", chunk_size)
    out_dtype = u.dtype
    u, delta, A, B, C, D, h0 = _check_inputs(u, delta, A, B, C, D, h0)
    chunk = chunk_size or default_selective_chunk(u.shape[0], u.shape[2], A.shape[1])
    y, h_last = _selective_scan(u, delta, A, B, C, D, h0, negative_eigenvalues, chunk)
    return y.to(output_dtype(out_dtype, y.dtype)), h_last
