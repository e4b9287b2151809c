"""Helpers shared by the layers: dtypes, heads, norms, gates, initialisations and rotary positions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ROTARY_BASE", "dt_bias_init", "head_size", "key_value_dims", "l2_normalize", "lower_bound_buffer", "merge_heads",
    "norm_gate", "rotate", "rotate_pairs", "split_heads", "state_dtype", "widen_log_decay",
]  # fmt: skip


def state_dtype(dtype: torch.dtype, complex_state: bool = False) -> torch.dtype:
    """Dtype a recurrent state is kept in: float32 for half-precision inputs, else the input's."""
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    if complex_state:
        return torch.complex128 if dtype == torch.float64 else torch.complex64
    return dtype


# -- heads ---------------------------------------------------------------------


def head_size(owner: str, name: str, total: int, num_heads: int) -> int:
    """``total // num_heads``; a ``ValueError`` naming ``num_heads`` and ``name`` unless it divides ``total``."""
    if total < 1 or total % num_heads:
        raise ValueError(f"{owner}: `num_heads`={num_heads} must divide {name}={total}")
    return total // num_heads


def key_value_dims(
    owner: str, d_model: int, num_heads: int, expand_k: float, expand_v: float
) -> tuple[int, int, int, int]:
    """``(key_dim, value_dim, head_k, head_v)`` of a matrix-state layer: ``round(expand · d_model)`` split over
    ``num_heads``; a ``ValueError`` naming the argument unless each ``expand`` is positive and the heads divide."""
    for name, expand in (("expand_k", expand_k), ("expand_v", expand_v)):
        if not expand > 0:
            raise ValueError(f"{owner}: `{name}` must be > 0, got {expand!r}")
    key_dim, value_dim = round(expand_k * d_model), round(expand_v * d_model)
    head_k = head_size(owner, "key dim round(expand_k * d_model)", key_dim, num_heads)
    head_v = head_size(owner, "value dim round(expand_v * d_model)", value_dim, num_heads)
    return key_dim, value_dim, head_k, head_v


def split_heads(t: Tensor, num_heads: int, dtype: torch.dtype) -> Tensor:
    """``(batch, time, heads·d)`` -> ``(batch, heads, time, d)`` (the engines' layout) in ``dtype``."""
    return t.unflatten(-1, (num_heads, -1)).transpose(1, 2).to(dtype)


def merge_heads(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``(batch, heads, time, d)`` -> ``(batch, time, heads·d)`` in ``dtype``."""
    return t.transpose(1, 2).flatten(2).to(dtype)


# -- norms and gates --------------------------------------------------------------

L2_NORM_EPS = 1e-6  # u / sqrt(|u|^2 + eps), as fla's l2norm


def l2_normalize(u: Tensor) -> Tensor:
    """``u / sqrt(|u|^2 + ε)`` over the last dim."""
    return u * torch.rsqrt(u.square().sum(-1, keepdim=True) + L2_NORM_EPS)


def norm_gate(o: Tensor, g: Tensor, norm: nn.RMSNorm) -> Tensor:
    """``RMSNorm(o) ⊙ swish(g)`` per head: ``o`` ``(batch, heads, time, d_v)`` (normalised in its own
    dtype, the state dtype), ``g`` ``(batch, time, heads·d_v)``; returns ``g``'s layout and dtype."""
    weight = None if norm.weight is None else norm.weight.to(o.dtype)
    o = F.rms_norm(o, norm.normalized_shape, weight, norm.eps)
    return merge_heads(o, g.dtype) * F.silu(g)


def widen_log_decay(log_alpha: Tensor) -> tuple[Tensor, Tensor]:
    """Negative eigenvalues for a decay given in log space: ``α ∈ (0, 1] -> 2α - 1 ∈ (-1, 1]``.

    Returns ``(log|2α - 1|, 2α - 1 < 0)``, the form engine 3 takes (``log_alpha``,
    ``sign``). The magnitude is floored at the dtype's smallest normal
    number, so ``α = 1/2`` gives a finite log and a zero (not NaN) gradient.
    """
    widened = 2 * torch.exp(log_alpha) - 1
    return torch.log(widened.abs().clamp_min(torch.finfo(widened.dtype).tiny)), widened < 0


# -- initialisations --------------------------------------------------------------

DT_INIT_FLOOR = 1e-4  # smallest step Δ at initialisation, as in the Mamba reference


def dt_bias_init(size: int, dt_min: float = 0.001, dt_max: float = 0.1) -> Tensor:
    """Mamba's step-size bias: Δ drawn log-uniformly in ``[dt_min, dt_max]`` (floored at 1e-4), returned as
    its inverse softplus so that ``softplus(bias) = Δ`` (Gu & Dao 2023; also Mamba-2 and Gated DeltaNet)."""
    dt = torch.empty(size).uniform_(math.log(dt_min), math.log(dt_max)).exp().clamp(min=DT_INIT_FLOOR)
    return dt + torch.log(-torch.expm1(-dt))


def lower_bound_buffer(owner: str, lower_bound: float | Tensor, size: int) -> Tensor:
    """HGRN's forget-gate lower bound γ as a ``(size,)`` tensor: a float or a ``(size,)`` tensor in [0, 1).

    The range is checked on the value given (a float on the CPU), and the buffer made on the default device,
    so the layer also builds under ``torch.device("meta")`` (as ``transformers``' ``from_pretrained`` does)."""
    on_cpu = None if isinstance(lower_bound, Tensor) else "cpu"
    bound = torch.as_tensor(lower_bound, dtype=torch.get_default_dtype(), device=on_cpu)
    if bound.dim() > 1 or (bound.dim() == 1 and bound.shape[0] != size):
        raise ValueError(f"{owner}: `lower_bound` must be a float or a ({size},) tensor, got {tuple(bound.shape)}")
    if not ((bound >= 0) & (bound < 1)).all():
        raise ValueError(f"{owner}: `lower_bound` must lie in [0, 1)")
    return torch.empty(size).copy_(bound.expand(size))


# -- rotary positions ---------------------------------------------------------------

ROTARY_BASE = 10000.0


def rotate(u: Tensor, start: int | Tensor, base: float = ROTARY_BASE) -> Tensor:
    """Rotary position embedding of ``u`` ``(batch, heads, time, d)`` whose first token is at position ``start``
    (an int, or a ``(batch,)`` tensor of each row's first position).

    Each pair ``(u_{2i}, u_{2i+1})`` of the token at position ``n`` is rotated by
    the angle ``n θ_i``, ``θ_i = base^{-2i/d}`` (RoFormer's interleaved pairs, as
    RetNet here; the half-split layout of GPT-NeoX and LLaMA is a permutation of
    the q and k weights), so that ``rotate(q)_n · rotate(k)_m`` depends on
    ``n - m`` only. The angles are computed in float64 (exact positions,
    accurate at any context length).
    """
    half = u.shape[-1] // 2
    positions = torch.arange(u.shape[2], dtype=torch.float64, device=u.device)
    if isinstance(start, Tensor):  # (batch, 1, time): one row of positions per sequence
        positions = positions + start.to(device=u.device, dtype=torch.float64)[:, None, None]
    else:
        positions = positions + start
    theta = base ** (-torch.arange(half, dtype=torch.float64, device=u.device) / half)
    return rotate_pairs(u, positions[..., None] * theta)  # angles (time, d / 2) or (batch, 1, time, d / 2)


def rotate_pairs(u: Tensor, angle: Tensor) -> Tensor:
    """Rotate each pair ``(u_{2i}, u_{2i+1})`` of ``u`` ``(..., d)`` by ``angle[..., i]`` (broadcast to
    ``(..., d / 2)``; computed in its own dtype, the result in ``u``'s)."""
    cos, sin = angle.cos().to(u.dtype), angle.sin().to(u.dtype)
    even, odd = u[..., 0::2], u[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], -1).flatten(-2)
