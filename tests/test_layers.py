"""Every registered layer: its forms agree, and bad input gets a clear error."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import rnnzoo
from forms import assert_forms_agree

MODELS = [m.name for m in rnnzoo.list_models()]
NEGATIVE = [m.name for m in rnnzoo.list_models() if m.negative_eigenvalues]
D_MODEL = 8


def make(name: str, dtype=torch.float64, device="cpu", **kw):
    torch.manual_seed(0)
    return rnnzoo.create(name, d_model=D_MODEL, **kw).to(device=device, dtype=dtype)


def forms_of(layer):
    return ["recurrent", *layer.parallel_modes, "split", "step"]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch,length", [(1, 1), (2, 2), (3, 13), (1, 67), (2, 257)])
def test_forms_agree(name, batch, length, device):
    layer = make(name, device=device)
    x = torch.randn(batch, length, D_MODEL, dtype=torch.float64, device=device)
    assert_forms_agree(layer, x, forms_of(layer))


@pytest.mark.parametrize("name", NEGATIVE)
def test_forms_agree_negative_eigenvalues(name, device):
    layer = make(name, device=device, negative_eigenvalues=True)
    x = torch.randn(2, 131, D_MODEL, dtype=torch.float64, device=device)
    assert_forms_agree(layer, x, forms_of(layer))


@pytest.mark.parametrize("name", MODELS)
def test_split_anywhere(name):
    layer = make(name)
    x = torch.randn(2, 70, D_MODEL, dtype=torch.float64)
    for split in (1, 33, 69):
        assert_forms_agree(layer, x, ["auto", "split"], split=split)


@pytest.mark.parametrize("name", MODELS)
def test_float32_matches_float64(name):
    layer64 = make(name)
    layer32 = make(name, dtype=torch.float32)
    x = torch.randn(2, 300, D_MODEL, dtype=torch.float64)
    y64, _ = layer64(x)
    y32, _ = layer32(x.float())
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_bfloat16_runs_with_float32_state(name):
    layer = make(name, dtype=torch.bfloat16)
    x = torch.randn(2, 100, D_MODEL, dtype=torch.bfloat16)
    y, state = layer(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    for v in state.tensors().values():
        assert v.dtype in (torch.float32, torch.complex64, torch.long)  # counters are integers
    y.float().sum().backward()
    y_t, _ = layer.step(x[:, 0], state)
    assert y_t.dtype == torch.bfloat16


@pytest.mark.parametrize("name", MODELS)
def test_long_sequence_finite(name):
    layer = make(name, dtype=torch.float32)
    x = 10 * torch.randn(1, 16384, D_MODEL)
    y, state = layer(x)
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(v).all() for v in state.tensors().values())


@pytest.mark.parametrize("name", MODELS)
def test_init_state_is_a_valid_start(name):
    layer = make(name)
    x = torch.randn(3, 20, D_MODEL, dtype=torch.float64)
    y_none, s_none = layer(x)
    y_zero, s_zero = layer(x, layer.init_state(3))
    torch.testing.assert_close(y_zero, y_none)
    detached = s_zero.detach()
    assert all(not v.requires_grad for v in detached.tensors().values())


# -- bad input ------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_bad_input_errors(name):
    layer = make(name, dtype=torch.float32)
    good = torch.randn(2, 5, D_MODEL)
    with pytest.raises(ValueError, match=r"`x` must have shape \(batch, time, d_model=8\)"):
        layer(torch.randn(5, D_MODEL))
    with pytest.raises(ValueError, match="last dim of `x` must be d_model=8"):
        layer(torch.randn(2, 5, D_MODEL + 1))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.ones(2, 5, D_MODEL, dtype=torch.long))
    with pytest.raises(ValueError, match="empty time dimension"):
        layer(torch.randn(2, 0, D_MODEL))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        layer([[0.0] * D_MODEL])
    with pytest.raises(TypeError, match="dtype torch.float64 but the layer's parameters are torch.float32"):
        layer(good.double())
    _, state = layer(good)
    with pytest.raises(ValueError, match=r"`state\.\w+` must have shape .*batch=3"):
        layer(torch.randn(3, 5, D_MODEL), state)
    with pytest.raises(TypeError, match="`state` must be a"):
        layer(good, {"h": torch.zeros(2, D_MODEL)})
    with pytest.raises(TypeError, match=r"`state\.\w+` must have dtype"):  # would change the output's dtype
        layer(good, layer.init_state(2, dtype=torch.float64))
    complex_parts = {k: v.real for k, v in state.tensors().items() if v.is_complex()}
    if complex_parts:  # a real state for a complex one would drop its imaginary part
        with pytest.raises(TypeError, match=r"`state\.\w+` must have dtype"):
            layer(good, dataclasses.replace(state, **complex_parts))
    with pytest.raises(ValueError, match=r"`x_t` must have shape \(batch, d_model=8\)"):
        layer.step(good)
    with pytest.raises(ValueError, match="`mode` must be one of"):
        layer(good, mode="fastest")
    with pytest.raises(ValueError, match="`mode` must be one of"):
        layer.mode = "bogus"  # set as an attribute, it is checked too
    assert layer.mode == "auto"


@pytest.mark.parametrize("name", MODELS)
def test_later_nan_or_inf_leaves_earlier_outputs(name):
    """Output at t depends only on inputs <= t in every mode, also when a later input is NaN or infinite."""
    layer = make(name)
    x = torch.randn(2, 70, D_MODEL, dtype=torch.float64)
    bad = x.clone()
    bad[1, 50, 3], bad[0, 60, 0] = float("nan"), float("inf")
    for mode in ("recurrent", *layer.parallel_modes):
        clean, _ = layer(x, mode=mode)
        y, _ = layer(bad, mode=mode)
        torch.testing.assert_close(y[:, :50], clean[:, :50], msg=lambda m: f"{mode}: {m}")
        torch.testing.assert_close(y[0, :60], clean[0, :60], msg=lambda m: f"{mode}, row 0: {m}")
        assert not torch.isfinite(y[1, 50:]).all(), mode


@pytest.mark.parametrize("name", MODELS)
def test_factory_keywords_device_and_dtype(name):
    layer = rnnzoo.create(name, d_model=D_MODEL, device="cpu", dtype=torch.float64)
    for p in layer.parameters():
        assert p.device.type == "cpu" and p.dtype in (torch.float64, torch.complex128)
    y, _ = layer(torch.randn(2, 5, D_MODEL, dtype=torch.float64))
    assert y.dtype == torch.float64


@pytest.mark.parametrize("name, old, new, value", [
    ("mingru", "expansion", "expand", 2.0), ("minlstm", "expansion", "expand", 2.0), ("hgrn", "expansion", "expand", 2.0),
    ("deltanet", "conv_size", "d_conv", 3), ("gated_deltanet", "conv_size", "d_conv", 3),
    ("deltaproduct", "conv_size", "d_conv", 3),
])  # fmt: skip
def test_old_argument_names_still_work_with_a_deprecation_warning(name, old, new, value):
    with pytest.warns(DeprecationWarning, match=f"`{old}` is deprecated.*use `{new}`"):
        torch.manual_seed(0)
        renamed = rnnzoo.create(name, d_model=D_MODEL, **{old: value})
    torch.manual_seed(0)
    current = rnnzoo.create(name, d_model=D_MODEL, **{new: value})
    assert all(torch.equal(a, b) for a, b in zip(renamed.state_dict().values(), current.state_dict().values()))
    with pytest.raises(TypeError, match=f"give `{new}` only"):
        rnnzoo.create(name, d_model=D_MODEL, **{old: value, new: value})


def test_state_from_another_model_is_rejected():
    mamba_like, gru = make(MODELS[0]), make(MODELS[-1])
    _, state = mamba_like(torch.randn(2, 4, D_MODEL, dtype=torch.float64))
    if type(state) is type(gru.init_state(2)) and all(
        v.shape == w.shape for v, w in zip(state.tensors().values(), gru.init_state(2).tensors().values())
    ):
        pytest.skip("the two models' states are interchangeable")
    with pytest.raises((TypeError, ValueError), match="state"):
        gru(torch.randn(2, 4, D_MODEL, dtype=torch.float64), state)


# -- registry -------------------------------------------------------------------


def test_registry_lists_models_with_metadata():
    infos = rnnzoo.list_models()
    assert [i.name for i in infos] == sorted(i.name for i in infos)
    for info in infos:
        assert info.family and info.engine and info.paper
        assert isinstance(info.negative_eigenvalues, bool)
        assert rnnzoo.model_info(info.name) is info


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'nope'.*mingru"):
        rnnzoo.create("nope", d_model=8)


@pytest.mark.parametrize("name", MODELS)
def test_bad_constructor_arguments(name):
    with pytest.raises(ValueError, match="`d_model` must be a positive int"):
        rnnzoo.create(name, d_model=0)
    with pytest.raises(ValueError, match="`mode` must be one of"):
        rnnzoo.create(name, d_model=8, mode="bogus")
    if name not in NEGATIVE:
        with pytest.raises(TypeError, match="negative_eigenvalues"):
            rnnzoo.create(name, d_model=8, negative_eigenvalues=True)


# -- the configuration travels with the weights ------------------------------------------------


@pytest.mark.parametrize("name", [m.name for m in rnnzoo.list_models() if m.negative_eigenvalues])
def test_a_checkpoint_refuses_another_configuration(name, tmp_path):
    from safetensors.torch import load_file, save_file

    flagged = rnnzoo.create(name, d_model=8, negative_eigenvalues=True)
    assert flagged.config["negative_eigenvalues"] is True and "mode" not in flagged.config
    save_file(flagged.state_dict(), tmp_path / "layer.safetensors")
    saved = load_file(tmp_path / "layer.safetensors")
    with pytest.raises(ValueError, match=r"negative_eigenvalues=True \(this layer: False\)"):
        rnnzoo.create(name, d_model=8).load_state_dict(saved)
    same = rnnzoo.create(name, d_model=8, negative_eigenvalues=True, mode="recurrent")  # the mode is not function
    same.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), flagged.state_dict().values()))


def test_a_checkpoint_refuses_another_layer_and_old_checkpoints_load():
    hgrn, hgrn2 = rnnzoo.create("hgrn", d_model=8), rnnzoo.create("hgrn2", d_model=8)
    with pytest.raises(ValueError, match="the checkpoint holds a HGRN layer, not a HGRN2"):
        hgrn2.load_state_dict(hgrn.state_dict(), strict=False)
    old = {k: v for k, v in hgrn.state_dict().items() if not k.endswith("_extra_state")}  # saved before configs
    rnnzoo.create("hgrn", d_model=8).load_state_dict(old)
    with pytest.raises(ValueError, match=r"lower_bound=.*this layer"):
        rnnzoo.create("hgrn", d_model=8, lower_bound=0.5).load_state_dict(hgrn.state_dict())


def test_a_checkpoint_from_before_an_argument_existed_loads_as_its_default():
    import json

    def without_feature_map(state_dict):
        record = json.loads(bytes(state_dict["_extra_state"].tolist()).decode())
        del record["config"]["feature_map"]  # linear_attention before Hedgehog features
        return {**state_dict, "_extra_state": torch.tensor(list(json.dumps(record).encode()), dtype=torch.uint8)}

    old = without_feature_map(rnnzoo.create("linear_attention", d_model=8).state_dict())
    rnnzoo.create("linear_attention", d_model=8).load_state_dict(old)
    with pytest.raises(ValueError, match=r"feature_map='elu' \(this layer: 'hedgehog'\)"):
        rnnzoo.create("linear_attention", d_model=8, feature_map="hedgehog").load_state_dict(old, strict=False)


# -- one name per concept -------------------------------------------------------------------------

OTHER_NAMES = {"expansion", "conv_size", "kernel_size", "n_heads", "nheads", "heads", "eps", "layer_norm_eps", "chunk"}


@pytest.mark.parametrize("name", [m.name for m in rnnzoo.list_models()])
def test_constructors_use_the_agreed_names(name):
    import inspect

    parameters = set(inspect.signature(rnnzoo.model_info(name).cls).parameters)
    assert not parameters & OTHER_NAMES, f"{name}: {sorted(parameters & OTHER_NAMES)}"


@pytest.mark.parametrize("name", [m.name for m in rnnzoo.list_models()])
def test_every_norm_takes_norm_eps(name):
    norms = (torch.nn.RMSNorm, torch.nn.LayerNorm, torch.nn.GroupNorm)
    layer = rnnzoo.create(name, d_model=8)
    if not any(isinstance(m, norms) for m in layer.modules()):
        return
    layer = rnnzoo.create(name, d_model=8, norm_eps=0.125)
    assert all(m.eps == 0.125 for m in layer.modules() if isinstance(m, norms)), name


# -- float32 after a reset -------------------------------------------------------------------------


@pytest.mark.parametrize("name", [m.name for m in rnnzoo.list_models()])
def test_float32_stays_close_to_a_float64_loop_after_a_reset(name):
    """Steps of 100 times the usual input saturate every gate (a strong decay, a reset, or a full carry) early in
    a chunk and in a later one: the float32 parallel form stays within 1e-5 (relative to the output's scale) of
    a float64 loop, as the engines do at the engine level with log α = -1e4."""
    for seed in (0, 1):
        torch.manual_seed(seed)
        layer = rnnzoo.create(name, d_model=16)
        reference = copy.deepcopy(layer).double()
        x = torch.randn(2, 150, 16)
        x[:, [2, 90]] *= 100.0
        with torch.no_grad():
            y, state = layer(x)
            y_ref, state_ref = reference(x.double(), mode="recurrent")
        pairs = [("y", y, y_ref)] + [
            (key, value, state_ref.tensors()[key]) for key, value in state.tensors().items() if value.is_floating_point()
            or value.is_complex()
        ]  # fmt: skip
        for what, value, ref in pairs:
            error = float((value.to(ref.dtype) - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
            assert error <= 1e-5, f"{name} (seed {seed}) {what}: relative error {error:.2e}"
