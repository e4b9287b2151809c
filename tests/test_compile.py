"""Every registered layer compiles with ``torch.compile(fullgraph=True)`` (inductor) and matches eager: outputs,
final state and gradients over a length that is no multiple of any chunk, from a given state; and its ``step``
compiles too (what fast decoding runs)."""

from __future__ import annotations

import os

import pytest
import torch

import rnnzoo

MODELS = [m.name for m in rnnzoo.list_models()]
D_MODEL = 8
TOLERANCE = dict(rtol=1e-4, atol=1e-5)
BACKEND = os.environ.get("RNNZOO_COMPILE_BACKEND", "aot_eager_decomp_partition")  # inductor: with C++ build


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Every layer class shares ``SequenceLayer.forward``: a fresh cache keeps one compile per test."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _total(y, state) -> torch.Tensor:
    """A loss reaching the outputs and every state field (complex ones through their real parts)."""
    return y.square().sum() + sum(torch.view_as_real(t).sum() if t.is_complex() else t.sum() for t in state.tensors().values())


def _close_to_scale(got, want, name: str) -> None:
    """A gradient summed over many terms: within float32 rounding of its largest entry."""
    scale = max(1.0, float(want.abs().max()))
    torch.testing.assert_close(got, want, rtol=TOLERANCE["rtol"], atol=TOLERANCE["atol"] * scale, msg=f"gradient of {name}")


def _close(got, want) -> None:
    for key, value in want.tensors().items():
        torch.testing.assert_close(got.tensors()[key], value, **TOLERANCE, msg=f"state field {key}")


@pytest.mark.parametrize("name", MODELS)
def test_forward_compiles_fullgraph_and_matches_eager(name):
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=D_MODEL)
    with torch.no_grad():
        _, state = layer(torch.randn(2, 3, D_MODEL))
    x = torch.randn(2, 37, D_MODEL, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True, backend=BACKEND)

    y, final = compiled(x, state)
    _total(y, final).backward()
    grads = {"x": x.grad.clone(), **{n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}}
    x.grad = None
    layer.zero_grad(set_to_none=True)

    y_eager, final_eager = layer(x, state)
    _total(y_eager, final_eager).backward()
    torch.testing.assert_close(y, y_eager, **TOLERANCE)
    _close(final, final_eager)
    _close_to_scale(grads["x"], x.grad, "x")
    for n, p in layer.named_parameters():
        if p.grad is not None:
            _close_to_scale(grads[n], p.grad, n)


@pytest.mark.parametrize("name", MODELS)
def test_step_compiles_fullgraph_and_matches_eager(name):
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=D_MODEL).eval()
    step = torch.compile(layer.step, fullgraph=True, backend=BACKEND)
    with torch.no_grad():
        _, state = layer(torch.randn(2, 5, D_MODEL))
        eager_state, compiled_state = state, state
        for x_t in torch.randn(3, 2, D_MODEL):
            y, eager_state = layer.step(x_t, eager_state)
            y_compiled, compiled_state = step(x_t, compiled_state)
            torch.testing.assert_close(y_compiled, y, **TOLERANCE)
    _close(compiled_state, eager_state)


@pytest.mark.parametrize("name", ["mingru", "gla", "mamba", "deltanet", "lstm"])
def test_inductor_compiles_and_matches_eager(name):
    """The whole path, C++ code generation included, for the layers that once failed to compile."""
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=D_MODEL)
    x = torch.randn(2, 37, D_MODEL, requires_grad=True)
    y, final = torch.compile(layer, fullgraph=True)(x)
    y_eager, final_eager = layer(x)
    torch.testing.assert_close(y, y_eager, **TOLERANCE)
    _close(final, final_eager)
    (grad,) = torch.autograd.grad(_total(y, final), x)
    (grad_eager,) = torch.autograd.grad(_total(y_eager, final_eager), x)
    _close_to_scale(grad, grad_eager, "x")
