"""Linear attention: causal attention with a positive feature map in place of the softmax is an RNN.

Katharopoulos, Vyas, Pappas, Fleuret (2020), "Transformers are RNNs: Fast
Autoregressive Transformers with Linear Attention". Writing the similarity as
``φ(q)·φ(k)`` lets the sum over past keys be kept in a matrix state: engine 3
with no decay (α = 1). The head helpers here are shared by the engine-3 layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ..ops.gated_linear_attention import gla_operator
from ..registry import register
from .base import MatrixState, SequenceLayer, matrix_recurrence, state_dtype

__all__ = ["LinearAttention"]

NORMALIZER_EPS = 1e-6  # added to the normaliser φ(q_t)·z_t, as in the reference code (fast-transformers)


def head_size(owner: str, name: str, total: int, num_heads: int) -> int:
    """``total // num_heads``; a ``ValueError`` naming ``num_heads`` and ``name`` unless it divides ``total``."""
    if total < 1 or total % num_heads:
        raise ValueError(f"{owner}: `num_heads`={num_heads} must divide {name}={total}")
    return total // num_heads


def split_heads(t: Tensor, num_heads: int, dtype: torch.dtype) -> Tensor:
    """``(batch, time, heads·d)`` -> ``(batch, heads, time, d)`` (the engine's layout) in ``dtype``."""
    return t.unflatten(-1, (num_heads, -1)).transpose(1, 2).to(dtype)


def merge_heads(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``(batch, heads, time, d)`` -> ``(batch, time, heads·d)`` in ``dtype``."""
    return t.transpose(1, 2).flatten(2).to(dtype)


@register(
    "linear_attention",
    family="linear attention",
    engine="gated_linear_attention",
    paper="Katharopoulos et al. 2020, Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention",
)
class LinearAttention(SequenceLayer):
    """Causal linear attention with ``φ(x) = elu(x) + 1``, per head::

        q_t, k_t, v_t = φ(W_q x_t), φ(W_k x_t), W_v x_t
        S_t = S_{t-1} + k_t v_t^T,      z_t = z_{t-1} + k_t
        o_t = S_t^T q_t / (q_t · z_t + ε)          (o_t = S_t^T q_t if normalize=False)
        y_t = W_o [o_t of every head]

    ``d_k = d_v = d_model / num_heads``. The normaliser rides the same
    recurrence: ``v_t`` gets a column of ones appended, so the state's last
    column is ``z_t``. ``φ > 0`` keeps the denominator positive; ``ε = 1e-6`` as
    in the reference code. The four projections have biases (as the reference)
    and PyTorch's default initialisation. For half-precision parameters the
    recurrence and the state run in float32.

    State: ``MatrixState(S)``, ``S`` of shape ``(batch, heads, d_k, d_v + 1)``
    (``z`` in the last column) with ``normalize``, else ``(batch, heads, d_k, d_v)``.
    """

    parallel_modes = ("chunk",)

    def __init__(self, d_model: int, num_heads: int = 4, normalize: bool = True, mode: str = "auto") -> None:
        super().__init__(d_model, mode)
        self.num_heads = check_int("LinearAttention", "num_heads", num_heads)
        self.head_dim = head_size("LinearAttention", "d_model", d_model, num_heads)
        self.normalize = normalize
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def init_state(self, batch_size: int, device=None, dtype=None) -> MatrixState:
        kw = self._state_kwargs(device, dtype)
        shape = (batch_size, self.num_heads, self.head_dim, self.head_dim + self.normalize)
        return MatrixState(torch.zeros(shape, device=kw["device"], dtype=state_dtype(kw["dtype"])))

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(φ(q), φ(k), v)``, each ``(batch, heads, time, head_dim)`` in the state dtype."""
        dtype = state_dtype(x.dtype)
        q, k, v = (split_heads(proj(x), self.num_heads, dtype) for proj in (self.q_proj, self.k_proj, self.v_proj))
        return F.elu(q) + 1, F.elu(k) + 1, v

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, S0: Tensor | None, mode: str) -> tuple[Tensor, Tensor]:
        """``(o, S)``: the (normalised) outputs ``(batch, heads, time, d_v)`` and the final state."""
        if not self.normalize:
            return matrix_recurrence(q, k, v, None, S0, mode)
        out, S = matrix_recurrence(q, k, torch.cat([v, torch.ones_like(v[..., :1])], -1), None, S0, mode)
        return out[..., :-1] / (out[..., -1:] + NORMALIZER_EPS), S

    def _forward(self, x: Tensor, state: MatrixState | None, mode: str) -> tuple[Tensor, MatrixState]:
        o, S = self._attend(*self._qkv(x), None if state is None else state.S, mode)
        return self.out_proj(merge_heads(o, x.dtype)), MatrixState(S)

    def _materialize(self, x: Tensor) -> Tensor:
        """``M[b, h, t, s] = φ(q_t)·φ(k_s)`` for ``s <= t``, each row divided by its sum + ε
        (the sum is ``φ(q_t)·z_t``) with ``normalize``. Groups are the heads."""
        q, k, _ = self._qkv(x)
        M = gla_operator(q, k)
        return M / (M.sum(-1, keepdim=True) + NORMALIZER_EPS) if self.normalize else M

    def _transition_eigenvalues(self, x: Tensor) -> Tensor:
        """``α = 1`` (the transition is the identity) per head, ``(batch, T, heads)``."""
        return torch.ones(*x.shape[:2], self.num_heads, dtype=state_dtype(x.dtype), device=x.device)

    def _mixer_io(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(v, o)`` per head, before the output projection."""
        q, k, v = self._qkv(x)
        return v, self._attend(q, k, v, None, self.parallel_modes[0])[0]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_heads={self.num_heads}, normalize={self.normalize}"
