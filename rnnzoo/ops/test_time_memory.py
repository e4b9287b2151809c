"""Test-time memory: a linear memory trained online by mini-batch gradient descent with momentum and weight decay.

Titans (Behrouz, Zhong, Mirrokni 2025, "Titans: Learning to Memorize at Test Time") with a linear memory, and
two of the attentional biases of Miras (Behrouz, Razaviyayn, Zhong, Mirrokni 2025, "It's All Connected: A
Journey Through Test-Time Memorization, Attentional Bias, Retention, and Online Optimization"). Per head the
memory ``M`` is ``d_k × d_v``, read as ``o_t = M_t^T q_t``, and trained on the loss ``ℓ(M; k_t, v_t)`` of
each token, in mini-batches of ``b`` tokens (``memory_batch``): every gradient of a mini-batch is taken at
the memory ``M_0`` of the mini-batch's start::

    g_t = k_t ψ(M_0^T k_t - v_t)^T                  the gradient of ℓ at M_0
    U_t = η_t U_{t-1} - θ_t g_t                     momentum ("surprise")
    M_t = (1 - α_t) M_{t-1} + U_t                   weight decay ("forgetting")
    o_t = M_t^T q_t

``ψ`` is the derivative of the objective on the residual ``e = M^T k - v``, elementwise:

* ``"l2"``: ``ℓ = ½‖e‖²``, ``ψ(e) = e`` (Titans). With ``b = 1`` and ``η = 0`` this is a gated delta rule,
  ``M_t = (1 - α_t) M_{t-1} - θ_t k_t (M_{t-1}^T k_t - v_t)^T``: Gated DeltaNet's
  ``a_t (I - β_t k_t k_t^T) M_{t-1} + β_t k_t v_t'^T`` (:mod:`rnnzoo.ops.delta_rule`) with ``a = 1 - α``,
  ``β = θ / a``, ``v' = a v``; with ``b = 1`` and ``η > 0``, a gated delta rule with momentum.
* ``"huber"``: ``ℓ = Σ_i H_δ(e_i)``, ``ψ(e) = clamp(e, -δ, δ)`` (Miras's Yaad).
* ``"lp"``: ``ℓ = ‖e‖_p^p``, ``ψ(e) = p |e|^{p-1} sign(e)`` (Miras's Moneta), ``p >= 1``.

Mini-batch boundaries lie at multiples of ``b`` counted from the start of the sequence the state began with;
the state ``(M_0, M, U, position)`` carries the memory at the current mini-batch's start, the memory, the
momentum and the position within the mini-batch (``(batch,)`` int64), so a call may start anywhere in a
mini-batch and a sequence split anywhere gives the same result. ``M_0`` becomes ``M`` after a token that
completes a mini-batch.

Two forms, equal to float tolerance:

* :func:`test_time_memory_reference`: the recurrent form, a loop over tokens.
* :func:`test_time_memory`: the chunkwise form, one chunk per mini-batch. Inside a chunk with decays
  ``A_{s→t} = Π_{s<j<=t} (1 - α_j)``, ``E_{r→s} = Π_{r<j<=s} η_j`` (chunk start 0), unrolling both recurrences
  gives, with ``M``, ``U`` those entering the chunk and ``Ψ`` the rows ``ψ(M_0^T k_r - v_r)``::

      U_t = E_{0→t} U - Σ_{r<=t} E_{r→t} θ_r k_r ψ_r^T
      M_t = A_{0→t} M + f_t U - Σ_{r<=t} c_{tr} θ_r k_r ψ_r^T,   f_t = Σ_{s<=t} A_{s→t} E_{0→s},
                                                                  c_{tr} = Σ_{r<=s<=t} A_{s→t} E_{r→s}

  so ``c = L_A L_E``, the product of the two lower-triangular decay matrices, and the outputs are
  ``O = diag(A_{0→·}) Q M + diag(f) Q U - (Q K^T ⊙ c) diag(θ) Ψ``. Every gradient of a chunk is taken at
  ``M_0``, known when the chunk starts, so a chunk needs no solve: the pass over chunks computes ``Ψ`` and
  the chunk-end ``M``, ``U`` (three matmuls per chunk), everything else is one batched matmul over all
  chunks. Decays are summed in log space (float64 running sums, :mod:`rnnzoo.ops.decay`) and enter only as
  ratios ``<= 1``: no overflow for any decay. A row whose state sits at position ``p`` of its mini-batch has
  its tokens shifted ``p`` places into the first chunk; the slots before and after them are identity steps
  (no decay, no gradient, and a mask ``m_s = 0`` keeps the momentum out of ``M``: ``c = L_A diag(m) L_E``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_heads, check_int, checking_values
from .decay import log_ratios, running_sum
from .dtypes import compute_dtype, output_dtype
from .gated_linear_attention import MIN_LOG_DECAY

__all__ = ["OBJECTIVES", "attentional_bias_gradient", "test_time_memory", "test_time_memory_reference"]

OBJECTIVES = ("l2", "huber", "lp")

MemoryState = tuple[Tensor, Tensor, Tensor, Tensor]  # (M_0, M, U, position)


def attentional_bias_gradient(error: Tensor, objective: str, delta: float, p: float) -> Tensor:
    """``ψ(e)``, the objective's derivative on the residual ``e = M^T k - v`` (module docstring)."""
    if objective == "l2":
        return error
    if objective == "huber":
        return error.clamp(-delta, delta)
    # |e| floored at the smallest normal number: at e = 0 the value is 0 and the gradient 0, not 0 · ∞ (p < 2)
    return p * error.sign() * error.abs().clamp_min(torch.finfo(error.dtype).tiny).pow(p - 1)


def _check(q, k, v, theta, log_eta, log_retain, state, memory_batch, objective, delta, p, where: str):
    batch, heads, _, d_k, d_v = check_heads(where, q=q, k=k, v=v, theta=theta, log_eta=log_eta, log_retain=log_retain)
    check_int(where, "memory_batch", memory_batch)
    if objective not in OBJECTIVES:
        raise ValueError(f"{where}: `objective` must be one of {OBJECTIVES}, got {objective!r}")
    if not delta > 0:
        raise ValueError(f"{where}: `delta` must be > 0, got {delta!r}")
    if not p >= 1:
        raise ValueError(f"{where}: `p` must be >= 1, got {p!r}")
    if checking_values():
        if float(theta.detach().min()) < 0:
            raise ValueError(f"{where}: `theta` must be >= 0 (a learning rate)")
        for name, t in (("log_eta", log_eta), ("log_retain", log_retain)):
            if float(t.detach().max()) > 0:
                raise ValueError(f"{where}: `{name}` must be <= 0 (a factor in (0, 1])")
    dtype = compute_dtype(q.dtype)
    if state is not None:
        if not isinstance(state, tuple) or len(state) != 4:
            raise TypeError(f"{where}: `state` must be a tuple (M_0, M, U, position)")
        for name, t in zip(("M_0", "M", "U"), state[:3]):
            if not isinstance(t, Tensor) or t.shape != (batch, heads, d_k, d_v):
                raise ValueError(f"{where}: state `{name}` must have shape {(batch, heads, d_k, d_v)}")
        position = state[3]
        if not isinstance(position, Tensor) or position.shape != (batch,) or position.is_floating_point():
            raise ValueError(f"{where}: state `position` must be an integer tensor of shape ({batch},)")
        if checking_values() and not bool(((position >= 0) & (position < memory_batch)).all()):
            raise ValueError(f"{where}: state `position` must lie in [0, memory_batch={memory_batch})")
        state = (*(t.to(dtype) for t in state[:3]), position)
    cast = lambda t: t.to(dtype)
    clamp = lambda t: cast(t).clamp(min=MIN_LOG_DECAY)
    return cast(q), cast(k), cast(v), cast(theta), clamp(log_eta), clamp(log_retain), state


def test_time_memory_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    theta: Tensor,
    log_eta: Tensor,
    log_retain: Tensor,
    state: MemoryState | None = None,
    *,
    memory_batch: int = 16,
    objective: str = "l2",
    delta: float = 1.0,
    p: float = 3.0,
) -> tuple[Tensor, MemoryState]:
    """Reference loop of the test-time memory (module docstring), one token at a time.

    Args:
        q, k: ``(batch, heads, time, d_k)`` (L2-normalised in the layer).
        v: ``(batch, heads, time, d_v)``.
        theta: learning rates ``θ >= 0``, ``(batch, heads, time)``.
        log_eta: ``log η <= 0``, the momentum's decay, ``(batch, heads, time)``.
        log_retain: ``log (1 - α) <= 0``, the memory's decay, ``(batch, heads, time)``.
        state: ``(M_0, M, U, position)``, ``M_0, M, U`` ``(batch, heads, d_k, d_v)``, ``position`` ``(batch,)``
            int64 in ``[0, memory_batch)``; zeros if ``None``.
        memory_batch: ``b``, tokens per mini-batch.
        objective: ``"l2"``, ``"huber"`` (threshold ``delta``) or ``"lp"`` (exponent ``p``).

    Returns:
        ``(o, state)``: ``o`` ``(batch, heads, time, d_v)`` and the final state.
    """
    out_dtype = q.dtype
    q, k, v, theta, log_eta, log_retain, state = _check(
        q, k, v, theta, log_eta, log_retain, state, memory_batch, objective, delta, p, "test_time_memory_reference"
    )
    if state is None:
        zeros = q.new_zeros(*q.shape[:2], q.shape[-1], v.shape[-1])
        state = (zeros, zeros, zeros, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
    base, M, U, position = state
    eta, retain = torch.exp(log_eta), torch.exp(log_retain)
    outs = []
    for q_t, k_t, v_t, theta_t, eta_t, retain_t in zip(*(t.unbind(2) for t in (q, k, v, theta, eta, retain))):
        error = torch.einsum("bhkv,bhk->bhv", base, k_t) - v_t
        psi = attentional_bias_gradient(error, objective, delta, p)
        U = eta_t[..., None, None] * U - theta_t[..., None, None] * k_t[..., :, None] * psi[..., None, :]
        M = retain_t[..., None, None] * M + U
        outs.append(torch.einsum("bhk,bhkv->bhv", q_t, M))
        position = (position + 1) % memory_batch
        base = torch.where((position == 0)[:, None, None, None], M, base)  # a mini-batch ends: the next starts at M
    return torch.stack(outs, 2).to(output_dtype(out_dtype, M.dtype)), (base, M, U, position)


def _placed(t: Tensor, index: Tensor, valid: Tensor) -> Tensor:
    """``t`` ``(batch, heads, time, ...)`` on the aligned time axis: entry ``i`` of row ``b`` is token
    ``index[b, i]`` where ``valid[b, i]``, else 0 (``index, valid`` ``(batch, L)``)."""
    trailing = t.shape[3:]
    idx = index.clamp(0, t.shape[2] - 1).view(index.shape[0], 1, -1, *(1,) * len(trailing))
    idx = idx.expand(-1, t.shape[1], -1, *trailing)
    mask = valid.view(*idx.shape[:1], 1, -1, *(1,) * len(trailing)).to(t.dtype)
    return t.gather(2, idx) * mask


def _lower(log_decay: Tensor) -> Tensor:
    """``L[t, s] = exp(Σ_{s<j<=t} log_decay_j)`` for ``s <= t``, else 0: ``(..., C)`` -> ``(..., C, C)``."""
    size = log_decay.shape[-1]
    lower = torch.ones(size, size, dtype=torch.bool, device=log_decay.device).tril()
    # masked before the exponential: above the diagonal exp(>= 0) may be inf, and inf · 0 a NaN gradient
    return torch.exp(log_ratios(log_decay).masked_fill(~lower, float("-inf")))


def test_time_memory(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    theta: Tensor,
    log_eta: Tensor,
    log_retain: Tensor,
    state: MemoryState | None = None,
    *,
    memory_batch: int = 16,
    objective: str = "l2",
    delta: float = 1.0,
    p: float = 3.0,
) -> tuple[Tensor, MemoryState]:
    """The chunkwise form of :func:`test_time_memory_reference` (same arguments and results): one chunk per
    mini-batch, sequential only across chunks (module docstring). Gradients by autograd."""
    out_dtype = q.dtype
    q, k, v, theta, log_eta, log_retain, state = _check(
        q, k, v, theta, log_eta, log_retain, state, memory_batch, objective, delta, p, "test_time_memory"
    )
    batch, heads, length, d_k = q.shape
    d_v, b = v.shape[-1], memory_batch
    device = q.device
    # Align mini-batches with chunks: row r's token t at slot shift_r + t (shift = its position); other slots
    # are identity steps. Without a state every row starts a mini-batch and nothing shifts.
    if state is None:
        shift = torch.zeros(batch, dtype=torch.long, device=device)
        slots = -(-length // b) * b
    else:
        shift = state[3].to(device=device, dtype=torch.long)
        slots = -(-(length + b - 1) // b) * b
    index = torch.arange(slots, device=device) - shift[:, None]
    valid = (index >= 0) & (index < length)
    q, k, v, theta, log_eta, log_retain = (
        _placed(t, index, valid) for t in (q, k, v, theta, log_eta, log_retain)
    )  # an identity step: θ = 0 and no decay; k = v = 0 so ψ(0) = 0 whatever the objective
    used = valid[:, None].to(q.dtype).expand(-1, heads, -1)  # m_s: whether U_s enters M at slot s
    n = slots // b
    chunked = lambda t: t.unflatten(2, (n, b))
    q, k, v, theta, log_eta, log_retain, used = map(chunked, (q, k, v, theta, log_eta, log_retain, used))

    # within-chunk coefficients, all chunks at once: (B, H, N, C) and (B, H, N, C, C)
    L_A, L_E = _lower(log_retain), _lower(log_eta)
    A_0 = torch.exp(running_sum(log_retain)).to(q.dtype)  # A_{0→t}
    E_0 = torch.exp(running_sum(log_eta)).to(q.dtype)  # E_{0→s}
    c = L_A @ (used[..., None] * L_E)  # c[t, r] = Σ_s A_{s→t} m_s E_{r→s}
    f = (L_A @ (used * E_0)[..., None]).squeeze(-1)  # f[t] = Σ_s A_{s→t} m_s E_{0→s}
    P = q @ k.mT * c * theta[..., None, :]
    k_to_M = k * (c[..., -1, :] * theta)[..., None]  # rows c_{C r} θ_r k_r: the chunk-end memory's weights
    k_to_U = k * (L_E[..., -1, :] * theta)[..., None]  # rows E_{r→C} θ_r k_r: the chunk-end momentum's

    # the pass over chunks: Ψ_j at the chunk-start memory, then the chunk-end memory and momentum
    if state is None:
        base = M = U = q.new_zeros(batch, heads, d_k, d_v)
    else:
        base, M, U, _ = state
    starts_M, starts_U, psis, bases = [], [], [], [base]
    for j in range(n):
        psi = attentional_bias_gradient(k[:, :, j] @ base - v[:, :, j], objective, delta, p)
        starts_M.append(M)
        starts_U.append(U)
        psis.append(psi)
        M, U = (
            A_0[:, :, j, -1, None, None] * M + f[:, :, j, -1, None, None] * U - k_to_M[:, :, j].mT @ psi,
            E_0[:, :, j, -1, None, None] * U - k_to_U[:, :, j].mT @ psi,
        )
        base = M
        bases.append(base)
    M_in, U_in, psi = (torch.stack(ts, 2) for ts in (starts_M, starts_U, psis))  # (B, H, N, ·, ·)
    out = A_0[..., None] * (q @ M_in) + f[..., None] * (q @ U_in) - P @ psi

    # back to each row's own tokens; the state's M_0 is the memory at the start of the mini-batch of the
    # row's next slot (shift + T), the final memory if that slot starts one
    out = out.flatten(2, 3)
    index = (torch.arange(length, device=device) + shift[:, None]).view(batch, 1, length, 1).expand(-1, heads, -1, d_v)
    out = out.gather(2, index)
    end = shift + length
    which = (end // b).view(1, batch, 1, 1, 1).expand(1, -1, heads, d_k, d_v)
    base = torch.stack(bases).gather(0, which).squeeze(0)
    return out.to(output_dtype(out_dtype, M.dtype)), (base, M, U, end % b)
