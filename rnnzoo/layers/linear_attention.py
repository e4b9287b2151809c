"""Linear attention: causal attention with a positive feature map in place of the softmax is an RNN.

Katharopoulos, Vyas, Pappas, Fleuret (2020), "Transformers are RNNs: Fast
Autoregressive Transformers with Linear Attention". Writing the similarity as
``φ(q)·φ(k)`` lets the sum over past keys be kept in a matrix state: engine 3
with no decay (α = 1). The head helpers here are shared by the engine-3 layers.

The Hedgehog feature map (``feature_map="hedgehog"``): Zhang, Bhatia, Kumbong,
Ré (2024), "The Hedgehog & the Porcupine: Expressive Linear Attentions with
Softmax Mimicry".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ..registry import register
from .base import EngineLayer, MatrixState, state_dtype
from .common import head_size, merge_heads, split_heads
from .engines import MatrixEngine, MatrixInputs

__all__ = ["LinearAttention"]

NORMALIZER_EPS = 1e-6  # added to the normaliser φ(q_t)·z_t, as in the reference code (fast-transformers)
FEATURE_MAPS = ("elu", "hedgehog")


@register(
    "linear_attention",
    family="linear attention",
    paper="Katharopoulos et al. 2020, Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention",
)
class LinearAttention(EngineLayer):
    """Causal linear attention with a feature map ``φ``, per head::

        q_t, k_t, v_t = φ(W_q x_t), φ(W_k x_t), W_v x_t
        S_t = S_{t-1} + k_t v_t^T,      z_t = z_{t-1} + k_t
        o_t = S_t^T q_t / (q_t · z_t + ε)          (o_t = S_t^T q_t if normalize=False)
        y_t = W_o [o_t of every head]

    ``feature_map`` chooses ``φ`` of each head's ``u`` (``head_dim = d_model / num_heads`` wide):

    * ``"elu"`` (default): ``φ(u) = elu(u) + 1``, ``d_k = head_dim``;
    * ``"hedgehog"``: ``φ(u) = [softmax(W u + b), softmax(-(W u + b))]``, ``d_k = 2 head_dim``, with a learned
      ``W`` (``head_dim × head_dim``) and ``b`` per head, the same map for queries and keys, initialised to
      the identity and zero (Hedgehog's map; the paper's distillation loss, which trains it to mimic
      softmax attention, is left to the user).

    ``d_v = head_dim``. The normaliser rides the same recurrence: ``v_t`` gets a
    column of ones appended, so the state's last column is ``z_t``. ``φ > 0``
    keeps the denominator positive; ``ε = 1e-6`` as in the reference code. The
    four projections have biases (as the reference) and PyTorch's default
    initialisation. For half-precision parameters the feature map, the
    recurrence and the state run in float32.

    State: ``MatrixState(S)``, ``S`` of shape ``(batch, heads, d_k, d_v + 1)``
    (``z`` in the last column) with ``normalize``, else ``(batch, heads, d_k, d_v)``.
    """

    engine = MatrixEngine()

    def __init__(
        self, d_model: int, num_heads: int = 4, normalize: bool = True, feature_map: str = "elu", mode: str = "auto"
    ) -> None:
        super().__init__(d_model, mode)
        self.num_heads = check_int("LinearAttention", "num_heads", num_heads)
        self.head_dim = head_size("LinearAttention", "d_model", d_model, num_heads)
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"LinearAttention: `feature_map` must be one of {FEATURE_MAPS}, got {feature_map!r}")
        self.normalize, self.feature_map = normalize, feature_map
        self.d_k = 2 * self.head_dim if feature_map == "hedgehog" else self.head_dim
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        if feature_map == "hedgehog":
            self.feature_weight = nn.Parameter(torch.eye(self.head_dim).repeat(num_heads, 1, 1))  # (H, out, in)
            self.feature_bias = nn.Parameter(torch.zeros(num_heads, 1, self.head_dim))

    def init_state(self, batch_size: int, device=None, dtype=None) -> MatrixState:
        kw = self._state_kwargs(device, dtype)
        shape = (batch_size, self.num_heads, self.d_k, self.head_dim + self.normalize)
        return MatrixState(torch.zeros(shape, device=kw["device"], dtype=state_dtype(kw["dtype"])))

    def features(self, u: Tensor) -> Tensor:
        """``φ(u)`` for ``u`` ``(batch, heads, time, head_dim)`` -> ``(batch, heads, time, d_k)``."""
        if self.feature_map == "elu":
            return F.elu(u) + 1
        u = u @ self.feature_weight.to(u.dtype).transpose(-1, -2) + self.feature_bias.to(u.dtype)
        return torch.cat([torch.softmax(u, -1), torch.softmax(-u, -1)], -1)

    def engine_inputs(self, x: Tensor, state: MatrixState | None = None) -> tuple[MatrixInputs, None]:
        """``(φ(q), φ(k), v)``, ``(batch, heads, time, d_k or head_dim)`` in the state dtype, no decay; normalised
        by ``φ(q_t)·z_t + ε`` with ``normalize``."""
        dtype = state_dtype(x.dtype)
        q, k, v = (split_heads(proj(x), self.num_heads, dtype) for proj in (self.q_proj, self.k_proj, self.v_proj))
        eps = NORMALIZER_EPS if self.normalize else None
        return MatrixInputs(self.features(q), self.features(k), v, normalizer_eps=eps), None

    def read_output(self, x: Tensor, o: Tensor, S: Tensor, carry: None) -> tuple[Tensor, MatrixState]:
        return self.out_proj(merge_heads(o, x.dtype)), MatrixState(S)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_heads={self.num_heads}, normalize={self.normalize}, "
            f"feature_map={self.feature_map!r}"
        )
