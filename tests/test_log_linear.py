"""Log-linear attention (rnnzoo/layers/log_linear.py): the parallel form and the loop equal an O(T²) reference written
from the definition, the forms agree (also from rows at different positions), λ ≡ 1 is the base model, and the
state holds O(log T) non-empty buckets."""

from __future__ import annotations

import math

import pytest
import torch

import rnnzoo
from forms import assert_forms_agree
from rnnzoo.layers import GatedDeltaNet, Mamba2
from rnnzoo.layers.engines import DeltaRuleInputs, MatrixInputs
from rnnzoo.layers.log_linear import LogLinearInputs

BASES = {"log_linear_mamba2": Mamba2, "log_linear_gated_deltanet": GatedDeltaNet}
D_MODEL = 8


def level(t: int, s: int, num_levels: int) -> int:
    """ℓ(t, s): 0 on the diagonal, else 1 + the highest bit where t and s differ, capped at L - 1."""
    return 0 if t == s else min(num_levels - 1, (t ^ s).bit_length())


def make(name: str, num_levels: int = 10, spread: bool = True):
    """The layer in float64; ``spread``: level weights far from 1 (a random W_λ of scale 1)."""
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=D_MODEL, num_levels=num_levels).double()
    if spread:
        with torch.no_grad():
            layer.lam_proj.weight.normal_()
    return layer


def inputs(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(batch, length, D_MODEL, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(BASES))
@pytest.mark.parametrize("num_levels", [4, 10])
@pytest.mark.parametrize("length", [1, 7, 33, 70])
def test_parallel_and_loop_equal_the_quadratic_reference(name, num_levels, length):
    """``Y = (M ⊙ W) V``: ``M`` the base layer's T×T operator (same weights), ``W[t, s] = λ_t^{ℓ(t, s)}``."""
    layer = make(name, num_levels)
    torch.manual_seed(0)
    base = BASES[name](D_MODEL).double()  # the same parameters: W_λ is created last
    x = inputs(2, length)
    M, (V, _) = base.materialize(x), base.mixer_io(x)
    lam = layer.engine_inputs(x)[0].lam  # (B, H, T, L)
    W = torch.tensor([[level(t, s, num_levels) for s in range(length)] for t in range(length)])
    Y = (M * lam.gather(-1, W.expand(*lam.shape[:2], -1, -1))) @ V
    torch.testing.assert_close(layer.mixer_io(x)[1], Y, rtol=1e-9, atol=1e-10)
    loop, _ = layer.engine.run(layer.engine_inputs(x)[0], None, "recurrent")
    torch.testing.assert_close(loop, Y, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(layer.materialize(x) @ V, Y, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", sorted(BASES))
@pytest.mark.parametrize("num_levels", [3, 10])
def test_forms_agree_with_gradients(name, num_levels):
    layer = make(name, num_levels)
    x = inputs(2, 37)
    assert_forms_agree(layer, x, ["recurrent", *layer.parallel_modes, "split", "step"], split=21)
    for split in (1, 16, 33):  # odd and even, across blocks of every size
        assert_forms_agree(layer, x, [layer.parallel_modes[0], "split"], split=split)


@pytest.mark.parametrize("name", sorted(BASES))
def test_rows_at_different_positions_continue_as_alone(name):
    """A state whose rows sit at different positions (as a padded batch leaves it) continues each row as alone."""
    layer = make(name, num_levels=4)
    prefix, x = inputs(2, 13), inputs(2, 21, seed=2)
    _, short = layer(prefix[:1, :5])
    _, long = layer(prefix[1:])
    state = type(short)(**{k: torch.cat([v, long.tensors()[k]]) for k, v in short.tensors().items()})
    assert state.position.tolist() == [5, 13]
    for mode in ("recurrent", layer.parallel_modes[0]):
        y, final = layer(x, state, mode=mode)
        for row, start in ((0, short), (1, long)):
            y_alone, alone = layer(x[row : row + 1], start, mode=mode)
            torch.testing.assert_close(y[row : row + 1], y_alone, rtol=1e-9, atol=1e-10)
            torch.testing.assert_close(final.S[row : row + 1], alone.S, rtol=1e-9, atol=1e-10)
        whole, _ = layer(torch.cat([prefix[:1, :5], x[:1]], 1))
        torch.testing.assert_close(y[:1], whole[:, 5:], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", sorted(BASES))
def test_unit_level_weights_are_the_base_model(name):
    """λ ≡ 1: the base model's outputs, and the buckets sum to its state, in every form and across a split."""
    layer = make(name, spread=False)
    with torch.no_grad():
        layer.lam_proj.weight.zero_()
    torch.manual_seed(0)
    base = BASES[name](D_MODEL).double()
    x = inputs(2, 45)
    lam = layer.engine_inputs(x)[0].lam
    torch.testing.assert_close(lam, torch.ones(2, layer.num_heads, 45, 10, dtype=torch.float64))
    for mode in ("recurrent", layer.parallel_modes[0]):
        y_base, s_base = base(x[:, 19:], base(x[:, :19], mode=mode)[1], mode=mode)
        y, state = layer(x[:, 19:], layer(x[:, :19], mode=mode)[1], mode=mode)
        torch.testing.assert_close(y, y_base, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(state.S.sum(1), s_base.engine_state(), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", sorted(BASES))
def test_non_empty_buckets_grow_as_log_length(name):
    """After T tokens the buckets in use are 1 + popcount(T - 1) <= 1 + log2(T): the paper's O(log T) state."""
    layer = make(name, num_levels=12)
    x = inputs(1, 100)
    for length in (1, 2, 3, 7, 8, 33, 64, 100):
        for mode in ("recurrent", layer.parallel_modes[0]):
            S = layer(x[:, :length], mode=mode)[1].S
            used = int((S.flatten(2).abs().amax(-1) > 0).sum())
            assert used == 1 + bin(length - 1).count("1") <= 1 + math.log2(length), (length, mode, used)


@pytest.mark.parametrize("name", sorted(BASES))
def test_every_bucket_takes_the_token_transition(name):
    """One step from buckets ``h0`` (at position 0, so nothing merges) minus one from zero is ``A_t h0`` in each
    bucket: ``A_t = α_t`` per head (Mamba-2), ``α_t (I - β_t k_t k_t^T)`` (Gated DeltaNet)."""
    layer = make(name, num_levels=4)
    x_t = inputs(2, 1)[:, 0]
    zero = layer.init_state(2, dtype=torch.float64)
    h0 = torch.randn_like(zero.S)  # (B, L, H, d_k, d_v)
    start = type(zero)(**{**zero.tensors(), "S": h0})
    diff = layer.step(x_t, start)[1].S - layer.step(x_t, zero)[1].S
    base = layer.engine_inputs(x_t[:, None])[0].base
    per_head = lambda t: t[:, None, :, 0, None, None]  # (B, H, 1) -> (B, 1, H, 1, 1)
    want = h0
    if name == "log_linear_gated_deltanet":
        k = base.k[:, None, :, 0, :, None]  # (B, 1, H, d_k, 1)
        want = h0 - per_head(base.beta) * k * (k * h0).sum(-2, keepdim=True)
    torch.testing.assert_close(diff, per_head(base.log_alpha.exp()) * want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(BASES))
@pytest.mark.parametrize("bad", [1, 0, 2.5, True])
def test_bad_num_levels_is_named(name, bad):
    with pytest.raises(ValueError, match="`num_levels` must be an int >= 2"):
        rnnzoo.create(name, d_model=D_MODEL, num_levels=bad)


def test_engine_refuses_a_base_not_linear_in_one_step_per_token():
    q = torch.randn(1, 2, 4, 3)
    lam = torch.ones(1, 2, 4, 3)
    engine = rnnzoo.model_info("log_linear_gated_deltanet").cls.engine
    steps = torch.randn(1, 2, 8, 3)  # two delta steps per token
    householder = DeltaRuleInputs(q, steps, steps, torch.rand(1, 2, 8))
    with pytest.raises(ValueError, match="`num_householder` must be 1"):
        engine.run(LogLinearInputs(householder, lam), None, "chunk")
    engine = rnnzoo.model_info("log_linear_mamba2").cls.engine
    normalised = MatrixInputs(q, q, q, normalizer_eps=1e-6)
    with pytest.raises(ValueError, match="`normalizer_eps` must be None"):
        engine.run(LogLinearInputs(normalised, lam), None, "recurrent")
    with pytest.raises(ValueError, match="`lam` must have shape"):
        engine.run(LogLinearInputs(MatrixInputs(q, q, q), lam[..., :1]), None, "chunk")
