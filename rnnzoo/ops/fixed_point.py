"""Fixed-point iterations of a diagonal linear RNN with a channel mixer (Movahedi et al. 2025).

The dense linear RNN ``h_t = Λ_t h_{t-1} + Q_t h_t + b_t``, i.e. ``h_t = (I - Q_t)^{-1} (Λ_t h_{t-1} + b_t)``, is
the fixed point of iterating a *diagonal* recurrence whose input carries the previous iterate through the
mixer:

    h^{(ℓ)}_t = Λ_t ⊙ h^{(ℓ)}_{t-1} + Q_t h^{(ℓ-1)}_t + b_t,    h^{(0)} = 0,    ℓ = 1..L.

Each iteration is one parallel scan (engine 2); ``L`` (``num_iterations``) trades time for expressivity:
``L = 1`` is the diagonal RNN, and as ``L`` grows the output approaches the dense RNN's wherever the iteration
contracts. The model computed here is the ``L``-th iterate itself, so the recurrent form carries every
iterate's last state ``h^{(1..L)}_{t-1}`` and reproduces it exactly, one token at a time.

The mixer is a scaled Householder reflection per head, ``Q_t h = ρ_t (h - 2 u_t (u_t · h))`` with ``‖u_t‖ = 1``
(one of the paper's structured mixers), applied at O(d) cost.

Layout: ``lam, b`` ``(batch, time, heads, d_head)``, ``rho`` ``(batch, time, heads)``, ``u`` like ``b``; state
``(batch, L, heads, d_head)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_int
from .linear_scan import linear_scan

__all__ = ["fixed_point_scan", "fixed_point_scan_reference", "householder_mix"]


def householder_mix(h: Tensor, rho: Tensor, u: Tensor) -> Tensor:
    """``Q h = ρ (h - 2 u (u · h))`` per head: ``h, u`` ``(..., heads, d_head)``, ``rho`` ``(..., heads)``."""
    return rho[..., None] * (h - 2 * u * (u * h).sum(-1, keepdim=True))


def _check(lam: Tensor, b: Tensor, rho: Tensor, u: Tensor, state: Tensor | None, num_iterations: int) -> None:
    check_int("fixed_point_scan", "num_iterations", num_iterations, minimum=1)
    if b.dim() != 4 or b.shape[1] == 0:
        raise ValueError(f"fixed_point_scan: `b` must have shape (batch, time >= 1, heads, d_head), got {tuple(b.shape)}")
    for name, t, want in (("lam", lam, b.shape), ("u", u, b.shape), ("rho", rho, b.shape[:3])):
        if tuple(t.shape) != tuple(want):
            raise ValueError(f"fixed_point_scan: `{name}` must have shape {tuple(want)}, got {tuple(t.shape)}")
    want = (b.shape[0], num_iterations, *b.shape[2:])
    if state is not None and tuple(state.shape) != want:
        raise ValueError(f"fixed_point_scan: `state` must have shape {want} (one per iteration), got {tuple(state.shape)}")


def fixed_point_scan_reference(
    lam: Tensor, b: Tensor, rho: Tensor, u: Tensor, state: Tensor | None = None, num_iterations: int = 2
) -> tuple[Tensor, Tensor]:
    """Token by token, every iteration in turn: ``h^{(ℓ)}_t`` from ``h^{(ℓ)}_{t-1}`` (the state) and
    ``h^{(ℓ-1)}_t`` (just computed). Returns ``(h^{(L)}, final state)``, the state ``(batch, L, heads, d_head)``."""
    _check(lam, b, rho, u, state, num_iterations)
    prev = b.new_zeros(b.shape[0], num_iterations, *b.shape[2:]) if state is None else state
    outs = []
    for lam_t, b_t, rho_t, u_t in zip(*(t.unbind(1) for t in (lam, b, rho, u))):  # unbind: no O(T) slice backward
        below, iterates = torch.zeros_like(b_t), []
        for ell in range(num_iterations):
            below = lam_t * prev[:, ell] + householder_mix(below, rho_t, u_t) + b_t
            iterates.append(below)
        prev = torch.stack(iterates, 1)
        outs.append(below)
    return torch.stack(outs, 1), prev


def fixed_point_scan(
    lam: Tensor, b: Tensor, rho: Tensor, u: Tensor, state: Tensor | None = None, num_iterations: int = 2,
    *, chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Iteration by iteration, each a parallel scan over the whole sequence
    (:func:`~rnnzoo.ops.linear_scan`, ``chunk_size`` passed on). Same contract as
    :func:`fixed_point_scan_reference`."""
    _check(lam, b, rho, u, state, num_iterations)
    h, finals = torch.zeros_like(b), []
    for ell in range(num_iterations):
        drive = b if ell == 0 else householder_mix(h, rho, u) + b
        h, last = linear_scan(lam, drive, None if state is None else state[:, ell], chunk_size=chunk_size)
        finals.append(last)
    return h, torch.stack(finals, 1)
