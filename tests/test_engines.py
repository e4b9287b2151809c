"""Engine adapters (rnnzoo/layers/engines.py): every layer on an engine gets its forms and views from the base;
modes are checked; ``chunk_size`` reaches the engine."""

from __future__ import annotations

import pytest
import torch

import rnnzoo
from rnnzoo.layers import engines
from rnnzoo.layers.base import EngineLayer, SequenceLayer

ON_ENGINES = [m.name for m in rnnzoo.list_models() if issubclass(m.cls, EngineLayer)]
CHUNKED = [name for name in ON_ENGINES if rnnzoo.model_info(name).cls.engine.chunked]
D_MODEL = 8


def make(name: str, **kw):
    torch.manual_seed(0)
    return rnnzoo.create(name, d_model=D_MODEL, **kw).double()


def test_most_models_are_on_an_engine():
    nonlinear = {m.name for m in rnnzoo.list_models()} - set(ON_ENGINES)
    assert len(ON_ENGINES) >= 16
    assert all(rnnzoo.model_info(name).engine in ("nonlinear", "newton") for name in nonlinear), nonlinear


@pytest.mark.parametrize("name", ON_ENGINES)
def test_forms_and_views_come_from_the_base(name):
    cls = rnnzoo.model_info(name).cls
    for method in ("_forward", "_materialize", "_mixer_io", "_transition_eigenvalues", "step", "forward"):
        assert getattr(cls, method) is getattr(EngineLayer, method, getattr(SequenceLayer, method)), (name, method)
    assert cls.parallel_modes == cls.engine.parallel_modes
    assert cls.has_operator() == cls.engine.has_operator  # k×k blocks, coupled channels: no T×T operator per group


@pytest.mark.parametrize("name", ON_ENGINES)
def test_engine_refuses_an_unknown_mode(name):
    layer = make(name)
    inputs, _ = layer.engine_inputs(torch.randn(1, 3, D_MODEL, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"`mode` must be 'recurrent' or one of .*got 'bogus'"):
        layer.engine.run(inputs, None, "bogus")


@pytest.mark.parametrize("name", CHUNKED)
def test_chunk_size_reaches_the_engine(name, monkeypatch):
    layer, default = make(name, chunk_size=3), make(name)
    assert layer.chunk_size == 3 and "chunk_size=3" in repr(layer)
    seen = []
    parallel = type(layer.engine).parallel

    def spy(self, inputs, state, mode, **kwargs):
        seen.append(kwargs.get("chunk_size"))
        return parallel(self, inputs, state, mode, **kwargs)

    monkeypatch.setattr(type(layer.engine), "parallel", spy)
    x = torch.randn(2, 10, D_MODEL, dtype=torch.float64)  # 4 chunks of 3, the last partial
    y, state = layer(x)
    y_default, state_default = default(x)
    assert seen[0] == 3 and seen[-1] is None
    torch.testing.assert_close(y, y_default, rtol=1e-9, atol=1e-10)
    for key, value in state.tensors().items():
        torch.testing.assert_close(value, state_default.tensors()[key], rtol=1e-9, atol=1e-10)
    if layer.has_operator():
        layer.mixer_io(x)
        assert seen[-1] == 3


@pytest.mark.parametrize("name", CHUNKED[:1])
def test_chunk_size_is_checked(name):
    with pytest.raises(ValueError, match="chunk_size"):
        make(name, chunk_size=0)


@pytest.mark.parametrize("name", sorted(set(ON_ENGINES) - set(CHUNKED)))
def test_unchunked_engines_take_no_chunk_size(name):
    with pytest.raises(TypeError, match="chunk_size"):
        make(name, chunk_size=4)


@pytest.mark.parametrize(
    "engine", [cls() for cls in vars(engines).values() if isinstance(cls, type) and issubclass(cls, engines.Engine)
               and cls not in (engines.Engine, engines.AttentionEngine)],
    ids=lambda e: e.name,
)  # fmt: skip
def test_every_adapter_declares_itself(engine):
    assert engine.name and engine.parallel_modes and "recurrent" not in engine.parallel_modes
