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
from ..registry import register
from .base import EngineLayer, RecurrentState, state_dtype
from .common import head_size
from .engines import SoftmaxScanEngine, SoftmaxScanInputs

__all__ = ["Aaren", "AarenState"]


@dataclass
class AarenState(RecurrentState):
    """The prefix-scan state per head: ``m`` the running max of the scores ``(batch, heads)``, ``u`` the
    softmax denominator ``(batch, heads)`` and ``w`` the numerator ``(batch, heads, d_head)``, both relative
    to ``exp(m)``. No tokens seen is ``(-inf, 0, 0)``."""

    engine_fields = ("m", "u", "w")
    m: Tensor
    u: Tensor
    w: Tensor


@register("aaren", family="attention RNN", paper="Feng et al. 2024, Attention as an RNN")
class Aaren(EngineLayer):
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

    engine = SoftmaxScanEngine()

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

    def engine_inputs(self, x: Tensor, state: AarenState | None = None) -> tuple[SoftmaxScanInputs, None]:
        """Scores ``s = k · q / sqrt(d_head)`` ``(batch, time, heads)`` against the learned query and values
        ``v`` ``(batch, time, heads, d_head)``, in the state dtype."""
        dtype = state_dtype(x.dtype)
        k, v = (u.unflatten(-1, (self.num_heads, self.head_dim)).to(dtype) for u in self.kv_proj(x).chunk(2, -1))
        return SoftmaxScanInputs((k * self.query.to(dtype)).sum(-1) * self.head_dim**-0.5, v), None

    def read_output(self, x: Tensor, o: Tensor, final: tuple, carry: None) -> tuple[Tensor, AarenState]:
        return self.out_proj(o.flatten(-2).to(x.dtype)), AarenState(*final)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_heads={self.num_heads}, head_dim={self.head_dim}"
