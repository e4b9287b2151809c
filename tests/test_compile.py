"""Every registered layer compiles with ``torch.compile(fullgraph=True)`` and matches eager: outputs, final state
and gradients over a length that is no multiple of any chunk, from a given state; and its ``step`` compiles too
(what fast decoding runs). The registry-wide checks trace, partition and decompose as inductor does but skip its
C++ build (``RNNZOO_COMPILE_BACKEND=inductor`` runs them in full); the layers that once failed, and generation
with the compiled step, run through inductor itself."""

from __future__ import annotations

import os

import pytest
import torch

import rnnzoo
from rnnzoo.models import SequenceModel
from rnnzoo.models.sequence_model import COMPILE_FROM

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


@pytest.mark.parametrize("mixer", ["gla", "lstm"])
def test_compiled_generation_gives_the_eager_tokens(mixer):
    torch.manual_seed(0)
    model = SequenceModel(vocab_size=32, mixer=mixer, d_model=16, n_layers=1).eval()
    prompt = torch.randint(32, (2, 9))
    eager = model.generate(prompt, 12, temperature=0, compile=False)
    torch.testing.assert_close(model.generate(prompt, 12, temperature=0, compile=True), eager, rtol=0, atol=0)


def test_generation_compiles_by_default_for_long_runs_without_a_cache(monkeypatch):
    used = []
    monkeypatch.setattr(SequenceModel, "compiled_step", lambda self: used.append(self.mixer_name) or self.step)
    prompt = torch.zeros(1, 3, dtype=torch.long)
    for mixer in ("gla", "hawk,attention"):
        model = SequenceModel(vocab_size=8, mixer=mixer, d_model=8, n_layers=2).eval()
        model.generate(prompt, 2, temperature=0)  # short: eager
        model.generate(prompt, COMPILE_FROM, temperature=0)  # long: compiled, unless a layer keeps a cache
    assert used == ["gla"]


def test_compiled_step_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no compiler here")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    model = SequenceModel(vocab_size=8, mixer="gla", d_model=8, n_layers=1).eval()
    prompt = torch.zeros(1, 3, dtype=torch.long)
    with pytest.warns(UserWarning, match="decoding eagerly"):
        got = model.generate(prompt, 4, temperature=0, compile=True)
    torch.testing.assert_close(got, model.generate(prompt, 4, temperature=0, compile=False), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["gla", "hgrn2", "mamba2", "deltanet"])
def test_long_wide_inputs_compile(name):
    """Shapes past the engines' small-input choices (several chunks of the long-sequence defaults)."""
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=64)
    x = torch.randn(2, 300, 64, requires_grad=True)
    y, final = torch.compile(layer, fullgraph=True, backend=BACKEND)(x)
    y_eager, final_eager = layer(x)
    torch.testing.assert_close(y, y_eager, **TOLERANCE)
    _close(final, final_eager)
