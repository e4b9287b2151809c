"""Engine 4: the (gated) delta rule, ``S_t = α_t (I - β_t k_t k_t^T) S_{t-1} + β_t k_t v_t^T``, ``o_t = S_t^T q_t``.

DeltaNet (Schlag et al. 2021; Yang et al. 2024, "Parallelizing Linear
Transformers with the Delta Rule over Sequence Length"), Gated DeltaNet (Yang,
Kautz, Hatamizadeh 2024) and DeltaProduct (Siems et al. 2025) reduce to it. Per
head, ``S`` is ``d_k × d_v``; ``k_t`` should be L2-normalised (the layers do it);
``β_t ∈ [0, 2]`` (``β > 1`` gives the transition a negative eigenvalue ``1 - β``);
``α_t`` is a scalar per head, given as ``log_alpha <= 0`` (``None``: α = 1).

With ``n`` delta steps per token (DeltaProduct), ``q`` and ``log_alpha`` have ``T`` steps and ``k``, ``v``,
``beta`` ``T·n``: the decay acts before each token's first delta step, the read-out after its last, and
the outputs are per token. The chunkwise form runs the ``T·n`` steps as a sequence, with ``q`` zero but on
each token's last step and ``log α`` zero but on its first.

Three forms, equal to float tolerance:

* :func:`delta_rule_reference`: the recurrent form, a loop over time.
* :func:`~rnnzoo.ops.delta_rule_loop.delta_rule_loop`: the same loop fused, in a batch-last layout with a
  hand-written backward; :func:`delta_rule` runs it where it is faster (:func:`loop_is_faster`: many thin
  heads on CPU).
* :func:`delta_rule`: the chunkwise form. Inside a chunk of C tokens, with
  ``γ_t`` the decay since the chunk start, ``Γ_ti = γ_t/γ_i`` (i <= t, else 0)
  and ``S_0`` the state before the chunk, the states are
  ``S_t = γ_t S_0 + Σ_{i<=t} Γ_ti k_i x_i^T``, where the pseudo-values ``x``
  solve the unit lower-triangular system
  ``(I + A) X = diag(β) (V - diag(γ) K S_0)``, ``A = diag(β) (K K^T ⊙ Γ)``
  strictly below the diagonal: the WY/UT form of the product of the
  Householder-like transitions. With ``T = (I + A)^{-1}``,
  ``[U, W] = T [diag(β) V, diag(βγ) K]`` (one triangular inverse, then matmuls)
  and ``X = U - W S_0``; the chunk-end state ``S_C = γ_C S_0 + K̂^T X``
  (``K̂ = K ⊙ γ_C/γ``) is carried across chunks, and the outputs are
  ``O = diag(γ) Q S_0 + P X`` with ``P = Q K^T ⊙ Γ``. Everything but the
  ``d_k × d_v`` pass over the chunks (``X`` and ``S_C``) is one batched matmul
  over all chunks. Every decay enters as a ratio ``<= 1`` (exponent <= 0): no
  overflow for any T or decay strength.

``T`` comes from blocked matmuls (:func:`_unit_lower_inverse`), and the chunkwise form has a
hand-written backward (:class:`_ChunkwiseDeltaRule`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_heads, check_int, checking_values
from .decay import log_ratios, running_sum
from .delta_rule_loop import delta_rule_loop
from .dtypes import compute_dtype, output_dtype
from .gated_linear_attention import MIN_LOG_DECAY, least_padding_chunk
from .opaque import traceable

__all__ = ["delta_rule", "delta_rule_flops", "delta_rule_reference", "loop_is_faster"]


def _check(q, k, v, beta, log_alpha, h0, where: str):
    """Checks and casts the inputs; returns them and ``n``, the delta steps per token."""
    if h0 is not None and (not isinstance(h0, Tensor) or not h0.is_floating_point()):
        raise TypeError(f"{where}: `h0` must be a floating-point torch.Tensor")
    batch, heads, steps, d_k, d_v = check_heads(where, q=k, k=k, v=v, beta=beta)
    check_heads(where, q=q, k=q, v=q, log_alpha=log_alpha)
    if q.shape[:2] != (batch, heads) or q.shape[-1] != d_k or steps % q.shape[2]:
        raise ValueError(
            f"{where}: `q` must have shape ({batch}, {heads}, T, {d_k}) with T dividing the {steps} steps of `k`, "
            f"got {tuple(q.shape)}"
        )  # fmt: skip
    if checking_values():
        low, high = (float(x) for x in torch.aminmax(beta.detach()))
        if low < 0 or high > 2:
            raise ValueError(f"{where}: `beta` must lie in [0, 2], got values in [{low:.3g}, {high:.3g}]")
        if log_alpha is not None and float(log_alpha.detach().max()) > 0:
            raise ValueError(f"{where}: `log_alpha` must be <= 0 (decays α <= 1)")
    if h0 is not None and h0.shape != (batch, heads, d_k, d_v):
        raise ValueError(f"{where}: `h0` must have shape {(batch, heads, d_k, d_v)}, got {tuple(h0.shape)}")
    dtype = compute_dtype(q.dtype)
    cast = lambda t: None if t is None else t.to(dtype)
    log_alpha = None if log_alpha is None else cast(log_alpha).clamp(min=MIN_LOG_DECAY)
    return cast(q), cast(k), cast(v), cast(beta), log_alpha, cast(h0), steps // q.shape[2]


def _per_step(q: Tensor, log_alpha: Tensor | None, n: int) -> tuple[Tensor, Tensor | None]:
    """Per-token ``q`` and ``log_alpha`` spread over ``n`` delta steps per token: ``q`` on each token's last
    step and ``log_alpha`` on its first, zeros elsewhere."""
    if n == 1:
        return q, log_alpha
    q = F.pad(q.unsqueeze(3), (0, 0, n - 1, 0)).flatten(2, 3)
    return q, None if log_alpha is None else F.pad(log_alpha.unsqueeze(-1), (0, n - 1)).flatten(2, 3)


def delta_rule_reference(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_alpha: Tensor | None = None, h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Reference loop for ``S_t = α_t (I - β_t k_t k_t^T) S_{t-1} + β_t k_t v_t^T``, ``o_t = S_t^T q_t``.

    Args:
        q: ``(batch, heads, T, d_k)``.
        k: ``(batch, heads, T·n, d_k)``, ``n >= 1`` delta steps per token (L2-normalised for the usual delta rule).
        v: ``(batch, heads, T·n, d_v)``.
        beta: ``(batch, heads, T·n)`` in ``[0, 2]``.
        log_alpha: ``(batch, heads, T)``, ``<= 0``, or ``None`` (α = 1).
        h0: initial state ``(batch, heads, d_k, d_v)``; zeros if ``None``.

    Returns:
        ``(o, S)``: ``o`` ``(batch, heads, T, d_v)`` and the final state.
    """
    out_dtype = q.dtype
    q, k, v, beta, log_alpha, h0, n = _check(q, k, v, beta, log_alpha, h0, "delta_rule_reference")
    q, log_alpha = _per_step(q, log_alpha, n)
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
    return torch.stack(outs[n - 1 :: n], 2).to(output_dtype(out_dtype, S.dtype)), S


def _decays(log_alpha: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-chunk decays from ``log_alpha`` ``(..., C)``: ``γ``, ``γ_C / γ`` and ``Γ`` ``(..., C, C)``,
    ``Γ_ti = γ_t / γ_i`` for ``i <= t``, else 0; exponents from a float64 running sum
    (:mod:`rnnzoo.ops.decay`), so a strong decay early in a chunk costs the later ratios no accuracy."""
    g = running_sum(log_alpha)
    ratio = log_ratios(log_alpha).exp_().tril_()  # above the diagonal exp(>= 0) may be inf: zeroed
    return torch.exp(g).to(log_alpha.dtype), torch.exp(g[..., -1:] - g).to(log_alpha.dtype), ratio


def _flat(t: Tensor) -> Tensor:
    """``(..., m, n)`` -> ``(batch, m, n)`` for ``bmm``."""
    return t.reshape(-1, *t.shape[-2:])


INVERSE_BLOCK = 16  # diagonal blocks of the triangular inverse


def _unit_lower_inverse(a: Tensor) -> Tensor:
    """``(I + A)^{-1}`` for ``A`` the strictly lower triangle of ``a`` ``(n, C, C)`` (which it zeroes
    on and above the diagonal), by batched matmuls: each diagonal block of ``b = INVERSE_BLOCK`` rows
    by the product ``(I - N)(I + N²)(I + N⁴)…`` (``N`` nilpotent: ``N^b = 0``), then block forward
    substitution ``T_ij = -T_ii Σ_{j<=l<i} A_il T_lj`` one block row at a time. As exact as a
    triangular solve; unlike LAPACK's batched solve, its speed on CPU does not swing with load.
    """
    n, size, _ = a.shape
    block = min(INVERSE_BLOCK, size)
    padded = -(-size // block) * block
    a = a.tril_(-1) if padded == size else F.pad(a.tril_(-1), (0, padded - size, 0, padded - size))
    m = padded // block
    diagonal = a.view(n, m, block, m, block).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2).reshape(-1, block, block)
    blocks = torch.eye(block, dtype=a.dtype, device=a.device) - diagonal
    power, reach = diagonal, 2
    while reach < block:
        power = power @ power
        blocks = torch.baddbmm(blocks, blocks, power)
        reach *= 2
    blocks = blocks.view(n, m, block, block)
    if m == 1:  # a single block (C <= INVERSE_BLOCK): no substitution
        return blocks[:, 0]
    inverse = a.new_zeros(n, padded, padded)
    inverse.view(n, m, block, m, block).diagonal(dim1=1, dim2=3).copy_(blocks.permute(0, 2, 3, 1))
    minus_blocks = blocks.neg_()
    for i in range(1, m):
        rows, done = slice(i * block, (i + 1) * block), i * block
        inverse[:, rows, :done] = minus_blocks[:, i] @ (a[:, rows, :done] @ inverse[:, :done, :done])
    return inverse[:, :size, :size]


def _column(t: Tensor) -> Tensor:
    """A per-token ``(..., C)`` -> ``(batch, C, 1)``, to scale the rows of ``(batch, C, ·)``."""
    return t.reshape(-1, t.shape[-1], 1)


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """``Σ_j a_ij b_ij`` over the last dim, kept as a size-1 dim."""
    return torch.linalg.vecdot(a, b).unsqueeze(-1)


def _chunk_pass(u: Tensor, w: Tensor, k_end: Tensor, chunk_decay: Tensor, h0: Tensor | None) -> tuple[Tensor, Tensor]:
    """The sequential pass over chunks: ``X_j = U_j - W_j S_j`` and ``S_{j+1} = γ_C S_j + K̂_j^T X_j``.

    ``u, w, k_end`` ``(B·H, N, C, ·)``, ``chunk_decay`` (``γ_C``) ``(B·H, N, 1, 1)``, ``h0``
    ``(B·H, d_k, d_v)`` or ``None``. Returns ``X`` ``(N, B·H, C, d_v)`` and the states
    ``(N + 1, B·H, d_k, d_v)`` (each chunk's start, then the final state), chunk-major so that each step
    writes one contiguous batch (a strided ``out=`` makes ``bmm`` run one matmul per batch entry).
    """
    n, n_chunks, chunk, d_k = w.shape
    states = w.new_empty(n_chunks + 1, n, d_k, u.shape[-1])
    states[0] = 0 if h0 is None else h0
    x = w.new_empty(n_chunks, n, chunk, u.shape[-1])
    for j in range(n_chunks):
        torch.baddbmm(u[:, j], w[:, j], states[j], alpha=-1, out=x[j])
        torch.bmm(k_end[:, j].mT, x[j], out=states[j + 1]).addcmul_(states[j], chunk_decay[:, j])
    return x, states


def _chunk_pass_backward(
    dx_local: Tensor, ds_local: Tensor, k_end: Tensor, w: Tensor, chunk_decay: Tensor, grad_last: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Reverse of :func:`_chunk_pass`: from the last chunk back, ``dX = dX_local + K̂ dS_C`` and
    ``dS_0 = dS_local + γ_C dS_C - W^T dX``, where ``dX_local = P^T dO`` and ``dS_local = (γQ)^T dO``.

    Shapes as :func:`_chunk_pass` (``ds_local`` ``(B·H, N, d_k, d_v)``, ``grad_last`` ``(B·H, d_k, d_v)``).
    Returns ``dX`` ``(N, B·H, C, d_v)``, each chunk's ``dS_C`` ``(N, B·H, d_k, d_v)`` and ``dh0``.
    """
    n, n_chunks, chunk, d_k = w.shape
    dx, d_ends = w.new_empty(n_chunks, n, chunk, dx_local.shape[-1]), w.new_empty(n_chunks, n, d_k, ds_local.shape[-1])
    d_ends[-1] = grad_last
    grad_h0 = torch.empty_like(grad_last)
    for j in reversed(range(n_chunks)):
        torch.baddbmm(dx_local[:, j], k_end[:, j], d_ends[j], out=dx[j])
        d_start = d_ends[j - 1] if j else grad_h0
        torch.addcmul(ds_local[:, j], d_ends[j], chunk_decay[:, j], out=d_start).baddbmm_(w[:, j].mT, dx[j], alpha=-1)
    return dx, d_ends, grad_h0


class _ChunkwiseDeltaRule(torch.autograd.Function):
    """The chunkwise delta rule (module docstring) with a hand-written backward.

    Inputs are chunked: ``q, k`` ``(B, H, N, C, d_k)``, ``v`` ``(B, H, N, C, d_v)``, ``beta`` and
    ``log_alpha`` ``(B, H, N, C)``, ``h0`` ``(B, H, d_k, d_v)`` or ``None``; returns the outputs
    ``(B, H, N, C, d_v)`` and the final state. All chunks go through each matmul as one batch but for
    the pass over chunks (:func:`_chunk_pass`, :func:`_chunk_pass_backward`).

    The forward keeps ``T``, ``W``, ``X`` and the chunk states (recomputing ``T`` would cost the
    ``K K^T`` matmul and the blocked inverse); the backward recomputes ``Γ`` and ``P`` and carries
    ``dS`` backwards over the chunks::

        dX = P^T dO + K̂ dS_C,   dS_0 = (diag(γ) Q)^T dO + γ_C dS_C - W^T dX

    It differentiates through the triangular system ``(I + A) [U, W] = R`` by the transpose solve,
    ``dR = T^T [dU, dW]`` and ``dA = -tril_strict(dR [U, W]^T)``; with ``dU = dX``,
    ``dW = -dX S_0^T`` and ``X = U - W S_0`` these are ``dR = [T^T dX, -(T^T dX) S_0^T]`` and
    ``dA = -tril_strict((T^T dX) X^T)``. Decay gradients collect on ``g = log γ``: each factor
    ``e^{±g_t}`` (``γ_t`` on ``q_t`` and in ``R``, ``Γ_ti = e^{g_t - g_i}``, ``γ_C/γ_t``) gives
    ``±`` the dot product of its operand with that operand's gradient, and ``γ_C`` gives
    ``<S_C, dS_C>``; a reverse cumulative sum within each chunk takes them to ``log_alpha``.
    Double backward is not supported (raises).
    """

    @staticmethod
    def forward(ctx, q, k, v, beta, log_alpha, h0):
        batch, heads, n_chunks, chunk, d_k = q.shape
        d_v, n = v.shape[-1], batch * heads
        gamma, to_end, ratio = _decays(log_alpha)
        gamma, to_end, ratio, beta_ = _column(gamma), _column(to_end), _flat(ratio), _column(beta)
        q_, k_ = _flat(q), _flat(k)
        inverse = _unit_lower_inverse((k_ @ k_.mT).mul_(ratio).mul_(beta_))  # T = (I + A)^{-1}
        scores = (q_ @ k_.mT).mul_(ratio)  # P
        u, w = inverse @ (_flat(v) * beta_), inverse @ (k_ * (beta_ * gamma))  # [U, W] = T R
        per_head = lambda t: t.view(n, n_chunks, *t.shape[-2:])
        h0_ = None if h0 is None else h0.reshape(n, d_k, d_v)
        x, states = _chunk_pass(per_head(u), per_head(w), per_head(k_ * to_end), per_head(gamma[:, -1:]), h0_)
        x, starts = x.transpose(0, 1).reshape(-1, chunk, d_v), states[:-1].transpose(0, 1).reshape(-1, d_k, d_v)
        out = (scores @ x).baddbmm_(q_ * gamma, starts)
        ctx.save_for_backward(q, k, v, beta, log_alpha, w, x, starts, states, inverse)
        ctx.has_h0 = h0 is not None
        return out.view(v.shape), states[-1].view(batch, heads, d_k, d_v).clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_last):
        q, k, v, beta, log_alpha, w, x, starts, states, inverse = ctx.saved_tensors
        shapes = q.shape, k.shape, v.shape, beta.shape
        batch, heads, n_chunks, chunk, d_k = q.shape
        d_v, n = v.shape[-1], batch * heads
        gamma, to_end, ratio = _decays(log_alpha)
        gamma, to_end, ratio, beta = _column(gamma), _column(to_end), _flat(ratio), _column(beta)
        q, k, v, d_out = _flat(q), _flat(k), _flat(v), _flat(grad_out)
        per_head = lambda t: t.view(n, n_chunks, *t.shape[-2:])
        dx, d_ends_by_chunk, grad_h0 = _chunk_pass_backward(
            per_head((q @ k.mT).mul_(ratio).mT @ d_out),  # P^T dO
            per_head((q * gamma).mT @ d_out),
            per_head(k * to_end),
            per_head(w),
            per_head(gamma[:, -1:]),
            grad_last.reshape(n, d_k, d_v),
        )
        dx = dx.transpose(0, 1).reshape(-1, chunk, d_v)
        d_ends = d_ends_by_chunk.transpose(0, 1).reshape(-1, d_k, d_v)

        # R = [diag(β) V, diag(βγ) K]: dR = [T^T dX, -(T^T dX) S_0^T];  -dA = Z = tril_strict((T^T dX) X^T)
        d_rhs_v = inverse.mT @ dx
        z = d_rhs_v @ x.mT
        z.diagonal(dim1=-2, dim2=-1).zero_()
        z_ratio = z.mul_(ratio)  # Z ⊙ Γ = -dA ⊙ Γ (Γ zero above the diagonal)
        # O = (γQ) S_0 + P X with P = Q K^T ⊙ Γ:  dP ⊙ Γ = M = (dO X^T) ⊙ Γ
        d_qk = (d_out @ x.mT).mul_(ratio)
        grad_q = (d_out @ starts.mT).mul_(gamma).baddbmm_(d_qk, k)
        # dK = β ⊙ up + down: `up` through factors e^{+g_t} (k_t in R = diag(βγ) K, in the rows of A),
        # `down` through e^{-g_t} (K̂ = K ⊙ γ_C/γ, the columns of P and of A); dR_k = -dR_v S_0^T, dA ⊙ Γ = -Z ⊙ Γ
        up = (d_rhs_v @ starts.mT).mul_(-gamma).baddbmm_(z_ratio, k, alpha=-1)  # γ dR_k + (dA ⊙ Γ) K
        down = (x @ d_ends.mT).mul_(to_end).baddbmm_(d_qk.mT, q).baddbmm_(z_ratio.mul_(beta).mT, k, alpha=-1)
        rowdot_up = _rowdot(up, k)
        grad_beta = _rowdot(d_rhs_v, v) + rowdot_up
        grad_log_alpha = None
        if ctx.needs_input_grad[4]:  # on g = log γ, then a reverse cumulative sum
            d_g = _rowdot(grad_q, q) + beta * rowdot_up - _rowdot(down, k)
            # γ_C: <K̂^T X + γ_C S_0, dS_C> = <S_C, dS_C>
            d_g[:, -1] += (states[1:] * d_ends_by_chunk).sum((-2, -1)).T.reshape(-1, 1)
            grad_log_alpha = d_g.flip(-2).cumsum(-2).flip(-2).view(shapes[3])
        grad_k = down.addcmul_(up, beta)
        grads = (g.view(shape) for g, shape in zip((grad_q, grad_k, d_rhs_v.mul_(beta), grad_beta), shapes))
        return (*grads, grad_log_alpha, grad_h0.view(batch, heads, d_k, d_v) if ctx.has_h0 else None)


MIN_HEAD_DIM = 8  # thinner heads are zero-padded to this width (see _chunkwise)



def _delta_rule_shapes(q, k, v, beta, log_alpha, h0) -> tuple[Tensor, Tensor]:
    batch, heads, _, _, d_k = q.shape
    return torch.empty_like(v), v.new_empty(batch, heads, d_k, v.shape[-1])


_chunkwise_delta_rule = traceable(_ChunkwiseDeltaRule, _delta_rule_shapes)

def _chunkwise(q, k, v, beta, log_alpha, h0, chunk: int) -> tuple[Tensor, Tensor]:
    """Pads time to whole chunks, and head dims below :data:`MIN_HEAD_DIM` with zeros, then runs the chunks.

    Zero key and value columns leave the recurrence exact: a zero key entry makes its row of ``I - β k k^T``
    the identity and adds nothing to that row of ``S``, which starts at zero; a zero value column keeps that
    column of ``S`` zero. The padding pays for itself: batched matmuls over operands under 8 wide run far
    below their rate on CPU.
    """
    length, d_k, d_v = q.shape[2], q.shape[-1], v.shape[-1]
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    pad_k, pad_v = max(0, MIN_HEAD_DIM - d_k), max(0, MIN_HEAD_DIM - d_v)
    if log_alpha is None:
        log_alpha = torch.zeros_like(beta)
    if pad or pad_k or pad_v:  # padded steps: β = 0 (no update), α = 1 (no decay), q = 0
        q, k, v = F.pad(q, (0, pad_k, 0, pad)), F.pad(k, (0, pad_k, 0, pad)), F.pad(v, (0, pad_v, 0, pad))
        beta, log_alpha = F.pad(beta, (0, pad)), F.pad(log_alpha, (0, pad))
        if h0 is not None:
            h0 = F.pad(h0, (0, pad_v, 0, pad_k))
    chunked = (t.unflatten(2, (n_chunks, chunk)) for t in (q, k, v, beta, log_alpha))
    out, last = _chunkwise_delta_rule(*chunked, h0)
    if pad_k or pad_v:
        last = last[..., :d_k, :d_v].contiguous()
    return out.flatten(2, 3)[:, :, :length, :d_v], last


def default_chunk_size(length: int, d_k: int = 64, d_v: int = 64) -> int:
    """At most 64 and at most the power of two at or above the wider head dim (at least 16); within
    that, the largest chunk that pads T little (:func:`least_padding_chunk`, from 8 for head dims <= 16).

    Per token, the chunk's matmuls cost ``O(C (d_k + d_v))`` and the pass over chunks ``O(d_k d_v)``
    per chunk: C near the head dims balances them, and at ``d = 64`` a chunk of 64 halves the sequential
    steps over chunks of 32 and runs its matmuls at a higher rate. With thin heads (under 16 wide) a large
    chunk's C×C matrices would be mostly padding, and ``bmm`` on thin operands runs far below its peak
    rate, so the chunk stays at 16, or 8 where that pads the sequence less (T = 40: 40 steps at 8 against
    48 at 16).
    """
    width = 1 << (max(d_k, d_v, 1) - 1).bit_length()
    return least_padding_chunk(length, min(64, max(16, width)), 8 if width <= 16 else 16)


LOOP_STEP_COST = 250.0  # the fused loop's per-step op overhead, forward and backward, in µs on one CPU thread
LOOP_STATE_COST = 0.01  # its cost per float of the (d_k, d_v, B·H) state per step, µs
CHUNK_TOKEN_COST = 6.0  # the chunkwise form's cost per token and (batch, head) sequence at heads <= 32 wide, µs


def loop_is_faster(batch_heads: int, d_k: int, d_v: int, device: torch.device | str = "cpu") -> bool:
    """Whether :func:`delta_rule` runs the fused loop rather than the chunkwise form: on CPU, where the
    loop's estimated time per step, ``LOOP_STEP_COST + LOOP_STATE_COST · d_k d_v B·H``, is under the chunkwise
    form's per token, ``CHUNK_TOKEN_COST · B·H``. Both grow with T alike, so T does not enter.

    At thin heads the chunkwise form's time is the per-matrix overhead of batched matmuls on C×C and C×d
    blocks, which grows with the number of (batch, head) sequences; the loop's steps are a fixed number of
    element-wise passes over the state, cheap while it fits in cache. So the loop wins with many thin heads
    (the capability benchmark's 64 sequences × 4 heads of 7–9) and loses with few sequences or heads 32
    wide and more. The constants were fitted to forward+backward times on one CPU thread. On GPUs the
    loop's per-step launches never pay.
    """
    if torch.device(device).type != "cpu":
        return False
    loop = LOOP_STEP_COST + LOOP_STATE_COST * d_k * d_v * batch_heads
    return loop < CHUNK_TOKEN_COST * batch_heads


def delta_rule_flops(batch: int, heads: int, length: int, d_k: int, d_v: int, chunk: int | None = None) -> int:
    """Floating-point operations of the chunkwise forward, per chunk of C: the matmuls ``K K^T`` and
    ``Q K^T`` (``2 C² d_k`` each), the triangular inverse (``C³ / 3``), ``T R`` (``2 C² (d_k + d_v)``),
    ``P X`` (``2 C² d_v``), and ``W S_0``, ``K̂^T X`` and ``(γQ) S_0`` (``2 C d_k d_v`` each).

    Forward+backward is counted as three times this. The hand-written backward runs
    ``10 C² d_k + 8 C² d_v + 12 C d_k d_v`` (1.84 times the forward at ``C = d_k = d_v``), so that
    convention counts about 6% more than the two run.
    """
    chunk = chunk or default_chunk_size(length, d_k, d_v)
    n_chunks = -(-length // chunk)
    per_chunk = 4 * chunk**2 * d_k + chunk**3 // 3 + 2 * chunk**2 * (d_k + 2 * d_v) + 6 * chunk * d_k * d_v
    return batch * heads * n_chunks * per_chunk


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
    """Parallel form of :func:`delta_rule_reference` (same arguments and results): chunkwise, or the fused loop
    (:func:`~rnnzoo.ops.delta_rule_loop.delta_rule_loop`) where :func:`loop_is_faster` and no ``chunk_size`` is
    given. ``chunk_size`` defaults to :func:`default_chunk_size` of the ``T·n`` steps and the head dims.

    Half-precision inputs are computed in float32; outputs come back in the input dtype, the final state in
    float32. Gradients by hand-written backwards (:class:`_ChunkwiseDeltaRule`, the loop's; double backward
    is not supported).
    """
    where = "delta_rule"
    if chunk_size is not None:
        check_int(where, "chunk_size", chunk_size)
    out_dtype = q.dtype
    q, k, v, beta, log_alpha, h0, n = _check(q, k, v, beta, log_alpha, h0, where)
    batch, heads, steps, d_k = k.shape
    if chunk_size is None and loop_is_faster(batch * heads, d_k, v.shape[-1], q.device):
        out, last = delta_rule_loop(q, k, v, beta, log_alpha, h0)
    else:
        chunk = chunk_size or default_chunk_size(steps, d_k, v.shape[-1])
        q, log_alpha = _per_step(q, log_alpha, n)
        out, last = _chunkwise(q, k, v, beta, log_alpha, h0, chunk)
        out = out[:, :, n - 1 :: n]
    return out.to(output_dtype(out_dtype, out.dtype)), last
