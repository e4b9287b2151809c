"""Sizing models for fair comparisons: size_model to a parameter budget (±3%) or a recurrent-state budget,
state_size against a brute-force count of the state, the MLP width knob, and bad arguments."""

from __future__ import annotations

import pytest
import torch

import rnnzoo
from rnnzoo.models import MLP, SequenceModel, size_d_model, size_model, state_size
from rnnzoo.models.sequence_model import PARAM_TOLERANCE

NAMES = [m.name for m in rnnzoo.list_models()]
LENGTH = 16  # context at which attention's KV cache is counted


def params(config: dict) -> int:
    """Parameters of ``SequenceModel(**config)``, built on the meta device (on the CPU if a layer needs values)."""
    try:
        with torch.device("meta"):
            return SequenceModel(**config).num_parameters()
    except RuntimeError:
        return SequenceModel(**config).num_parameters()


def accepted(config: dict, d_model: int) -> bool:
    """Whether the mixer builds at ``d_model``."""
    try:
        params({**config, "d_model": d_model})
        return True
    except ValueError:
        return False


def brute_force_state(model: SequenceModel, length: int) -> int:
    """Floats in the state after a real forward over ``length`` tokens (batch 1), complex counted twice."""
    torch.manual_seed(0)
    with torch.no_grad():
        _, state = model(torch.randint(model.vocab_size, (1, length)))
    return sum(
        t.numel() * (2 if t.is_complex() else 1)
        for s in state
        for t in s.tensors().values()
        if t.is_floating_point() or t.is_complex()
    )


# -- match="params" ---------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_params_within_tolerance(name):
    """Every registered model lands within ±3% of the budget, SwiGLU and GELU, small and large vocabularies."""
    for budget in (30_000, 40_000):
        for mlp, vocab, classes in (("swiglu", 2, None), ("swiglu", 256, None), ("gelu", 7, 3)):
            config = dict(vocab_size=vocab, num_classes=classes, mixer=name, mlp=mlp)
            sized = size_model(budget, **config)
            assert set(sized) == {"d_model", "mlp_hidden"} and sized["mlp_hidden"] >= 1
            got = params({**config, **sized})
            assert abs(got - budget) <= PARAM_TOLERANCE * budget, (budget, mlp, vocab, sized, got)
    assert sized["d_model"] == size_d_model(budget, **config)  # d_model as before, the MLP width does the rest


@pytest.mark.parametrize("budget", [10_000, 100_000])
def test_params_within_tolerance_other_budgets(budget):
    for name in ("attention", "gla", "mamba2", "lstm"):
        config = dict(vocab_size=256, mixer=name, n_layers=3)
        got = params({**config, **size_model(budget, **config)})
        assert abs(got - budget) <= PARAM_TOLERANCE * budget, (name, got)


def test_params_without_mlp_is_the_closest_d_model():
    """No MLP, no fine knob: the closest d_model, as size_d_model (documented to miss by a step of d_model)."""
    config = dict(vocab_size=7, mixer="gla", mlp="none")
    assert size_model(40_000, **config) == {"d_model": size_d_model(40_000, **config)}


def test_mlp_hidden_sets_the_width_and_defaults_to_the_ratio():
    d = 12
    default = SequenceModel(7, mixer="mingru", d_model=d)
    assert default.blocks[0].mlp.d_hidden == round(2 / 3 * 4.0 * d) and default.mlp_hidden is None
    swiglu = SequenceModel(7, mixer="mingru", d_model=d, mlp_hidden=5)
    assert swiglu.blocks[0].mlp.w_in.weight.shape == (10, d) and swiglu.blocks[1].mlp.w_out.weight.shape == (d, 5)
    gelu = SequenceModel(7, mixer="mingru", d_model=d, mlp="gelu", mlp_hidden=5, mlp_ratio=9.0)  # the width wins
    assert gelu.blocks[0].mlp.w_in.weight.shape == (5, d)
    assert MLP(d, "gelu", mlp_ratio=2.0).d_hidden == 2 * d
    logits, _ = swiglu(torch.zeros(1, 3, dtype=torch.long))
    assert logits.shape == (1, 3, 7)


# -- state_size -------------------------------------------------------------------


def small_config(name: str) -> dict:
    """A small model of ``name``: the first d_model from 16 on that the mixer accepts."""
    config = dict(vocab_size=7, mixer=name)
    return {**config, "d_model": next(d for d in range(16, 80) if accepted(config, d))}


@pytest.mark.parametrize("name", NAMES)
def test_state_size_counts_the_state_after_a_forward(name):
    config = small_config(name)
    torch.manual_seed(0)
    model = SequenceModel(**config)
    for length in (1, 5):
        want = brute_force_state(model, length)
        assert want > 0
        assert state_size(model, length) == state_size(config, length) == want
    if name == "attention":  # the KV cache: keys and values of every layer at `length` tokens
        assert state_size(config, 5) == 2 * model.n_layers * 5 * config["d_model"]
        with pytest.raises(ValueError, match="`length`"):
            state_size(config)
    else:  # a fixed-size state: the same without a length
        assert state_size(config) == state_size(config, 5)


def test_state_size_counts_complex_twice():
    config = dict(vocab_size=7, mixer="lru", d_model=16, n_layers=3, mixer_kwargs={"d_state": 10})
    assert state_size(config) == 3 * 10 * 2


# -- match="state" ----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_match_state_lands_on_the_closest_d_model(name):
    """The state of the chosen d_model is the closest to the target among the d_model values the mixer accepts,
    so it misses by at most half the state's step between neighbouring accepted d_model (the justified
    tolerance: d_model is the only knob, and multi-head mixers accept multiples of their heads only)."""
    config = dict(vocab_size=7, mixer=name)
    small = small_config(name)
    target = round(1.37 * state_size(small, LENGTH))  # a target between two d_model values, typically
    wider = next(e for e in range(small["d_model"] + 32, small["d_model"] + 289) if accepted(config, e))
    if state_size(small, LENGTH) == state_size({**config, "d_model": wider}, LENGTH):
        with pytest.raises(ValueError, match="does not grow with d_model"):  # LRU: its d_state alone
            size_model(target, match="state", length=LENGTH, **config)
        return
    sized = size_model(target, match="state", length=LENGTH, **config)
    assert set(sized) == {"d_model"}
    d = sized["d_model"]
    got = state_size({**config, **sized}, LENGTH)
    below = next(e for e in range(d - 1, 0, -1) if accepted(config, e))
    above = next(e for e in range(d + 1, d + 257) if accepted(config, e))
    s_below, s_above = (state_size({**config, "d_model": e}, LENGTH) for e in (below, above))
    assert abs(got - target) <= min(abs(s_below - target), abs(s_above - target)), (d, got, s_below, s_above)
    lower, upper = (got, s_above) if got <= target else (s_below, got)  # the accepted values around the target
    assert lower <= target <= upper and abs(got - target) <= (upper - lower) / 2


# -- bad arguments ----------------------------------------------------------------


def test_bad_arguments_name_the_argument():
    config = dict(vocab_size=7, mixer="gla")
    with pytest.raises(ValueError, match="`budget`"):
        size_model(0, **config)
    with pytest.raises(ValueError, match="`match`"):
        size_model(1000, match="flops", **config)
    with pytest.raises(ValueError, match="`length`"):
        size_model(1000, match="state", length=0, **config)
    with pytest.raises(ValueError, match="`max_d_model`"):
        size_model(1000, max_d_model=0, **config)
    with pytest.raises(TypeError, match="`d_model`"):
        size_model(1000, d_model=8, **config)
    with pytest.raises(TypeError, match="`mlp_hidden`"):
        size_model(1000, mlp_hidden=8, **config)
    with pytest.raises(ValueError, match="`length`"):
        size_model(4096, match="state", vocab_size=7, mixer="attention")  # the KV cache needs a context length
    with pytest.raises(ValueError, match="`budget`=100000 floats is out of reach"):
        size_model(100_000, match="state", max_d_model=64, vocab_size=7, mixer="elman")
    with pytest.raises(TypeError, match="`model_or_config`"):
        state_size("gla")
    with pytest.raises(ValueError, match="`d_model`"):
        state_size(config)
    with pytest.raises(ValueError, match="`length`"):
        state_size({**config, "d_model": 16}, length=-1)
    with pytest.raises(ValueError, match="`mlp_hidden`"):
        SequenceModel(7, mixer="gla", d_model=16, mlp_hidden=0)
    with pytest.raises(ValueError, match="`mlp_hidden` needs an MLP"):
        SequenceModel(7, mixer="gla", d_model=16, mlp="none", mlp_hidden=8)
    with pytest.raises(ValueError, match="`d_hidden`"):
        MLP(8, d_hidden=0)
