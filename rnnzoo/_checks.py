"""Argument checks shared by engines and layers (kept here so ops/ need not import layers/)."""

from __future__ import annotations


def check_int(owner: str, name: str, value: object, minimum: int = 1) -> int:
    """``value`` if it is an int (not a bool) >= ``minimum``, else a ``ValueError`` naming ``owner`` and ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{owner}: `{name}` must be {expected}, got {value!r}")
    return value
