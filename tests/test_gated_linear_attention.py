"""Engine 3: the chunkwise form equals the reference loop (outputs, final state, all gradients)."""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from forms import assert_float32_close, strong_decay_cases
from rnnzoo.ops import gated_linear_attention, gated_linear_attention_reference
from rnnzoo.ops.gated_linear_attention import default_chunk_size, gla_operator, least_padding_chunk

DECAYS = ["none", "constant", "scalar", "per_key"]


def make_inputs(batch, heads, length, d_k, d_v, decay, strength=1.0, sign=False, h0=True, seed=0, dtype=torch.float64):
    """Random q, k, v, log decay of a given kind and strength, optional signs and initial state."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)  # noqa: E731
    q, k, v = rand(batch, heads, length, d_k), rand(batch, heads, length, d_k), rand(batch, heads, length, d_v)
    log_alpha = None
    if decay == "constant":
        log_alpha = (-strength * torch.rand(heads, generator=gen, dtype=torch.float64)).to(dtype)
        log_alpha = log_alpha[None, :, None].expand(batch, heads, length)
    elif decay == "scalar":
        log_alpha = (-strength * torch.rand(batch, heads, length, generator=gen, dtype=torch.float64)).to(dtype)
    elif decay == "per_key":
        log_alpha = (-strength * torch.rand(batch, heads, length, d_k, generator=gen, dtype=torch.float64)).to(dtype)
    alpha_sign = None
    if sign and log_alpha is not None:
        alpha_sign = torch.rand(log_alpha.shape, generator=gen) < 0.5
    state = rand(batch, heads, d_k, d_v) if h0 else None
    return q, k, v, log_alpha, state, alpha_sign


def run_with_grads(fn, q, k, v, log_alpha, h0, alpha_sign, **kw):
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in (q, k, v, log_alpha, h0)]
    out, last = fn(*leaves, alpha_sign=alpha_sign, **kw)
    gen = torch.Generator().manual_seed(1)
    w_out = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    w_last = torch.randn(last.shape, generator=gen, dtype=torch.float64).to(last.dtype)
    loss = (out * w_out).sum() + (last * w_last).sum()
    used = [t for t in leaves if t is not None]
    return [out.detach(), last.detach(), *torch.autograd.grad(loss, used)]


def assert_chunk_matches_reference(inputs, rtol=1e-8, atol=1e-10, **kw):
    got = run_with_grads(gated_linear_attention, *inputs, **kw)
    want = run_with_grads(gated_linear_attention_reference, *inputs)
    names = ["o", "S", "grad q", "grad k", "grad v", "grad log_alpha / h0", "grad h0"]
    for name, x, y in zip(names, got, want):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 2),
    heads=st.integers(1, 3),
    length=st.integers(1, 150),
    d_k=st.integers(1, 6),
    d_v=st.integers(1, 5),
    decay=st.sampled_from(DECAYS),
    sign=st.booleans(),
    h0=st.booleans(),
    chunk=st.sampled_from([None, 1, 3, 8, 16, 48]),
    seed=st.integers(0, 2**16),
)
def test_chunk_matches_reference_random_shapes(batch, heads, length, d_k, d_v, decay, sign, h0, chunk, seed):
    inputs = make_inputs(batch, heads, length, d_k, d_v, decay, sign=sign, h0=h0, seed=seed)
    assert_chunk_matches_reference(inputs, chunk_size=chunk)


@pytest.mark.parametrize("length", [1, 2, 63, 64, 65, 129, 257])
@pytest.mark.parametrize("decay", DECAYS)
def test_chunk_matches_reference_edge_lengths(length, decay, device):
    inputs = make_inputs(2, 2, length, 8, 4, decay, sign=False, seed=length)
    inputs = tuple(None if t is None else t.to(device) for t in inputs)
    assert_chunk_matches_reference(inputs)


@pytest.mark.parametrize("decay", ["scalar", "per_key"])
@pytest.mark.parametrize("strength", [1e-8, 0.5, 5.0, 40.0, 1e6, float("inf")])
def test_decay_strengths(decay, strength):
    """From α ≈ 1 to α -> 0 (log α = -inf): exact, no overflow, whatever the chunk's decay range."""
    inputs = make_inputs(1, 2, 200, 4, 3, decay, strength=strength, sign=True, seed=3)
    assert_chunk_matches_reference(inputs)


def test_per_key_sub_blocks_used_for_strong_decays():
    """Strong per-key decays force sub-blocks of fewer tokens; still exact."""
    from rnnzoo.ops.gated_linear_attention import _sub_block_size

    weak = -0.01 * torch.ones(1, 1, 1, 64, 4)
    strong = -10.0 * torch.ones(1, 1, 1, 64, 4)
    assert _sub_block_size(weak.cumsum(-2)) == 64
    assert _sub_block_size(strong.cumsum(-2)) < 64
    assert _sub_block_size(torch.full((1, 1, 1, 64, 4), -1e4).cumsum(-2)) == 1


def test_block_cumsum_matches_torch_cumsum():
    """The blocked cumulative sum of the per-key path (several blocks, one block, one row; both directions)."""
    from rnnzoo.ops.gated_linear_attention import _block_cumsum_

    x = torch.randn(3, 48, 5, dtype=torch.float64)
    for length in (48, 7, 1):
        for reverse in (False, True):
            part = x[:, :length].contiguous()
            want = part.flip(1).cumsum(1).flip(1) if reverse else part.cumsum(1)
            within, offsets = _block_cumsum_(part, reverse=reverse)
            torch.testing.assert_close((within + offsets).flatten(1, 2), want)


@pytest.mark.parametrize("chunks_per_group", [1, 3])
def test_per_key_chunks_in_groups(monkeypatch, chunks_per_group):
    """The per-key path runs its chunks in cache-sized groups: one chunk each, or 3 with a ragged last group
    (40 chunks), gives the reference's outputs, final state and gradients."""
    module = importlib.import_module("rnnzoo.ops.gated_linear_attention")
    chunk, d_k, d_v = 16, 6, 5
    unit = chunk * max(chunk, d_k, d_v) * 8  # bytes of one chunk's C×C scores in float64
    monkeypatch.setattr(module, "GROUP_BYTES", -(-chunks_per_group * unit // torch.get_num_threads()))
    chunks = torch.empty(40, dtype=torch.float64)
    assert len(module._groups(chunks, chunk, max(chunk, d_k, d_v))) == -(-40 // chunks_per_group)
    inputs = make_inputs(2, 2, 10 * chunk - 5, d_k, d_v, "per_key", sign=True, seed=4)
    assert_chunk_matches_reference(inputs, chunk_size=chunk)


def test_per_key_many_chunks():
    """75 chunks per sequence: engine 2 scans the chunk boundaries in its two-level chunked form."""
    inputs = make_inputs(1, 2, 299, 4, 3, "per_key", sign=True, seed=6)
    assert_chunk_matches_reference(inputs, chunk_size=4)


def test_per_key_strided_inputs():
    """q, k, v and log α as views with the heads dimension last but one in memory, or a slice of d."""
    q, k, v, la, h0, sign = make_inputs(2, 3, 70, 8, 6, "per_key", sign=True, seed=7)
    heads_inner = lambda t: t.transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731  (B, T, H, d) in memory
    sliced = lambda t: torch.cat([t, t], -1)[..., : t.shape[-1]]  # noqa: E731
    for layout in (heads_inner, sliced):
        strided = tuple(layout(t) for t in (q, k, v, la))
        assert not any(t.is_contiguous() for t in strided)
        assert_chunk_matches_reference((*strided, h0, sign), chunk_size=16)


def test_gradcheck_float64():
    for decay in ("scalar", "per_key"):
        q, k, v, la, h0, sign = make_inputs(1, 2, 21, 3, 2, decay, sign=True, seed=5)
        leaves = [t.requires_grad_(True) for t in (q, k, v, la, h0)]
        fn = lambda *t: gated_linear_attention(*t, alpha_sign=sign, chunk_size=8)  # noqa: E731
        assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("decay", ["scalar", "per_key"])
def test_long_sequence_finite(decay, device):
    """T = 65,536 in float32 with decays near 1 and near 0: finite outputs, state and gradients."""
    for strength in (1e-6, 50.0):
        inputs = make_inputs(1, 1, 65536, 4, 4, decay, strength=strength, h0=False, dtype=torch.float32)
        q, k, v, la, _, _ = (None if t is None else t.to(device) for t in inputs)
        leaves = [t.requires_grad_(True) for t in (q, k, v, la)]
        out, last = gated_linear_attention(*leaves)
        (out.sum() + last.sum()).backward()
        for t in (out, last, *(x.grad for x in leaves)):
            assert torch.isfinite(t).all()


def test_float32_matches_float64_reference():
    inputs = make_inputs(2, 2, 300, 16, 8, "per_key", strength=0.3, seed=9)
    out64, _ = gated_linear_attention_reference(*inputs[:5])
    out32, _ = gated_linear_attention(*(None if t is None else t.float() for t in inputs[:5]))
    torch.testing.assert_close(out32.double(), out64, rtol=1e-5, atol=1e-5)


def test_half_precision_computes_in_float32():
    q, k, v, la, h0, _ = make_inputs(1, 2, 100, 8, 8, "per_key", dtype=torch.float32)
    out, last = gated_linear_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), la.bfloat16())
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    want, _ = gated_linear_attention(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(), la.bfloat16().float())
    torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("decay", DECAYS)
def test_operator_times_values_is_the_output(decay):
    q, k, v, la, _, sign = make_inputs(2, 3, 37, 5, 4, decay, sign=decay != "none")
    M = gla_operator(q, k, la, alpha_sign=sign)
    out, _ = gated_linear_attention(q, k, v, la, alpha_sign=sign)
    assert M.shape == (2, 3, 37, 37)
    assert (M.triu(1) == 0).all()
    torch.testing.assert_close(M @ v, out)


def test_bad_inputs():
    q = torch.randn(2, 3, 10, 4)
    v = torch.randn(2, 3, 10, 5)
    fn = gated_linear_attention
    with pytest.raises(ValueError, match=r"`q` must have shape \(batch, heads, time, d_k\)"):
        fn(q[0], q[0], v[0])
    with pytest.raises(ValueError, match="`k` must have the shape of `q`"):
        fn(q, q[..., :3], v)
    with pytest.raises(ValueError, match="`v` must have shape"):
        fn(q, q, v[:, :, :9])
    with pytest.raises(ValueError, match="`log_alpha` must have shape"):
        fn(q, q, v, torch.zeros(2, 3, 10, 5))
    with pytest.raises(ValueError, match="`log_alpha` must be <= 0"):
        fn(q, q, v, torch.full((2, 3, 10), 0.1))
    with pytest.raises(ValueError, match="`h0` must have shape"):
        fn(q, q, v, None, torch.zeros(2, 3, 5, 4))
    with pytest.raises(ValueError, match="`alpha_sign` needs `log_alpha`"):
        fn(q, q, v, None, alpha_sign=torch.ones(2, 3, 10))
    with pytest.raises(ValueError, match="time dimension"):
        fn(q[:, :, :0], q[:, :, :0], v[:, :, :0])
    with pytest.raises(TypeError, match="floating-point"):
        fn(q.long(), q, v)
    with pytest.raises(ValueError, match="`chunk_size` must be a positive int"):
        fn(q, q, v, chunk_size=0)


def test_least_padding_chunk():
    """The largest power of two within 1/8 of the least padding: one chunk when T fits, else the smallest
    that pads little."""
    assert [least_padding_chunk(t, 64) for t in (1, 16, 17, 40, 64, 80, 100, 128, 1000, 2048)] == [
        16, 16, 32, 16, 64, 16, 16, 64, 64, 64,
    ]  # fmt: skip
    assert least_padding_chunk(2048, 128) == 128 and least_padding_chunk(40, 16) == 16


def test_default_chunk_size_from_length_and_head_dims():
    """d = 64 keeps the chunks of the speed bar's shape (128 per key, 64 otherwise); thin heads take 16."""
    assert default_chunk_size(2048, True) == default_chunk_size(2048, True, 64, 64) == 128
    assert default_chunk_size(2048) == default_chunk_size(2048, False, 64, 64) == 64
    assert default_chunk_size(40, True, 4, 8) == default_chunk_size(40, False, 8, 16) == 16
    assert default_chunk_size(4096, True, 4, 8) == 16 and default_chunk_size(4096, False, 9, 10) == 32
    # a scalar or no decay takes a sequence that fits under the bound as one chunk; per-key decays do not
    assert default_chunk_size(40, False, 64, 54) == 40 and default_chunk_size(64, False, 64, 64) == 64
    assert default_chunk_size(65, False, 64, 64) == 16 and default_chunk_size(40, True, 64, 54) == 16


@pytest.mark.parametrize("decay", ["none", "constant", "scalar"])
@pytest.mark.parametrize("h0", [False, True])
@pytest.mark.parametrize("length", [1, 7, 40])
def test_single_chunk_matches_reference(decay, h0, length):
    """The whole sequence as one chunk (no pass over chunks; no state term without ``h0``)."""
    inputs = make_inputs(2, 2, length, 24, 20, decay, sign=decay != "none", h0=h0, seed=length)
    assert default_chunk_size(length, False, 24, 20) == length
    assert_chunk_matches_reference(inputs)


@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("length", [1, 40])
def test_automatic_chunk_is_the_explicit_one(decay, length):
    """The chunk chosen from the shapes gives what that chunk given explicitly gives (T = 40 pads to 48),
    and the reference loop's outputs, final state and gradients."""
    inputs = make_inputs(2, 3, length, 4, 8, decay, sign=decay != "none", seed=length)
    chunk = default_chunk_size(length, decay == "per_key", 4, 8)
    auto = run_with_grads(gated_linear_attention, *inputs)
    explicit = run_with_grads(gated_linear_attention, *inputs, chunk_size=chunk)
    for x, y in zip(auto, explicit):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert_chunk_matches_reference(inputs)


@pytest.mark.parametrize("per_key", [False, True])
@pytest.mark.parametrize("case", ["reset", "alternating"])
def test_float32_stays_accurate_after_a_strong_decay_inside_a_chunk(case, per_key):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 64, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    h0 = torch.randn(2, 2, 8, 8, generator=gen, dtype=torch.float64)
    log_alpha = strong_decay_cases((2, 2, 64, 8) if per_key else (2, 2, 64))[case]
    want, want_last = gated_linear_attention_reference(q, k, v, log_alpha, h0)
    got, last = gated_linear_attention(*(t.float() for t in (q, k, v, log_alpha, h0)), chunk_size=64)
    assert_float32_close(got, want)
    assert_float32_close(last, want_last)
    operator = gla_operator(q.float(), k.float(), log_alpha.float())
    assert_float32_close(operator @ v.float(), gated_linear_attention_reference(q, k, v, log_alpha)[0])
