"""Argument checks shared by engines and layers (kept here so ops/ need not import layers/)."""

from __future__ import annotations


def checking_values() -> bool:
    """Whether checks that read tensor values (ranges of gates and decays) run: always in eager mode, never
    while ``torch.compile`` or ``torch.export`` traces (a value read there is a data-dependent guard)."""
    import torch

    return not torch.compiler.is_compiling()


def check_int(owner: str, name: str, value: object, minimum: int = 1) -> int:
    """``value`` if it is an int (not a bool) >= ``minimum``, else a ``ValueError`` naming ``owner`` and ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{owner}: `{name}` must be {expected}, got {value!r}")
    return value


def check_heads(where: str, **tensors) -> tuple[int, int, int, int, int]:
    """Check per-head attention inputs ``q, k`` ``(batch, heads, time, d_k)`` and ``v`` ``(batch, heads, time, d_v)``
    plus optional ``(batch, heads, time)`` gates (``None`` allowed), naming the bad argument. Returns
    ``(batch, heads, time, d_k, d_v)``."""
    from torch import Tensor

    for name, t in tensors.items():
        if t is not None and (not isinstance(t, Tensor) or not t.is_floating_point()):
            raise TypeError(f"{where}: `{name}` must be a floating-point torch.Tensor")
    q, k, v = tensors["q"], tensors["k"], tensors["v"]
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"{where}: `q` and `k` must have shape (batch, heads, time, d_k), got {tuple(q.shape)}, {tuple(k.shape)}")
    batch, heads, length, d_k = q.shape
    if length == 0:
        raise ValueError(f"{where}: the time dimension (dim 2) is empty; need at least one step")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"{where}: `v` must have shape ({batch}, {heads}, {length}, d_v), got {tuple(v.shape)}")
    for name, t in tensors.items():
        if name not in ("q", "k", "v") and t is not None and t.shape != (batch, heads, length):
            raise ValueError(f"{where}: `{name}` must have shape (batch, heads, time) = {(batch, heads, length)}, got {tuple(t.shape)}")
    return batch, heads, length, d_k, v.shape[-1]
