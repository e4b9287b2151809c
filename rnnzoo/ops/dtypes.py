"""The engines' precision rule, in one place.

Half-precision inputs (float16, bfloat16; complex32) are computed in float32 (complex64); outputs come back in
the input's precision, final states stay in the compute precision.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["HALF", "compute_dtype", "output_dtype"]

HALF = (torch.float16, torch.bfloat16)


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The inputs' promoted dtype, float32 in place of half precision (complex64 in place of complex32)."""
    dtype = functools.reduce(torch.promote_types, dtypes)
    if dtype in HALF:
        return torch.float32
    return torch.complex64 if dtype == torch.complex32 else dtype


def output_dtype(in_dtype: torch.dtype, computed: torch.dtype) -> torch.dtype:
    """The dtype outputs come back in: the input's half precision for a real result, else the computed dtype."""
    return in_dtype if in_dtype in HALF and not computed.is_complex else computed
