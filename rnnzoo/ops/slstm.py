"""Engine 1 for sLSTM: the stabilised scalar-memory LSTM of xLSTM, run step by step.

Beck et al. (2024), "xLSTM: Extended Long Short-Term Memory", eqs. (8)-(17), and
Pöppel et al. (2024), FlashRNN. Per head, with pre-activations
``(ĩ, f̃, z̃, õ)_t = g_t + R^T h_{t-1}`` (``g_t = W x_t + b`` computed by the caller
for all t at once, ``R`` one ``d_head × 4 d_head`` block per head)::

    log f_t = log σ(f̃_t)   (or f̃_t for the exponential forget gate)
    m_t  = max(log f_t + m_{t-1}, ĩ_t)          # stabiliser: the log of the running scale
    i'_t = exp(ĩ_t - m_t),   f'_t = exp(log f_t + m_{t-1} - m_t)
    c_t  = f'_t c_{t-1} + i'_t tanh(z̃_t)
    n_t  = f'_t n_{t-1} + i'_t
    h_t  = σ(õ_t) c_t / n_t

``c_t, n_t`` are the true cell and normaliser times ``exp(-m_t)``, so ``h_t`` is the
unstabilised ``σ(õ) C_t / N_t`` while nothing overflows. The zero state has
``m_0 = -inf`` (the log of ``N_0 = 0``), so the first step sets ``m_1 = ĩ_1`` and
``n_t >= 1`` from then on: ``h`` never divides by a vanishing normaliser.

Two forms: :func:`slstm_reference`, the loop above under autograd, and :func:`slstm`,
the same loop with the input-side work hoisted, one batched matmul per step for
``R^T h``, gates and states written into preallocated buffers, and a hand-written
backward-through-time loop (the exact gradient, ``m``'s ``max`` included, ties split
as ``torch.maximum`` does) that reads those buffers and computes its per-step factors
for all steps at once. (``torch.compile`` of the per-step math is not used: its per-call
overhead is about that of the few eager ops it would fuse.)

Both compute in float32 or float64; layers run half-precision inputs in float32.

Layouts: ``gates`` ``(batch, time, heads, 4, d_head)`` in gate order (i, f, z, o);
``R`` ``(heads, d_head, 4, d_head)``; every state tensor ``(batch, heads, d_head)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .opaque import traceable

__all__ = ["FORGET_GATES", "slstm", "slstm_initial_state", "slstm_reference"]

FORGET_GATES = ("sigmoid", "exp")  # log f = logsigmoid(f̃) (xLSTM's code) or f̃ (the paper's alternative)

SLSTMStateTuple = tuple[Tensor, Tensor, Tensor, Tensor]  # (h, c, n, m)


def slstm_initial_state(batch: int, heads: int, d_head: int, **tensor_kw) -> SLSTMStateTuple:
    """The zero state ``(h, c, n, m) = (0, 0, 0, -inf)``, each ``(batch, heads, d_head)``."""
    zeros = [torch.zeros(batch, heads, d_head, **tensor_kw) for _ in range(3)]
    return (*zeros, torch.full((batch, heads, d_head), float("-inf"), **tensor_kw))


def _check(gates: Tensor, R: Tensor, state: SLSTMStateTuple | None, forget_gate: str) -> SLSTMStateTuple:
    """Validate the engine's arguments (naming the bad one); return the initial state."""
    where = "slstm"
    for name, t in (("gates", gates), ("R", R)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{where}: `{name}` must be a floating-point torch.Tensor")
    if gates.dim() != 5 or gates.shape[3] != 4:
        raise ValueError(f"{where}: `gates` must have shape (batch, time, heads, 4, d_head), got {tuple(gates.shape)}")
    batch, length, heads, _, d_head = gates.shape
    if length == 0:
        raise ValueError(f"{where}: the time dimension (dim 1) of `gates` is empty; need at least one step")
    if R.shape != (heads, d_head, 4, d_head):
        want = (heads, d_head, 4, d_head)
        raise ValueError(f"{where}: `R` must have shape (heads, d_head, 4, d_head) = {want}, got {tuple(R.shape)}")
    if gates.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{where}: `gates` must be float32 or float64 (for the stabiliser's range), got {gates.dtype}")
    if R.dtype != gates.dtype:
        raise TypeError(f"{where}: `R` has dtype {R.dtype} but `gates` has {gates.dtype}")
    if forget_gate not in FORGET_GATES:
        raise ValueError(f"{where}: `forget_gate` must be one of {FORGET_GATES}, got {forget_gate!r}")
    if state is None:
        return slstm_initial_state(batch, heads, d_head, device=gates.device, dtype=gates.dtype)
    if len(state) != 4:
        raise ValueError(f"{where}: `state` must be a tuple (h, c, n, m), got {len(state)} items")
    for name, t in zip("hcnm", state):
        if not isinstance(t, Tensor) or t.shape != (batch, heads, d_head) or t.dtype != gates.dtype:
            got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
            want = (batch, heads, d_head)
            raise ValueError(f"{where}: state `{name}` must be a {gates.dtype} tensor of shape {want}, got {got}")
    return tuple(state)


def _softplus(x: Tensor) -> Tensor:
    """``log(1 + e^x)``, so ``log σ(x) = -softplus(-x)``. Used per step in place of ``F.logsigmoid``, whose CPU
    kernel opens a parallel region at any size (costly on tiny tensors). The threshold 40 (above which
    softplus returns x) keeps it exact to rounding in float32 and float64."""
    return F.softplus(x, threshold=40.0)


def slstm_reference(
    gates: Tensor, R: Tensor, state: SLSTMStateTuple | None = None, forget_gate: str = "sigmoid"
) -> tuple[Tensor, SLSTMStateTuple]:
    """The recurrence one step at a time under autograd (the reference and ``step``'s path).

    Returns ``h`` ``(batch, time, heads, d_head)`` and the final ``(h, c, n, m)``.
    """
    h, c, n, m = _check(gates, R, state, forget_gate)
    hs = []
    for g_t in gates.unbind(1):
        i_raw, f_raw, z_raw, o_raw = (g_t + torch.einsum("bhd,hdge->bhge", h, R)).unbind(2)
        log_f_plus_m = (F.logsigmoid(f_raw) if forget_gate == "sigmoid" else f_raw) + m
        m_new = torch.maximum(log_f_plus_m, i_raw)
        i, f = torch.exp(i_raw - m_new), torch.exp(log_f_plus_m - m_new)
        c = f * c + i * torch.tanh(z_raw)
        n = f * n + i
        h = torch.sigmoid(o_raw) * c / n
        m = m_new
        hs.append(h)
    return torch.stack(hs, 1), (h, c, n, m)


def slstm(
    gates: Tensor, R: Tensor, state: SLSTMStateTuple | None = None, forget_gate: str = "sigmoid"
) -> tuple[Tensor, SLSTMStateTuple]:
    """The fast sequential form with a hand-written backward; same arguments and results as :func:`slstm_reference`."""
    h0, c0, n0, m0 = _check(gates, R, state, forget_gate)
    hs, c, n, m = _slstm(gates, R, h0, c0, n0, m0, forget_gate == "exp")
    return hs, (hs[:, -1], c, n, m)


class _SLSTMFunction(torch.autograd.Function):
    """The loop with its tensors kept time-major, ``(time, heads, batch, ·)``: each step's ``R^T h`` is one
    ``baddbmm`` over heads, and each step writes its gates and states into slices of preallocated buffers
    (unbound once into per-step views), which the backward pass reads instead of recomputing them."""

    @staticmethod
    def forward(ctx, gates: Tensor, R: Tensor, h0: Tensor, c0: Tensor, n0: Tensor, m0: Tensor, exp_forget: bool):
        batch, length, heads, _, d_head = gates.shape
        R_flat = R.reshape(heads, d_head, 4 * d_head)
        raw = gates.new_empty(length, heads, batch, 4, d_head)  # g_t, then the pre-activations (ĩ, f̃, z̃, õ)
        raw.copy_(gates.permute(1, 2, 0, 3, 4))  # one time-major copy: each step adds R^T h in place
        activations = [gates.new_empty(length, heads, batch, d_head) for _ in range(4)]  # i', f', tanh z̃, σ(õ)
        states = [gates.new_empty(length + 1, heads, batch, d_head) for _ in range(4)]  # h, c, n, m from t = 0
        for buffer, s0 in zip(states, (h0, c0, n0, m0)):
            buffer[0] = s0.transpose(0, 1)
        # per-step views: x[t] is step t's slice (states: h[t] is h_{t-1} of step t, h[t + 1] its result)
        raw_flat = raw.flatten(-2).unbind(0)
        i_raw, f_raw, z_raw, o_raw = (x.unbind(0) for x in raw.unbind(3))
        i, f, z, o = (x.unbind(0) for x in activations)
        h, c, n, m = (x.unbind(0) for x in states)
        neg_log_f = []  # -log f_t = softplus(-f̃_t), kept for the sigmoid gate's derivative σ(-f̃) = -expm1(log f)
        for t in range(length):
            raw_flat[t].baddbmm_(h[t], R_flat)
            if exp_forget:
                a = f_raw[t] + m[t]  # log f_t + m_{t-1}
            else:
                neg_log_f.append(_softplus(f_raw[t].neg()))
                a = m[t] - neg_log_f[-1]
            torch.maximum(a, i_raw[t], out=m[t + 1])
            torch.sub(i_raw[t], m[t + 1], out=i[t]).exp_()
            torch.sub(a, m[t + 1], out=f[t]).exp_()
            torch.addcmul(torch.tanh(z_raw[t], out=z[t]).mul(i[t]), f[t], c[t], out=c[t + 1])
            torch.addcmul(i[t], f[t], n[t], out=n[t + 1])
            torch.mul(torch.sigmoid(o_raw[t], out=o[t]), c[t + 1], out=h[t + 1]).div_(n[t + 1])
        ctx.save_for_backward(raw, *activations, *states, R, *neg_log_f)
        ctx.exp_forget = exp_forget
        hs, cs, ns, ms = states
        final = (buffer[-1].transpose(0, 1).contiguous() for buffer in (cs, ns, ms))
        return hs[1:].permute(2, 0, 1, 3).contiguous(), *final

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_hs: Tensor, grad_c: Tensor, grad_n: Tensor, grad_m: Tensor):
        raw, i, f, z, o, hs, cs, ns, ms, R, *neg_log_f = ctx.saved_tensors
        length, heads, batch, _, d_head = raw.shape
        R_flat_t = R.reshape(heads, d_head, 4 * d_head).transpose(1, 2)
        neg_log_f = None if ctx.exp_forget else torch.stack(neg_log_f)
        coefficients = _backward_coefficients(raw, i, f, z, o, hs, cs, ns, ms, neg_log_f)
        d_gates = raw.new_empty(raw.shape)  # ∂/∂(ĩ, f̃, z̃, õ)
        # per-step views, as in forward
        dh_out = grad_hs.permute(1, 2, 0, 3).clone(memory_format=torch.contiguous_format)  # time-major, ours
        d_gates_flat, dh_out, f = d_gates.flatten(-2).unbind(0), dh_out.unbind(0), f.unbind(0)
        d_i, d_f, d_z, d_o = (x.unbind(0) for x in d_gates.unbind(3))
        k_o, k_c, k_n, k_z, k_ac, k_an, route, k_f = (x.unbind(0) for x in coefficients)
        dc, dn, dm = (g.transpose(0, 1).clone() for g in (grad_c, grad_n, grad_m))  # ∂ of c_t, n_t, m_t
        for t in range(length - 1, -1, -1):
            dh = dh_out[t] if t == length - 1 else dh_out[t].baddbmm_(d_gates_flat[t + 1], R_flat_t)  # ∂h_t
            torch.mul(dh, k_o[t], out=d_o[t])
            dc.addcmul_(dh, k_c[t])
            dn.addcmul_(dh, k_n[t])
            torch.mul(dc, k_z[t], out=d_z[t])
            da = torch.mul(dc, k_ac[t]).addcmul_(dn, k_an[t]).addcmul_(dm, route[t])  # ∂a_t
            torch.mul(da, k_f[t], out=d_f[t])
            torch.sub(dm, da, out=d_i[t])  # ∂ĩ = ∂m_t - ∂a_t: what exp(ĩ - m) and the max leave to ĩ
            dm = da
            dc.mul_(f[t])
            dn.mul_(f[t])
        dh0 = torch.bmm(d_gates_flat[0], R_flat_t)
        h_prev = hs[:-1].permute(1, 3, 0, 2).reshape(heads, d_head, length * batch)
        dR = torch.bmm(h_prev, d_gates.flatten(-2).transpose(0, 1).reshape(heads, length * batch, 4 * d_head))
        initial = (g.transpose(0, 1) for g in (dh0, dc, dn, dm))
        return d_gates.permute(2, 0, 1, 3, 4), dR.view(R.shape), *initial, None



def _slstm_shapes(gates, R, h0, c0, n0, m0, exp_forget) -> tuple[Tensor, ...]:
    batch, length, heads, _, d_head = gates.shape
    return gates.new_empty(batch, length, heads, d_head), *(gates.new_empty(batch, heads, d_head) for _ in range(3))


_slstm = traceable(_SLSTMFunction, _slstm_shapes)

def _backward_coefficients(
    raw: Tensor, i: Tensor, f: Tensor, z: Tensor, o: Tensor, hs: Tensor, cs: Tensor, ns: Tensor, ms: Tensor,
    neg_log_f: Tensor | None,
) -> tuple[Tensor, ...]:
    """The per-step factors of the backward loop, for all steps at once, each ``(T, H, B, d_head)``.

    With ``a_t = log f_t + m_{t-1}`` and ``route_t`` the share of ``∂m_t`` that the ``max`` sends to
    ``a_t`` (1, 0, or 1/2 on a tie, as ``torch.maximum``), one step back is::

        ∂õ = ∂h · h (1 - σ(õ)),    ∂c += ∂h · σ(õ) / n,    ∂n += -∂h · h / n,    ∂z̃ = ∂c · i' (1 - z²)
        ∂a = ∂c (c_{t-1} f' - route c_t) + ∂n (n_{t-1} f' - route n_t) + ∂m · route
        ∂f̃ = ∂a · σ(-f̃)  (∂a for the exp gate),    ∂ĩ = ∂m - ∂a
        ∂m_{t-1} = ∂a,    ∂c_{t-1} = f' ∂c,    ∂n_{t-1} = f' ∂n

    Returns the factors of ``∂õ, ∂h->∂c, ∂h->∂n, ∂z̃, ∂c->∂a, ∂n->∂a``, then ``route`` and ``∂a->∂f̃``.
    """
    m_prev = ms[:-1]
    a = m_prev + raw[:, :, :, 1] if neg_log_f is None else m_prev - neg_log_f
    route = torch.sign(a - raw[:, :, :, 0]).add_(1).mul_(0.5)
    h, c, n = hs[1:], cs[1:], ns[1:]
    k_f = torch.ones_like(f) if neg_log_f is None else torch.expm1(-neg_log_f).neg_()  # σ(-f̃) = 1 - σ(f̃)
    return (
        h - h * o,
        o / n,
        -h / n,
        i - i * z * z,
        cs[:-1] * f - route * c,
        ns[:-1] * f - route * n,
        route,
        k_f,
    )
