"""Hawk: the recurrent block of Griffin, built on the RG-LRU.

De, Smith, Fernando, Botev, Cristian-Muraru, Gu, Haroun, Berrada, Chen,
Srinivasan, Desjardins, Doucet, Budden, Teh, Pascanu, De Freitas, Gulcehre
(2024), "Griffin: Mixing Gated Linear Recurrences with Local Attention for
Efficient Language Models". The Real-Gated Linear Recurrent Unit is a diagonal
linear recurrence (engine 2) with input-dependent decay, trained with the scan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ..registry import register
from .base import EngineLayer, RecurrentState, state_dtype
from .conv import CausalConv1d
from .engines import DiagonalEngine, DiagonalInputs

__all__ = ["Hawk", "HawkState"]

MAX_SQRT_GRADIENT = 1000.0  # cap on d sqrt(x) / dx, as in the reference


class _SqrtBoundedGrad(torch.autograd.Function):
    """``sqrt(x)`` whose derivative ``1 / (2 sqrt(x))`` is capped at ``MAX_SQRT_GRADIENT``.

    The normaliser ``sqrt(1 - a_t²)`` has an infinite derivative where
    ``a_t -> 1`` (``r_t -> 0``); the reference caps it to avoid NaNs in training.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = torch.sqrt(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return grad / (2 * y).clamp(min=1 / MAX_SQRT_GRADIENT)


@dataclass
class HawkState(RecurrentState):
    """``conv``: the last ``d_conv - 1`` conv inputs ``(batch, d_rnn, d_conv - 1)``;
    ``h``: the RG-LRU state ``(batch, d_rnn)``."""

    engine_fields = ("h",)
    conv: Tensor
    h: Tensor


@register(
    "hawk",
    family="gated linear RNN",
    paper="De et al. 2024, Griffin: Mixing Gated Linear Recurrences with Local Attention for Efficient Language Models",
    negative_eigenvalues=True,
)
class Hawk(EngineLayer):
    """Griffin's recurrent block (the temporal-mixing layer of Hawk)::

        g   = GeLU(gate_proj(x))                     # branch 1, d_model -> d_rnn
        u   = CausalConv1d(in_proj(x))               # branch 2, width d_conv
        out = out_proj(RG-LRU(u) ⊙ g)                # d_rnn -> d_model

    RG-LRU, per channel, with ``a = σ(Λ)`` and ``c = 8``::

        r_t = σ(W_a u_t + b_a),   i_t = σ(W_x u_t + b_x)     # W_a, W_x block-diagonal (num_heads blocks)
        log a_t = c r_t log a
        h_t = a_t ⊙ h_{t-1} + sqrt(1 - a_t²) ⊙ (i_t ⊙ u_t)

    ``sqrt(1 - a_t²)`` is computed as ``sqrt(-expm1(2 log a_t))`` (exact near
    ``a_t = 1``), with its derivative capped at 1000 as in the reference code.

    Choices and departures from the reference (recurrentgemma):

    * ``Λ`` is initialised so that ``a^c`` is uniform in ``[0.9, 0.999]``, as the
      paper states; the reference code draws ``a`` itself in ``[0.9, 0.999]``
      (uniform in ``a²``), so its ``a^c`` starts as low as ``0.9^8 ≈ 0.43``.
    * No reset at document starts: the reference zeroes ``h`` and skips the
      normaliser where its ``segment_pos == 0``. A stateful layer whose output
      must not depend on where a sequence is split cannot know the absolute
      position; pass ``state=None`` (or ``init_state``) to start a document.
    * GeLU is the tanh approximation (as in the reference); the linear layers
      and the conv keep PyTorch's default initialisation; the gate weights are
      normal with variance ``1 / block width`` and zero bias, as in the reference.
    * ``d_rnn`` defaults to ``4/3 · d_model`` rounded up to a multiple of
      ``num_heads`` (the paper's RNN width); ``num_heads`` defaults to 4 (the
      gates mix channels within 4 blocks; the reference uses one block per
      attention head, e.g. 10 at d_model = 2560).

    With ``negative_eigenvalues=True``, ``a_t -> 2 a_t - 1 ∈ (-1, 1)`` (Grazzi et
    al. 2024) and the normaliser is ``sqrt(1 - (2 a_t - 1)²) = 2 sqrt(a_t (1 - a_t))``.
    For half-precision parameters the gates, the scan and the state run in float32.

    State: :class:`HawkState` (``conv`` ``(batch, d_rnn, d_conv - 1)``, ``h`` ``(batch, d_rnn)``).
    """

    engine = DiagonalEngine()
    c = 8.0

    def __init__(
        self,
        d_model: int,
        d_rnn: int | None = None,
        num_heads: int = 4,
        d_conv: int = 4,
        negative_eigenvalues: bool = False,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        check_int("Hawk", "num_heads", num_heads)
        check_int("Hawk", "d_conv", d_conv)
        if d_rnn is None:
            d_rnn = -(-4 * d_model // (3 * num_heads)) * num_heads
        elif check_int("Hawk", "d_rnn", d_rnn) % num_heads:
            raise ValueError(f"Hawk: `d_rnn` must be a positive multiple of num_heads={num_heads}, got {d_rnn!r}")
        self.d_rnn, self.num_heads, self.d_conv = d_rnn, num_heads, d_conv
        self.negative_eigenvalues = negative_eigenvalues
        block = d_rnn // num_heads

        self.gate_proj = nn.Linear(d_model, d_rnn)
        self.in_proj = nn.Linear(d_model, d_rnn)
        self.conv = CausalConv1d(d_rnn, d_conv, bias=True)
        # W_a and W_x side by side per block: (num_heads, block, 2 * block)
        self.gate_weight = nn.Parameter(torch.randn(num_heads, block, 2 * block) / math.sqrt(block))
        self.gate_bias = nn.Parameter(torch.zeros(num_heads, 2 * block))
        log_a = torch.empty(d_rnn).uniform_(0.9, 0.999).log() / self.c  # a^c ~ U[0.9, 0.999]
        self.Lambda = nn.Parameter(log_a - torch.log(-torch.expm1(log_a)))  # logit(a)
        self.out_proj = nn.Linear(d_rnn, d_model)

    def init_state(self, batch_size: int, device=None, dtype=None) -> HawkState:
        kw = self._state_kwargs(device, dtype)
        h = torch.zeros(batch_size, self.d_rnn, device=kw["device"], dtype=state_dtype(kw["dtype"]))
        return HawkState(self.conv.init_state(batch_size, **kw), h)

    def _transition(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """``(a_t, w_t)`` of ``h_t = a_t ⊙ h_{t-1} + w_t ⊙ u_t`` from the conv output ``u`` ``(B, T, d_rnn)``.

        ``w_t = sqrt(1 - a_t²) ⊙ i_t``; both ``(B, T, d_rnn)`` in the state dtype.
        """
        dtype = state_dtype(u.dtype)
        gates = torch.einsum("bthi,hij->bthj", u.unflatten(-1, (self.num_heads, -1)), self.gate_weight)
        r, i = torch.sigmoid((gates + self.gate_bias).to(dtype)).chunk(2, dim=-1)
        r, i = r.flatten(-2), i.flatten(-2)
        log_a = self.c * r * F.logsigmoid(self.Lambda.to(dtype))
        a = torch.exp(log_a)
        if self.negative_eigenvalues:
            one_minus_a2 = -4 * a * torch.expm1(log_a)  # 1 - (2a - 1)² = 4a(1 - a)
            a = 2 * a - 1
        else:
            one_minus_a2 = -torch.expm1(2 * log_a)
        return a, _SqrtBoundedGrad.apply(one_minus_a2) * i

    def engine_inputs(self, x: Tensor, state: HawkState | None = None) -> tuple[DiagonalInputs, tuple[Tensor, Tensor]]:
        """The RG-LRU over the conv output ``u = CausalConv1d(in_proj(x))``: ``a_t``, ``w_t`` as :meth:`_transition`,
        ``v_t = u_t``; carries the GeLU gate and the new conv state."""
        u, conv = self.conv(self.in_proj(x), None if state is None else state.conv)
        a, w = self._transition(u)
        return DiagonalInputs(a, u.to(w.dtype), w), (F.gelu(self.gate_proj(x), approximate="tanh"), conv)

    def read_output(self, x: Tensor, h: Tensor, h_last: Tensor, carry: tuple[Tensor, Tensor]) -> tuple[Tensor, HawkState]:
        gate, conv = carry
        return self.out_proj(h.to(x.dtype) * gate), HawkState(conv, h_last)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_rnn={self.d_rnn}, num_heads={self.num_heads}, d_conv={self.d_conv}, "
            f"negative_eigenvalues={self.negative_eigenvalues}"
        )
