"""Engine adapters: the one place where a layer meets its engine.

Each adapter declares, once per engine of :mod:`rnnzoo.ops`:

* its **inputs**, a small dataclass (``q, k, v``, a log decay and its sign, ...), in the engine's layout;
* how it **runs**: ``"recurrent"`` is the reference loop, each name in ``parallel_modes`` a parallel form
  (``chunk_size`` passed through to the chunked ones), any other mode a ``ValueError``;
* its **operator**: the T×T matrix ``M`` per group with ``Y = M @ V`` from a zero state, and the values
  ``V`` and outputs ``Y`` in the groups' layout (``mixer_io``);
* its **transition eigenvalues**, from the inputs;
* its **dtype rule**: layers compute the inputs in :func:`~rnnzoo.layers.common.state_dtype` of ``x``
  (float32 for half precision), which is also the dtype of the state.

A layer on an engine (:class:`~rnnzoo.layers.base.EngineLayer`) writes only how it computes the inputs from
``x`` and how it reads the output; forward, step, ``materialize``, ``mixer_io`` and
``transition_eigenvalues`` follow from its adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import (
    block_linear_scan,
    block_linear_scan_reference,
    delta_rule,
    delta_rule_reference,
    fixed_point_scan,
    fixed_point_scan_reference,
    gated_linear_attention,
    gated_linear_attention_reference,
    linear_scan,
    linear_scan_operator,
    linear_scan_reference,
    mlstm_chunkwise,
    mlstm_operator,
    mlstm_reference,
    normalized_block_scan,
    normalized_block_scan_reference,
    selective_scan,
    selective_scan_reference,
    selective_transition,
    softmax_scan,
    softmax_scan_operator,
    softmax_scan_reference,
)  # fmt: skip
from ..ops.dplr_delta_rule import dplr_delta_rule, dplr_delta_rule_reference, dplr_operator
from ..ops.gated_linear_attention import causal_mask, gla_operator
from ..ops.s4_kernel import dplr_bilinear, dplr_ssm_convolution, dplr_ssm_kernel, dplr_ssm_reference
from ..ops.ssm_convolution import diagonal_ssm_convolution, diagonal_ssm_kernel
from ..ops.test_time_memory import test_time_memory, test_time_memory_reference

__all__ = [
    "AttentionEngine", "AttentionInputs", "BlockEngine", "BlockInputs", "DeltaRuleEngine", "DeltaRuleInputs", "DPLREngine", "DPLRInputs", "DPLRSSMEngine", "DPLRSSMInputs", "DiagonalEngine", "DiagonalInputs",
    "DiagonalSSMEngine", "DiagonalSSMInputs", "Engine", "FixedPointEngine", "FixedPointInputs", "MLSTMEngine", "MLSTMInputs", "MatrixEngine", "MatrixInputs",
    "NormalizedBlockEngine", "NormalizedBlockInputs",
    "SelectiveEngine", "SelectiveInputs", "SoftmaxScanEngine", "SoftmaxScanInputs", "TestTimeMemoryEngine",
    "TestTimeMemoryInputs", "channel_groups",
]  # fmt: skip


def channel_groups(*xs: Tensor) -> tuple[Tensor, ...]:
    """``(batch, T, channels) -> (batch, channels, T, 1)``: each channel a group of the operator view, ``d_v = 1``."""
    return tuple(x.transpose(1, 2).unsqueeze(-1) for x in xs)


def _signed(log_alpha: Tensor, sign: Tensor | None) -> Tensor:
    """``±exp(log_alpha)``, negative where ``sign``."""
    alpha = torch.exp(log_alpha)
    return alpha if sign is None else torch.where(sign, -alpha, alpha)


class Engine:
    """Base of the adapters; a subclass sets ``name`` (as in the registry), ``parallel_modes`` (the first is
    what ``"auto"`` runs) and ``chunked``, and implements :meth:`loop`, :meth:`parallel`, :meth:`operator`,
    :meth:`mixer_io` and, where the transition is linear, :meth:`eigenvalues`."""

    name: ClassVar[str]
    parallel_modes: ClassVar[tuple[str, ...]]
    chunked: ClassVar[bool] = True  # whether the parallel forms take a chunk size
    has_operator: ClassVar[bool] = True  # whether it implements operator and mixer_io

    def run(self, inputs: Any, state: Any, mode: str, chunk_size: int | None = None) -> tuple[Tensor, Any]:
        """``(outputs, final state)`` of the engine over ``inputs`` from ``state`` (``None``: zeros) by ``mode``."""
        if mode == "recurrent":
            return self.loop(inputs, state)
        if mode not in self.parallel_modes:
            raise ValueError(f"engine {self.name!r}: `mode` must be 'recurrent' or one of {self.parallel_modes}, got {mode!r}")
        return self.parallel(inputs, state, mode, **({"chunk_size": chunk_size} if self.chunked else {}))

    def loop(self, inputs: Any, state: Any) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def parallel(self, inputs: Any, state: Any, mode: str, **kwargs) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def operator(self, inputs: Any) -> Tensor:
        """``M`` ``(batch, groups, T, T)``, lower-triangular, with ``Y = M @ V`` (:meth:`mixer_io`)."""
        raise NotImplementedError

    def mixer_io(self, inputs: Any, out: Tensor, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
        """``(V, Y)`` ``(batch, groups, T, d_v)``: the values the operator mixes and the outputs ``out`` of the
        first parallel form (with ``chunk_size``), in the operator's groups."""
        raise NotImplementedError

    def eigenvalues(self, inputs: Any) -> Tensor:
        """Eigenvalues of each token's transition, ``(batch, T, *)``."""
        raise NotImplementedError(f"engine {self.name!r} has no linear transition to report eigenvalues of")


# -- engine 2: the diagonal linear recurrence ----------------------------------------


@dataclass
class DiagonalInputs:
    """``h_t = a_t ⊙ h_{t-1} + w_t ⊙ v_t``: ``v`` ``(batch, T, *state)``, ``a`` of that shape or broadcast to it
    (a time-invariant transition), ``w`` likewise or ``None`` (1)."""

    a: Tensor
    v: Tensor
    w: Tensor | None = None


class DiagonalEngine(Engine):
    """Engine 2 (:func:`~rnnzoo.ops.linear_scan`): outputs are the states ``h``; one operator group per state
    element, ``M[b, c, t, s] = w_{s,c} Π_{r=s+1..t} a_{r,c}``."""

    name, parallel_modes = "linear_scan", ("scan",)

    @staticmethod
    def _b(inputs: DiagonalInputs) -> Tensor:
        return inputs.v if inputs.w is None else inputs.w * inputs.v

    def loop(self, inputs, state):
        return linear_scan_reference(inputs.a, self._b(inputs), state)

    def parallel(self, inputs, state, mode, chunk_size=None):
        return linear_scan(inputs.a, self._b(inputs), state, chunk_size=chunk_size)

    def operator(self, inputs):
        w = torch.ones_like(inputs.v) if inputs.w is None else inputs.w.expand_as(inputs.v)
        return (linear_scan_operator(inputs.a, w.shape) * w.unsqueeze(1)).movedim(-1, 1)

    def mixer_io(self, inputs, out, chunk_size=None):
        return channel_groups(inputs.v, out)

    def eigenvalues(self, inputs):
        return inputs.a.expand(inputs.v.shape)


# -- engine 2 iterated: the fixed-point RNN --------------------------------------------------


@dataclass
class FixedPointInputs:
    """``h^{(ℓ)}_t = Λ_t ⊙ h^{(ℓ)}_{t-1} + Q_t h^{(ℓ-1)}_t + b_t`` for ``ℓ = 1..num_iterations``
    (:mod:`rnnzoo.ops.fixed_point`): ``lam, b, u`` ``(batch, T, heads, d_head)``, ``rho`` ``(batch, T, heads)``,
    ``Q_t = ρ_t (I - 2 u_t u_t^T)`` per head."""

    lam: Tensor
    b: Tensor
    rho: Tensor
    u: Tensor
    num_iterations: int


class FixedPointEngine(Engine):
    """Engine 2 run ``num_iterations`` times (:func:`~rnnzoo.ops.fixed_point_scan`); outputs the last iterate,
    state every iterate's last state ``(batch, L, heads, d_head)``. The mixer couples the channels of a head,
    so there is no operator per channel. :meth:`eigenvalues` are ``Λ_t``: the transition of the stacked
    iterates is block lower-triangular with ``Λ_t`` on each diagonal block."""

    name, parallel_modes, has_operator = "fixed_point_scan", ("scan",), False

    @staticmethod
    def _args(inputs: FixedPointInputs) -> tuple:
        return inputs.lam, inputs.b, inputs.rho, inputs.u

    def loop(self, inputs, state):
        return fixed_point_scan_reference(*self._args(inputs), state, inputs.num_iterations)

    def parallel(self, inputs, state, mode, chunk_size=None):
        return fixed_point_scan(*self._args(inputs), state, inputs.num_iterations, chunk_size=chunk_size)

    def eigenvalues(self, inputs):
        """``Λ_t`` ``(batch, T, heads, d_head)``."""
        return inputs.lam


# -- engine 2 with k×k blocks: the block-diagonal linear recurrence ------------------------


@dataclass
class BlockInputs:
    """``h_t = A_t h_{t-1} + b_t`` with a k×k block per channel: ``A`` ``(batch, T, k, k, *channels)`` (or
    broadcast to it), ``b`` ``(batch, T, k, *channels)``."""

    A: Tensor
    b: Tensor


class BlockEngine(Engine):
    """Engine 2 with matrix coefficients (:func:`~rnnzoo.ops.block_linear_scan`): outputs are the states ``h``.
    Its operator is a T×T matrix of k×k blocks per channel, not one number per (t, s), so it has no
    :meth:`operator`; :meth:`eigenvalues` are each block's, complex in general."""

    name, parallel_modes, has_operator = "block_scan", ("scan",), False

    def loop(self, inputs, state):
        return block_linear_scan_reference(inputs.A, inputs.b, state)

    def parallel(self, inputs, state, mode, chunk_size=None):
        return block_linear_scan(inputs.A, inputs.b, state, chunk_size=chunk_size)

    def eigenvalues(self, inputs):
        """``(batch, T, *channels, k)``: the eigenvalues of each channel's block."""
        blocks = inputs.A.expand(*inputs.b.shape[:3], *inputs.A.shape[3:])
        return torch.linalg.eigvals(blocks.movedim((2, 3), (-2, -1)))


@dataclass
class NormalizedBlockInputs:
    """``h_t = A_t h_{t-1} / ‖A_t h_{t-1}‖`` per group of channels: ``A`` ``(batch, T, k, k, channels)``, the
    state to start from when none is given, ``h0`` ``(batch, k, channels)`` (a zero state would stay zero),
    and the number of channel ``groups`` normalised separately."""

    A: Tensor
    h0: Tensor
    groups: int = 1


class NormalizedBlockEngine(BlockEngine):
    """The purely multiplicative block recurrence with a state of unit norm per group of channels
    (:func:`~rnnzoo.ops.normalized_block_scan`), from the state given or else ``inputs.h0``; outputs are the
    normalised states, eigenvalues each block's."""

    name = "normalized_block_scan"

    def loop(self, inputs, state):
        return normalized_block_scan_reference(inputs.A, inputs.h0 if state is None else state, inputs.groups)

    def parallel(self, inputs, state, mode, chunk_size=None):
        h0 = inputs.h0 if state is None else state
        return normalized_block_scan(inputs.A, h0, inputs.groups, chunk_size=chunk_size)

    def eigenvalues(self, inputs):
        """``(batch, T, channels, k)``: the eigenvalues of each channel's block."""
        return torch.linalg.eigvals(inputs.A.movedim((2, 3), (-2, -1)))


# -- S4D: a time-invariant diagonal SSM with a read-out ------------------------------------


def _convolution_operator(kernel: Tensor, D: Tensor, batch: int) -> Tensor:
    """``M[b, c, t, s] = K_{c, t-s} + D_c δ_ts`` for ``t >= s``: the Toeplitz matrix of a kernel ``(channels, T)``
    plus the skip ``D`` ``(channels,)``, ``(batch, channels, T, T)``."""
    length = kernel.shape[-1]
    lag = torch.arange(length, device=kernel.device)
    lag = lag[:, None] - lag  # t - s
    M = kernel[:, lag.clamp_min(0)] * (lag >= 0) + torch.diag_embed(D[:, None].expand(-1, length))
    return M.expand(batch, -1, -1, -1)


@dataclass
class DiagonalSSMInputs:
    """``h_t = Ā ⊙ h_{t-1} + B̄ u_t``, ``z_t = 2·Re(Σ_n C_n h_{t,n}) + D ⊙ u_t`` per channel and complex mode:
    ``u`` real ``(batch, T, channels)``, ``dtA`` (``Ā = exp(ΔA)``), ``B_bar``, ``C`` complex ``(channels, modes)``,
    ``D`` ``(channels,)``."""

    u: Tensor
    dtA: Tensor
    B_bar: Tensor
    C: Tensor
    D: Tensor


class DiagonalSSMEngine(Engine):
    """S4D's engine: the convolution with the impulse response (``"conv"``,
    :func:`~rnnzoo.ops.ssm_convolution.diagonal_ssm_convolution`) or engine 2's scan with ``Ā`` broadcast over
    batch and time (``"scan"``); outputs ``z``. One operator group per channel, the Toeplitz matrix of the
    kernel plus ``D`` on the diagonal."""

    name, parallel_modes, chunked = "ssm_convolution", ("conv", "scan"), False

    def _scan(self, inputs: DiagonalSSMInputs, state: Tensor | None, scan) -> tuple[Tensor, Tensor]:
        h, h_last = scan(torch.exp(inputs.dtA), inputs.B_bar * inputs.u[..., None], state)  # h: (B, T, H, N)
        return 2 * torch.einsum("bthn,hn->bth", h, inputs.C).real + inputs.D * inputs.u, h_last

    def loop(self, inputs, state):
        return self._scan(inputs, state, linear_scan_reference)

    def parallel(self, inputs, state, mode):
        if mode == "scan":
            return self._scan(inputs, state, linear_scan)
        z, h_last = diagonal_ssm_convolution(inputs.u, inputs.dtA, inputs.B_bar, inputs.C, state)
        return z + inputs.D * inputs.u, h_last

    def operator(self, inputs):
        batch, length, _ = inputs.u.shape
        return _convolution_operator(diagonal_ssm_kernel(inputs.dtA, inputs.B_bar, inputs.C, length), inputs.D, batch)

    def mixer_io(self, inputs, out, chunk_size=None):
        return channel_groups(inputs.u, out)

    def eigenvalues(self, inputs):
        return torch.exp(inputs.dtA).expand(*inputs.u.shape[:2], -1, -1)


# -- Mamba: the selective scan --------------------------------------------------------------


@dataclass
class SelectiveInputs:
    """``h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t u_t B_t``, ``y_t = C_t · h_t + D ⊙ u_t``: ``u, dt`` ``(batch, T, d_inner)``,
    ``A`` ``(d_inner, d_state)``, ``B, C`` ``(batch, T, d_state)``, ``D`` ``(d_inner,)``; the transition becomes
    ``2 exp(Δ_t A) - 1`` with ``negative_eigenvalues``."""

    u: Tensor
    dt: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    D: Tensor
    negative_eigenvalues: bool = False


class SelectiveEngine(Engine):
    """Mamba's selective scan (:func:`~rnnzoo.ops.selective_scan`, which never builds the
    ``(batch, T, d_inner, d_state)`` discretisation); outputs ``y``. One operator group per inner channel,
    ``M[b, d, t, s] = Σ_n C_{t,n} (Π_{r=s+1..t} a_{r,d,n}) Δ_{s,d} B_{s,n} + D_d δ_ts``
    (memory ``O(batch · T² · d_inner · d_state)``)."""

    name, parallel_modes = "selective_scan", ("scan",)

    @staticmethod
    def _args(inputs: SelectiveInputs) -> tuple:
        return inputs.u, inputs.dt, inputs.A, inputs.B, inputs.C, inputs.D

    def loop(self, inputs, state):
        return selective_scan_reference(*self._args(inputs), state, negative_eigenvalues=inputs.negative_eigenvalues)

    def parallel(self, inputs, state, mode, chunk_size=None):
        return selective_scan(
            *self._args(inputs), state, negative_eigenvalues=inputs.negative_eigenvalues, chunk_size=chunk_size
        )

    def operator(self, inputs):
        a = self.eigenvalues(inputs)
        w = (inputs.dt.unsqueeze(-1) * inputs.B.unsqueeze(-2)).unsqueeze(1)  # Δ_s B_s, (B, 1, S, d_inner, d_state)
        M = torch.einsum("btsdn,btn->bdts", linear_scan_operator(a) * w, inputs.C)
        return M + torch.diag_embed(inputs.D.unsqueeze(-1).expand(-1, inputs.u.shape[1]))

    def mixer_io(self, inputs, out, chunk_size=None):
        return channel_groups(inputs.u, out)

    def eigenvalues(self, inputs):
        return selective_transition(inputs.dt, inputs.A, inputs.negative_eigenvalues)


# -- engine 3: gated linear attention ------------------------------------------------------


@dataclass
class MatrixInputs:
    """``S_t = Diag(α_t) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t`` per head: ``q, k`` ``(batch, heads, T, d_k)``,
    ``v`` ``(batch, heads, T, d_v)``, ``log_alpha`` ``log|α|`` ``(batch, heads, T)`` (scalar per head) or
    ``(batch, heads, T, d_k)`` or ``None`` (α = 1), ``sign`` ``α < 0`` of the same shape or ``None``.
    A complex ``log_alpha = log|α| + iθ`` (GateLoop) takes complex ``q, k, v``; outputs and state are complex.
    With ``normalizer_eps``, ``o_t`` is divided by ``q_t · z_t + ε``, ``z_t`` the same recurrence over the
    keys (linear attention's normaliser: ``v`` gets a column of ones, the state's last column is ``z``)."""

    q: Tensor
    k: Tensor
    v: Tensor
    log_alpha: Tensor | None = None
    sign: Tensor | None = None
    normalizer_eps: float | None = None


class MatrixEngine(Engine):
    """Engine 3 (:func:`~rnnzoo.ops.gated_linear_attention`); outputs ``o``. One operator group per head,
    ``M[b, h, t, s] = Σ_d q_td k_sd Π_{r=s+1..t} α_rd`` (rows divided by their sum + ε when normalised)."""

    name, parallel_modes = "gated_linear_attention", ("chunk",)

    def _run(self, fn, inputs: MatrixInputs, state, **kwargs):
        v = inputs.v
        if inputs.normalizer_eps is not None:
            v = torch.cat([v, torch.ones_like(v[..., :1])], -1)
        out, S = fn(inputs.q, inputs.k, v, inputs.log_alpha, state, alpha_sign=inputs.sign, **kwargs)
        if inputs.normalizer_eps is not None:
            out = out[..., :-1] / (out[..., -1:] + inputs.normalizer_eps)
        return out, S

    def loop(self, inputs, state):
        return self._run(gated_linear_attention_reference, inputs, state)

    def parallel(self, inputs, state, mode, chunk_size=None):
        return self._run(gated_linear_attention, inputs, state, chunk_size=chunk_size)

    def operator(self, inputs):
        M = gla_operator(inputs.q, inputs.k, inputs.log_alpha, alpha_sign=inputs.sign)
        return M if inputs.normalizer_eps is None else M / (M.sum(-1, keepdim=True) + inputs.normalizer_eps)

    def mixer_io(self, inputs, out, chunk_size=None):
        return inputs.v, out

    def eigenvalues(self, inputs):
        """``α_t`` per head (or per head and key dim), ``(batch, T, heads[, d_k])``; 1 without a decay."""
        if inputs.log_alpha is None:
            return torch.ones_like(inputs.q[..., 0]).transpose(1, 2)
        return _signed(inputs.log_alpha, inputs.sign).transpose(1, 2)


# -- mLSTM ------------------------------------------------------------------------------------


@dataclass
class MLSTMInputs:
    """The stabilised mLSTM cell per head (:mod:`rnnzoo.ops.mlstm`): ``q, k, v`` ``(batch, heads, T, d)``,
    ``log_f`` (``log σ(f̃)``) and ``log_i`` (``ĩ``) ``(batch, heads, T)``."""

    q: Tensor
    k: Tensor
    v: Tensor
    log_f: Tensor
    log_i: Tensor


class MLSTMEngine(Engine):
    """The mLSTM cell (:func:`~rnnzoo.ops.mlstm_chunkwise`); state ``(C, n, m)``, outputs ``h``. One operator
    group per head: the normalised, gated attention the cell applies to ``v``."""

    name, parallel_modes = "mlstm", ("chunk",)

    @staticmethod
    def _args(inputs: MLSTMInputs) -> tuple:
        return inputs.q, inputs.k, inputs.v, inputs.log_f, inputs.log_i

    def loop(self, inputs, state):
        return mlstm_reference(*self._args(inputs), state)

    def parallel(self, inputs, state, mode, chunk_size=None):
        return mlstm_chunkwise(*self._args(inputs), state, chunk_size=chunk_size)

    def operator(self, inputs):
        return mlstm_operator(inputs.q, inputs.k, inputs.log_f, inputs.log_i)

    def mixer_io(self, inputs, out, chunk_size=None):
        return inputs.v, out

    def eigenvalues(self, inputs):
        """The forget gate ``f_t = σ(f̃_t)`` per head, ``(batch, T, heads)`` (the transition of the true memory
        ``C = C̃ e^m``; the stabiliser only rescales the stored ``C̃``)."""
        return torch.exp(inputs.log_f).transpose(1, 2)


# -- engine 4: the delta rule -------------------------------------------------------------------


@dataclass
class DeltaRuleInputs:
    """``S_j = α_j (I - β_j k_j k_j^T) S_{j-1} + β_j k_j v_j^T``, ``o_j = S_j^T q_j`` per head with
    ``n = num_householder`` delta steps (sub-steps) per token (DeltaProduct; a token's sub-steps consecutive,
    the decay before its first, the read-out after its last): ``q`` ``(batch, heads, T, d_k)`` and
    ``log_alpha`` (or ``None``: α = 1) ``(batch, heads, T)`` per token; ``k`` ``(batch, heads, T·n, d_k)``,
    ``v`` ``(batch, heads, T·n, d_v)`` and ``beta`` ``(batch, heads, T·n)`` per sub-step (``n`` from the shapes)."""

    q: Tensor
    k: Tensor
    v: Tensor
    beta: Tensor
    log_alpha: Tensor | None = None

    @property
    def num_householder(self) -> int:
        """``n``, the delta steps per token, from the shapes."""
        return self.k.shape[2] // self.q.shape[2]


class DeltaRuleEngine(Engine):
    """Engine 4 (:func:`~rnnzoo.ops.delta_rule`); outputs ``o`` per token. One operator group per head, or per
    (head, sub-step) pair, head-major, with several sub-steps: group ``(h, j)`` maps the values of sub-step
    ``j`` to their part of head ``h``'s output (the parts sum to it)."""

    name, parallel_modes = "delta_rule", ("chunk",)

    def _run(self, fn, inputs: DeltaRuleInputs, state, **kwargs):
        return fn(inputs.q, inputs.k, inputs.v, inputs.beta, inputs.log_alpha, state, **kwargs)

    def loop(self, inputs, state):
        return self._run(delta_rule_reference, inputs, state)

    def parallel(self, inputs, state, mode, chunk_size=None):
        return self._run(delta_rule, inputs, state, chunk_size=chunk_size)

    def _per_substep(self, inputs: DeltaRuleInputs, values: Tensor, mode: str, chunk_size: int | None = None) -> Tensor:
        """Outputs for the values of one sub-step ``j`` at a time (the others zero): ``values`` ``(n, B, H, T·n, d)``
        with ``values[j]`` zero off sub-step ``j``; returns ``(B, H·n, T, d)``."""
        n = inputs.num_householder
        tile = lambda t: None if t is None else t.expand(n, *t.shape).flatten(0, 1)
        q, k, beta, log_alpha = (tile(t) for t in (inputs.q, inputs.k, inputs.beta, inputs.log_alpha))
        tiled = DeltaRuleInputs(q, k, values.flatten(0, 1), beta, log_alpha)
        o, _ = self.run(tiled, None, mode, chunk_size)
        return o.unflatten(0, (n, -1)).movedim(0, 2).flatten(1, 2)

    def operator(self, inputs):
        """``M[b, (h, j), t, s] = ∂o_{t,h} / ∂v_{s,j,h}`` for fixed q, k, β, α, computed exactly by the reference
        loop on one-hot values."""
        batch, heads, steps, _ = inputs.k.shape
        n = inputs.num_householder
        length = steps // n
        eye = torch.eye(length, dtype=inputs.q.dtype, device=inputs.q.device)
        one_hot = torch.eye(n, dtype=eye.dtype, device=eye.device)[:, None, :, None] * eye[None, :, None, :]
        values = one_hot.flatten(1, 2)[:, None, None].expand(n, batch, heads, steps, length)
        return self._per_substep(inputs, values, "recurrent")

    def mixer_io(self, inputs, out, chunk_size=None):
        n, v = inputs.num_householder, inputs.v
        if n == 1:
            return v, out
        mask = torch.eye(n, dtype=v.dtype, device=v.device).repeat(1, v.shape[2] // n)  # (n, T·n): sub-step j
        Y = self._per_substep(inputs, mask[:, None, None, :, None] * v, self.parallel_modes[0], chunk_size)
        return v.unflatten(2, (-1, n)).movedim(3, 2).flatten(1, 2), Y

    def eigenvalues(self, inputs):
        """One sub-step: the two distinct values ``(α_t, α_t (1 - β_t))`` per head, ``(batch, T, heads, 2)``,
        real. Several: all ``d_k`` eigenvalues of ``α_t Π_j (I - β_j k_j k_j^T)`` (later sub-steps on the
        left), ``(batch, T, heads, d_k)``, complex in general (real and in [0, 1] when every β <= 1)."""
        k, beta, n = inputs.k, inputs.beta, inputs.num_householder
        alpha = torch.ones_like(beta[..., ::n]) if inputs.log_alpha is None else torch.exp(inputs.log_alpha)
        if n == 1:
            return torch.stack([alpha, alpha * (1 - beta)], -1).transpose(1, 2)
        eye = torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
        factors = eye - beta[..., None, None] * k[..., :, None] * k[..., None, :]  # (B, H, T·n, d_k, d_k)
        product = alpha[..., None, None] * eye
        for j in range(n):  # step j acts after steps < j
            product = factors[:, :, j::n] @ product
        return torch.linalg.eigvals(product).transpose(1, 2)


# -- softmax attention as a scan (Aaren) -----------------------------------------------------------


@dataclass
class SoftmaxScanInputs:
    """``o_t = Σ_{i<=t} softmax_i(s) v_i`` per head: scores ``s`` ``(batch, T, heads)``, values ``v``
    ``(batch, T, heads, d)``."""

    s: Tensor
    v: Tensor


class SoftmaxScanEngine(Engine):
    """The softmax scan (:func:`~rnnzoo.ops.softmax_scan`); state ``(m, u, w)``, outputs ``(batch, T, heads, d)``.
    One operator group per head: ``M[b, h, t, i] = exp(s_i) / Σ_{j<=t} exp(s_j)`` for ``i <= t``."""

    name, parallel_modes, chunked = "softmax_scan", ("scan",), False

    def loop(self, inputs, state):
        return softmax_scan_reference(inputs.s, inputs.v, state)

    def parallel(self, inputs, state, mode):
        return softmax_scan(inputs.s, inputs.v, state)

    def operator(self, inputs):
        return softmax_scan_operator(inputs.s)

    def mixer_io(self, inputs, out, chunk_size=None):
        return inputs.v.transpose(1, 2), out.transpose(1, 2)


# -- softmax attention with a KV cache ---------------------------------------------------------------


@dataclass
class AttentionInputs:
    """Causal softmax attention per head, ``o_t = Σ_{s<=t} softmax_s(q_t · k_s / sqrt(d)) v_s``, over a cache of
    earlier keys and values: ``q, k, v`` ``(batch, heads, T, d)`` (positions already encoded in ``q, k``)."""

    q: Tensor
    k: Tensor
    v: Tensor
    window: int | None = None  # sliding window: keys at n - window < m <= n only
    valid: Tensor | None = None  # (batch, T): False at padding, whose keys no token attends to


class AttentionEngine(Engine):
    """Softmax attention (``F.scaled_dot_product_attention``); the state is the cache of keys and values, of the
    type given (:class:`~rnnzoo.layers.attention.KVCache`: ``cache_type.empty(q)``, ``cache.append(k, v)``,
    ``cache.position``). ``"sdpa"`` attends over the whole input at once, ``"recurrent"`` token by token.
    One operator group per head: the attention weights from an empty cache."""

    name, parallel_modes, chunked = "attention", ("sdpa",), False

    def __init__(self, cache_type: type) -> None:
        self.cache_type = cache_type

    @staticmethod
    def _attend(q: Tensor, cache, window: int | None) -> Tensor:
        """Outputs of queries ``q`` ``(batch, heads, n, d)``, the cache's last ``n`` tokens, over the cache."""
        n, length = q.shape[2], cache.k.shape[2]
        window = None if window is not None and length <= window else window  # no stored key is out of reach
        if window is None and cache.valid is None and n == 1:
            return F.scaled_dot_product_attention(q, cache.k, cache.v)
        if window is None and cache.valid is None and n == length:
            return F.scaled_dot_product_attention(q, cache.k, cache.v, is_causal=True)
        keys = torch.arange(length, device=q.device)
        queries = torch.arange(length - n, length, device=q.device)[:, None]
        visible = keys <= queries
        if window is not None:
            visible &= keys > queries - window
        if cache.valid is not None:  # (batch, 1, n, length); a padding query sees itself, so no row is empty
            visible = visible & (cache.valid[:, None, None, :] | (keys == queries))
        return F.scaled_dot_product_attention(q, cache.k, cache.v, attn_mask=visible)

    @staticmethod
    def _keep(cache, window: int | None):
        """The cache the next token needs: all of it, or the last ``window - 1`` tokens."""
        return cache if window is None else cache.trimmed(window - 1)

    def loop(self, inputs, state):
        cache = self.cache_type.empty(inputs.q) if state is None else state
        outputs = []
        valid = [None] * inputs.q.shape[2] if inputs.valid is None else inputs.valid.split(1, 1)
        for q_t, k_t, v_t, valid_t in zip(inputs.q.split(1, 2), inputs.k.split(1, 2), inputs.v.split(1, 2), valid):
            cache = cache.append(k_t, v_t, valid_t)
            outputs.append(self._attend(q_t, cache, inputs.window))
            cache = self._keep(cache, inputs.window)
        return torch.cat(outputs, 2), cache

    def parallel(self, inputs, state, mode):
        cache = (self.cache_type.empty(inputs.q) if state is None else state).append(inputs.k, inputs.v, inputs.valid)
        return self._attend(inputs.q, cache, inputs.window), self._keep(cache, inputs.window)

    def operator(self, inputs):
        scores = inputs.q @ inputs.k.transpose(-1, -2) * inputs.q.shape[-1] ** -0.5
        length = scores.shape[-1]
        visible = causal_mask(length, scores.device)
        if inputs.window is not None:
            visible = visible.triu(1 - inputs.window)
        return torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)

    def mixer_io(self, inputs, out, chunk_size=None):
        return inputs.v, out


# -- the diagonal-plus-low-rank delta rule (RWKV-7) ----------------------------------------------------


@dataclass
class DPLRInputs:
    """``S_t = (Diag(w_t) + b_t a_t^T) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t`` per head (RWKV-7's state
    transposed): ``q, k, a, b`` and ``log_w = log w_t <= 0`` ``(batch, heads, T, d_k)``, ``v``
    ``(batch, heads, T, d_v)``."""

    q: Tensor
    k: Tensor
    v: Tensor
    a: Tensor
    b: Tensor
    log_w: Tensor


class DPLREngine(Engine):
    """The generalised delta rule (:func:`~rnnzoo.ops.dplr_delta_rule`); outputs ``o``. One operator group per
    head, ``M[b, h, t, s] = q_t^T G_t ⋯ G_{s+1} k_s`` with ``G_r = Diag(w_r) + b_r a_r^T``
    (:func:`~rnnzoo.ops.dplr_operator`)."""

    name, parallel_modes = "dplr_delta_rule", ("chunk",)

    @staticmethod
    def _args(inputs: DPLRInputs) -> tuple:
        return inputs.q, inputs.k, inputs.v, inputs.a, inputs.b, inputs.log_w

    def loop(self, inputs, state):
        return dplr_delta_rule_reference(*self._args(inputs), state)

    def parallel(self, inputs, state, mode, chunk_size=None):
        return dplr_delta_rule(*self._args(inputs), state, chunk_size=chunk_size)

    def operator(self, inputs):
        return dplr_operator(inputs.q, inputs.k, inputs.a, inputs.b, inputs.log_w)

    def mixer_io(self, inputs, out, chunk_size=None):
        return inputs.v, out

    def eigenvalues(self, inputs):
        """All ``d_k`` eigenvalues of ``Diag(w_t) + b_t a_t^T`` per head, ``(batch, T, heads, d_k)``, complex in
        general (real in ``(-1, 1)`` for RWKV-7's ``a = -κ̂``, ``b = κ̂ ⊙ a_gate``: the transition is similar
        to the symmetric ``Diag(w_t) - u u^T``, ``u = κ̂ ⊙ a_gate^{1/2}``, ``|u| < 1``)."""
        transition = torch.diag_embed(torch.exp(inputs.log_w)) + inputs.b[..., :, None] * inputs.a[..., None, :]
        return torch.linalg.eigvals(transition).transpose(1, 2)


# -- test-time memory (Titans, Miras) -------------------------------------------------------------


@dataclass
class TestTimeMemoryInputs:
    """A linear memory trained by mini-batch gradient descent with momentum and weight decay per head
    (:mod:`rnnzoo.ops.test_time_memory`)::

        g_t = k_t ψ(M_0^T k_t - v_t)^T,  U_t = η_t U_{t-1} - θ_t g_t,  M_t = (1 - α_t) M_{t-1} + U_t,  o_t = M_t^T q_t

    ``M_0`` the memory at the start of the token's mini-batch of ``memory_batch`` tokens: ``q, k``
    ``(batch, heads, T, d_k)``, ``v`` ``(batch, heads, T, d_v)``, ``theta`` (θ), ``log_eta`` (``log η``) and
    ``log_retain`` (``log (1 - α)``) ``(batch, heads, T)``; ``objective`` ``"l2"`` (``ψ(e) = e``), ``"huber"``
    (``clamp(e, -delta, delta)``) or ``"lp"`` (``p |e|^{p-1} sign(e)``)."""

    q: Tensor
    k: Tensor
    v: Tensor
    theta: Tensor
    log_eta: Tensor
    log_retain: Tensor
    memory_batch: int = 16
    objective: str = "l2"
    delta: float = 1.0
    p: float = 3.0


class TestTimeMemoryEngine(Engine):
    """Titans' memory (:func:`~rnnzoo.ops.test_time_memory`); state ``(M_0, M, U, position)``, outputs ``o``.
    The mini-batch size is part of the model, so the chunked form takes no chunk size.

    Operator: with the ``"l2"`` objective the outputs from a zero state are linear in the values, and each value
    dim evolves alone with the same coefficients, so there is one T×T operator per head,
    ``M[b, h, t, s] = ∂o_{t,h} / ∂v_{s,h}`` (for any value dim), computed exactly by the reference loop on
    one-hot values. The ``"huber"`` and ``"lp"`` objectives are nonlinear in the values: no operator
    (:meth:`operator` raises). Eigenvalues: not reported. The transition of ``(M, U)`` is linear per token only
    for ``"l2"`` with ``memory_batch = 1``; otherwise each token's gradient is taken at the mini-batch's
    ``M_0``, a third block of the state held fixed (eigenvalue 1) between boundaries, and the transition that
    decides stability is the mini-batch's, not the token's."""

    name, parallel_modes, chunked = "test_time_memory", ("chunk",), False

    @staticmethod
    def _run(fn, inputs: TestTimeMemoryInputs, state, v: Tensor | None = None) -> tuple[Tensor, Any]:
        return fn(
            inputs.q, inputs.k, inputs.v if v is None else v, inputs.theta, inputs.log_eta, inputs.log_retain, state,
            memory_batch=inputs.memory_batch, objective=inputs.objective, delta=inputs.delta, p=inputs.p,
        )  # fmt: skip

    def loop(self, inputs, state):
        return self._run(test_time_memory_reference, inputs, state)

    def parallel(self, inputs, state, mode):
        return self._run(test_time_memory, inputs, state)

    def operator(self, inputs):
        if inputs.objective != "l2":
            raise NotImplementedError(
                f"engine {self.name!r}: the {inputs.objective!r} objective is nonlinear in the values; "
                "only 'l2' has an operator"
            )
        batch, heads, length, _ = inputs.q.shape
        eye = torch.eye(length, dtype=inputs.q.dtype, device=inputs.q.device)
        return self._run(test_time_memory_reference, inputs, None, eye.expand(batch, heads, length, length))[0]

    def mixer_io(self, inputs, out, chunk_size=None):
        return inputs.v, out


# -- S4: a time-invariant SSM with a diagonal-plus-low-rank state matrix -------------------------


@dataclass
class DPLRSSMInputs:
    """``h_t = Ā h_{t-1} + B̄ u_t``, ``z_t = 2·Re(Σ_n C_n h_{t,n}) + D ⊙ u_t`` per channel, ``(Ā, B̄)`` the bilinear
    discretisation of ``A = Λ - P P^*`` and ``B`` with step ``dt`` (:mod:`rnnzoo.ops.s4_kernel`; the first half of
    each conjugate pair given): ``u`` real ``(batch, T, channels)``, ``Lambda, P, B, C`` complex
    ``(channels, modes)``, ``dt`` and ``D`` ``(channels,)``."""

    u: Tensor
    Lambda: Tensor
    P: Tensor
    B: Tensor
    C: Tensor
    dt: Tensor
    D: Tensor


class DPLRSSMEngine(Engine):
    """S4's engine: the convolution with the impulse response from the Cauchy kernel and the Woodbury identity
    at the roots of unity (``"conv"``, :func:`~rnnzoo.ops.s4_kernel.dplr_ssm_convolution`), or the loop with the
    dense ``Ā`` (:func:`~rnnzoo.ops.s4_kernel.dplr_ssm_reference`); outputs ``z``. One operator group per
    channel, the Toeplitz matrix of the kernel plus ``D`` on the diagonal."""

    name, parallel_modes, chunked = "dplr_ssm", ("conv",), False

    @staticmethod
    def _ssm(inputs: DPLRSSMInputs) -> tuple[Tensor, ...]:
        return inputs.Lambda, inputs.P, inputs.B, inputs.C, inputs.dt

    def loop(self, inputs, state):
        A_bar, B_bar = dplr_bilinear(inputs.Lambda, inputs.P, inputs.B, inputs.dt)
        z, h_last = dplr_ssm_reference(inputs.u, A_bar, B_bar, inputs.C, state)
        return z + inputs.D * inputs.u, h_last

    def parallel(self, inputs, state, mode):
        z, h_last = dplr_ssm_convolution(inputs.u, *self._ssm(inputs), state)
        return z + inputs.D * inputs.u, h_last

    def operator(self, inputs):
        batch, length, _ = inputs.u.shape
        return _convolution_operator(dplr_ssm_kernel(*self._ssm(inputs), length), inputs.D, batch)

    def mixer_io(self, inputs, out, chunk_size=None):
        return channel_groups(inputs.u, out)

    def eigenvalues(self, inputs):
        """All ``2·modes`` eigenvalues of the full ``Ā`` per channel, in conjugate pairs (those of the real-linear
        map on the kept half of the state), ``(batch, T, channels, 2·modes)``. Computed in float64: HiPPO-LegS's
        eigenvalues are ill-conditioned in ``Λ, P`` (tests/test_s4.py)."""
        wide = (t.to(torch.complex128) for t in (inputs.Lambda, inputs.P, inputs.B))
        A_bar, _ = dplr_bilinear(*wide, inputs.dt.to(torch.float64))
        return torch.linalg.eigvals(A_bar).to(inputs.Lambda.dtype).expand(*inputs.u.shape[:2], -1, -1)
