"""ParaGRU and ParaLSTM: the cells' equations and Jacobians, Newton vs the loop, convergence reports, errors.

The generic checks (every form agrees, split through state, float32, bf16, T = 16,384, bad input) run on both
layers in test_layers.py.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import rnnzoo
from forms import assert_forms_agree
from rnnzoo.layers.pararnn import ParaGRU, ParaLSTM, _HeadProjection, _tanh, para_gru_cell, para_lstm_cell
from rnnzoo.ops.newton import SEQUENTIAL_BELOW, NewtonConvergenceWarning

NAMES = ["paragru", "paralstm"]


def make(name: str, d_model: int = 8, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    return rnnzoo.create(name, d_model=d_model, **kw).to(dtype)


CHANNELS = [(5,), (2, 3)]  # (d,) and (heads, k), the layers' layout


def random_cell_inputs(channels=(5,), lead=(3, 4), seed: int = 0):
    """``pre`` ``(*lead, [heads,] 3, k)``, ``A`` ``([heads,] 3, k)``, ``C`` ``([heads,] 2, k)``."""
    gen = torch.Generator().manual_seed(seed)
    *heads, k = channels
    pre = torch.randn(*lead, *heads, 3, k, generator=gen, dtype=torch.float64)
    A = torch.randn(*heads, 3, k, generator=gen, dtype=torch.float64)
    C = torch.randn(*heads, 2, k, generator=gen, dtype=torch.float64)
    return gen, pre, A, C


# -- the cells ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", CHANNELS)
def test_gru_cell_equations(channels):
    """One step against the documented equations, written out directly (z weighs the candidate)."""
    gen, pre, A, _ = random_cell_inputs(channels)
    h = torch.randn(3, 4, *channels, generator=gen, dtype=torch.float64)
    gate = lambda i: pre.select(-2, i)  # noqa: E731
    a_z, a_r, a_n = A.unbind(-2)
    z = torch.sigmoid(gate(0) + a_z * h)
    r = torch.sigmoid(gate(1) + a_r * h)
    n = torch.tanh(gate(2) + a_n * (r * h))
    torch.testing.assert_close(para_gru_cell(h, pre, A)[0], z * n + (1 - z) * h)


@pytest.mark.parametrize("channels", CHANNELS)
def test_lstm_cell_equations(channels):
    gen, pre, A, C = random_cell_inputs(channels)
    c_prev, h_prev = torch.randn(2, 3, 4, *channels, generator=gen, dtype=torch.float64)
    gate = lambda i: pre.select(-2, i)  # noqa: E731
    a_f, a_o, a_c = A.unbind(-2)
    w_f, w_o = C.unbind(-2)
    f = torch.sigmoid(gate(0) + a_f * h_prev + w_f * c_prev)
    cand = torch.tanh(gate(2) + a_c * h_prev)
    c = f * c_prev + (1 - f) * cand
    o = torch.sigmoid(gate(1) + a_o * h_prev + w_o * c)
    components = -1 - len(channels)
    new, _ = para_lstm_cell(torch.stack([c_prev, h_prev], components), pre, A, C)
    torch.testing.assert_close(new, torch.stack([c, o * torch.tanh(c)], components))


@pytest.mark.parametrize("channels", CHANNELS)
def test_gru_cell_jacobian_is_autograds_diagonal(channels):
    gen, pre, A, _ = random_cell_inputs(channels, lead=(2,))
    h = torch.randn(2, *channels, generator=gen, dtype=torch.float64)
    _, jac, _ = para_gru_cell(h, pre, A, jacobian=True)
    flat = lambda v: para_gru_cell(v.unflatten(-1, channels), pre, A)[0].flatten(1)  # noqa: E731
    full = torch.autograd.functional.jacobian(flat, h.flatten(1))  # (2, 5, 2, 5)
    want = torch.stack([torch.diagonal(full[b, :, b, :]) for b in range(2)])
    torch.testing.assert_close(jac.flatten(1), want)
    off = full.clone()
    for b in range(2):
        off[b, :, b, :] -= torch.diag(want[b])
    assert off.abs().max() < 1e-15, "the Jacobian must be diagonal"


# (lead, channels); the second and third take the sigmoid form of tanh
VJP_SHAPES = [((2,), (5,)), ((4, 17), (256,)), ((4, 17), (2, 128))]


@pytest.mark.parametrize("lead, channels", VJP_SHAPES)
def test_gru_vjp_is_autograds(lead, channels):
    gen = torch.Generator().manual_seed(1)
    *heads, k = channels
    h = torch.rand(*lead, *channels, generator=gen, dtype=torch.float64) * 2 - 1
    pre = torch.randn(*lead, *heads, 3, k, generator=gen, dtype=torch.float64, requires_grad=True)
    A = torch.randn(*heads, 3, k, generator=gen, dtype=torch.float64, requires_grad=True)
    lam = torch.randn_like(h)
    out, _ = para_gru_cell(h, pre, A)
    want = torch.autograd.grad(out, (pre, A), lam)
    got = para_gru_cell.vjp(h, pre.detach(), A.detach(), lam)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    _, _, gates = para_gru_cell(h, pre.detach(), A.detach(), jacobian=True)  # the residuals spare recomputing them
    for a, b in zip(para_gru_cell.vjp(h, pre.detach(), A.detach(), lam, residuals=gates), want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lead, channels", VJP_SHAPES)
def test_lstm_vjp_is_autograds(lead, channels):
    gen = torch.Generator().manual_seed(2)
    *heads, k = channels
    state = torch.rand(*lead, 2, *channels, generator=gen, dtype=torch.float64) * 2 - 1
    pre = torch.randn(*lead, *heads, 3, k, generator=gen, dtype=torch.float64, requires_grad=True)
    A = torch.randn(*heads, 3, k, generator=gen, dtype=torch.float64, requires_grad=True)
    C = torch.randn(*heads, 2, k, generator=gen, dtype=torch.float64, requires_grad=True)
    lam = torch.randn_like(state)
    out, _ = para_lstm_cell(state, pre, A, C)
    want = torch.autograd.grad(out, (pre, A, C), lam)
    got = para_lstm_cell.vjp(state, pre.detach(), A.detach(), C.detach(), lam)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_tanh_by_sigmoid_on_large_tensors():
    v = torch.linspace(-30, 30, 2**15, dtype=torch.float64)
    torch.testing.assert_close(_tanh(v), torch.tanh(v), rtol=0, atol=1e-15)
    torch.testing.assert_close(_tanh(v.float()), torch.tanh(v.float()), rtol=0, atol=2e-7)


@pytest.mark.parametrize("channels", CHANNELS)
def test_lstm_cell_jacobian_is_autograds_2x2_blocks(channels):
    gen, pre, A, C = random_cell_inputs(channels, lead=(1,))
    state = torch.randn(1, 2, *channels, generator=gen, dtype=torch.float64)
    _, jac = para_lstm_cell(state, pre, A, C, jacobian=True)  # (1, 2, 2, *channels)
    jac = jac.flatten(3)
    flat = lambda v: para_lstm_cell(v.unflatten(-1, channels), pre, A, C)[0].flatten(2)  # noqa: E731
    full = torch.autograd.functional.jacobian(flat, state.flatten(2))[0, :, :, 0]
    # full[i, c, j, c'] = ∂new[i, c] / ∂state[j, c']: zero unless c == c', and then jac[i, j, c]
    for c in range(jac.shape[-1]):
        torch.testing.assert_close(full[:, c, :, c], jac[0, :, :, c])
        full[:, c, :, c] = 0
    assert full.abs().max() < 1e-15, "channels must not couple"


# -- Newton vs the loop through the layers ------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("chunk", [1, 4, None])
@pytest.mark.parametrize("length", [1, 5, 97])
def test_newton_equals_loop(name, chunk, length):
    """Outputs, final state and every gradient; DEER (chunk 1), chunks with a ragged tail, the default."""
    layer = make(name, chunk_size=chunk)
    x = torch.randn(2, length, 8, dtype=torch.float64)
    assert_forms_agree(layer, x, ["recurrent", "newton"], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_newton_equals_loop_float32(name):
    layer = make(name, d_model=16, dtype=torch.float32)
    x = torch.randn(3, 301, 16)
    assert_forms_agree(layer, x, ["recurrent", "newton"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_newton_backward_twice_and_gradcheck(name):
    """Newton's backward writes the pre-activations' gradient over them; a second backward (``retain_graph``, as
    gradcheck runs) rebuilds them: both give the loop's gradients. Changing the input weights in place between
    the two is an error, not a silent gradient at other weights."""
    layer = make(name, d_model=4, chunk_size=3)
    x = torch.randn(2, 7, 4, dtype=torch.float64, requires_grad=True)
    leaves = [x, *layer.parameters()]
    y, _ = layer(x, mode="newton")
    first = torch.autograd.grad((y * y).sum(), leaves, retain_graph=True)
    second = torch.autograd.grad((y * y).sum(), leaves)
    y_ref, _ = layer(x, mode="recurrent")
    want = torch.autograd.grad((y_ref * y_ref).sum(), leaves)
    for got in (first, second):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    assert torch.autograd.gradcheck(lambda v: layer(v, mode="newton")[0], (x,))
    y, _ = layer(x, mode="newton")
    torch.autograd.grad(y.sum(), leaves, retain_graph=True)
    with torch.no_grad():
        layer.in_bias.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(y.sum(), leaves)


@pytest.mark.parametrize("name", NAMES)
def test_reports_few_iterations_on_typical_input(name):
    layer = make(name, d_model=16, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(torch.randn(4, 1024, 16))
    info = layer.newton_info
    assert info is not None and info.converged and info.chunk_size == 32 and 1 <= info.iterations <= 3, info
    layer(torch.randn(4, 1024, 16), mode="recurrent")
    assert layer.newton_info is info, "the loop leaves the last Newton report alone"


@pytest.mark.parametrize("name", NAMES)
def test_non_convergence_warns_and_uses_the_loop(name):
    layer = make(name, max_iters=1)
    x = torch.randn(2, 400, 8, dtype=torch.float64, requires_grad=True)
    with pytest.warns(NewtonConvergenceWarning, match="did not converge in 1 iterations"):
        y, _ = layer(x, mode="newton")
    assert not layer.newton_info.converged
    y_loop, _ = layer(x, mode="recurrent")
    torch.testing.assert_close(y, y_loop, rtol=1e-12, atol=1e-13)
    leaves = [x, *layer.parameters()]  # the fallback's gradients: its Jacobians, no residuals kept
    for a, b in zip(torch.autograd.grad(y.square().sum(), leaves), torch.autograd.grad(y_loop.square().sum(), leaves)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


# -- construction -------------------------------------------------------------------------------------------------


def test_initialisation_follows_the_reference():
    d = 64
    for cls, weights in ((ParaGRU, ("A",)), (ParaLSTM, ("A", "C"))):
        torch.manual_seed(0)
        layer = cls(d, num_heads=4)
        torch.testing.assert_close(layer.in_bias[0], -torch.linspace(0, 1, d))
        assert torch.equal(layer.in_bias[1:], torch.zeros(2, d))
        bound = (6 / (d // 4 + d)) ** 0.5  # Xavier-uniform, fan-in d / heads, fan-out d
        assert layer.in_weight.shape == (4, d // 4, 3, d // 4)
        assert bound * 0.9 < layer.in_weight.abs().max() <= bound
        for name in weights:
            std = getattr(layer, name).std().item()
            assert 0.5 < std / (2 / (5 * d) ** 0.5) < 1.5, (cls.__name__, name, std)


@pytest.mark.parametrize("num_heads", [1, 2, 4])
def test_input_weights_are_block_diagonal_over_heads(num_heads):
    """Head i's inputs reach only head i's channels: the pre-activations equal a dense projection by the
    block-diagonal matrix assembled from ``in_weight``."""
    d, head = 8, 8 // num_heads
    layer = ParaGRU(d, num_heads=num_heads).double()
    dense = torch.zeros(3, d, d, dtype=torch.float64)  # (gate, out channel, in channel)
    for i in range(num_heads):
        block = slice(i * head, (i + 1) * head)
        dense[:, block, block] = layer.in_weight[i].permute(1, 2, 0).detach()
    x = torch.randn(2, 5, d, dtype=torch.float64)
    expected = torch.einsum("goi,bti->btgo", dense, x) + layer.in_bias.detach()  # (batch, time, gate, d)
    heads_first = expected.unflatten(-1, (num_heads, head)).transpose(-3, -2)
    torch.testing.assert_close(layer._preactivations(x), heads_first)


@pytest.mark.parametrize("num_heads, lead", [(1, (2, 5)), (2, (7,)), (4, (2, 3, 1))])
def test_head_projection_gradients(num_heads, lead):
    """The per-block matrix products' backward is the derivative of their forward (and of the einsum)."""
    gen = torch.Generator().manual_seed(num_heads)
    d, head = 8, 8 // num_heads
    x = torch.randn(*lead, d, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(num_heads, head, 3, head, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, d, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_HeadProjection.apply, (x, weight, bias))
    head_bias = bias.unflatten(-1, (num_heads, head)).transpose(0, 1)
    einsum = torch.einsum("...hi,higj->...hgj", x.unflatten(-1, (num_heads, head)), weight) + head_bias
    torch.testing.assert_close(_HeadProjection.apply(x, weight, bias), einsum)
    only_x = _HeadProjection.apply(x, weight.detach(), bias.detach())  # weights frozen: only x's gradient
    (grad_x,) = torch.autograd.grad(only_x.sum(), x)
    torch.testing.assert_close(grad_x, torch.autograd.grad(einsum.sum(), x)[0])


@pytest.mark.parametrize("name", NAMES)
def test_bad_newton_settings(name):
    with pytest.raises(ValueError, match="`tol` must be a positive float"):
        rnnzoo.create(name, d_model=8, tol=-1.0)
    with pytest.raises(ValueError, match="`max_iters` must be a positive int"):
        rnnzoo.create(name, d_model=8, max_iters=0)
    with pytest.raises(ValueError, match="`chunk_size` must be a positive int"):
        rnnzoo.create(name, d_model=8, chunk_size=0)
    with pytest.raises(ValueError, match="`num_heads`=3 must divide d_model=8"):
        rnnzoo.create(name, d_model=8, num_heads=3)
    with pytest.raises(ValueError, match="`num_heads` must be a positive int"):
        rnnzoo.create(name, d_model=8, num_heads=0)


# -- the form "auto" picks by shape -------------------------------------------------------------------------------


def test_auto_mode_by_length():
    """On CPU, ParaLSTM's "auto" runs the loop from ``SEQUENTIAL_BELOW`` up to ``loop_below`` steps (leaving the
    Newton report alone) and the engine otherwise (its sequential solve below, Newton above); ParaGRU always runs
    the engine. Every choice gives the loop's outputs and gradients."""
    lstm, gru = make("paralstm"), make("paragru")
    assert lstm.loop_below == 256 and gru.loop_below == 0
    short, middle = (torch.randn(2, length, 8, dtype=torch.float64) for length in (40, SEQUENTIAL_BELOW + 1))
    for x in (short, middle):
        assert_forms_agree(lstm, x, ["auto", "recurrent", "newton"], rtol=1e-8, atol=1e-10)
    lstm.newton_info = None
    lstm(middle)
    assert lstm.newton_info is None, "auto ran the loop"
    lstm(short)
    assert lstm.newton_info.chunk_size == 40, "auto ran the engine's sequential solve"
    lstm(torch.randn(1, 256, 8, dtype=torch.float64))
    assert lstm.newton_info.chunk_size < 256, "auto ran Newton"
    assert_forms_agree(gru, middle, ["auto", "recurrent"], rtol=1e-8, atol=1e-10)
    gru(short)
    assert gru.newton_info.chunk_size == 40, "the engine's sequential solve"
    gru(middle)
    assert gru.newton_info.chunk_size < SEQUENTIAL_BELOW + 1, "Newton"
