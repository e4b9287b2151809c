"""The block-diagonal linear RNN (Fan et al. 2024) against its equations, written here as a per-step loop."""

from __future__ import annotations

import pytest
import torch

import rnnzoo
from rnnzoo.layers import BlockLRNN, BlockState

D_MODEL = 12


def make(**kw) -> BlockLRNN:
    torch.manual_seed(0)
    return rnnzoo.create("block_lrnn", d_model=D_MODEL, **kw).double()


@torch.no_grad()
def paper_loop(layer: BlockLRNN, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``h_t = A(x_t) h_{t-1} + v(x_t)`` one head and one step at a time, with the reference code's block
    normalisation: centre each column, divide the block by its largest column p-norm."""
    B, T, _ = x.shape
    H, k, p = layer.num_heads, layer.block_size, layer.norm_p
    h = torch.zeros(B, H, k, dtype=x.dtype) if h0 is None else h0.transpose(1, 2).clone()
    ys = []
    for t in range(T):
        blocks = (x[:, t] @ layer.A_proj.weight.T + layer.A_proj.bias).view(B, k, k, H).permute(0, 3, 1, 2)
        values = (x[:, t] @ layer.v_proj.weight.T + layer.v_proj.bias).view(B, H, k)
        new = torch.empty_like(h)
        for b in range(B):
            for head in range(H):
                A = blocks[b, head] - blocks[b, head].mean(dim=0, keepdim=True)
                largest = max(float((A[:, j].abs() ** p).sum() ** (1 / p)) for j in range(k))
                new[b, head] = (A / largest) @ h[b, head] + values[b, head]
        h = new
        ys.append(h.reshape(B, H * k) @ layer.out_proj.weight.T)
    return torch.stack(ys, 1), h.transpose(1, 2)


@pytest.mark.parametrize("length", [1, 7, 33])
@pytest.mark.parametrize("kw", [{}, {"block_size": 3, "norm_p": 1.0, "chunk_size": 5}, {"block_size": 2, "chunk_size": 4}])
def test_every_form_follows_the_equations(length, kw):
    layer = make(**kw)
    x = torch.randn(2, length, D_MODEL, dtype=torch.float64)
    h0 = torch.randn(2, layer.block_size, layer.num_heads, dtype=torch.float64)
    for start in (None, h0):
        want_y, want_h = paper_loop(layer, x, start)
        state = None if start is None else BlockState(start)
        for mode in ("scan", "recurrent"):
            y, final = layer(x, state, mode=mode)
            torch.testing.assert_close(y, want_y, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(final.h, want_h, rtol=1e-10, atol=1e-12)
        state = layer.init_state(2, dtype=torch.float64) if start is None else BlockState(start)
        for t in range(length):
            y_t, state = layer.step(x[:, t], state)
            torch.testing.assert_close(y_t, want_y[:, t], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(state.h, want_h, rtol=1e-10, atol=1e-12)


def test_scan_gradients_equal_the_loops():
    layer = make(block_size=3, chunk_size=4)
    x = torch.randn(2, 19, D_MODEL, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, layer.num_heads, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 19, D_MODEL, dtype=torch.float64)
    grads = []
    for mode in ("scan", "recurrent"):
        y, final = layer(x, BlockState(h0), mode=mode)
        loss = (y * weights).sum() + final.h.square().sum()
        grads.append(torch.autograd.grad(loss, [x, h0, *layer.parameters()]))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_eigenvalues_are_the_blocks_and_within_the_norm_bound():
    x = 3 * torch.randn(2, 40, D_MODEL, dtype=torch.float64)
    for p, k in ((1.0, 4), (1.2, 4), (1.2, 2), (2.0, 3)):
        layer = make(block_size=k, norm_p=p)
        eig = layer.transition_eigenvalues(x)
        assert eig.shape == (2, 40, layer.num_heads, k)
        torch.testing.assert_close(eig, torch.linalg.eigvals(layer.transitions(x).movedim((2, 3), (-2, -1))))
        assert eig.abs().min() < 1e-6  # centred columns: the all-ones row vector is a left null vector
        assert eig.abs().max() <= k ** (1 - 1 / p) + 1e-9, (p, k)
    # one step from h0 and from 0 differs by A_t h0
    layer, x_t = make(), x[:, 0]
    h0 = torch.randn(2, layer.block_size, layer.num_heads, dtype=torch.float64)
    diff = layer.step(x_t, BlockState(h0))[1].h - layer.step(x_t, layer.init_state(2, dtype=torch.float64))[1].h
    torch.testing.assert_close(diff, torch.einsum("bijh,bjh->bih", layer.transitions(x_t[:, None])[:, 0], h0))


def test_p1_keeps_the_state_bounded_far_beyond_training_lengths():
    layer = make(norm_p=1.0)
    x = torch.randn(1, 4000, D_MODEL, dtype=torch.float64)
    h = layer(x)[1].h
    v = layer.v_proj(x).abs().sum(-1).max()  # ‖h_t‖_1 <= ‖h_{t-1}‖_1 + ‖b_t‖_1 and the centred blocks forget
    assert torch.isfinite(h).all() and h.abs().sum() < 4000 * v


def test_bad_arguments_name_themselves():
    for kw, name in (({"block_size": 0}, "block_size"), ({"norm_p": 0.5}, "norm_p"), ({"expand": 0}, "expand")):
        with pytest.raises(ValueError, match=name):
            rnnzoo.create("block_lrnn", d_model=8, **kw)
