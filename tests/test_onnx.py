"""Every registered layer's step exports to ONNX (``torch.onnx.export(dynamo=True)``) and runs in ONNX Runtime as
in eager mode, the classic cells included; layers with complex states are skipped (ONNX has no complex
tensors). Needs the ``onnx`` extra."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.utils._pytree as pytree

import rnnzoo
from forms import Step

pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

MODELS = [m.name for m in rnnzoo.list_models()]
D_MODEL = 8


@pytest.mark.parametrize("name", MODELS)
def test_step_exports_to_onnx_and_runs_as_eager(name):
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=D_MODEL).eval()
    with torch.no_grad():
        _, state = layer(torch.randn(2, 5, D_MODEL))
    if any(t.is_complex() for t in state.tensors().values()):
        pytest.skip(f"{name}'s state is complex, which ONNX cannot hold")
    x_t = torch.randn(2, D_MODEL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(Step(layer), (x_t, state), dynamo=True, verbose=False)
    session = ort.InferenceSession(program.model_proto.SerializeToString())
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), [x_t, *pytree.tree_leaves(state)])}
    got = session.run(None, feeds)
    with torch.no_grad():
        want = pytree.tree_leaves(layer.step(x_t, state))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(torch.from_numpy(a), b, rtol=1e-4, atol=1e-5)
