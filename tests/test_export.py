"""States are pytrees, and every registered layer's step exports with ``torch.export`` and runs as eager does."""

from __future__ import annotations

import pytest
import torch
import torch.utils._pytree as pytree

import rnnzoo
from forms import Step

MODELS = [m.name for m in rnnzoo.list_models()]
D_MODEL = 8


@pytest.mark.parametrize("name", MODELS)
def test_state_is_a_pytree_of_its_tensors(name):
    layer = rnnzoo.create(name, d_model=D_MODEL)
    _, state = layer(torch.randn(2, 5, D_MODEL))
    leaves, spec = pytree.tree_flatten(state)
    assert len(leaves) == len(state.tensors()) and all(isinstance(t, torch.Tensor) for t in leaves)
    rebuilt = pytree.tree_unflatten([t + 1 for t in leaves], spec)
    assert type(rebuilt) is type(state)
    for key, value in state.tensors().items():
        torch.testing.assert_close(rebuilt.tensors()[key], value + 1)


@pytest.mark.parametrize("name", MODELS)
def test_step_exports_and_matches_eager(name):
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=D_MODEL).eval()
    grows = any(0 in t.shape for t in layer.init_state(1, device="meta").tensors().values())
    xs = torch.randn(1 if grows else 4, 2, D_MODEL)  # a growing KV cache: exported at one cache length only
    with torch.no_grad():
        _, state = layer(torch.randn(2, 5, D_MODEL))
        exported = torch.export.export(Step(layer), (xs[0], state)).module()
        eager_state, export_state = state, state
        for x_t in xs:
            y, eager_state = layer.step(x_t, eager_state)
            y_exported, export_state = exported(x_t, export_state)
            torch.testing.assert_close(y_exported, y, rtol=1e-5, atol=1e-6)
    for key, value in eager_state.tensors().items():
        torch.testing.assert_close(export_state.tensors()[key], value, rtol=1e-5, atol=1e-6)
