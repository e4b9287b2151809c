"""The operator view: `materialize(x) @ V == Y` for each layer that has one; engine 2's operator; `rnnzoo inspect`."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import rnnzoo
from rnnzoo.bench import inspect
from rnnzoo.cli import main
from rnnzoo.layers import MinGRU, SequenceLayer
from rnnzoo.ops import linear_scan, linear_scan_operator

MATERIALIZING = [m.name for m in rnnzoo.list_models() if inspect.materializes(m.cls)]
D_MODEL = 8


def make(name: str, **kw):
    torch.manual_seed(0)
    return rnnzoo.create(name, d_model=D_MODEL, **kw).double()


def variants(name: str) -> list[dict]:
    return [{}, {"negative_eigenvalues": True}] if rnnzoo.model_info(name).negative_eigenvalues else [{}]


@pytest.mark.parametrize("name", MATERIALIZING)
@pytest.mark.parametrize("length", [1, 7, 33])
def test_operator_reproduces_the_mixer(name, length):
    for kw in variants(name):
        layer = make(name, **kw)
        x = torch.randn(2, length, D_MODEL, dtype=torch.float64)
        M = layer.materialize(x)
        V, Y = layer.mixer_io(x)
        groups = M.shape[1]
        assert M.shape == (2, groups, length, length), kw
        assert V.shape[:3] == (2, groups, length) and Y.shape == V.shape, kw
        assert torch.equal(torch.triu(M, 1), torch.zeros_like(M)), f"{kw}: M has entries above the diagonal"
        torch.testing.assert_close(M @ V, Y, rtol=1e-9, atol=1e-10, msg=lambda m: f"{name} {kw}: {m}")


def per_channel(Y):
    """(batch, channels, T, 1) -> (batch, T, channels)."""
    return Y.squeeze(-1).transpose(1, 2)


# what each engine-2 layer does after the mixer: mixer_io's Y must lead to the layer's output
POST_MIXER = {
    "mingru": lambda layer, x, h: layer.out_proj(h),
    "minlstm": lambda layer, x, h: layer.out_proj(h),
    "hgrn": lambda layer, x, h: layer.out_proj(layer.norm(h) * F.silu(layer.in_proj(x).chunk(3, -1)[2])),
    "hawk": lambda layer, x, h: layer.out_proj(h * F.gelu(layer.gate_proj(x), approximate="tanh")),
    "mamba": lambda layer, x, y: layer.out_proj(y * F.silu(layer.in_proj(x).chunk(2, -1)[1])),
    "lru": lambda layer, x, h: h.real @ layer.C_re.T - h.imag @ layer.C_im.T + layer.D * x,
    "s4d": lambda layer, x, z: F.glu(layer.out_proj(F.gelu(z)), dim=-1),
}


@pytest.mark.parametrize("name", sorted(POST_MIXER))
def test_mixer_output_is_the_forward_pass_midpoint(name):
    layer = make(name, **({"expand": 2.0} if name == "minlstm" else {}))
    x = torch.randn(2, 20, D_MODEL, dtype=torch.float64)
    _, Y = layer.mixer_io(x)
    torch.testing.assert_close(POST_MIXER[name](layer, x, per_channel(Y)), layer(x)[0])


def test_layers_check_their_input():
    for name in MATERIALIZING:
        layer = make(name)
        for method in (layer.materialize, layer.mixer_io):
            with pytest.raises(ValueError, match="last dim of `x` must be d_model=8"):
                method(torch.randn(1, 5, D_MODEL + 1, dtype=torch.float64))


# -- engine 2's operator --------------------------------------------------------


def transition(shape, kind: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    if kind == "complex":
        radius = 0.5 + 0.5 * torch.rand(shape, generator=gen, dtype=torch.float64)
        return torch.polar(radius, 6.28 * torch.rand(shape, generator=gen, dtype=torch.float64))
    a = torch.rand(shape, generator=gen, dtype=torch.float64)
    return 2 * a - 1 if kind == "signed" else a


def brute_force_operator(a: torch.Tensor) -> torch.Tensor:
    batch, length, *state = a.shape
    L = a.new_zeros(batch, length, length, *state)
    for t in range(length):
        for s in range(t + 1):
            L[:, t, s] = a[:, s + 1 : t + 1].prod(dim=1)
    return L


@pytest.mark.parametrize("kind", ["gate", "signed", "complex"])
@pytest.mark.parametrize("shape", [(2, 1, 3), (2, 9, 3), (1, 6, 2, 3)])
def test_linear_scan_operator_is_the_product_of_transitions(kind, shape):
    a = transition(shape, kind)
    L = linear_scan_operator(a)
    torch.testing.assert_close(L, brute_force_operator(a), rtol=1e-12, atol=1e-14)
    assert torch.equal(torch.triu(L.movedim((1, 2), (-2, -1)), 1), torch.zeros_like(L.movedim((1, 2), (-2, -1))))


@pytest.mark.parametrize("kind", ["gate", "signed", "complex"])
def test_linear_scan_operator_applies_the_scan(kind):
    a, b = transition((2, 100, 3), kind), torch.randn(2, 100, 3, dtype=torch.float64)  # long enough to chunk
    L = linear_scan_operator(a)
    torch.testing.assert_close(torch.einsum("btsc,bsc->btc", L, b.to(L.dtype)), linear_scan(a, b)[0])


def test_linear_scan_operator_time_invariant_and_errors():
    a = transition((3,), "complex")
    L = linear_scan_operator(a, (2, 7, 3))
    torch.testing.assert_close(L, brute_force_operator(a.expand(2, 7, 3)))
    with pytest.raises(ValueError, match="does not broadcast"):
        linear_scan_operator(a, (2, 7, 4))
    with pytest.raises(ValueError, match="batch, time"):
        linear_scan_operator(a)


def test_linear_scan_operator_gradient():
    a = transition((1, 5, 2), "signed").requires_grad_(True)
    assert torch.autograd.gradcheck(linear_scan_operator, (a,))


# -- rnnzoo inspect ----------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n"


def test_inspect_writes_a_png(tmp_path, capsys):
    out = tmp_path / "tmp.png"
    assert main(["inspect", "mingru", "--length", "16", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG
    assert str(out) in capsys.readouterr().out
    out = tmp_path / "log.png"
    argv = ["inspect", "lru", "--length", "8", "--d-model", "4", "--kw", "d_state=6", "--group", "5", "--log"]
    assert main([*argv, "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_inspect_checkpoint_round_trip(tmp_path, monkeypatch, suffix):
    torch.manual_seed(5)
    layer = rnnzoo.create("mingru", d_model=8, expand=2.0)
    path = tmp_path / f"layer{suffix}"
    if suffix == ".pt":
        torch.save(layer.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(layer.state_dict(), path)
    plotted = []
    monkeypatch.setattr(inspect, "plot_operator", lambda M, *args, **kwargs: plotted.append(M))
    argv = ["inspect", "mingru", "--d-model", "8", "--kw", "expand=2.0", "--length", "12", "--seed", "1"]
    assert main([*argv, "--checkpoint", str(path), "--out", str(tmp_path / "x.png")]) == 0
    assert main([*argv, "--out", str(tmp_path / "x.png")]) == 0  # random init instead
    expected = layer.materialize(inspect.random_input(layer, 12, seed=1))[0]
    torch.testing.assert_close(plotted[0], expected)
    assert not torch.allclose(plotted[1], expected)


def test_inspect_parse_kwargs():
    assert inspect.parse_kwargs(["d_state=8", "expansion=0.5", "negative_eigenvalues=True", "mode=scan"]) == {
        "d_state": 8, "expansion": 0.5, "negative_eigenvalues": True, "mode": "scan"
    }  # fmt: skip
    with pytest.raises(ValueError, match="key=value"):
        inspect.parse_kwargs(["d_state"])


@pytest.mark.parametrize(
    "argv,match",
    [
        (["nope"], "unknown model 'nope'.*mingru"),
        (["mingru", "--kw", "d_state"], "--kw expects key=value"),
        (["mingru", "--kw", "d_state=4"], "cannot build mingru"),
        (["mingru", "--d-model", "8", "--group", "8"], r"--group must lie in \[0, 8\)"),
    ],
)
def test_inspect_bad_arguments_exit_2(argv, match, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", *argv, "--length", "4"])
    assert exit_info.value.code == 2
    assert re.search(match, capsys.readouterr().err)


def test_inspect_model_without_operator_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(MinGRU, "_materialize", SequenceLayer._materialize)
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", "mingru", "--length", "4"])
    assert exit_info.value.code == 2
    assert "mingru does not materialise its operator" in capsys.readouterr().err


def test_inspect_checkpoint_that_does_not_fit_exits_2(tmp_path, capsys):
    path = tmp_path / "small.pt"
    torch.save(rnnzoo.create("mingru", d_model=4).state_dict(), path)
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", "mingru", "--d-model", "8", "--checkpoint", str(path), "--length", "4"])
    assert exit_info.value.code == 2
    assert "cannot build mingru" in capsys.readouterr().err


@pytest.mark.parametrize("name, content", [
    ("bad.safetensors", b"garbage"), ("bad.pt", b"garbage"), ("truncated.pt", None), ("list.pt", [1, 2]),
])  # fmt: skip
def test_inspect_unreadable_checkpoint_exits_2_naming_the_file(tmp_path, capsys, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is None:
        torch.save(rnnzoo.create("mingru", d_model=8).state_dict(), path)
        path.write_bytes(path.read_bytes()[:100])
    else:
        torch.save(content, path)
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", "mingru", "--d-model", "8", "--checkpoint", str(path), "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and name in err and "Traceback" not in err
