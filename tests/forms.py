"""Run a layer in every form (parallel modes, recurrent, split through state, step) and compare.

Used by the per-engine layer tests: each form must give the same outputs, final
state and gradients (of the input and of every parameter). :class:`Step` is a
layer's step as a module, for the export tests.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor


class Step(torch.nn.Module):
    """A layer's ``step`` as a module: what a recurrent model deploys."""

    def __init__(self, layer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x_t, state):
        return self.layer.step(x_t, state)


def _loss_weights(y: Tensor, state, seed: int = 123):
    gen = torch.Generator().manual_seed(seed)
    w_y = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.device, y.dtype)
    w_s = {
        k: torch.randn(v.shape, generator=gen, dtype=torch.float64).to(v.device, v.real.dtype)
        for k, v in state.tensors().items()
    }
    return w_y, w_s


def _loss(y, state, weights):
    w_y, w_s = weights
    total = (y * w_y).sum()
    for k, v in state.tensors().items():
        if v.is_complex():
            total = total + (v.real * w_s[k]).sum() + (v.imag * w_s[k]).sum()
        else:
            total = total + (v * w_s[k]).sum()
    return total


def stepped(module, inputs: Tensor, state=None):
    """``(outputs, final state)`` of ``module.step`` applied token by token from ``state``."""
    outs = []
    for x_t in inputs.unbind(1):
        y_t, state = module.step(x_t, state)
        outs.append(y_t)
    return torch.stack(outs, 1), state


def random_state(state, *fields: str, seed: int = 2):
    """``state`` with the named fields drawn from a standard normal in float64: a prefix already seen."""
    gen = torch.Generator().manual_seed(seed)
    tensors = state.tensors()
    drawn = {name: torch.randn(tensors[name].shape, generator=gen, dtype=torch.float64) for name in fields}
    return dataclasses.replace(state, **drawn)


def assert_matches(y: Tensor, state, want_y: Tensor, want_state: dict[str, Tensor], **tolerance) -> None:
    """Outputs and every field of ``want_state`` (an equation test's hand-written loop) match ``y`` and ``state``."""
    torch.testing.assert_close(y, want_y, **tolerance)
    for key, value in want_state.items():
        torch.testing.assert_close(state.tensors()[key], value, **tolerance, msg=lambda m: f"state.{key}: {m}")


def outputs_in_form(module, inputs: Tensor, form: str, split: int | None = None):
    """``(outputs, final state)`` of a layer or model over ``inputs`` ``(batch, time, ...)`` in one form: a mode
    name, ``"split"`` (the parallel form over ``inputs[:, :split]`` then ``inputs[:, split:]`` through the state)
    or ``"step"`` (token by token)."""
    if form == "step":
        return stepped(module, inputs)
    if form == "split":
        first, state = module(inputs[:, :split])
        second, state = module(inputs[:, split:], state)
        return torch.cat([first, second], 1), state
    return module(inputs, mode=form)


def run_form(layer, x: Tensor, form: str, split: int | None = None):
    """Outputs, final state, and gradients of a fixed random loss, for one form (see :func:`outputs_in_form`)."""
    x = x.detach().clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    y, state = outputs_in_form(layer, x, form, split)
    weights = _loss_weights(y, state)
    _loss(y, state, weights).backward()
    grads = {"x": x.grad.clone()}
    grads.update({n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None})
    return y.detach(), {k: v.detach() for k, v in state.tensors().items()}, grads


def assert_forms_agree(layer, x: Tensor, forms, rtol=1e-6, atol=1e-8, split: int | None = None, scaled: bool = False):
    """Every form in ``forms`` matches the first one (outputs, state, gradients). With ``scaled``, ``atol`` is
    relative to each tensor's largest entry (float32: a small entry beside large ones carries their rounding)."""
    split = (x.shape[1] + 1) // 2 if split is None else split
    ref_name = forms[0]
    ref = run_form(layer, x, ref_name, split)
    for form in forms[1:]:
        if form == "split" and x.shape[1] < 2:
            continue
        got = run_form(layer, x, form, split)
        torch.testing.assert_close(got[0], ref[0], rtol=rtol, atol=atol, msg=lambda m: f"{form} vs {ref_name} y: {m}")
        for k in ref[1]:
            torch.testing.assert_close(
                got[1][k], ref[1][k], rtol=rtol, atol=atol, msg=lambda m: f"{form} vs {ref_name} state.{k}: {m}"
            )
        assert set(got[2]) == set(ref[2]), f"{form}: gradients for {set(got[2]) ^ set(ref[2])} missing"
        for k in ref[2]:
            scale = float(ref[2][k].abs().max()) if scaled else 1.0
            torch.testing.assert_close(
                got[2][k], ref[2][k], rtol=rtol, atol=atol * max(scale, 1.0),
                msg=lambda m: f"{form} vs {ref_name} grad {k}: {m}",
            )


def strong_decay_cases(shape: tuple[int, ...]) -> dict[str, Tensor]:
    """Log decays (float64, time on dim 2) that defeat decay ratios taken from a running sum: one reset
    (-1e4 at t = 2 among -1e-4), and decays alternating between near 0 (log α = -20) and near 1 (-1e-4)."""
    reset = torch.full(shape, -1e-4, dtype=torch.float64)
    reset[:, :, 2] = -1e4
    alternating = torch.full(shape, -1e-4, dtype=torch.float64)
    alternating[:, :, ::2] = -20.0
    return {"reset": reset, "alternating": alternating}


def assert_float32_close(got: Tensor, want: Tensor, rel: float = 1e-5) -> None:
    """``got`` (float32) within ``rel`` of ``want`` (a float64 loop), relative to ``want``'s largest entry."""
    error = (got.double() - want).abs().max() / want.abs().max()
    assert error <= rel, f"float32 error {error:.2e} relative to the float64 loop (bound {rel:g})"

