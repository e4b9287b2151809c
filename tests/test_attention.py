"""Softmax attention: every form against a direct float64 computation, rotary positions, the KV cache."""

from __future__ import annotations

import math

import pytest
import torch

from forms import assert_forms_agree
from rnnzoo.layers import Attention
from rnnzoo.layers.attention import KVCache, append_to_cache
from rnnzoo.layers.common import rotate

D_MODEL = 8


def make(num_heads: int = 2, d_model: int = D_MODEL, dtype=torch.float64) -> Attention:
    torch.manual_seed(0)
    return Attention(d_model, num_heads=num_heads).to(dtype)


def direct(layer: Attention, x: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Causal softmax attention written out: rotary positions as complex multiplication, then the softmax."""
    batch, length, _ = x.shape
    heads, d = layer.num_heads, layer.head_dim
    q, k, v = (u.view(batch, length, heads, d).transpose(1, 2) for u in (x @ layer.qkv_proj.weight.T).chunk(3, -1))
    positions = torch.arange(start, start + length, dtype=torch.float64)
    freqs = 10000.0 ** (-2 * torch.arange(d // 2, dtype=torch.float64) / d)
    phase = torch.polar(torch.ones(length, d // 2, dtype=torch.float64), positions[:, None] * freqs)
    q, k = (torch.view_as_real(torch.view_as_complex(u.unflatten(-1, (-1, 2))) * phase).flatten(-2) for u in (q, k))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    o = torch.softmax(scores.masked_fill(future, float("-inf")), -1) @ v
    return o.transpose(1, 2).reshape(batch, length, heads * d) @ layer.out_proj.weight.T


def steps(layer: Attention, x: torch.Tensor, state: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
    ys = []
    for x_t in x.unbind(1):
        y_t, state = layer.step(x_t, state)
        ys.append(y_t)
    return torch.stack(ys, 1), state


@pytest.mark.parametrize("batch,length", [(1, 1), (2, 2), (3, 13), (2, 37)])
def test_every_form_is_the_direct_softmax(batch, length):
    layer = make()
    x = torch.randn(batch, length, D_MODEL, dtype=torch.float64)
    want = direct(layer, x)
    for mode in ("sdpa", "recurrent"):
        torch.testing.assert_close(layer(x, mode=mode)[0], want, rtol=1e-10, atol=1e-12, msg=lambda m: f"{mode}: {m}")
    torch.testing.assert_close(steps(layer, x)[0], want, rtol=1e-10, atol=1e-12)


def test_gradients_are_the_direct_softmax_gradients():
    layer = make()
    x = torch.randn(2, 19, D_MODEL, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 19, D_MODEL, dtype=torch.float64)
    grads = {}
    for name, fn in (("direct", lambda: direct(layer, x)), ("sdpa", lambda: layer(x)[0])):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        (fn() * weight).sum().backward()
        grads[name] = [x.grad.clone(), *(p.grad.clone() for p in layer.parameters())]
    for got, want in zip(grads["sdpa"], grads["direct"]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_cache_continues_at_the_right_positions():
    layer = make()
    x = torch.randn(2, 40, D_MODEL, dtype=torch.float64)
    want = direct(layer, x)
    _, state = layer(x[:, :11])
    y2, state = layer(x[:, 11:12], state)  # one token through the parallel form
    y3, state = layer(x[:, 12:30], state)  # a chunk after the cache: offset causal mask
    y4, state = steps(layer, x[:, 30:], state)
    torch.testing.assert_close(torch.cat([y2, y3, y4], 1), want[:, 11:], rtol=1e-10, atol=1e-12)
    assert state.position == 40 and state.k.shape == (2, 2, 40, 4)
    full = layer(x)[1]
    torch.testing.assert_close(state.k, full.k)
    torch.testing.assert_close(state.v, full.v)


def test_continuation_from_another_start_is_shifted():
    """The rotary positions follow the cache: tokens continuing a cache are not the same tokens at position 0."""
    layer = make()
    x = torch.randn(1, 6, D_MODEL, dtype=torch.float64)
    _, cache = layer(torch.randn(1, 5, D_MODEL, dtype=torch.float64))
    assert not torch.allclose(layer(x, cache)[1].k[:, :, 5:], layer(x)[1].k)


def test_inference_steps_use_a_growing_buffer_with_amortised_doubling():
    layer = make(dtype=torch.float32)
    x = torch.randn(2, 100, D_MODEL)
    with torch.no_grad():
        want = layer(x)[0]
        y, state = layer(x[:, :3])
        ys, rooms = [y], []
        for x_t in x[:, 3:].unbind(1):
            y_t, state = layer.step(x_t, state)
            ys.append(y_t[:, None])
            if not rooms or state._room is not rooms[-1]:
                rooms.append(state._room)
    torch.testing.assert_close(torch.cat(ys, 1), want, rtol=1e-5, atol=1e-6)
    # 97 steps from 3 tokens fill buffers of capacity 8, 18, 38, 78, 158: a copy per doubling, not per step
    assert [room.k.shape[2] for room in rooms] == [8, 18, 38, 78, 158]
    assert state.k.shape == (2, 2, 100, 4) and state.position == 100 and rooms[-1].filled == 100


def test_branching_from_one_cache_keeps_both_branches():
    layer = make()
    x = torch.randn(1, 9, D_MODEL, dtype=torch.float64)
    a, b = torch.randn(2, 1, D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        _, root = steps(layer, x)
        y_a, state_a = layer.step(a, root)
        y_b, state_b = layer.step(b, root)  # writes where branch a did: must copy, not overwrite
        after_a = layer.step(x[:, 0], state_a)[0]
    torch.testing.assert_close(after_a, direct(layer, torch.cat([x, a[:, None], x[:, :1]], 1))[:, -1])
    torch.testing.assert_close(y_b, direct(layer, torch.cat([x, b[:, None]], 1))[:, -1])
    assert root.position == 9 and state_a.position == state_b.position == 10


def test_append_under_autograd_concatenates_and_keeps_gradients():
    k0 = torch.randn(1, 2, 3, 4, requires_grad=True)
    cache = append_to_cache(append_to_cache(KVCache(k0[:, :, :0], k0[:, :, :0]), k0, k0), k0[:, :, :1], k0[:, :, :1])
    assert cache._room is None and cache.position == 4
    cache.k.sum().backward()
    assert torch.equal(k0.grad[0, :, 0], torch.full((2, 4), 2.0))


def test_inference_mode_cache_continues_outside_inference_mode():
    layer = make(dtype=torch.float32)
    x = torch.randn(1, 8, D_MODEL)
    with torch.inference_mode():
        _, state = steps(layer, x[:, :5])
    with torch.no_grad():
        y, _ = steps(layer, x[:, 5:], state)
        torch.testing.assert_close(y, layer(x)[0][:, 5:], rtol=1e-5, atol=1e-6)


def test_rotary_depends_on_relative_position_only():
    torch.manual_seed(1)
    q, k = torch.randn(2, 1, 3, 1, 6, dtype=torch.float64)
    score = lambda n, m: (rotate(q, n) * rotate(k, m)).sum()  # noqa: E731
    torch.testing.assert_close(score(7, 3), score(1004, 1000))
    assert not torch.allclose(score(7, 3), score(3, 7))
    torch.testing.assert_close(rotate(q, 12345).norm(), q.norm())


def test_rotary_angles_are_accurate_far_into_the_context():
    """float32 rotations at position ~1e6 agree with float64 ones: the angles are not formed in float32."""
    u = torch.randn(1, 1, 4, 8, dtype=torch.float64)
    torch.testing.assert_close(rotate(u.float(), 1_000_000).double(), rotate(u, 1_000_000), rtol=1e-6, atol=1e-6)


def test_long_context_single_head():
    layer = make(num_heads=1, d_model=4, dtype=torch.float32)
    x = 10 * torch.randn(1, 16384, 4)
    with torch.no_grad():
        y, state = layer(x)
        y_t, state = layer.step(x[:, -1], state)
    assert torch.isfinite(y).all() and torch.isfinite(y_t).all() and state.position == 16385


def test_operator_is_the_attention_weights():
    layer = make()
    x = torch.randn(2, 9, D_MODEL, dtype=torch.float64)
    M = layer.materialize(x)
    torch.testing.assert_close(M.sum(-1), torch.ones(2, 2, 9, dtype=torch.float64))
    V, Y = layer.mixer_io(x)
    torch.testing.assert_close(layer.out_proj(Y.transpose(1, 2).flatten(2)), direct(layer, x))


def test_forms_agree_with_more_heads_and_float32():
    layer = make(num_heads=4, d_model=16, dtype=torch.float32)
    x = torch.randn(2, 33, 16)
    # the weight gradients sum over 66 tokens' products: float32 rounding reaches a few 1e-6 of values ~0.3
    assert_forms_agree(layer, x, ["sdpa", "recurrent", "split", "step"], rtol=1e-5, atol=1e-5)


def test_bad_arguments_and_states():
    with pytest.raises(ValueError, match="`num_heads`=3 must divide d_model=8"):
        Attention(8, num_heads=3)
    with pytest.raises(ValueError, match="d_model / num_heads = 1 must be even"):
        Attention(8, num_heads=8)
    with pytest.raises(ValueError, match="`rotary_base` must be > 1"):
        Attention(8, rotary_base=1.0)
    layer = make(dtype=torch.float32)
    x = torch.randn(2, 3, D_MODEL)
    _, state = layer(x)
    with pytest.raises(ValueError, match=r"`state.k` must have shape \(2, 2, t, 4\)"):
        layer(x, KVCache(state.k[:, :1], state.v))
    with pytest.raises(ValueError, match=r"`state.v` must have shape \(2, 2, t, 4\)"):
        layer(x, KVCache(state.k, state.v[..., :2]))
    with pytest.raises(ValueError, match="must hold as many tokens, got 3 and 2"):
        layer(x, KVCache(state.k, state.v[:, :, :2]))
    with pytest.raises(TypeError, match="`state` must be a KVCache"):
        layer(x, (state.k, state.v))


# -- sliding-window attention --------------------------------------------------------------------------


def windowed_reference(layer: Attention, x: torch.Tensor) -> torch.Tensor:
    """Each position attends to itself and the window - 1 before it: a dense masked softmax."""
    heads = layer.qkv_proj(x).unflatten(-1, (3 * layer.num_heads, -1)).transpose(1, 2)
    q, k = rotate(heads[:, : 2 * layer.num_heads], 0, layer.rotary_base).chunk(2, 1)
    v = heads[:, 2 * layer.num_heads :]
    T = x.shape[1]
    t, s = torch.arange(T)[:, None], torch.arange(T)
    visible = (s <= t) & (s > t - layer.window)
    scores = (q @ k.transpose(-1, -2) / layer.head_dim**0.5).masked_fill(~visible, float("-inf"))
    return layer.out_proj((torch.softmax(scores, -1) @ v).transpose(1, 2).flatten(2))


@pytest.mark.parametrize("window", [1, 3, 8])
def test_sliding_window_agrees_across_forms_and_keeps_a_bounded_cache(window):
    torch.manual_seed(0)
    layer = Attention(16, num_heads=2, window=window).double()
    x = torch.randn(2, 23, 16, dtype=torch.float64)
    y, state = layer(x)
    torch.testing.assert_close(y, windowed_reference(layer, x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer(x, mode="recurrent")[0], y, rtol=1e-10, atol=1e-12)
    assert state.k.shape[2] == window - 1 and state.position == 23
    first, mid = layer(x[:, :9])
    rest, _ = layer(x[:, 9:], mid)
    torch.testing.assert_close(torch.cat([first, rest], 1), y, rtol=1e-10, atol=1e-12)
    s, outs = None, []
    for t in range(23):
        y_t, s = layer.step(x[:, t], s)
        outs.append(y_t)
        assert s.k.shape[2] <= max(window - 1, 0) and s.position == t + 1  # O(window) per step
    torch.testing.assert_close(torch.stack(outs, 1), y, rtol=1e-10, atol=1e-12)
    M = layer.materialize(x)
    assert torch.equal(torch.tril(M, -window), torch.zeros_like(M))  # nothing beyond the window
    V, Y = layer.mixer_io(x)
    torch.testing.assert_close(M @ V, Y, rtol=1e-10, atol=1e-12)


def test_window_is_checked():
    with pytest.raises(ValueError, match="`window`"):
        Attention(16, window=0)
