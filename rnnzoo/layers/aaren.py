"""Aaren: attention with a learned query per head, computed as an RNN by a parallel prefix scan.

Feng, Tung, Hajimirsadeghi, Ahmed, Bengio, Mori (2024), "Attention as an RNN".
With a query that does not depend on the input, causal softmax attention
keeps a constant-size state (running max, denominator, numerator): trained in
parallel by a prefix scan, updated in O(1) per token. The engine is
:mod:`rnnzoo.ops.softmax_scan`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..ops.softmax_scan import softmax_scan, softmax_scan_operator, softmax_scan_reference
from ..registry import register
from .base import RecurrentState, SequenceLayer, state_dtype
from .linear_attention import head_size

__all__ = ["Aaren", "AarenState"]


@dataclass
class AarenState(RecurrentState):
    """The prefix-scan state per head: ``m`` the running max of the scores ``(batch, heads)``, ``u`` the
    softmax denominator ``(batch, heads)`` and ``w`` the numerator ``(batch, heads, d_head)``, both relative
    to ``exp(m)``. No tokens seen is ``(-inf, 0, 0)``."""

    m: Tensor
    u: Tensor
    w: Tensor


@register("aaren", family="attention RNN", engine="softmax_scan", paper="Feng et al. 2024, Attention as an RNN")
class Aaren(SequenceLayer):
    """Aaren's token mixer, for head ``h`` with its learned query ``q_h`` ``(d_head)``::

        k_t, v_t = W_k x_t,  W_v x_t                         (split into heads)
        s_t = q_h · k_t / sqrt(d_head)
        o_t = Σ_{i<=t} softmax_i(s) v_i  = w_t / u_t           (the (m, u, w) prefix scan)
        y_t = W_o [o_t of every head]

    The paper's Aaren is single-query attention whose query token ``q`` is a
    parameter learned by backpropagation, not computed from the input; its
    many-to-many output is the prefix scan of :mod:`rnnzoo.ops.softmax_scan`.
    The paper stacks Aarens as Transformers stack attention (residual
    connections, layer norms and feed-forward blocks around each module); as
    every rnnzoo layer, this is the token mixer alone, with the multi-head
    projections of the Transformer's attention (no biases, PyTorch's default
    initialisation; the queries ``N(0, 1)`` as a learned token embedding). No
    positional encoding: as in the paper, order enters only through causality.

    Modes: ``"scan"`` (parallel) and ``"recurrent"`` (the RNN cell, as
    :meth:`step`, O(1) per token). For half-precision parameters the scan runs
    in float32. State: :class:`AarenState`.
    """

    parallel_modes = ("scan",)

    def __init__(self, d_model: int, num_heads: int = 4, mode: str = "auto") -> None:
        super().__init__(d_model, mode)
        self.num_heads = check_int("Aaren", "num_heads", num_heads)
        self.head_dim = head_size("Aaren", "d_model", d_model, num_heads)
        self.query = nn.Parameter(torch.randn(self.num_heads, self.head_dim))
        self.kv_proj = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch_size: int, device=None, dtype=None) -> AarenState:
        kw = self._state_kwargs(device, dtype)
        kw["dtype"] = state_dtype(kw["dtype"])
        return AarenState(
            torch.full((batch_size, self.num_heads), float("-inf"), **kw),
            torch.zeros(batch_size, self.num_heads, **kw),
            torch.zeros(batch_size, self.num_heads, self.head_dim, **kw),
        )

    def _scores_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``s`` ``(batch, time, heads)`` and ``v`` ``(batch, time, heads, d_head)`` in the state dtype."""
        dtype = state_dtype(x.dtype)
        k, v = (u.unflatten(-1, (self.num_heads, self.head_dim)).to(dtype) for u in self.kv_proj(x).chunk(2, -1))
        return (k * self.query.to(dtype)).sum(-1) * self.head_dim**-0.5, v

    def _mix(self, x: Tensor, state: AarenState | None, mode: str) -> tuple[Tensor, AarenState]:
        """Per-head outputs ``(batch, time, heads, d_head)`` and the state after ``x``."""
        scan = softmax_scan if mode == "scan" else softmax_scan_reference
        o, (m, u, w) = scan(*self._scores_values(x), None if state is None else (state.m, state.u, state.w))
        return o, AarenState(m, u, w)

    def _forward(self, x: Tensor, state: AarenState | None, mode: str) -> tuple[Tensor, AarenState]:
        o, state = self._mix(x, state, mode)
        return self.out_proj(o.flatten(-2).to(x.dtype)), state

    def _materialize(self, x: Tensor) -> Tensor:
        """``M[b, h, t, i] = softmax_{i<=t}(s)`` ``= exp(s_i) / Σ_{j<=t} exp(s_j)`` for ``i <= t``: the attention
        weights of each head's query. Groups are the heads."""
        return softmax_scan_operator(self._scores_values(x)[0])

    def _mixer_io(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(v, o)`` per head ``(batch, heads, time, d_head)``, before the output projection."""
        v = self._scores_values(x)[1]
        return v.transpose(1, 2), self._mix(x, None, self.parallel_modes[0])[0].transpose(1, 2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_heads={self.num_heads}, head_dim={self.head_dim}"
