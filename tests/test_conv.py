"""The short causal depthwise convolution: its hand-written backward and agreement with ``F.conv1d``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnzoo.layers.conv import CausalConv1d, causal_conv1d


def conv1d_reference(x: torch.Tensor, state: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None):
    """The same convolution by PyTorch's grouped ``conv1d`` on ``(B, C, K-1+T)``."""
    channels, size = x.shape[-1], weight.shape[-1]
    if state is None:
        state = x.new_zeros(x.shape[0], channels, size - 1)
    padded = torch.cat([state, x.transpose(1, 2)], dim=2)
    y = F.conv1d(padded, weight, bias, groups=channels)
    return y.transpose(1, 2), padded[:, :, padded.shape[2] - (size - 1) :]


@pytest.mark.parametrize("size", [1, 2, 4])
@pytest.mark.parametrize("length", [1, 3, 7])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_causal_conv1d_matches_conv1d_and_gradcheck(size, length, with_state, with_bias):
    torch.manual_seed(size + 10 * length)
    kw = dict(dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, length, 5, **kw)
    state = torch.randn(2, 5, size - 1, **kw) if with_state else None
    weight, bias = torch.randn(5, 1, size, **kw), torch.randn(5, **kw) if with_bias else None
    y, new_state = causal_conv1d(x, state, weight, bias)
    y_ref, state_ref = conv1d_reference(x, state, weight, bias)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(new_state, state_ref)
    inputs = tuple(t for t in (x, state, weight, bias) if t is not None)

    def both(*args):
        it = iter(args)
        x_, s_ = next(it), next(it) if with_state else None
        w_, b_ = next(it), next(it) if with_bias else None
        return causal_conv1d(x_, s_, w_, b_)

    assert torch.autograd.gradcheck(both, inputs)


def test_causal_conv1d_gradients_match_conv1d_for_strided_input():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 8, dtype=torch.float64).transpose(0, 1).requires_grad_()  # non-contiguous
    weight, bias = torch.randn(8, 1, 4, dtype=torch.float64, requires_grad=True), None
    grad = torch.randn(6, 3, 8, dtype=torch.float64)
    y, _ = causal_conv1d(x, None, weight, bias)
    got = torch.autograd.grad(y, (x, weight), grad)
    y_ref, _ = conv1d_reference(x, None, weight, bias)
    want = torch.autograd.grad(y_ref, (x, weight), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_causal_conv1d_module_split_sequence_equals_whole():
    torch.manual_seed(1)
    conv = CausalConv1d(6, 4).double()
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    y, state = conv(x)
    y1, s1 = conv(x[:, :5])
    y2, s2 = conv(x[:, 5:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)
    torch.testing.assert_close(s2, state)
    assert state.shape == (2, 6, 3) and y.is_contiguous()
