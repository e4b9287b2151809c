"""Property tests over every registered model: random shapes, split points and dtypes.

For each draw: the parallel form (``"auto"``), the parallel form split through the state at a random point,
and ``step`` token by token agree (outputs, final state, gradients of the input and every parameter); and
perturbing the input at a random time changes no output before it (causality).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnnzoo
from forms import assert_forms_agree

MODELS = [m.name for m in rnnzoo.list_models()]
D_MODEL = 8
# two float32 algorithms; gradients' absolute tolerance relative to their largest entry
TOLERANCE = {torch.float64: dict(rtol=1e-7, atol=1e-9), torch.float32: dict(rtol=2e-3, atol=1e-4, scaled=True)}


def layer_for(name: str, dtype: torch.dtype):
    torch.manual_seed(0)
    return rnnzoo.create(name, d_model=D_MODEL).to(dtype)


@st.composite
def cases(draw):
    length = draw(st.one_of(st.just(1), st.integers(2, 80)))
    return dict(
        batch=draw(st.integers(1, 3)),
        length=length,
        split=draw(st.integers(1, max(1, length - 1))),
        dtype=draw(st.sampled_from([torch.float64, torch.float32])),
        seed=draw(st.integers(0, 2**16)),
    )


@pytest.mark.parametrize("name", MODELS)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_parallel_split_and_step_agree(name, case):
    layer = layer_for(name, case["dtype"])
    x = torch.randn(case["batch"], case["length"], D_MODEL, generator=torch.Generator().manual_seed(case["seed"]))
    assert_forms_agree(layer, x.to(case["dtype"]), ["auto", "split", "step"], split=case["split"],
                       **TOLERANCE[case["dtype"]])  # fmt: skip


@pytest.mark.parametrize("name", MODELS)
@settings(max_examples=10, deadline=None)
@given(case=cases(), scale=st.sampled_from([1.0, 1e3]))
def test_perturbing_the_input_at_t_changes_no_earlier_output(name, case, scale):
    layer = layer_for(name, torch.float64)
    x = torch.randn(case["batch"], case["length"], D_MODEL, generator=torch.Generator().manual_seed(case["seed"]))
    t = case["split"] if case["length"] > 1 else 0
    perturbed = x.clone()
    perturbed[:, t] += scale * torch.randn(case["batch"], D_MODEL, dtype=torch.float64)
    with torch.no_grad():
        y, _ = layer(x.double())
        y_perturbed, _ = layer(perturbed.double())
    torch.testing.assert_close(y_perturbed[:, :t], y[:, :t], rtol=1e-9, atol=1e-12)
