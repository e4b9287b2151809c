"""sLSTM: the scalar-memory LSTM of xLSTM, with exponential input gates and head-wise recurrence.

Beck, Pöppel, Spanring, Auer, Prudnikova, Kopp, Klambauer, Brandstetter,
Hochreiter (2024), "xLSTM: Extended Long Short-Term Memory"; Pöppel et al. (2024),
"FlashRNN". The recurrence is nonlinear (engine 1), computed by the stabilised
sequential kernel in :mod:`rnnzoo.ops.slstm`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..ops.slstm import FORGET_GATES, slstm, slstm_initial_state, slstm_reference
from ..registry import register
from .base import RecurrentState, SequenceLayer, state_dtype
from .common import head_size

__all__ = ["SLSTM", "SLSTMState"]


@dataclass
class SLSTMState(RecurrentState):
    """Hidden ``h``, stabilised cell ``c`` and normaliser ``n``, stabiliser ``m`` (the log of the scale that
    ``c, n`` are divided by; ``-inf`` in the zero state), each ``(batch, heads, d_head)``."""

    h: Tensor
    c: Tensor
    n: Tensor
    m: Tensor


def forget_bias_init(d_head: int) -> Tensor:
    """xLSTM's "powerlaw_blockdependent" forget-gate bias for a single block: ``-(-5 + 12 (j / (d_head - 1))^0.3)``
    for ``j = 0..d_head-1``, from 5 (long memory) down to -7 (short), the same in every head."""
    return 5.0 - 12.0 * torch.linspace(0.0, 1.0, d_head) ** 0.3


@register("slstm", family="xLSTM", engine="nonlinear", paper="Beck et al. 2024, xLSTM: Extended Long Short-Term Memory")
class SLSTM(SequenceLayer):
    """The sLSTM cell (xLSTM eqs. 8-17), per head of ``d_head = d_hidden / num_heads`` units::

        ĩ, f̃, z̃, õ = W x_t + b + R h_{t-1}          # R block-diagonal: one d_head × 4 d_head block per head
        m_t  = max(log f_t + m_{t-1}, ĩ_t),   log f_t = log σ(f̃_t)  (or f̃_t with forget_gate="exp")
        c_t  = exp(log f_t + m_{t-1} - m_t) c_{t-1} + exp(ĩ_t - m_t) tanh(z̃_t)
        n_t  = exp(log f_t + m_{t-1} - m_t) n_{t-1} + exp(ĩ_t - m_t)
        h_t  = σ(õ_t) ⊙ c_t / n_t
        y_t  = out_proj(h_t)                          # only when d_hidden != d_model

    The input gate is exponential; the forget gate is a sigmoid by default, as in
    the official xLSTM and FlashRNN code (the paper allows ``σ`` or ``exp``;
    ``forget_gate="exp"`` selects the latter). ``W`` is dense (the xLSTM block's
    causal convolution, head-wise input weights, group norm and gated MLP are left
    to the model that stacks this cell). Initialisation as the official code:
    ``R = 0``, gate biases zero except the forget gate's power-law bias
    (:func:`forget_bias_init`); ``W`` as ``nn.Linear``.

    Modes: ``"fused"`` (the fast sequential kernel with a hand-written backward,
    :func:`rnnzoo.ops.slstm.slstm`) and ``"recurrent"`` (the loop under autograd).
    State: :class:`SLSTMState`. ``num_heads`` defaults to 4, ``d_hidden`` to ``d_model``.
    """

    parallel_modes = ("fused",)

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        d_hidden: int | None = None,
        forget_gate: str = "sigmoid",
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        check_int("SLSTM", "num_heads", num_heads)
        self.d_hidden = d_model if d_hidden is None else check_int("SLSTM", "d_hidden", d_hidden)
        if forget_gate not in FORGET_GATES:
            raise ValueError(f"SLSTM: `forget_gate` must be one of {FORGET_GATES}, got {forget_gate!r}")
        self.num_heads, self.forget_gate = num_heads, forget_gate
        self.d_head = head_size("SLSTM", "d_hidden", self.d_hidden, num_heads)
        self.in_proj = nn.Linear(d_model, 4 * self.d_hidden)  # W and b; features ordered (head, gate, unit)
        self.R = nn.Parameter(torch.zeros(num_heads, self.d_head, 4, self.d_head))  # R[h, j, gate, k]: unit j -> k
        self.out_proj = nn.Linear(self.d_hidden, d_model) if self.d_hidden != d_model else nn.Identity()
        with torch.no_grad():
            bias = self.in_proj.bias.view(num_heads, 4, self.d_head)
            bias.zero_()
            bias[:, 1] = forget_bias_init(self.d_head)

    def init_state(self, batch_size: int, device=None, dtype=None) -> SLSTMState:
        kw = self._state_kwargs(device, dtype)
        dtype = state_dtype(kw["dtype"])
        return SLSTMState(*slstm_initial_state(batch_size, self.num_heads, self.d_head, device=kw["device"], dtype=dtype))

    def _forward(self, x: Tensor, state: SLSTMState | None, mode: str) -> tuple[Tensor, SLSTMState]:
        dtype = state_dtype(x.dtype)
        gates = self.in_proj(x).unflatten(-1, (self.num_heads, 4, self.d_head)).to(dtype)
        engine = slstm if mode == "fused" else slstm_reference
        state = None if state is None else tuple(state.tensors().values())
        h, final = engine(gates, self.R.to(dtype), state, self.forget_gate)
        return self.out_proj(h.flatten(2).to(x.dtype)), SLSTMState(*final)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_hidden={self.d_hidden}, num_heads={self.num_heads}, "
            f"forget_gate={self.forget_gate!r}"
        )
