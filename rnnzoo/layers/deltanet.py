"""DeltaNet, Gated DeltaNet and DeltaProduct: the delta rule (engine 4) as token mixers.

* DeltaNet: Schlag, Irie, Schmidhuber (2021), "Linear Transformers Are Secretly
  Fast Weight Programmers"; Yang, Wang, Zhang, Shen, Kim (2024), "Parallelizing
  Linear Transformers with the Delta Rule over Sequence Length".
* Gated DeltaNet: Yang, Kautz, Hatamizadeh (2024), "Gated Delta Networks:
  Improving Mamba2 with Delta Rule".
* DeltaProduct: Siems, Carstensen, Zela, Hutter, Pontil, Grazzi (2025),
  "DeltaProduct: Improving State-Tracking in Linear RNNs via Householder Products".

One shell, as flash-linear-attention's ``fla/layers/delta_net.py``,
``gated_deltanet.py`` and ``gated_deltaproduct.py``; the three differ in the
decay, the output gate and the number of Householder steps per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ..registry import register
from .base import EngineLayer, RecurrentState, state_dtype
from .common import dt_bias_init, key_value_dims, l2_normalize, merge_heads, norm_gate, split_heads
from .conv import CausalConv1d, qkv_short_convs
from .engines import DeltaRuleEngine, DeltaRuleInputs

__all__ = ["DeltaNet", "DeltaNetState", "DeltaProduct", "GatedDeltaNet"]


def interleave(t: Tensor, n: int) -> Tensor:
    """``(batch, time, n·heads·d)`` (the ``n`` sub-steps outermost, as fla) -> ``(batch, time·n, heads·d)``."""
    return t.unflatten(-1, (n, -1)).flatten(1, 2)


@dataclass
class DeltaNetState(RecurrentState):
    """``conv_q, conv_k, conv_v``: the short convolutions' last ``d_conv - 1`` inputs
    ``(batch, channels, d_conv - 1)``; ``S``: the delta-rule state ``(batch, heads, d_k, d_v)``."""

    engine_fields = ("S",)
    conv_q: Tensor
    conv_k: Tensor
    conv_v: Tensor
    S: Tensor


class _DeltaRuleLayer(EngineLayer):
    """The shell shared by the three layers; ``n = num_householder`` delta steps per token::

        q_t = L2(SiLU(conv_q(W_q x))_t),  k_{t,j} = L2(SiLU(conv_k(W_k x))_{t,j}),  v_{t,j} = SiLU(conv_v(W_v x))_{t,j}
        β_{t,j} = σ(W_β x_t)_j                         (2 σ(·) with negative_eigenvalues)
        log α_t = -softplus(W_a x_t + dt_bias) exp(A_log)   (decay=True; else α_t = 1)
        S_{t,j} = (I - β_{t,j} k_{t,j} k_{t,j}^T) S_{t,j-1} + β_{t,j} k_{t,j} v_{t,j}^T,  S_{t,0} = α_t S_{t-1,n}
        o_t = S_{t,n}^T q_t
        y_t = W_o (RMSNorm_h(o_t) ⊙ SiLU(W_g x_t))     (gate=True; else W_o RMSNorm_h(o_t))

    The engine takes the ``n`` sub-steps natively (:class:`~rnnzoo.layers.engines.DeltaRuleInputs`).
    """

    engine = DeltaRuleEngine()
    renamed_arguments = {"conv_size": "d_conv"}

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        expand_k: float,
        expand_v: float,
        d_conv: int,
        norm_eps: float,
        negative_eigenvalues: bool,
        mode: str,
        *,
        num_householder: int = 1,
        decay: bool,
        gate: bool,
    ) -> None:
        super().__init__(d_model, mode)
        owner = type(self).__name__
        self.num_heads = check_int(owner, "num_heads", num_heads)
        self.num_householder = check_int(owner, "num_householder", num_householder)
        check_int(owner, "d_conv", d_conv)
        key_dim, value_dim, self.head_k, self.head_v = key_value_dims(owner, d_model, num_heads, expand_k, expand_v)
        self.negative_eigenvalues, self.decay, self.gate = negative_eigenvalues, decay, gate
        n = num_householder
        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n * key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n * value_dim, bias=False)
        self.b_proj = nn.Linear(d_model, n * num_heads, bias=False)
        self.q_conv = CausalConv1d(key_dim, d_conv, bias=False)
        self.k_conv = CausalConv1d(n * key_dim, d_conv, bias=False)
        self.v_conv = CausalConv1d(n * value_dim, d_conv, bias=False)
        if decay:  # as the reference: A ~ U(0, 16], Δ at init log-uniform in [1e-3, 0.1] as Mamba-2
            self.a_proj = nn.Linear(d_model, num_heads, bias=False)
            self.A_log = nn.Parameter((16 * (1 - torch.rand(num_heads))).log())
            self.dt_bias = nn.Parameter(dt_bias_init(num_heads))  # softplus(dt_bias) = Δ
        if gate:
            self.g_proj = nn.Linear(d_model, value_dim, bias=False)
        self.norm = nn.RMSNorm(self.head_v, eps=norm_eps)
        self.out_proj = nn.Linear(value_dim, d_model, bias=False)

    def init_state(self, batch_size: int, device=None, dtype=None) -> DeltaNetState:
        kw = self._state_kwargs(device, dtype)
        shape = (batch_size, self.num_heads, self.head_k, self.head_v)
        S = torch.zeros(shape, device=kw["device"], dtype=state_dtype(kw["dtype"]))
        convs = (conv.init_state(batch_size, **kw) for conv in (self.q_conv, self.k_conv, self.v_conv))
        return DeltaNetState(*convs, S)

    def engine_inputs(self, x: Tensor, state: DeltaNetState | None = None) -> tuple[DeltaRuleInputs, tuple]:
        """Engine-4 inputs in the state dtype: ``q`` ``(B, H, T, d_k)`` and ``log_alpha`` ``(B, H, T)`` (``None``
        without decay) per token, ``k`` ``(B, H, T·n, d_k)``, ``v`` ``(B, H, T·n, d_v)`` and ``beta``
        ``(B, H, T·n)`` per sub-step; carries the three new conv states."""
        dtype, n, H = state_dtype(x.dtype), self.num_householder, self.num_heads
        outs = qkv_short_convs(self, x, state)
        q, k, v = (split_heads(F.silu(interleave(y, m)), H, dtype) for (y, _), m in zip(outs, (1, n, n)))
        q, k = l2_normalize(q), l2_normalize(k)
        beta = split_heads(interleave(self.b_proj(x), n), H, dtype).squeeze(-1).sigmoid()
        if self.negative_eigenvalues:
            beta = 2 * beta
        log_alpha = None
        if self.decay:
            dt = F.softplus(self.a_proj(x).to(dtype) + self.dt_bias.to(dtype)).transpose(1, 2)  # (B, H, T)
            log_alpha = dt * -torch.exp(self.A_log.to(dtype))[:, None]
        return DeltaRuleInputs(q, k, v, beta, log_alpha), tuple(c for _, c in outs)

    def read_output(self, x: Tensor, o: Tensor, S: Tensor, convs: tuple) -> tuple[Tensor, DeltaNetState]:
        """``W_o`` of the normed (and gated) per-head outputs ``o`` ``(B, H, T, d_v)``."""
        if self.gate:
            y = self.out_proj(norm_gate(o, self.g_proj(x), self.norm))
        else:
            o = F.rms_norm(o, self.norm.normalized_shape, self.norm.weight.to(o.dtype), self.norm.eps)
            y = self.out_proj(merge_heads(o, x.dtype))
        return y, DeltaNetState(*convs, S)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_heads={self.num_heads}, head_k={self.head_k}, head_v={self.head_v}, "
            f"num_householder={self.num_householder}, decay={self.decay}, gate={self.gate}, "
            f"negative_eigenvalues={self.negative_eigenvalues}"
        )


@register(
    "deltanet",
    family="delta rule",
    paper="Yang et al. 2024, Parallelizing Linear Transformers with the Delta Rule over Sequence Length",
    negative_eigenvalues=True,
)
class DeltaNet(_DeltaRuleLayer):
    """DeltaNet, per head (α = 1, one delta step per token, no output gate)::

        q_t, k_t, v_t = L2(SiLU(conv(W_q x))_t), L2(SiLU(conv(W_k x))_t), SiLU(conv(W_v x))_t
        β_t = σ(W_β x_t)
        S_t = (I - β_t k_t k_t^T) S_{t-1} + β_t k_t v_t^T,   o_t = S_t^T q_t
        y_t = W_o RMSNorm_h(o_t)

    As flash-linear-attention's ``DeltaNet`` defaults: depthwise causal convs of
    width ``d_conv = 4`` without bias on q, k, v, each followed by SiLU; q and
    k L2-normalised per head (``ε = 1e-6``); key and value sizes ``expand_k ·
    d_model`` and ``expand_v · d_model`` (both 1) split over ``num_heads``; RMSNorm
    per head with a learned weight; no output gate (fla's ``use_gate=False``);
    projections without biases, PyTorch's default initialisation. One difference:
    fla's kernels also scale q by ``d_k^{-1/2}``; this layer does not (nor do
    :class:`GatedDeltaNet` and :class:`DeltaProduct`). The per-head RMSNorm after the
    read-out undoes any scale of ``o`` but for its ``ε``, so the two agree where
    ``|o|² ≫ ε`` and differ where the read-out is small (at initialisation, by up to
    tens of percent).

    With ``negative_eigenvalues=True``, ``β_t = 2 σ(·) ∈ (0, 2)``, so the transition's
    eigenvalue along ``k_t``, ``1 - β_t``, lies in ``(-1, 1)`` (Grazzi et al. 2024).
    For half-precision parameters the recurrence, the norms and the state run in float32.

    State: :class:`DeltaNetState`. Operator (:meth:`materialize`): one group per head.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        d_conv: int = 4,
        norm_eps: float = 1e-5,
        negative_eigenvalues: bool = False,
        mode: str = "auto",
    ) -> None:
        super().__init__(
            d_model, num_heads, expand_k, expand_v, d_conv, norm_eps, negative_eigenvalues, mode,
            decay=False, gate=False,
        )  # fmt: skip


@register(
    "gated_deltanet",
    family="delta rule",
    paper="Yang, Kautz & Hatamizadeh 2024, Gated Delta Networks: Improving Mamba2 with Delta Rule",
    negative_eigenvalues=True,
)
class GatedDeltaNet(_DeltaRuleLayer):
    """Gated DeltaNet: DeltaNet with Mamba-2's scalar decay per head and an output gate::

        α_t = exp(-softplus(W_a x_t + dt_bias) exp(A_log))          # per head, kept in log space
        S_t = α_t (I - β_t k_t k_t^T) S_{t-1} + β_t k_t v_t^T,   o_t = S_t^T q_t
        y_t = W_o (RMSNorm_h(o_t) ⊙ SiLU(W_g x_t))

    q, k, v, β as :class:`DeltaNet`. As flash-linear-attention's ``GatedDeltaNet``:
    ``A`` uniform in ``(0, 16]``, ``dt_bias`` the inverse softplus of Δ drawn
    log-uniformly in ``[0.001, 0.1]`` (floored at 1e-4), as Mamba-2; value heads
    twice the key heads (``expand_v = 2``, fla's ``expand_v`` relative to the head
    size; fla fixes ``head_dim = 256`` instead of ``expand_k``).

    ``negative_eigenvalues=True`` doubles β (the decay is unchanged), as fla's
    ``allow_neg_eigval``. State: :class:`DeltaNetState`. Operator: one group per head.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        expand_k: float = 1.0,
        expand_v: float = 2.0,
        d_conv: int = 4,
        norm_eps: float = 1e-5,
        negative_eigenvalues: bool = False,
        mode: str = "auto",
    ) -> None:
        super().__init__(
            d_model, num_heads, expand_k, expand_v, d_conv, norm_eps, negative_eigenvalues, mode,
            decay=True, gate=True,
        )  # fmt: skip


@register(
    "deltaproduct",
    family="delta rule",
    paper="Siems et al. 2025, DeltaProduct: Improving State-Tracking in Linear RNNs via Householder Products",
    negative_eigenvalues=True,
)
class DeltaProduct(_DeltaRuleLayer):
    """(Gated) DeltaProduct: ``n = num_householder`` delta steps per token, each with its own k, v, β::

        S_{t,0} = α_t S_{t-1},  S_{t,j} = (I - β_{t,j} k_{t,j} k_{t,j}^T) S_{t,j-1} + β_{t,j} k_{t,j} v_{t,j}^T
        S_t = S_{t,n},   o_t = S_t^T q_t,   y_t = W_o (RMSNorm_h(o_t) ⊙ SiLU(W_g x_t))

    so the transition is ``α_t`` times a product of ``n`` generalised Householder
    matrices. Each projection and conv of k, v, β is ``n`` times wider (sub-steps
    outermost, as fla). As flash-linear-attention's ``GatedDeltaProduct``: the
    decay (``use_forget_gate=True``, the Gated DeltaProduct; ``False`` gives
    α = 1) as :class:`GatedDeltaNet`, the output gate always on, ``expand_v = 2``.
    Unlike fla (``allow_neg_eigval=True``), ``negative_eigenvalues`` defaults to
    False, as every rnnzoo layer; ``True`` doubles each β.

    Computed on engine 4 over the ``T·n`` sub-steps (see :class:`_DeltaRuleLayer`).
    State: :class:`DeltaNetState`, ``S`` the state after each token's last sub-step.
    Operator (:meth:`materialize`): one group per (head, sub-step) pair, head-major:
    group ``(h, j)`` maps the values of sub-step ``j`` to their part of head ``h``'s output.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        num_householder: int = 2,
        use_forget_gate: bool = True,
        expand_k: float = 1.0,
        expand_v: float = 2.0,
        d_conv: int = 4,
        norm_eps: float = 1e-5,
        negative_eigenvalues: bool = False,
        mode: str = "auto",
    ) -> None:
        super().__init__(
            d_model, num_heads, expand_k, expand_v, d_conv, norm_eps, negative_eigenvalues, mode,
            num_householder=num_householder, decay=use_forget_gate, gate=True,
        )  # fmt: skip
