"""bf16 autocast: every registered layer runs forward and backward under it, close to float32, its state kept in
float32; and a short LM training run under autocast follows the float32 run's losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rnnzoo
from rnnzoo.models import SequenceModel

MODELS = [m.name for m in rnnzoo.list_models()]
D_MODEL = 32


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.detach().float() - want.detach()).norm() / want.detach().norm())


@pytest.mark.parametrize("name", MODELS)
def test_layer_runs_under_bf16_autocast_close_to_float32(name):
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=D_MODEL)
    x = torch.randn(2, 70, D_MODEL, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = layer(x)
    (grad,) = torch.autograd.grad(y.float().square().sum(), x)
    y32, state32 = layer(x)
    (grad32,) = torch.autograd.grad(y32.square().sum(), x)
    assert torch.isfinite(y).all() and torch.isfinite(grad).all()
    assert _relative(y, y32) < 0.03, "outputs"
    assert _relative(grad, grad32) < 0.15, "gradients"  # bf16 gate logits shift decays compounded over 70 steps
    for key, value in state.tensors().items():
        assert value.dtype == state32.tensors()[key].dtype, f"state field {key} keeps the float32 state's dtype"


def _losses(mixer: str, bf16: bool, steps: int = 12) -> list[float]:
    torch.manual_seed(0)
    model = SequenceModel(vocab_size=16, mixer=mixer, d_model=32, n_layers=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tokens = torch.arange(33).remainder(7).repeat(4, 1)  # a periodic sequence: the loss falls fast
    losses = []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, _ = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("mixer", ["gla", "mamba", "deltanet", "lstm", "hawk,attention"])
def test_bf16_training_follows_float32(mixer):
    full, half = _losses(mixer, bf16=False), _losses(mixer, bf16=True)
    assert full[-1] < 0.8 * full[0], "the run learns"
    for step, (a, b) in enumerate(zip(full, half)):
        assert abs(a - b) <= 0.03 * a + 0.02, f"step {step}: float32 loss {a:.4f}, bf16 {b:.4f}"
