"""Elman RNN, LSTM, GRU: the paper equations step by step, parity with torch's modules, conversion errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnzoo
from rnnzoo.layers import GRU, LSTM, Elman
from rnnzoo.layers.classic import HiddenState, LSTMState

D_MODEL = 6
LAYERS = {"elman": (Elman, nn.RNN), "lstm": (LSTM, nn.LSTM), "gru": (GRU, nn.GRU)}


def elman_step(p, x_t, h):
    return (torch.tanh(x_t @ p["weight_ih_l0"].T + p["bias_ih_l0"] + h @ p["weight_hh_l0"].T + p["bias_hh_l0"]),)


def lstm_step(p, x_t, h, c):
    i, f, g, o = (x_t @ p["weight_ih_l0"].T + p["bias_ih_l0"] + h @ p["weight_hh_l0"].T + p["bias_hh_l0"]).chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_step(p, x_t, h):
    (w_ir, w_iz, w_in), (w_hr, w_hz, w_hn) = p["weight_ih_l0"].chunk(3), p["weight_hh_l0"].chunk(3)
    (b_ir, b_iz, b_in), (b_hr, b_hz, b_hn) = p["bias_ih_l0"].chunk(3), p["bias_hh_l0"].chunk(3)
    r = torch.sigmoid(x_t @ w_ir.T + b_ir + h @ w_hr.T + b_hr)
    z = torch.sigmoid(x_t @ w_iz.T + b_iz + h @ w_hz.T + b_hz)
    n = torch.tanh(x_t @ w_in.T + b_in + r * (h @ w_hn.T + b_hn))
    return ((1 - z) * n + z * h,)


EQUATIONS = {"elman": elman_step, "lstm": lstm_step, "gru": gru_step}


def random_state(layer, batch):
    zero = layer.init_state(batch)
    return type(zero)(*(torch.randn_like(t) for t in zero.tensors().values()))


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("d_hidden", [None, 10])
def test_layer_follows_the_equations(name, d_hidden):
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=D_MODEL, d_hidden=d_hidden).double()
    params = {k.removeprefix("rnn."): v for k, v in layer.named_parameters()}
    x = torch.randn(3, 29, D_MODEL, dtype=torch.float64)
    state0 = random_state(layer, 3)
    carry, hs = tuple(state0.tensors().values()), []
    for x_t in x.unbind(1):
        carry = EQUATIONS[name](params, x_t, *carry)
        hs.append(carry[0])
    want = layer.out_proj(torch.stack(hs, 1))
    for mode in ("fused", "recurrent"):
        y, state = layer(x, state0, mode=mode)
        torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-12)
        for got, expected in zip(state.tensors().values(), carry):
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("batch_first", [True, False])
def test_from_torch_gives_the_modules_outputs(name, batch_first):
    layer_cls, torch_cls = LAYERS[name]
    torch.manual_seed(1)
    module = torch_cls(D_MODEL, D_MODEL, batch_first=batch_first)
    layer = layer_cls.from_torch(module)
    x = torch.randn(4, 23, D_MODEL)
    state = random_state(layer, 4)
    hx = tuple(t.unsqueeze(0) for t in state.tensors().values())
    want, hx_n = module(x if batch_first else x.transpose(0, 1), hx if name == "lstm" else hx[0])
    want = want if batch_first else want.transpose(0, 1)
    hx_n = hx_n if name == "lstm" else (hx_n,)
    y, final = layer(x, state)  # mode "auto" is the fused kernel: the same computation, bit for bit
    assert torch.equal(y, want)
    for got, expected in zip(final.tensors().values(), hx_n):
        assert torch.equal(got, expected.squeeze(0))
    y_rec, _ = layer(x, state, mode="recurrent")
    torch.testing.assert_close(y_rec, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_to_torch_round_trip(name):
    torch.manual_seed(2)
    layer = rnnzoo.create(name, d_model=D_MODEL).double()
    with torch.no_grad():
        for p in layer.parameters():  # weights that float32 cannot hold: a conversion through it would show
            p.add_(1e-12 * torch.randn_like(p))
    x = torch.randn(2, 17, D_MODEL, dtype=torch.float64)
    module = layer.to_torch(batch_first=False)
    assert isinstance(module, LAYERS[name][1]) and not module.batch_first
    assert next(module.parameters()).dtype == torch.float64
    out, _ = module(x.transpose(0, 1))
    assert torch.equal(out.transpose(0, 1), layer(x)[0])
    again = type(layer).from_torch(module)
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), layer.parameters()))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_to_torch_with_a_projection_gives_the_hidden_sequence(name):
    torch.manual_seed(3)
    layer = rnnzoo.create(name, d_model=D_MODEL, d_hidden=9).double()
    x = torch.randn(2, 11, D_MODEL, dtype=torch.float64)
    h, _ = layer.to_torch()(x)
    y, state = layer(x)
    torch.testing.assert_close(layer.out_proj(h), y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h[:, -1], state.h, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_from_torch_takes_layer_zero_of_a_stack(name):
    layer_cls, torch_cls = LAYERS[name]
    torch.manual_seed(4)
    stack = torch_cls(D_MODEL, 5, num_layers=2, batch_first=True).double()
    layer = layer_cls.from_torch(stack)
    assert layer.d_hidden == 5 and isinstance(layer.out_proj, nn.Linear)
    x = torch.randn(3, 15, D_MODEL, dtype=torch.float64)
    _, h_n = stack(x)
    _, state = layer(x)
    first = h_n if name != "lstm" else h_n[0]
    torch.testing.assert_close(state.h, first[0], rtol=0, atol=0)  # h_n[0] is layer 0's final state
    if name == "lstm":
        torch.testing.assert_close(state.c, h_n[1][0], rtol=0, atol=0)
    single = torch_cls(D_MODEL, 5, batch_first=True).double()
    single.load_state_dict({k: v for k, v in stack.state_dict().items() if k.endswith("_l0")})
    h, _ = single(x)
    torch.testing.assert_close(layer(x, mode="recurrent")[0], layer.out_proj(h), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_from_torch_without_bias(name):
    layer_cls, torch_cls = LAYERS[name]
    torch.manual_seed(5)
    module = torch_cls(D_MODEL, D_MODEL, bias=False, batch_first=True)
    layer = layer_cls.from_torch(module)
    assert layer.rnn.bias_ih_l0.abs().sum() == 0 and layer.rnn.bias_hh_l0.abs().sum() == 0
    x = torch.randn(2, 9, D_MODEL)
    torch.testing.assert_close(layer(x)[0], module(x)[0], rtol=1e-6, atol=1e-7)


def test_states_are_the_right_kind():
    assert isinstance(rnnzoo.create("lstm", d_model=4).init_state(2), LSTMState)
    for name in ("elman", "gru"):
        state = rnnzoo.create(name, d_model=4, d_hidden=7).init_state(2)
        assert isinstance(state, HiddenState) and state.h.shape == (2, 7)


def test_conversion_errors():
    with pytest.raises(ValueError, match="bidirectional"):
        LSTM.from_torch(nn.LSTM(4, 4, bidirectional=True))
    with pytest.raises(ValueError, match="proj_size=2"):
        LSTM.from_torch(nn.LSTM(4, 4, proj_size=2))
    with pytest.raises(ValueError, match="nonlinearity='tanh'"):
        Elman.from_torch(nn.RNN(4, 4, nonlinearity="relu"))
    with pytest.raises(TypeError, match="`module` must be a torch.nn.GRU, got LSTM"):
        GRU.from_torch(nn.LSTM(4, 4))
    with pytest.raises(ValueError, match="`d_hidden` must be a positive int"):
        rnnzoo.create("gru", d_model=4, d_hidden=0)
