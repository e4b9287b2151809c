"""The classic recurrent cells: Elman RNN, LSTM and GRU, on PyTorch's fused kernels.

Elman (1990), "Finding Structure in Time"; Hochreiter & Schmidhuber (1997), "Long
Short-Term Memory" (with the forget gate of Gers et al. 2000); Cho et al. (2014),
"Learning Phrase Representations using RNN Encoder-Decoder for Statistical Machine
Translation". Equations and weight layout are ``torch.nn.RNN`` / ``nn.LSTM`` /
``nn.GRU``'s (engine 1: a nonlinear recurrence, sequential by nature).

Each layer owns the parameters of a one-layer, unidirectional torch module as ``rnn``
(torch's names and initialisation: ``rnn.weight_ih_l0`` ...). Mode ``"fused"`` runs a
sequence through torch's fused kernel for it (oneDNN on CPU, cuDNN on GPU), so at
``d_hidden == d_model`` a layer does exactly the work of the bare torch module;
``"recurrent"`` (and ``step``) is a plain per-step loop written from the equations
with the same weights. With ``d_hidden != d_model`` a linear map takes ``h`` back to
``d_model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ..registry import register
from .base import RecurrentState, SequenceLayer, state_dtype

__all__ = ["GRU", "LSTM", "Elman", "HiddenState", "LSTMState"]

PAPERS = {
    "elman": "Elman 1990, Finding Structure in Time",
    "lstm": "Hochreiter & Schmidhuber 1997, Long Short-Term Memory",
    "gru": "Cho et al. 2014, Learning Phrase Representations using RNN Encoder-Decoder",
}


@dataclass
class HiddenState(RecurrentState):
    """State of an Elman RNN or GRU: ``h`` of shape ``(batch, d_hidden)``."""

    h: Tensor


@dataclass
class LSTMState(RecurrentState):
    """State of an LSTM: hidden ``h`` and cell ``c``, each ``(batch, d_hidden)``."""

    h: Tensor
    c: Tensor


@dataclass
class _Weights:
    """One layer's weights in torch's layout: ``w_ih`` ``(gates·d_hidden, d_model)``, ``w_hh``
    ``(gates·d_hidden, d_hidden)``, biases ``(gates·d_hidden,)``."""

    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor
    b_hh: Tensor


class _RNNWeights(nn.Module):
    """A one-layer torch RNN module's parameters under its names, without the module: the layer calls the
    module's fused kernel itself (``torch._VF``), which ``torch.compile`` traces where it refuses the module."""

    def __init__(self, module: nn.RNNBase) -> None:
        super().__init__()
        for name, parameter in module.named_parameters():
            self.register_parameter(name, parameter)

    def flat(self) -> list[Tensor]:
        """The weights in the kernel's order."""
        return [self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0]


class _TorchRNN(SequenceLayer):
    """Shared shell: the owned torch module, the per-step loop, and conversion to and from torch modules."""

    parallel_modes = ("fused",)
    torch_cls: ClassVar[type[nn.RNNBase]]
    kernel: ClassVar  # torch's fused kernel for torch_cls, e.g. torch._VF.lstm
    state_cls: ClassVar[type[RecurrentState]]

    def __init__(self, d_model: int, d_hidden: int | None = None, mode: str = "auto") -> None:
        super().__init__(d_model, mode)
        self.d_hidden = d_model if d_hidden is None else check_int(type(self).__name__, "d_hidden", d_hidden)
        self.rnn = _RNNWeights(self.torch_cls(d_model, self.d_hidden, batch_first=True))
        self.out_proj = nn.Linear(self.d_hidden, d_model) if self.d_hidden != d_model else nn.Identity()

    def init_state(self, batch_size: int, device=None, dtype=None) -> RecurrentState:
        kw = self._state_kwargs(device, dtype)
        zero = dict(device=kw["device"], dtype=state_dtype(kw["dtype"]))
        return self.state_cls(*(torch.zeros(batch_size, self.d_hidden, **zero) for _ in self.state_cls.__dataclass_fields__))

    def _forward(self, x: Tensor, state: RecurrentState | None, mode: str) -> tuple[Tensor, RecurrentState]:
        y, state = (self._fused if mode == "fused" else self._recurrent)(x, state)
        return self.out_proj(y), state

    def _fused(self, x: Tensor, state: RecurrentState | None) -> tuple[Tensor, RecurrentState]:
        """The whole sequence through torch's fused kernel; the state enters and leaves in the state dtype."""
        state = self.init_state(x.shape[0], x.device, x.dtype) if state is None else state
        # torch's layout: (num_layers = 1, batch, d_hidden), a tuple (h, c) for the LSTM
        hx = tuple(t.unsqueeze(0).to(x.dtype) for t in state.tensors().values())
        weights = [w.to(x.dtype) for w in self.rnn.flat()]
        # (input, hx, weights, has_biases, num_layers, dropout, train, bidirectional, batch_first), in x's dtype:
        # autocast would recast it to bf16, which oneDNN's fused LSTM does not take on every CPU
        with torch.autocast(x.device.type, enabled=False):
            y, *final = type(self).kernel(
                x, hx if len(hx) > 1 else hx[0], weights, True, 1, 0.0, self.training, False, True
            )
        return y, self.state_cls(*(t.squeeze(0).to(state_dtype(x.dtype)) for t in final))

    def _recurrent(self, x: Tensor, state: RecurrentState | None) -> tuple[Tensor, RecurrentState]:
        """The cell applied token by token, in the state dtype (float32 for half-precision inputs)."""
        dtype = state_dtype(x.dtype)
        state = self.init_state(x.shape[0], x.device, x.dtype) if state is None else state
        w = self._weights(dtype)
        gx = F.linear(x.to(dtype), w.w_ih, w.b_ih)  # the input side of every gate, for all steps at once
        hs = []
        for gx_t in gx.unbind(1):
            state = self._cell(gx_t, state, w)
            hs.append(state.h)
        return torch.stack(hs, 1).to(x.dtype), state

    def _cell(self, gx_t: Tensor, state: RecurrentState, w: _Weights) -> RecurrentState:
        """One step from ``gx_t = W_ih x_t + b_ih``."""
        raise NotImplementedError

    def _weights(self, dtype: torch.dtype) -> _Weights:
        rnn = self.rnn
        return _Weights(*(p.to(dtype) for p in (rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)))

    # -- conversion ---------------------------------------------------------------

    @classmethod
    def from_torch(cls, module: nn.RNNBase) -> _TorchRNN:
        """A layer with the weights of ``module``'s first layer (same device and dtype).

        For a multi-layer module only layer 0 is taken: the layer's outputs and final
        state are the module's layer-0 ones (``h_n[0]``, ``c_n[0]``). ``batch_first``
        does not matter (layers are always batch-first). A module without biases
        gets zero biases. If ``hidden_size != input_size`` the layer's output is
        ``out_proj(h)`` with a freshly initialised ``out_proj``; its state (``h``,
        the module's output) still matches. Bidirectional modules, and LSTMs with
        ``proj_size``, have no equivalent layer and raise a ``ValueError``.
        """
        where = f"{cls.__name__}.from_torch"
        if type(module) is not cls.torch_cls:
            want = f"torch.nn.{cls.torch_cls.__name__}"
            raise TypeError(f"{where}: `module` must be a {want}, got {type(module).__name__}")
        if module.bidirectional:
            raise ValueError(f"{where}: `module` is bidirectional; a layer runs forward in time only")
        cls._check_torch_options(where, module)
        weight = module.weight_ih_l0
        layer = cls(module.input_size, d_hidden=module.hidden_size).to(weight.device, weight.dtype)
        with torch.no_grad():
            for name, p in layer.rnn.named_parameters():
                p.copy_(getattr(module, name) if module.bias or "weight" in name else torch.zeros_like(p))
        return layer

    @classmethod
    def _check_torch_options(cls, where: str, module: nn.RNNBase) -> None:
        """Reject module options the layer cannot represent (beyond bidirectionality)."""

    def to_torch(self, batch_first: bool = True) -> nn.RNNBase:
        """A new one-layer torch module with this layer's recurrent weights (same device and dtype).

        It computes ``h`` for every step; when ``d_hidden != d_model`` the layer's
        output is ``out_proj(h)``, and ``out_proj`` is not part of the module.
        """
        weight = self.rnn.weight_ih_l0
        kw = dict(batch_first=batch_first, device=weight.device, dtype=weight.dtype)
        module = self.torch_cls(self.d_model, self.d_hidden, **kw)
        module.load_state_dict(self.rnn.state_dict())
        return module

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_hidden={self.d_hidden}"


@register("elman", family="classic RNN", engine="nonlinear", paper=PAPERS["elman"])
class Elman(_TorchRNN):
    """Elman RNN: ``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`` (``torch.nn.RNN``, tanh).

    Mode ``"fused"`` runs ``nn.RNN``; state :class:`HiddenState` ``(batch, d_hidden)``.
    ``from_torch`` accepts ``nn.RNN`` with ``nonlinearity="tanh"``.
    """

    torch_cls = nn.RNN
    kernel = torch._VF.rnn_tanh
    state_cls = HiddenState

    @classmethod
    def _check_torch_options(cls, where: str, module: nn.RNNBase) -> None:
        if module.nonlinearity != "tanh":
            raise ValueError(f"{where}: `module` must use nonlinearity='tanh', got {module.nonlinearity!r}")

    def _cell(self, gx_t: Tensor, state: HiddenState, w: _Weights) -> HiddenState:
        return HiddenState(torch.tanh(gx_t + F.linear(state.h, w.w_hh, w.b_hh)))


@register("lstm", family="classic RNN", engine="nonlinear", paper=PAPERS["lstm"])
class LSTM(_TorchRNN):
    """LSTM as ``torch.nn.LSTM``, gates in torch's order (i, f, g, o)::

        i, f, g, o = σ, σ, tanh, σ of (W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
        c_t = f ⊙ c_{t-1} + i ⊙ g,      h_t = o ⊙ tanh(c_t)

    Mode ``"fused"`` runs ``nn.LSTM``; state :class:`LSTMState` ``(h, c)``, each ``(batch, d_hidden)``.
    """

    torch_cls = nn.LSTM
    kernel = torch._VF.lstm
    state_cls = LSTMState

    @classmethod
    def _check_torch_options(cls, where: str, module: nn.RNNBase) -> None:
        if module.proj_size:
            raise ValueError(f"{where}: `module` has proj_size={module.proj_size}; only proj_size=0 is supported")

    def _cell(self, gx_t: Tensor, state: LSTMState, w: _Weights) -> LSTMState:
        i, f, g, o = (gx_t + F.linear(state.h, w.w_hh, w.b_hh)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * state.c + torch.sigmoid(i) * torch.tanh(g)
        return LSTMState(torch.sigmoid(o) * torch.tanh(c), c)


@register("gru", family="classic RNN", engine="nonlinear", paper=PAPERS["gru"])
class GRU(_TorchRNN):
    """GRU as ``torch.nn.GRU``, gates in torch's order (r, z, n)::

        r, z = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr), σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
        n    = tanh(W_in x_t + b_in + r ⊙ (W_hn h_{t-1} + b_hn))
        h_t  = (1 - z) ⊙ n + z ⊙ h_{t-1}

    Mode ``"fused"`` runs ``nn.GRU``; state :class:`HiddenState` ``(batch, d_hidden)``.
    """

    torch_cls = nn.GRU
    kernel = torch._VF.gru
    state_cls = HiddenState

    def _cell(self, gx_t: Tensor, state: HiddenState, w: _Weights) -> HiddenState:
        x_r, x_z, x_n = gx_t.chunk(3, dim=-1)
        h_r, h_z, h_n = F.linear(state.h, w.w_hh, w.b_hh).chunk(3, dim=-1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return HiddenState((1 - z) * n + z * state.h)
