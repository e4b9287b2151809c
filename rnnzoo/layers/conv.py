"""Short causal depthwise convolution with its buffer as recurrent state.

Mamba, Hawk/Griffin (and later Mamba-2 and DeltaNet) mix each channel over the
last few tokens before the recurrence: ``y_t = sum_k w_k x_{t-K+1+k} + bias``.
The last ``K - 1`` inputs are the state, so a sequence split anywhere gives the
same result as the whole.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import state_dtype

__all__ = ["CausalConv1d"]


class CausalConv1d(nn.Module):
    """Depthwise causal conv over time on ``(batch, time, channels)`` inputs.

    The state is ``(batch, channels, kernel_size - 1)``: the previous inputs,
    oldest first (zeros at the start of a sequence).
    """

    def __init__(self, channels: int, kernel_size: int = 4, bias: bool = True) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"CausalConv1d: `kernel_size` must be >= 1, got {kernel_size}")
        self.channels, self.kernel_size = channels, kernel_size
        # same parameterisation (and default init) as nn.Conv1d(groups=channels)
        conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=bias)
        self.weight, self.bias = conv.weight, conv.bias

    def init_state(self, batch_size: int, device=None, dtype=None) -> Tensor:
        shape = (batch_size, self.channels, self.kernel_size - 1)
        return torch.zeros(shape, device=device, dtype=state_dtype(dtype or torch.get_default_dtype()))

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x`` ``(B, T, C)`` -> ``(y (B, T, C), new state (B, C, K-1))``."""
        x = x.transpose(1, 2)  # (B, C, T)
        if state is None:
            state = x.new_zeros(x.shape[0], self.channels, self.kernel_size - 1)
        padded = torch.cat([state.to(x.dtype), x], dim=2)
        y = F.conv1d(padded, self.weight, self.bias, groups=self.channels)
        new_state = padded[:, :, padded.shape[2] - (self.kernel_size - 1) :]
        return y.transpose(1, 2), new_state.to(state_dtype(x.dtype))
