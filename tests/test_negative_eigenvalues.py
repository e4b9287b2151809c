"""Negative eigenvalues (Grazzi et al. 2024): which models take the flag, and what it does to the transition."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

import rnnzoo
from rnnzoo.layers import SequenceLayer
from rnnzoo.layers.engines import Engine

D_MODEL = 8
MODELS = [  # a linear transition A_t per token: an engine adapter that reports its eigenvalues
    m for m in rnnzoo.list_models()
    if isinstance(getattr(m.cls, "engine", None), Engine) and type(m.cls.engine).eigenvalues is not Engine.eigenvalues
]
FLAGGED = [m.name for m in MODELS if m.negative_eigenvalues]
REAL_GATED = {"mingru", "minlstm", "hgrn", "hawk", "mamba", "gla", "hgrn2", "mamba2"} | {
    m.name for m in MODELS if m.engine == "delta_rule"
}
COMPLEX_OR_FIXED = {"lru", "s4d", "retnet", "linear_attention", "gateloop"}
# Column-normalised blocks with the paper's p = 1.2 bound |λ| by k^(1 - 1/p), not 1 (tests/test_block_lrnn.py);
# the bilinear RNN's blocks have RMS singular value 1, and only its state's direction is read (tests/test_bilinear.py)
BEYOND_UNIT_DISC = {"block_lrnn", "bilinear"}

# Gates whose initialisation never reaches a_t < 1/2, driven there so that 2 a_t - 1 < 0 can show:
SATURATE = {
    # a_t = σ(Λ)^{8 r_t} starts in [0.9, 1): make the channels fast-decaying, σ(Λ) ≈ 0.018
    "hawk": lambda layer: layer.Lambda.fill_(-4.0),
    # α_t = σ(g_t)^{1/16} needs g_t < -11 to drop below 1/2: a gate bias of -20 gives α_t ≈ e^{-20/16} ≈ 0.29
    "gla": lambda layer: layer.gk_proj[1].bias.fill_(-20.0),
}


def make(name: str, saturate: bool = False, **kw) -> SequenceLayer:
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=D_MODEL, **kw).double()
    if saturate and name in SATURATE:
        with torch.no_grad():
            SATURATE[name](layer)
    return layer


def eigenvalues(name: str, layer: SequenceLayer, x: torch.Tensor) -> torch.Tensor:
    """``layer.transition_eigenvalues(x)``, checked for its leading ``(batch, time)`` shape."""
    eig = layer.transition_eigenvalues(x)
    assert eig.shape[:2] == x.shape[:2]
    return eig


def inputs(length: int = 64) -> torch.Tensor:
    torch.manual_seed(1)
    return 3 * torch.randn(2, length, D_MODEL, dtype=torch.float64)


def test_registry_matches_the_constructors():
    for m in rnnzoo.list_models():
        takes_flag = "negative_eigenvalues" in inspect.signature(m.cls).parameters
        assert m.negative_eigenvalues == takes_flag, f"{m.name}: registered {m.negative_eigenvalues}, takes {takes_flag}"
    names = {m.name: m for m in rnnzoo.list_models()}
    for name in REAL_GATED:
        assert name in names and names[name].negative_eigenvalues, f"{name} must support negative_eigenvalues"
    for name in COMPLEX_OR_FIXED:
        assert name in names and not names[name].negative_eigenvalues, f"{name} has no real gate to widen"


@pytest.mark.parametrize("name", FLAGGED)
def test_flag_off_keeps_eigenvalues_in_unit_interval(name):
    for saturate in (False, True):
        eig = eigenvalues(name, make(name, saturate=saturate), inputs())
        if eig.is_complex():  # a product of Householder-like factors (DeltaProduct): real when every β <= 1
            assert eig.imag.abs().max() < 1e-9, f"{name}: complex eigenvalues without the flag"
            eig = eig.real
        tol = 1e-12  # eigvals of a product rounds to within a few ulps of 0 and 1
        assert eig.min() >= -tol and eig.max() <= 1 + tol, f"{name} (saturate={saturate}): [{eig.min()}, {eig.max()}]"


@pytest.mark.parametrize("name", FLAGGED)
def test_flag_on_gives_negative_eigenvalues(name):
    eig = eigenvalues(name, make(name, saturate=True, negative_eigenvalues=True), inputs())
    if eig.is_complex():  # products of reflections may rotate: |λ| <= 1, some with negative real part
        assert eig.abs().max() <= 1 + 1e-12, f"{name}: max |eigenvalue| {eig.abs().max()}"
        assert (eig.real < 0).any(), f"{name}: no eigenvalue with negative real part with negative_eigenvalues=True"
        return
    assert eig.min() >= -1 and eig.max() <= 1, f"{name}: [{eig.min()}, {eig.max()}]"
    assert (eig < 0).any(), f"{name}: no negative eigenvalue with negative_eigenvalues=True"


@pytest.mark.parametrize("name", [m.name for m in MODELS if not m.negative_eigenvalues and m.name not in BEYOND_UNIT_DISC])
def test_unflagged_eigenvalues_in_unit_disc(name):
    eig = eigenvalues(name, make(name), inputs())
    assert eig.abs().max() <= 1, f"{name}: max |eigenvalue| {eig.abs().max()}"


def recurrent_field(state) -> str:
    """The name of the state tensor the transition acts on (not a conv buffer or a position)."""
    return next(n for n in ("h", "ssm", "S", "C") if n in state.tensors())


def memory(state) -> torch.Tensor:
    """The state the transition acts on; for mLSTM the true memory ``C̃ e^m``."""
    fields = state.tensors()
    scale = fields["m"].exp()[..., None, None] if "m" in fields else 1
    return fields[recurrent_field(state)] * scale


# Transitions that are not one diagonal A_t on one state, each checked in its own test file: the delta rule's
# identity-minus-rank-one and RWKV-7's diagonal-plus-rank-one (dplr_delta_rule), k×k blocks, a normalised state
# (not linear in h0), the fixed-point RNN's iterates coupled through its mixer, S4's dense Ā (dplr_ssm), and
# log-linear attention's state per Fenwick bucket.
NOT_DIAGONAL = (
    "delta_rule", "dplr_delta_rule", "block_scan", "normalized_block_scan", "fixed_point_scan", "dplr_ssm", "log_linear",
)  # fmt: skip
STEPPED = [m.name for m in MODELS if m.engine not in NOT_DIAGONAL]


@pytest.mark.parametrize(
    "name,negative", [(n, False) for n in STEPPED] + [(n, True) for n in STEPPED if n in FLAGGED]
)
def test_eigenvalues_are_what_step_applies(name, negative):
    """One step from states ``h0`` and ``0`` differs by ``A_t h0``: the reported eigenvalues, broadcast over the
    state (engine 2 diagonal; engine 3 over ``d_v``, and ``d_k`` for a scalar decay)."""
    layer = make(name, saturate=True, **({"negative_eigenvalues": True} if negative else {}))
    x_t = inputs(1)[:, 0]
    zero = layer.init_state(2, dtype=torch.float64)
    field = recurrent_field(zero)
    h0 = torch.randn_like(getattr(zero, field))
    start = dataclasses.replace(zero, **{field: h0})
    diff = memory(layer.step(x_t, start)[1]) - memory(layer.step(x_t, zero)[1])
    eig = eigenvalues(name, layer, x_t[:, None])[:, 0]
    eig = eig.reshape(*eig.shape, *[1] * (h0.dim() - eig.dim()))
    torch.testing.assert_close(diff, eig * h0, rtol=1e-9, atol=1e-12)
