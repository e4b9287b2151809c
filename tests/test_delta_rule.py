"""Engine 4: the chunkwise (WY) delta rule equals the reference loop (outputs, final state, gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from forms import assert_float32_close, strong_decay_cases
from rnnzoo.ops.delta_rule import (
    _unit_lower_inverse,
    default_chunk_size,
    delta_rule,
    delta_rule_reference,
    loop_is_faster,
)  # fmt: skip
from rnnzoo.ops.delta_rule_loop import delta_rule_loop


def make_inputs(
    batch, heads, length, d_k, d_v, beta_max=1.0, gated=True, decay=1.0, h0=True, seed=0, dtype=torch.float64,
    substeps=1,
):  # fmt: skip
    """Random inputs; ``substeps`` delta steps per token (k, v, β over ``length · substeps`` steps)."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    steps = length * substeps
    q = rand(batch, heads, length, d_k)
    k = F.normalize(rand(batch, heads, steps, d_k), dim=-1)
    v = rand(batch, heads, steps, d_v)
    beta = beta_max * torch.rand(batch, heads, steps, generator=gen, dtype=torch.float64)
    log_alpha = -decay * torch.rand(batch, heads, length, generator=gen, dtype=torch.float64) if gated else None
    state = rand(batch, heads, d_k, d_v) if h0 else None
    return tuple(None if t is None else t.to(dtype) for t in (q, k, v, beta, log_alpha, state))


def outputs_and_grads(fn, inputs, **kw):
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in inputs]
    out, last = fn(*leaves, **kw)
    gen = torch.Generator().manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)).sum()
    loss = loss + (last * torch.randn(last.shape, generator=gen, dtype=torch.float64).to(last.dtype)).sum()
    return [out, last, *torch.autograd.grad(loss, [t for t in leaves if t is not None])]


def assert_chunk_matches_reference(inputs, rtol=1e-10, atol=1e-10, fn=delta_rule, **kw):
    got = outputs_and_grads(fn, inputs, **kw)
    want = outputs_and_grads(delta_rule_reference, inputs)
    for i, (x, y) in enumerate(zip(got, want)):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=rtol, atol=atol, msg=lambda m: f"output {i}: {m}")


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 2),
    heads=st.integers(1, 2),
    length=st.integers(1, 140),
    d_k=st.integers(1, 6),
    d_v=st.integers(1, 5),
    beta_max=st.sampled_from([1.0, 2.0]),
    gated=st.booleans(),
    h0=st.booleans(),
    chunk=st.sampled_from([None, 1, 5, 16, 64]),
    seed=st.integers(0, 2**16),
)
def test_chunk_matches_reference_random_shapes(batch, heads, length, d_k, d_v, beta_max, gated, h0, chunk, seed):
    inputs = make_inputs(batch, heads, length, d_k, d_v, beta_max, gated, h0=h0, seed=seed)
    assert_chunk_matches_reference(inputs, chunk_size=chunk)


@pytest.mark.parametrize("length", [1, 63, 64, 65, 257])
@pytest.mark.parametrize("beta_max", [1.0, 2.0])
def test_edge_lengths_and_beta_range(length, beta_max, device):
    inputs = make_inputs(2, 2, length, 8, 4, beta_max, seed=length)
    assert_chunk_matches_reference(tuple(None if t is None else t.to(device) for t in inputs))


@pytest.mark.parametrize("beta_value", [0.0, 2.0])
def test_beta_at_the_ends(beta_value):
    """β = 0 leaves the state unchanged; β = 2 reflects it (eigenvalue -1 along k)."""
    q, k, v, _, log_alpha, h0 = make_inputs(1, 1, 70, 4, 3, gated=False)
    beta = torch.full((1, 1, 70), beta_value, dtype=torch.float64)
    assert_chunk_matches_reference((q, k, v, beta, log_alpha, h0))
    _, last = delta_rule(q[:, :, :1], k[:, :, :1], torch.zeros_like(v[:, :, :1]), beta[:, :, :1], None, h0)
    k0 = k[0, 0, 0]
    want = h0[0, 0] - beta_value * torch.outer(k0, k0 @ h0[0, 0])
    torch.testing.assert_close(last[0, 0], want)


@pytest.mark.parametrize("decay", [1e-8, 5.0, 1e4])
def test_decay_strengths(decay):
    inputs = make_inputs(1, 2, 150, 4, 3, beta_max=2.0, decay=decay, seed=3)
    assert_chunk_matches_reference(inputs)


GRADCHECK_CHUNK = 4


@pytest.mark.parametrize(
    "length, beta_range, gated, h0",
    [
        (1, (0.0, 1.0), True, True),  # T = 1
        (GRADCHECK_CHUNK + 1, (1e-3, 1e-2), True, True),  # β near 0
        (GRADCHECK_CHUNK + 1, (1.99, 1.999), False, True),  # β near 2, no decay
        (2 * GRADCHECK_CHUNK, (1.99, 1.999), True, True),  # a multiple of the chunk
        (13, (1.99, 1.999), True, False),  # prime T, no initial state
        (13, (0.0, 2.0), False, False),
    ],
)
def test_gradcheck(length, beta_range, gated, h0):
    """The hand-written backward against finite differences, in float64, for every input."""
    q, k, v, beta, _, state = make_inputs(1, 1, length, 3, 2, h0=h0, seed=length)
    low, high = beta_range
    beta = low + (high - low) * beta
    # log α <= -0.05: finite-difference steps stay inside the valid range (log α <= 0, β <= 2)
    log_alpha = -0.05 - torch.rand(1, 1, length, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    inputs = [q, k, v, beta, log_alpha if gated else None, state]
    leaves = [None if t is None else t.requires_grad_(True) for t in inputs]
    assert torch.autograd.gradcheck(lambda *t: delta_rule(*t, chunk_size=GRADCHECK_CHUNK), leaves)


def test_double_backward_raises():
    q, k, v, beta, log_alpha, h0 = (t.requires_grad_(True) for t in make_inputs(1, 1, 6, 3, 2))
    out, _ = delta_rule(q, k, v, beta, log_alpha, h0, chunk_size=4)
    (grad_q,) = torch.autograd.grad(out.square().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_q.sum().backward()


def test_long_sequence_finite(device):
    """T = 65,536 in float32 with β up to 2 and decays near 1 and near 0."""
    for decay in (1e-6, 20.0):
        q, k, v, beta, log_alpha, _ = make_inputs(1, 1, 65536, 4, 4, beta_max=2.0, decay=decay, h0=False, dtype=torch.float32)
        leaves = [t.to(device).requires_grad_(True) for t in (q, k, v, beta, log_alpha)]
        out, last = delta_rule(*leaves)
        (out.sum() + last.sum()).backward()
        for t in (out, last, *(x.grad for x in leaves)):
            assert torch.isfinite(t).all()


@pytest.mark.parametrize("chunk", [None, 32, 128])
def test_float32_matches_float64_reference(chunk):
    """Outputs, final state and every gradient in float32 within 1e-5 of the float64 reference
    (relative to each tensor's largest entry), at chunk sizes around the default."""
    inputs = make_inputs(2, 2, 300, 16, 8, beta_max=2.0, seed=9)
    want = outputs_and_grads(delta_rule_reference, inputs)
    got = outputs_and_grads(delta_rule, tuple(t.float() for t in inputs), chunk_size=chunk)
    for i, (x, y) in enumerate(zip(got, want)):
        assert x.dtype == torch.float32
        scale = float(y.detach().abs().max())
        torch.testing.assert_close(
            x.detach().double(), y.detach(), rtol=1e-5, atol=1e-5 * scale, msg=lambda m: f"output {i}: {m}"
        )


def test_bad_inputs():
    q = torch.randn(1, 2, 5, 3)
    beta = torch.rand(1, 2, 5)
    with pytest.raises(ValueError, match=r"`beta` must lie in \[0, 2\]"):
        delta_rule(q, q, q, beta + 2.5)
    with pytest.raises(ValueError, match="`beta` must have shape"):
        delta_rule(q, q, q, beta[..., :4])
    with pytest.raises(ValueError, match="`log_alpha` must be <= 0"):
        delta_rule_reference(q, q, q, beta, torch.ones(1, 2, 5))
    with pytest.raises(ValueError, match="`h0` must have shape"):
        delta_rule(q, q, q, beta, None, torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match="`q` and `k` must have shape"):
        delta_rule(q[0], q[0], q[0], beta)
    with pytest.raises(ValueError, match="time dimension"):
        delta_rule(q[:, :, :0], q[:, :, :0], q[:, :, :0], beta[:, :, :0])
    with pytest.raises(TypeError, match="floating-point"):
        delta_rule(q.long(), q, q, beta)
    with pytest.raises(ValueError, match="`q` must have shape .* T dividing the 5 steps"):
        delta_rule(q[:, :, :2], q, q, beta)
    with pytest.raises(ValueError, match="`log_alpha` must have shape"):
        delta_rule(q, q, q, beta, -torch.ones(1, 2, 4))


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 3),
    heads=st.integers(1, 2),
    length=st.integers(1, 30),
    substeps=st.integers(1, 3),
    d_k=st.integers(1, 6),
    d_v=st.integers(1, 5),
    beta_max=st.sampled_from([1.0, 2.0]),
    gated=st.booleans(),
    h0=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fused_loop_matches_reference_random_shapes(
    batch, heads, length, substeps, d_k, d_v, beta_max, gated, h0, seed
):
    """The fused loop (batch-last, hand-written backward) against the reference: outputs, final state and
    every gradient, with one to three delta steps per token."""
    inputs = make_inputs(batch, heads, length, d_k, d_v, beta_max, gated, h0=h0, seed=seed, substeps=substeps)
    assert_chunk_matches_reference(inputs, fn=delta_rule_loop)


@pytest.mark.parametrize("substeps", [2, 3])
@pytest.mark.parametrize("chunk", [None, 1, 4, 16])
@pytest.mark.parametrize("length", [1, 7, 20])
def test_chunkwise_substeps_match_reference(substeps, chunk, length):
    """The chunkwise form over ``T·n`` delta steps (q on each token's last, the decay on its first)."""
    inputs = make_inputs(2, 2, length, 4, 3, beta_max=2.0, seed=length, substeps=substeps)
    assert_chunk_matches_reference(inputs, chunk_size=chunk)


@pytest.mark.parametrize(
    "length, substeps, gated, h0", [(1, 1, True, True), (5, 1, True, True), (4, 2, True, False), (3, 3, False, True)]
)
def test_fused_loop_gradcheck(length, substeps, gated, h0):
    q, k, v, beta, _, state = make_inputs(2, 1, length, 3, 2, beta_max=2.0, h0=h0, seed=length, substeps=substeps)
    log_alpha = -0.05 - torch.rand(2, 1, length, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    beta = beta.clamp(0.01, 1.99)  # finite differences stay inside [0, 2]
    inputs = [q, k, v, beta, log_alpha if gated else None, state]
    leaves = [None if t is None else t.requires_grad_(True) for t in inputs]
    assert torch.autograd.gradcheck(delta_rule_loop, leaves)


def test_fused_loop_float32_matches_float64_reference():
    """At the capability benchmark's shape (256 sequences of 9-wide heads), where delta_rule runs the loop."""
    inputs = make_inputs(64, 4, 40, 9, 9, beta_max=2.0, seed=5)
    assert loop_is_faster(64 * 4, 9, 9)
    want = outputs_and_grads(delta_rule_reference, inputs)
    got = outputs_and_grads(delta_rule, tuple(t.float() for t in inputs))
    for x, y in zip(got, want):
        assert x.dtype == torch.float32
        assert_float32_close(x, y)


def test_loop_or_chunks_from_the_shapes():
    """The loop for many thin heads on CPU; chunks for few sequences, wide heads, or another device."""
    assert loop_is_faster(256, 9, 9) and loop_is_faster(256, 7, 14) and loop_is_faster(256, 16, 16)
    assert not loop_is_faster(4, 8, 8) and not loop_is_faster(32, 64, 64) and not loop_is_faster(256, 32, 32)
    assert not loop_is_faster(256, 9, 9, "meta")
    inputs = make_inputs(32, 4, 13, 9, 9, beta_max=2.0, seed=2)
    looped, chunked = outputs_and_grads(delta_rule, inputs), outputs_and_grads(delta_rule, inputs, chunk_size=8)
    for x, y in zip(looped, chunked):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("size", [1, 5, 16, 24, 64, 100])
@pytest.mark.parametrize("beta_max", [1.0, 2.0])
def test_unit_lower_inverse(size, beta_max):
    """The blocked inverse equals LAPACK's, for sizes below, at and between multiples of its block;
    the diagonal and upper triangle of its argument are ignored."""
    gen = torch.Generator().manual_seed(size)
    k = F.normalize(torch.randn(3, size, 4, generator=gen, dtype=torch.float64), dim=-1)
    beta = beta_max * torch.rand(3, size, 1, generator=gen, dtype=torch.float64)
    system = beta * (k @ k.mT)  # symmetric: the upper triangle and diagonal are not zero
    want = torch.linalg.inv(torch.eye(size, dtype=torch.float64) + system.tril(-1))
    torch.testing.assert_close(_unit_lower_inverse(system.clone()), want, rtol=1e-12, atol=1e-12)


def test_default_chunk_size_from_length_and_head_dims():
    """d = 64 keeps C = 64 (the speed bar's shape); thin heads take 16; short inputs are padded the least."""
    assert [default_chunk_size(t) for t in (1, 16, 64, 1000, 1024, 65536)] == [16, 16, 64, 64, 64, 64]
    assert default_chunk_size(80, 7, 14) == default_chunk_size(4096, 8, 16) == 16
    # head dims <= 16 may take C = 8 where it pads less: T = 40 is 5 chunks of 8 rather than 48 steps
    assert default_chunk_size(40, 9, 9) == default_chunk_size(40, 7, 14) == 8 and default_chunk_size(40, 9, 17) == 16
    assert default_chunk_size(40, 64, 64) == 16  # 48 steps at C = 16, 64 at C = 32 or 64
    assert default_chunk_size(4096, 32, 32) == 32


@pytest.mark.parametrize("length", [1, 36, 40, 80])
@pytest.mark.parametrize("gated", [True, False])
def test_automatic_chunk_is_the_explicit_one(length, gated):
    """The chunk chosen from the shapes (T not a multiple of it included) gives what that chunk given
    explicitly gives, and the reference loop's outputs, final state and gradients."""
    inputs = make_inputs(2, 3, length, 9, 7, beta_max=2.0, gated=gated, seed=length)
    chunk = default_chunk_size(length, 9, 7)
    auto, explicit = outputs_and_grads(delta_rule, inputs), outputs_and_grads(delta_rule, inputs, chunk_size=chunk)
    for x, y in zip(auto, explicit):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert_chunk_matches_reference(inputs)


@pytest.mark.parametrize("case", ["reset", "alternating"])
def test_float32_stays_accurate_after_a_strong_decay_inside_a_chunk(case):
    q, k, v, beta, _, h0 = make_inputs(2, 2, 64, 8, 8, beta_max=1.0)
    log_alpha = strong_decay_cases((2, 2, 64))[case]
    want, want_last = delta_rule_reference(q, k, v, beta, log_alpha, h0)
    got, last = delta_rule(*(t.float() for t in (q, k, v, beta, log_alpha, h0)), chunk_size=64)
    assert_float32_close(got, want)
    assert_float32_close(last, want_last)
