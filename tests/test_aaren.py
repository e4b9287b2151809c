"""Aaren and its engine, the (m, u, w) softmax prefix scan: parallel == recurrent == a direct softmax."""

from __future__ import annotations

import math

import pytest
import torch

from rnnzoo.layers import Aaren
from rnnzoo.ops.softmax_scan import softmax_combine, softmax_scan, softmax_scan_operator, softmax_scan_reference

FORMS = {"scan": softmax_scan, "reference": softmax_scan_reference}


def inputs(batch: int, length: int, heads: int = 3, d_v: int = 4, scale: float = 3.0, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    s = scale * torch.randn(batch, length, heads, generator=gen, dtype=torch.float64)
    return s, torch.randn(batch, length, heads, d_v, generator=gen, dtype=torch.float64)


def direct(s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``o_t = softmax(s_{<=t}) @ v_{<=t}``, each row of weights by torch.softmax: ``(batch, time, heads, d_v)``."""
    length = s.shape[1]
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    weights = torch.softmax(s.transpose(1, 2)[:, :, None, :].masked_fill(future, -math.inf), -1)  # (b, h, t, i)
    return torch.einsum("bhti,bihd->bthd", weights, v)


def direct_last(s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The last output alone, ``softmax(s) @ v`` over all of time: ``(batch, heads, d_v)``."""
    return torch.einsum("bih,bihd->bhd", torch.softmax(s, 1), v)


def direct_state(s: torch.Tensor, v: torch.Tensor):
    m = s.amax(1)
    p = torch.exp(s - m[:, None])
    return m, p.sum(1), torch.einsum("bih,bihd->bhd", p, v)


# -- the engine ---------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("batch,length", [(1, 1), (2, 2), (3, 13), (2, 64), (1, 257), (2, 300)])
def test_scan_is_the_direct_softmax(form, batch, length):
    s, v = inputs(batch, length)
    o, state = FORMS[form](s, v)
    torch.testing.assert_close(o, direct(s, v), rtol=1e-12, atol=1e-13)
    for got, want in zip(state, direct_state(s, v)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("length", [1, 2, 7, 70, 257])
def test_parallel_and_recurrent_gradients_agree(length):
    s, v = inputs(2, length)
    m0, u0, w0 = direct_state(*inputs(2, 5, seed=1))
    leaves = [t.clone().requires_grad_(True) for t in (s, v, m0, u0, w0)]
    gen = torch.Generator().manual_seed(2)
    results = {}
    for name, scan in FORMS.items():
        for leaf in leaves:
            leaf.grad = None
        o, (m, u, w) = scan(leaves[0], leaves[1], tuple(leaves[2:]))
        loss = sum((t * torch.randn(t.shape, generator=gen.manual_seed(3), dtype=t.dtype)).sum() for t in (o, m, u, w))
        loss.backward()
        results[name] = [o, m, u, w, *(leaf.grad for leaf in leaves)]
    for got, want in zip(results["scan"], results["reference"]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_gradcheck():
    s, v = inputs(1, 9, heads=2, d_v=2)
    state = tuple(t.requires_grad_(True) for t in direct_state(*inputs(1, 3, heads=2, d_v=2, seed=1)))

    def scan(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        o, final = softmax_scan(args[0], args[1], args[2:])
        return o, *final

    assert torch.autograd.gradcheck(scan, (s.requires_grad_(), v.requires_grad_(), *state))


@pytest.mark.parametrize("form", FORMS)
def test_state_continues_the_scan(form):
    s, v = inputs(2, 50)
    o, state = FORMS[form](s, v)
    o1, mid = FORMS[form](s[:, :17], v[:, :17])
    o2, end = FORMS[form](s[:, 17:], v[:, 17:], mid)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o, rtol=1e-12, atol=1e-13)
    for got, want in zip(end, state):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
    empty = (torch.full((2, 3), -math.inf, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64),
             torch.zeros(2, 3, 4, dtype=torch.float64))  # fmt: skip
    torch.testing.assert_close(FORMS[form](s, v, empty)[0], o, rtol=1e-12, atol=1e-13)


def test_combine_is_associative_and_joins_spans():
    s, v = inputs(2, 30)
    spans = [direct_state(s[:, a:b], v[:, a:b]) for a, b in ((0, 7), (7, 8), (8, 30))]
    left = softmax_combine(softmax_combine(spans[0], spans[1]), spans[2])
    right = softmax_combine(spans[0], softmax_combine(spans[1], spans[2]))
    for x, y, z in zip(left, right, softmax_scan(s, v)[1]):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(x, z, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize(
    "scores",
    [
        lambda t: 1000 * torch.randn(t),  # far beyond exp's range, either way
        lambda t: torch.linspace(-5000, 5000, t),  # the max moves at every step
        lambda t: torch.linspace(5000, -5000, t),  # the first token dominates throughout
        lambda t: torch.full((t,), -1e4),  # all equal and tiny: a running mean
    ],
)
def test_long_float32_scan_is_finite_and_exact(scores):
    length = 16384
    torch.manual_seed(0)
    s = scores(length).float().view(1, length, 1)
    v = torch.randn(1, length, 1, 2)
    o, (m, u, w) = softmax_scan(s, v)
    assert torch.isfinite(o).all() and torch.isfinite(u).all() and torch.isfinite(w).all() and u.item() >= 1
    sampled = torch.tensor([0, 1, 100, 4095, 9000, length - 1])
    want = torch.stack([direct_last(s[:, : t + 1].double(), v[:, : t + 1].double()) for t in sampled.tolist()], 1)
    torch.testing.assert_close(o[:, sampled].double(), want, rtol=1e-5, atol=2e-6)


def test_half_precision_runs_in_float32():
    s, v = inputs(2, 40)
    o, state = softmax_scan(s.bfloat16(), v.bfloat16())
    assert o.dtype == torch.bfloat16 and all(t.dtype == torch.float32 for t in state)
    torch.testing.assert_close(o.double(), direct(s.bfloat16().double(), v.bfloat16().double()), rtol=1e-2, atol=1e-2)


def test_operator_is_the_causal_softmax():
    s, v = inputs(2, 11)
    M = softmax_scan_operator(s)
    assert M.shape == (2, 3, 11, 11) and torch.equal(M.triu(1), torch.zeros_like(M))
    torch.testing.assert_close(torch.einsum("bhti,bihd->bthd", M, v), direct(s, v), rtol=1e-12, atol=1e-13)


def test_engine_bad_input():
    s, v = inputs(2, 5)
    for scan in FORMS.values():
        name = scan.__name__
        with pytest.raises(ValueError, match=rf"{name}: `s` must have shape \(batch, time, heads\)"):
            scan(s[..., 0], v)
        with pytest.raises(ValueError, match=r"`v` must have shape \(2, 5, 3, d_v\)"):
            scan(s, v[:, :4])
        with pytest.raises(ValueError, match="time dimension .* is empty"):
            scan(s[:, :0], v[:, :0])
        with pytest.raises(TypeError, match="`s` must be a floating-point"):
            scan(s.long(), v)
        with pytest.raises(ValueError, match=r"`state` part `w` must have shape \(2, 3, 4\)"):
            scan(s, v, (s[:, 0], s[:, 0], v[:, 0, :, :2]))
        with pytest.raises(TypeError, match=r"`state` must be a tuple of tensors \(m, u, w\)"):
            scan(s, v, {"m": s[:, 0]})


# -- the layer ----------------------------------------------------------------------


def make(num_heads: int = 2, d_model: int = 8, dtype=torch.float64) -> Aaren:
    torch.manual_seed(0)
    return Aaren(d_model, num_heads=num_heads).to(dtype)


def layer_direct(layer: Aaren, x: torch.Tensor) -> torch.Tensor:
    """The layer written out: scores of the learned queries against the keys, causal softmax, output map."""
    batch, length, _ = x.shape
    k, v = (u.view(batch, length, layer.num_heads, layer.head_dim) for u in (x @ layer.kv_proj.weight.T).chunk(2, -1))
    s = torch.einsum("bthd,hd->bth", k, layer.query) / math.sqrt(layer.head_dim)
    return direct(s, v).flatten(2) @ layer.out_proj.weight.T


@pytest.mark.parametrize("batch,length", [(1, 1), (3, 13), (2, 70)])
def test_layer_forms_are_the_direct_softmax(batch, length):
    layer = make()
    x = torch.randn(batch, length, 8, dtype=torch.float64)
    want = layer_direct(layer, x)
    for mode in ("scan", "recurrent"):
        torch.testing.assert_close(layer(x, mode=mode)[0], want, rtol=1e-10, atol=1e-12)
    state, ys = None, []
    for x_t in x.unbind(1):
        y_t, state = layer.step(x_t, state)
        ys.append(y_t)
        assert state.w.shape == (batch, 2, 4)  # O(1): the state never grows
    torch.testing.assert_close(torch.stack(ys, 1), want, rtol=1e-10, atol=1e-12)


def test_layer_gradients_are_the_direct_gradients():
    layer = make()
    x = torch.randn(2, 21, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 21, 8, dtype=torch.float64)
    grads = {}
    for name, fn in (("direct", lambda: layer_direct(layer, x)), ("scan", lambda: layer(x)[0])):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        (fn() * weight).sum().backward()
        grads[name] = [x.grad.clone(), *(p.grad.clone() for p in layer.parameters())]
    assert len(grads["scan"]) == 4  # x, the queries, kv_proj, out_proj
    for got, want in zip(grads["scan"], grads["direct"]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_layer_bad_arguments():
    with pytest.raises(ValueError, match="`num_heads`=3 must divide d_model=8"):
        Aaren(8, num_heads=3)
    with pytest.raises(ValueError, match="`num_heads` must be a positive int"):
        Aaren(8, num_heads=0)
