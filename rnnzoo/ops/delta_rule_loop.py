"""The delta rule's fused loop: the recurrence step by step in the batch-last layout, with a hand-written backward.

``S_t = α_t (I - β_t k_t k_t^T) S_{t-1} + β_t k_t v_t^T``, ``o_t = S_t^T q_t`` (:mod:`rnnzoo.ops.delta_rule`),
with ``n >= 1`` delta steps per token as DeltaProduct: the decay before a token's first, the read-out after
its last. Per delta step, ``e = v - P^T k`` and ``P ← P + (β k) e^T`` from ``P = α_t S_{t-1}``. Over tens of
steps with thin heads this beats the chunkwise form, whose time there goes to thousands of tiny matmuls:
each step here is a few element-wise passes over the ``(d_k, d_v, B·H)`` state (:mod:`rnnzoo.ops.batch_last`).

The forward keeps the state after every delta step. The backward carries ``G = ∂L/∂S`` from the end::

    per token:       G += q_t dO_t^T,   dq_t = S_t dO_t
    per delta step:  de = G^T (βk),   d(βk) = G e,   dk = -P de + β d(βk),   dβ = k · d(βk),   dv = de,
                     G ← G - k de^T   (∂L/∂P before the step)
    per token:       d log α_t = <G, α_t S_{t-1}>,   G ← α_t G

and ``∂L/∂h0`` is the last ``G``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .batch_last import from_batch_last, to_batch_last
from .opaque import traceable

__all__ = ["delta_rule_loop"]


class _DeltaRuleLoop(torch.autograd.Function):
    """Inputs as :func:`delta_rule_loop` (``log_alpha`` and ``h0`` may be ``None``); double backward raises."""

    @staticmethod
    def forward(ctx, q, k, v, beta, log_alpha, h0):
        batch, heads, length, d_k = q.shape
        steps, d_v = v.shape[2:]
        n = steps // length  # delta steps per token
        q_, k_, v_, beta_ = map(to_batch_last, (q, k, v, beta))  # (T, d, N) / (T·n, d, N), beta (T·n, N)
        alpha = None if log_alpha is None else to_batch_last(log_alpha).exp()
        states = k_.new_empty(steps + 1, d_k, d_v, beta_.shape[-1])  # the state after each delta step
        states[0] = 0 if h0 is None else to_batch_last(h0.unsqueeze(2))[0]
        bk = k_ * beta_[:, None]
        # per-step views, made once: k, q, βk as (d_k, 1, N) columns, v as a (1, d_v, N) row
        ks, qs, bks = k_.unsqueeze(2).unbind(0), q_.unsqueeze(2).unbind(0), bk.unsqueeze(2).unbind(0)
        vs, sts = v_.unsqueeze(1).unbind(0), states.unbind(0)
        alphas = [None] * length if alpha is None else alpha.unbind(0)
        # one workspace for every (d_k, d_v, N) product (it stays in cache); results are gathered, then stacked
        work = torch.empty_like(states[0])
        errs, outs = [], []
        for t, a_t in enumerate(alphas):
            # P = α S_{t-1} goes where the token's first delta step writes, which then updates it in place
            S = sts[t * n] if a_t is None else torch.mul(sts[t * n], a_t, out=sts[t * n + 1])
            for i in range(t * n, (t + 1) * n):
                errs.append(vs[i] - torch.mul(S, ks[i], out=work).sum(0, keepdim=True))
                if S is sts[i + 1]:
                    S.addcmul_(bks[i], errs[-1])
                else:
                    S = torch.addcmul(S, bks[i], errs[-1], out=sts[i + 1])
            outs.append(torch.mul(S, qs[t], out=work).sum(0))
        err = torch.stack(errs)  # (T·n, 1, d_v, N)
        ctx.save_for_backward(q_, k_, beta_, bk, alpha, states, err)
        ctx.dims = batch, heads, h0 is not None
        return from_batch_last(torch.stack(outs), batch, heads), from_batch_last(states[-1].clone(), batch, heads)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_last):
        q_, k_, beta_, bk, alpha, states, err = ctx.saved_tensors
        batch, heads, has_h0 = ctx.dims
        length, steps = q_.shape[0], k_.shape[0]
        n = steps // length
        G = to_batch_last(grad_last.unsqueeze(2))[0].clone()  # ∂L/∂S, carried back (updated in place)
        ks, qs, bks = k_.unsqueeze(2).unbind(0), q_.unsqueeze(2).unbind(0), bk.unsqueeze(2).unbind(0)
        errs, sts = err.unbind(0), states.unbind(0)
        d_outs = to_batch_last(grad_out).unsqueeze(1).unbind(0)
        alphas = [None] * length if alpha is None else alpha.unbind(0)
        work = torch.empty_like(G)
        grad_q, d_errs, d_bks, minus_grad_k, grad_log_alpha = [], [], [], [], []  # in reverse order
        for t, a_t in reversed(list(enumerate(alphas))):
            G.addcmul_(qs[t], d_outs[t])
            grad_q.append(torch.mul(sts[(t + 1) * n], d_outs[t], out=work).sum(1))
            for i in reversed(range(t * n, (t + 1) * n)):  # P (= α S_{t-1} at a token's first step) as α times S
                d_errs.append(torch.mul(G, bks[i], out=work).sum(0, keepdim=True))
                d_bks.append(torch.mul(G, errs[i], out=work).sum(1))
                minus_grad_k.append(torch.mul(sts[i], d_errs[-1], out=work).sum(1))
                G.addcmul_(ks[i], d_errs[-1], value=-1)
            if a_t is not None:
                minus_grad_k[-1].mul_(a_t)
                grad_log_alpha.append(torch.mul(G, sts[t * n], out=work).sum((0, 1)).mul_(a_t))
                G.mul_(a_t)
        stack = lambda ts: torch.stack(ts[::-1]) if ts else None
        d_err, d_bk = stack(d_errs).squeeze(1), stack(d_bks)
        grad_k = torch.addcmul(stack(minus_grad_k).neg_(), d_bk, beta_[:, None])
        grad_beta = (d_bk * k_).sum(1)
        back = lambda t: None if t is None else from_batch_last(t, batch, heads)
        return (
            back(stack(grad_q)), back(grad_k), back(d_err), back(grad_beta), back(stack(grad_log_alpha)),
            from_batch_last(G, batch, heads) if has_h0 else None,
        )  # fmt: skip


def _shapes(q, k, v, beta, log_alpha, h0) -> tuple[Tensor, Tensor]:
    batch, heads, length, d_k = q.shape
    return v.new_empty(batch, heads, length, v.shape[-1]), v.new_empty(batch, heads, d_k, v.shape[-1])


_delta_rule_loop = traceable(_DeltaRuleLoop, _shapes)


def delta_rule_loop(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_alpha: Tensor | None = None, h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The fused loop on checked inputs of one dtype, with ``n = k.shape[2] // q.shape[2]`` delta steps per
    token: ``q`` ``(B, H, T, d_k)`` and ``log_alpha`` ``(B, H, T)`` (or ``None``) per token, ``k`` ``(B, H, T·n,
    d_k)``, ``v`` ``(B, H, T·n, d_v)`` and ``beta`` ``(B, H, T·n)`` per delta step, ``h0`` ``(B, H, d_k, d_v)``
    or ``None``. Returns the outputs ``(B, H, T, d_v)`` and the final state. :func:`~rnnzoo.ops.delta_rule`
    runs it (``n = 1``) at small shapes, the delta-rule engine with DeltaProduct's sub-steps."""
    return _delta_rule_loop(q, k, v, beta, log_alpha, h0)
