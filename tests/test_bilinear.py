"""The bilinear RNN (Ebrahimi & Memisevic 2025) against its equation, written here as an unnormalised loop:
``h_t = A(x_t) h_{t-1}`` with the raw blocks, read as ``W_o (h / ‖h‖)`` per head. The layer rescales blocks and
normalises its state; the outputs must not change."""

from __future__ import annotations

import pytest
import torch

import rnnzoo
from forms import assert_forms_agree, assert_matches, stepped
from rnnzoo.layers import BilinearRNN, BlockState
from rnnzoo.ops import normalized_block_scan, normalized_block_scan_reference

D_MODEL = 8
TIGHT = dict(rtol=1e-10, atol=1e-12)
VARIANTS = [
    {"structure": "block"},
    {"structure": "block", "block_size": 3, "num_heads": 1, "chunk_size": 5},
    {"structure": "rotation", "chunk_size": 4},
    {"structure": "diagonal", "num_heads": 2},
]


def make(**kw) -> BilinearRNN:
    torch.manual_seed(0)
    layer = rnnzoo.create("bilinear", d_model=D_MODEL, **kw).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


@torch.no_grad()
def paper_loop(layer: BilinearRNN, x: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``h_t = A(x_t) h_{t-1}`` one block at a time, ``A(x)`` the raw linear map of ``x`` (a rotation by
    ``W_θ x`` for R2 blocks); returns the outputs ``W_o (h_t / ‖h_t‖ per head)`` and the normalised last state."""
    B, T, _ = x.shape
    k, n, H = layer.block_size, layer.num_blocks, layer.num_heads
    h = h0.permute(0, 2, 1).clone()  # (batch, blocks, k)
    W = layer.A_proj.weight
    bias = 0 if layer.A_proj.bias is None else layer.A_proj.bias

    def normalised(h):
        g = h.reshape(B, H, -1)
        return (g / g.norm(dim=-1, keepdim=True)).reshape(B, n, k)

    ys = []
    for t in range(T):
        a = x[:, t] @ W.T + bias
        new = torch.empty_like(h)
        for j in range(n):
            if layer.structure == "rotation":
                c, s = torch.cos(a[:, j]), torch.sin(a[:, j])
                A = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
            else:
                A = a.view(B, k, k, n)[..., j]
            new[:, j] = torch.einsum("bij,bj->bi", A, h[:, j])
        h = new
        ys.append(normalised(h).reshape(B, -1) @ layer.out_proj.weight.T)
    return torch.stack(ys, 1), normalised(h).permute(0, 2, 1)


@pytest.mark.parametrize("length", [1, 7, 33])
@pytest.mark.parametrize("kw", VARIANTS)
def test_every_form_follows_the_equation(length, kw):
    layer = make(**kw)
    x = torch.randn(2, length, D_MODEL, dtype=torch.float64)
    h0 = torch.randn(2, layer.block_size, layer.num_blocks, dtype=torch.float64)
    for start in (None, h0):
        want_y, want_h = paper_loop(layer, x, layer.init_state(2, dtype=torch.float64).h if start is None else start)
        state = None if start is None else BlockState(start)
        for mode in ("scan", "recurrent"):
            assert_matches(*layer(x, state, mode=mode), want_y, {"h": want_h}, **TIGHT)
        assert_matches(*stepped(layer, x, state), want_y, {"h": want_h}, **TIGHT)


@pytest.mark.parametrize("kw", VARIANTS)
def test_forms_agree_with_gradients(kw):
    layer = make(**kw)
    x = torch.randn(2, 19, D_MODEL, dtype=torch.float64)
    assert_forms_agree(layer, x, ["scan", "recurrent", "split", "step"], rtol=1e-9, atol=1e-11)


def test_scan_gradients_with_respect_to_the_initial_state():
    torch.manual_seed(2)
    A = torch.randn(2, 23, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 23, 3, 4, dtype=torch.float64)
    grads = []
    for fn, kw in ((normalized_block_scan, {"chunk_size": 5}), (normalized_block_scan_reference, {})):
        h, last = fn(A, h0, 2, **kw)
        grads.append(torch.autograd.grad((h * w).sum() + last.sum(), [A, h0]))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_long_sequences_stay_finite_in_float32():
    """Raw products of 20,000 transitions over- or underflow; the rescaled, normalised scan does not."""
    for structure in ("block", "diagonal"):
        layer = make(structure=structure).float()
        x = 3 * torch.randn(1, 20_000, D_MODEL)
        y, state = layer(x)
        assert torch.isfinite(y).all() and torch.isfinite(state.h).all(), structure
        y64 = layer.double()(x[:, -200:].double(), state=BlockState(state.h.double()))[0]
        torch.testing.assert_close(layer.float()(x[:, -200:], state=state)[0].double(), y64, rtol=1e-4, atol=1e-5)


def test_transition_eigenvalues_are_the_rescaled_blocks():
    x = torch.randn(2, 9, D_MODEL, dtype=torch.float64)
    rotation = make(structure="rotation").transition_eigenvalues(x)
    torch.testing.assert_close(rotation.abs(), torch.ones_like(rotation.abs()))  # rotations: on the unit circle
    layer = make(structure="block", num_heads=1)
    eig = layer.transition_eigenvalues(x)
    assert eig.shape == (2, 9, layer.num_blocks, layer.block_size)
    A = layer.transitions(x)  # RMS singular value 1 over the head: Σ |A|_F^2 = d_hidden
    torch.testing.assert_close(A.square().sum((2, 3, 4)), torch.full((2, 9), float(layer.d_hidden), dtype=torch.float64))


def test_bad_arguments_name_themselves():
    for kw, name in (
        ({"structure": "dense"}, "structure"), ({"block_size": 0}, "block_size"), ({"expand": 0}, "expand"),
        ({"num_heads": 3}, "num_heads"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=name):
            rnnzoo.create("bilinear", d_model=8, **kw)
    with pytest.raises(ValueError, match="groups"):
        normalized_block_scan(torch.randn(1, 3, 2, 2, 3), torch.randn(1, 2, 3), groups=2)
