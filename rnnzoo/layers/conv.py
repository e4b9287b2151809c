"""Short causal depthwise convolution with its buffer as recurrent state.

Mamba, Hawk/Griffin (and later Mamba-2 and DeltaNet) mix each channel over the
last few tokens before the recurrence: ``y_t = sum_k w_k x_{t-K+1+k} + bias``.
The last ``K - 1`` inputs are the state, so a sequence split anywhere gives the
same result as the whole.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.opaque import traceable
from .base import state_dtype

__all__ = ["CausalConv1d", "causal_conv1d", "qkv_short_convs"]


def _taps(weight: Tensor) -> Tensor:
    """``(C, 1, K)`` depthwise weight -> ``(K, C)``, contiguous (a strided broadcast operand would make
    every multiply-add below fall off the vectorised path)."""
    return weight.view(weight.shape[0], -1).t().contiguous()


class _CausalConv(torch.autograd.Function):
    """The depthwise causal convolution as ``K`` shifted multiply-adds, with a hand-written backward.

    On ``(B, T, C)`` (channels innermost) with ``P`` the state followed by the inputs, ``(B, K-1+T, C)``::

        y_t = bias + Σ_k w_k ⊙ P_{t+k}
        dP_{t+k} += w_k ⊙ dy_t,   dw_k = Σ_{b,t} P_{t+k} ⊙ dy_t,   dbias = Σ_{b,t} dy_t

    the new state being ``P``'s last ``K - 1`` rows (its gradient adds to theirs). Each step is one
    elementwise pass over ``(B, T, C)``; a grouped ``conv1d`` with a kernel this short runs far slower
    on CPU. Double backward is not supported (raises).
    """

    @staticmethod
    def forward(ctx, x: Tensor, state: Tensor | None, weight: Tensor, bias: Tensor | None):
        batch, length, channels = x.shape
        taps, size = _taps(weight), weight.shape[-1]
        padded = x.new_empty(batch, size - 1 + length, channels)
        if state is None:
            padded[:, : size - 1].zero_()
        else:
            padded[:, : size - 1] = state.mT
        padded[:, size - 1 :] = x
        y = x * taps[-1] if bias is None else torch.addcmul(bias, x, taps[-1])
        for k in range(size - 1):
            y.addcmul_(padded[:, k : k + length], taps[k])
        ctx.save_for_backward(padded, weight)
        ctx.has_state, ctx.has_bias = state is not None, bias is not None
        return y, padded[:, length:].mT.contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor, grad_state: Tensor):
        padded, weight = ctx.saved_tensors
        taps, size = _taps(weight), weight.shape[-1]
        length = padded.shape[1] - (size - 1)
        grad_y = grad_y.contiguous()
        grad_padded = torch.empty_like(padded)
        torch.mul(grad_y, taps[-1], out=grad_padded[:, size - 1 :])
        grad_padded[:, : size - 1].zero_()
        for k in range(size - 1):
            grad_padded[:, k : k + length].addcmul_(grad_y, taps[k])
        grad_padded[:, length:] += grad_state.mT
        grad_weight = None
        if ctx.needs_input_grad[2]:  # the products go through one workspace: a fresh block per tap costs more
            work = torch.empty_like(grad_y)
            per_tap = [torch.mul(padded[:, k : k + length], grad_y, out=work).sum((0, 1)) for k in range(size)]
            grad_weight = torch.stack(per_tap, 1).view_as(weight)
        grad_bias = grad_y.sum((0, 1)) if ctx.has_bias and ctx.needs_input_grad[3] else None
        grad_state_in = grad_padded[:, : size - 1].mT if ctx.has_state else None
        return grad_padded[:, size - 1 :], grad_state_in, grad_weight, grad_bias



def _causal_conv_shapes(x: Tensor, state: Tensor | None, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), x.new_empty(x.shape[0], x.shape[2], weight.shape[-1] - 1)


_causal_conv = traceable(_CausalConv, _causal_conv_shapes)

def causal_conv1d(x: Tensor, state: Tensor | None, weight: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Depthwise causal convolution ``y_t = bias + Σ_k weight[:, 0, k] ⊙ x_{t-K+1+k}``.

    ``x`` ``(B, T, C)``; ``state`` ``(B, C, K-1)``, the inputs before ``x`` oldest first, or ``None``
    (zeros); ``weight`` ``(C, 1, K)`` as ``nn.Conv1d(C, C, K, groups=C)``; ``bias`` ``(C,)`` or ``None``.
    Returns ``(y (B, T, C), new state (B, C, K-1))``, ``y`` contiguous, in ``x``'s dtype as the state.
    """
    if state is not None:
        state = state.to(x.dtype)
    weight, bias = weight.to(x.dtype), None if bias is None else bias.to(x.dtype)
    if torch.compiler.is_compiling():  # plain operations, which the compiler fuses (a step's K multiply-adds)
        return _traced_causal_conv(x, state, weight, bias)
    return _causal_conv(x.contiguous(), state, weight, bias)


def _traced_causal_conv(x: Tensor, state: Tensor | None, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """The equation of :class:`_CausalConv` in differentiable operations, for compiled graphs."""
    batch, length, channels = x.shape
    taps, size = _taps(weight), weight.shape[-1]
    before = x.new_zeros(batch, size - 1, channels) if state is None else state.mT
    padded = torch.cat([before, x], 1)
    y = sum(padded[:, k : k + length] * taps[k] for k in range(size))
    return (y if bias is None else y + bias), padded[:, length:].mT.contiguous()


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
        y, new_state = causal_conv1d(x, state, self.weight, self.bias)
        return y, new_state.to(state_dtype(x.dtype))


def qkv_short_convs(layer: nn.Module, x: Tensor, state) -> list[tuple[Tensor, Tensor]]:
    """``[(y, new conv state)]`` for q, k and v of a layer with short convolutions: ``x`` through
    ``layer.{q,k,v}_proj`` then ``layer.{q,k,v}_conv``, from ``state.conv_{q,k,v}`` (zeros if ``state`` is None)."""
    convs = (None,) * 3 if state is None else (state.conv_q, state.conv_k, state.conv_v)
    projs, conv_layers = (layer.q_proj, layer.k_proj, layer.v_proj), (layer.q_conv, layer.k_conv, layer.v_conv)
    return [conv(proj(x), c) for proj, conv, c in zip(projs, conv_layers, convs)]
