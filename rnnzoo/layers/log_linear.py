"""Log-linear attention: a Fenwick tree of states over a linear-attention engine.

Guo, Yang, Goel, Xing, Dao and Kim (2025), "Log-Linear Attention". A linear-attention layer (Mamba-2, Gated
DeltaNet) outputs ``o_t = Σ_{s<=t} M_ts v_s`` with ``M_ts = q_t^T A_t ⋯ A_{s+1} (β_s) k_s``, all of the past in
one state. Log-linear attention splits the past of ``t`` into the Fenwick-tree buckets of ``t``, at most
``1 + log2(t + 1)`` of them, and weights each bucket by a level weight ``λ_t^ℓ`` the layer computes from
``x_t``::

    ℓ(t, s) = 0 if s = t, else 1 + ⌊log2(t XOR s)⌋ (the highest bit where t and s differ, plus 1), capped at L - 1
    o_t = Σ_{s<=t} λ_t^{ℓ(t, s)} M_ts v_s

(positions absolute from the start of the sequence the state began with). With ``λ ≡ 1`` this is the base
model. The state is ``L`` base states, bucket ``j`` after token ``t`` holding the tokens ``s`` with
``ℓ(t, s) = j``; their sum is the base model's state.

:class:`LogLinearEngine` wraps any engine adapter whose output is linear in ``v`` and in the state and whose
inputs have every tensor field in the layout ``(batch, heads, T, ...)`` with fields ``q`` and ``v`` (engine 3,
:class:`~rnnzoo.layers.engines.MatrixEngine`; engine 4, :class:`~rnnzoo.layers.engines.DeltaRuleEngine`, one
step per token). Everything runs through the base engine, so its numerics (decays in log space, chunking) are
kept. Zero-padding every field along time gives no-op tokens (``q = k = v = 0``, ``log α = 0``, ``β = 0``), and
zeroing ``v`` gives a token that applies its transition and adds nothing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ..registry import register
from .base import RecurrentState, state_dtype
from .deltanet import GatedDeltaNet
from .engines import DeltaRuleEngine, Engine, MatrixEngine
from .mamba2 import Mamba2

__all__ = [
    "LogLinearDeltaNetState", "LogLinearEngine", "LogLinearGatedDeltaNet", "LogLinearInputs", "LogLinearMamba2",
    "LogLinearMamba2State", "LogLinearState", "fenwick_level",
]  # fmt: skip

DEFAULT_NUM_LEVELS = 10


def fenwick_level(t: Tensor, s: Tensor, num_levels: int) -> Tensor:
    """``ℓ(t, s)`` for int64 positions ``t, s`` (broadcast): 0 if ``s = t``, else 1 + the highest bit where they
    differ, capped at ``num_levels - 1``; that is the number of ``k < num_levels - 1`` with
    ``⌊t / 2^k⌋ ≠ ⌊s / 2^k⌋``, each side written ``x - x mod 2^k`` (integer remainders, which export to ONNX)."""
    powers = 2 ** torch.arange(num_levels - 1, device=t.device)
    t, s = t.unsqueeze(-1), s.unsqueeze(-1)
    return (t - t % powers != s - s % powers).sum(-1)


# -- the base engine's inputs as one object: every tensor field has time on dim 2 ----------------------------------


def _map(inputs: Any, fn) -> Any:
    """``inputs`` with ``fn`` applied to each tensor field."""
    fields = {f.name: getattr(inputs, f.name) for f in dataclasses.fields(inputs)}
    return dataclasses.replace(inputs, **{k: fn(t) for k, t in fields.items() if isinstance(t, Tensor)})


def _along_time(mask: Tensor, t: Tensor) -> Tensor:
    """``mask`` ``(batch or 1, T)`` shaped to broadcast over ``t`` ``(batch, heads, T, ...)``."""
    return mask.view(mask.shape[0], 1, mask.shape[1], *(1,) * (t.dim() - 3))


def _keep(inputs: Any, name: str, keep: Tensor) -> Any:
    """``inputs`` with field ``name`` zeroed where ``keep`` ``(batch or 1, T)`` is False."""
    t = getattr(inputs, name)
    return dataclasses.replace(inputs, **{name: t.masked_fill(~_along_time(keep, t), 0)})


def _place(inputs: Any, index: Tensor, valid: Tensor) -> Any:
    """Slot ``i`` of row ``b`` holds token ``index[b, i]`` where ``valid[b, i]``, else a no-op token (zeros)."""
    def place(t: Tensor) -> Tensor:
        idx = _along_time(index.clamp(0, t.shape[2] - 1), t).expand(-1, t.shape[1], -1, *t.shape[3:])
        return t.gather(2, idx).masked_fill(~_along_time(valid, t), 0)

    return _map(inputs, place)


def _fold(inputs: Any, size: int) -> Any:
    """``(batch, heads, n·size, ...)`` -> ``(batch·n, heads, size, ...)``: one row per block of ``size`` slots."""
    return _map(inputs, lambda t: t.unflatten(2, (-1, size)).transpose(1, 2).flatten(0, 1))


def _unfold(out: Tensor, batch: int) -> Tensor:
    """Outputs ``(batch·n, heads, size, d)`` of :func:`_fold`'s rows -> ``(batch, heads, n·size, d)``."""
    return out.unflatten(0, (batch, -1)).transpose(1, 2).flatten(2, 3)


def _tile(inputs: Any, n: int) -> Any:
    """Each row repeated ``n`` times, ``(batch, ...)`` -> ``(batch·n, ...)`` (row-major)."""
    return _map(inputs, lambda t: t.repeat_interleave(n, 0))


def _at(out: Tensor, index: Tensor) -> Tensor:
    """``out`` ``(batch, heads, S, d)`` at slots ``index`` ``(batch, T)`` -> ``(batch, heads, T, d)``."""
    return out.gather(2, index[:, None, :, None].expand(-1, out.shape[1], -1, out.shape[3]))


@dataclass
class LogLinearInputs:
    """The base engine's inputs ``base`` and the level weights ``lam`` ``(batch, heads, T, L)``, ``λ_t^ℓ``."""

    base: Any
    lam: Tensor


class LogLinearEngine(Engine):
    """Log-linear attention over a base engine adapter (module docstring); outputs ``(batch, heads, T, d_v)``,
    state ``(S, position)``: the buckets ``S`` ``(batch, L, *base state)`` and the position of the next token
    ``(batch,)`` int64, per row (rows of a padded batch's state may carry different positions).

    * ``"recurrent"`` (the reference loop): for token ``p >= 1``, with ``n`` the trailing one-bits of ``p - 1``,
      buckets ``0..n`` are summed into bucket ``min(n + 1, L - 1)`` (the tokens whose level from ``p`` is
      ``n + 1``); then every bucket takes token ``p``'s transition with no input, bucket 0 becomes token ``p``'s
      own contribution, and ``o_p = Σ_j λ_p^j · (read of bucket j)``: one base step with batch ``B·L``.
    * the parallel forms, ``O(T log T)``, one base run per level: level 0 is each token alone; level
      ``ℓ = 1..L-2`` pairs ``t`` in the second half with ``s`` in the first half of an aligned block of ``2^ℓ``
      (the blocks are the batch of one base run, ``v`` zeroed in their second halves and ``q`` in their first);
      the capped level ``L - 1`` is everything before ``t``'s aligned block of ``P = 2^(L-2)``, read from the
      base state carried over those blocks. The levels whose half block is at least the input's length meet
      across at most one boundary inside it, so one masked base run covers them all. A state's bucket ``j``
      (after token ``p0 - 1``) reaches ``t`` at level ``max(ℓ(t, p0 - 1), j)``; the final bucket ``j`` is a base
      run with ``v`` masked to the new tokens of level ``j``, from the old buckets now at level ``j``. Each row
      is aligned to its own position by gathers, so shapes depend on ``T`` and ``L`` only (``torch.compile``).

    Operator: the base operator times ``λ_t^{ℓ(t, s)}`` (positions from 0). Eigenvalues: the base's (every
    bucket takes the same transition).
    """

    name = "log_linear"

    def __init__(self, base: Engine) -> None:
        self.base = base
        self.parallel_modes, self.chunked, self.has_operator = base.parallel_modes, base.chunked, base.has_operator

    def _check(self, inputs: LogLinearInputs) -> None:
        """The base's output must be linear in ``v`` and the state, one transition per token."""
        where = f"engine {self.name!r}"
        steps = getattr(inputs.base, "num_householder", 1)
        if steps != 1:
            raise ValueError(f"{where}: `num_householder` must be 1 (one transition per token), got {steps}")
        if getattr(inputs.base, "normalizer_eps", None) is not None:
            raise ValueError(f"{where}: `normalizer_eps` must be None (a normalised output is not linear in `v`)")
        lam, shape = inputs.lam, tuple(inputs.base.v.shape[:3])
        if lam.dim() != 4 or lam.shape[:3] != shape or lam.shape[-1] < 2:
            raise ValueError(f"{where}: `lam` must have shape {shape} + (num_levels >= 2,), got {tuple(lam.shape)}")

    # -- the reference loop -------------------------------------------------------------------------------------

    def loop(self, inputs, state):
        self._check(inputs)
        base, lam = inputs.base, inputs.lam
        batch, _, _, levels = lam.shape
        bucket = torch.arange(levels, device=lam.device)
        if state is None:
            S, position = None, torch.zeros(batch, dtype=torch.long, device=lam.device)
        else:
            S, position = state
        own = (bucket == 0).repeat(batch)[:, None]  # (B·L, 1): the input enters bucket 0 only
        # split once: indexing a slice per token would give every token's backward a full-length zero tensor
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
        steps = {k: t.split(1, dim=2) for k, t in fields.items() if isinstance(t, Tensor)}
        outs = []
        for i, lam_i in enumerate(lam.unbind(2)):
            token = dataclasses.replace(base, **{k: parts[i] for k, parts in steps.items()})
            token = _keep(_tile(token, levels), "v", own)
            if S is not None:
                S = self._merge(S, position)
            o, S = self.base.loop(token, None if S is None else S.flatten(0, 1))
            S = S.unflatten(0, (batch, levels))
            outs.append(torch.einsum("bhj,bjhd->bhd", lam_i, o.unflatten(0, (batch, levels))[:, :, :, 0]))
            position = position + 1
        return torch.stack(outs, 2), (S, position)

    @staticmethod
    def _merge(S: Tensor, position: Tensor) -> Tensor:
        """Buckets ``S`` ``(batch, L, ...)`` after token ``p - 1`` regrouped by level from token ``p = position``:
        those below ``g = ℓ(p, p - 1) = min(n + 1, L - 1)`` summed into bucket ``g`` (none for ``p = 0``)."""
        batch, levels = S.shape[:2]
        g = fenwick_level(position, position - 1, levels) * (position > 0)
        bucket = torch.arange(levels, device=S.device)
        shape = (batch, levels, *(1,) * (S.dim() - 2))
        below, into = (bucket < g[:, None]).view(shape), (bucket == g[:, None]).view(shape)
        merged = torch.where(below, S, 0).sum(1, keepdim=True)
        return torch.where(below, 0, S) + torch.where(into, merged, 0)

    # -- the parallel form ---------------------------------------------------------------------------------------

    def parallel(self, inputs, state, mode, **kwargs):
        self._check(inputs)
        base, lam = inputs.base, inputs.lam
        batch, heads, length, levels = lam.shape
        device = lam.device

        def run(x: Any, S: Tensor | None = None) -> tuple[Tensor, Tensor]:
            return self.base.parallel(x, S, mode, **kwargs)

        fresh = state is None
        start = torch.zeros(batch, dtype=torch.long, device=device) if fresh else state[1]
        pos = start[:, None] + torch.arange(length, device=device)  # (B, T) absolute positions
        out = lam[..., :1] * _unfold(run(_fold(base, 1))[0], batch)  # level 0: each token alone
        window = 1 + (length - 1).bit_length()  # the first level whose half block, 2^(ℓ-1), is >= T
        for level in range(1, min(window, levels - 1)):
            size = 2**level
            placed, back = self._aligned(base, start, length, size, fresh)
            second = (torch.arange(placed.v.shape[2], device=device) % size >= size // 2)[None]
            placed = _keep(_keep(placed, "v", ~second), "q", second)
            out = out + lam[..., level, None] * _at(_unfold(run(_fold(placed, size))[0], batch), back)
        if window > levels - 1:
            out = out + lam[..., -1:] * self._capped(base, start, length, 2 ** (levels - 2), fresh, run)
        elif not fresh:
            out = out + self._across(base, lam, start, pos, 2 ** (window - 1), run)
        if not fresh:
            out = out + self._from_buckets(base, lam, state[0], start, pos, run)
        return out, (self._final(base, None if fresh else state[0], start, pos, levels, run), start + length)

    @staticmethod
    def _aligned(base: Any, start: Tensor, length: int, size: int, fresh: bool) -> tuple[Any, Tensor]:
        """``base`` on slots aligned to absolute multiples of ``size``: row ``b``'s token ``i`` at slot
        ``start_b mod size + i`` of ``(batch, heads, n·size, ...)``, no-op tokens elsewhere; and each token's slot
        ``(batch, T)``."""
        shift = start % size
        slots = -(-(length + (0 if fresh else size - 1)) // size) * size
        index = torch.arange(slots, device=start.device) - shift[:, None]
        back = torch.arange(length, device=start.device) + shift[:, None]
        return _place(base, index, (index >= 0) & (index < length)), back

    def _capped(self, base: Any, start: Tensor, length: int, size: int, fresh: bool, run) -> Tensor:
        """Level ``L - 1`` of the new tokens: ``t`` reads the base state over the new tokens before its aligned
        block of ``size = 2^(L-2)``, carried block to block and run through the block with ``v = 0``."""
        batch = start.shape[0]
        placed, back = self._aligned(base, start, length, size, fresh)
        blocks = _map(placed, lambda t: t.unflatten(2, (-1, size)).transpose(1, 2))  # (B, n, H, size, ...)
        n = placed.v.shape[2] // size
        S, starts = None, []
        for j in range(n - 1):
            _, S = run(_map(blocks, lambda t: t[:, j]), S)
            starts.append(S)
        later = _map(blocks, lambda t: t[:, 1:].flatten(0, 1))  # block 0 has nothing before it
        reads = run(dataclasses.replace(later, v=torch.zeros_like(later.v)), torch.stack(starts, 1).flatten(0, 1))[0]
        reads = _unfold(reads, batch)
        return _at(torch.cat([torch.zeros_like(reads[:, :, :size]), reads], 2), back)

    def _across(self, base: Any, lam: Tensor, start: Tensor, pos: Tensor, half: int, run) -> Tensor:
        """The levels whose half block ``half = 2^(ℓ-1)`` is no shorter than the input: the new tokens meet across
        ``m``, the first multiple of ``half`` after ``start``, if it is in range; the pairs ``s < m <= t`` all have
        level ``ℓ(m, m - 1)``."""
        batch, heads, length, _ = lam.shape
        m = (start // half + 1) * half
        after = pos >= m[:, None]
        x = _keep(_keep(base, "v", ~after), "q", after & (m < start + length)[:, None])
        level = fenwick_level(m, m - 1, lam.shape[-1])
        return lam.gather(-1, level.view(batch, 1, 1, 1).expand(-1, heads, length, 1)) * run(x)[0]

    def _from_buckets(self, base: Any, lam: Tensor, S: Tensor, start: Tensor, pos: Tensor, run) -> Tensor:
        """The state's buckets: bucket ``j`` (after token ``start - 1``) run with ``v = 0`` and read at ``t`` with
        weight ``λ_t^{max(ℓ(t, start - 1), j)}``, all ``L`` in one base run of batch ``B·L``."""
        batch, heads, length, levels = lam.shape
        silent = dataclasses.replace(base, v=torch.zeros_like(base.v))
        reads = run(_tile(silent, levels), S.flatten(0, 1))[0].unflatten(0, (batch, levels))  # (B, L, H, T, d)
        level = torch.maximum(
            fenwick_level(pos, start[:, None] - 1, levels)[:, :, None], torch.arange(levels, device=pos.device)
        )  # (B, T, L)
        weight = lam.gather(-1, level[:, None].expand(-1, heads, -1, -1))
        return torch.einsum("bhtj,bjhtd->bhtd", weight, reads)

    def _final(self, base: Any, S: Tensor | None, start: Tensor, pos: Tensor, levels: int, run) -> Tensor:
        """Bucket ``j`` at the last token ``t_end``: the new tokens with ``ℓ(t_end, s) = j`` (``v`` masked to them)
        run from the sum of the old buckets ``i`` whose level from ``t_end`` is ``j``; batch ``B·L``."""
        batch, end = pos.shape[0], pos[:, -1]
        bucket = torch.arange(levels, device=pos.device)
        mine = fenwick_level(end[:, None], pos, levels)[:, None, :] == bucket[None, :, None]  # (B, L, T)
        x = _keep(_tile(base, levels), "v", mine.flatten(0, 1))
        if S is not None:
            moved = torch.maximum(fenwick_level(end, start - 1, levels)[:, None], bucket)  # (B, L): old bucket -> new
            S = torch.zeros_like(S).scatter_add(1, moved.view(*moved.shape, *(1,) * (S.dim() - 2)).expand_as(S), S)
            S = S.flatten(0, 1)
        return run(x, S)[1].unflatten(0, (batch, levels))

    # -- views ---------------------------------------------------------------------------------------------------

    def operator(self, inputs):
        """``M[b, h, t, s] = λ_t^{ℓ(t, s)} M^base[b, h, t, s]``."""
        self._check(inputs)
        lam = inputs.lam
        batch, heads, length, levels = lam.shape
        t = torch.arange(length, device=lam.device)
        level = fenwick_level(t[:, None], t[None, :], levels)
        return self.base.operator(inputs.base) * lam.gather(-1, level.expand(batch, heads, -1, -1))

    def mixer_io(self, inputs, out, chunk_size=None):
        return self.base.mixer_io(inputs.base, out, chunk_size)

    def eigenvalues(self, inputs):
        return self.base.eigenvalues(inputs.base)


# -- the layers ------------------------------------------------------------------------------------------------------


@dataclass
class LogLinearState(RecurrentState):
    """The state of a log-linear layer: ``S`` the buckets ``(batch, L, heads, d_k, d_v)``, ``position`` the
    position of the next token ``(batch,)`` (int64); a subclass adds the base layer's other fields."""

    engine_fields = ("S", "position")
    S: Tensor
    position: Tensor


@dataclass
class LogLinearMamba2State(LogLinearState):
    """:class:`LogLinearState` plus Mamba-2's ``conv`` (its last ``d_conv - 1`` conv inputs)."""

    conv: Tensor


@dataclass
class LogLinearDeltaNetState(LogLinearState):
    """:class:`LogLinearState` plus DeltaNet's short convolutions' last inputs ``conv_q, conv_k, conv_v``."""

    conv_q: Tensor
    conv_k: Tensor
    conv_v: Tensor


class LogLinearLayer:
    """Mixin turning an engine-3 or engine-4 layer into its log-linear version (listed first among the bases):
    the level weights ``λ_t = softplus(W_λ x_t + b) ∈ R^L`` per head, the bias initialised so that
    ``softplus(b) = 1`` (near the base model at initialisation), passed to the engine with the base's inputs;
    the state is ``state_type``, the base's fields with the buckets ``S`` for its engine state and a position."""

    state_type: ClassVar[type[LogLinearState]]
    num_heads: int
    d_model: int

    def _add_levels(self, num_levels: int) -> None:
        self.num_levels = check_int(type(self).__name__, "num_levels", num_levels, minimum=2)
        self.lam_proj = nn.Linear(self.d_model, self.num_heads * num_levels)
        nn.init.constant_(self.lam_proj.bias, math.log(math.e - 1))  # softplus^{-1}(1)

    def init_state(self, batch_size: int, device=None, dtype=None) -> LogLinearState:
        state = super().init_state(batch_size, device, dtype)
        S = state.engine_state()
        position = torch.zeros(batch_size, dtype=torch.long, device=S.device)
        return self._with_buckets(state, S.new_zeros(batch_size, self.num_levels, *S.shape[1:]), position)

    def engine_inputs(self, x: Tensor, state: LogLinearState | None = None) -> tuple[LogLinearInputs, Any]:
        """The base's inputs and ``λ`` ``(B, H, T, L)`` in the state dtype."""
        inputs, carry = super().engine_inputs(x, state)
        lam = F.softplus(self.lam_proj(x).to(state_dtype(x.dtype)))
        return LogLinearInputs(inputs, lam.unflatten(-1, (self.num_heads, self.num_levels)).transpose(1, 2)), carry

    def read_output(
        self, x: Tensor, out: Tensor, final: tuple[Tensor, Tensor], carry: Any
    ) -> tuple[Tensor, LogLinearState]:
        S, position = final
        y, state = super().read_output(x, out, S, carry)
        return y, self._with_buckets(state, S, position)

    def _with_buckets(self, state: RecurrentState, S: Tensor, position: Tensor) -> LogLinearState:
        """``state`` (the base layer's) with ``S`` and ``position`` for its engine state."""
        rest = {k: v for k, v in state.tensors().items() if k not in state.engine_fields}
        return self.state_type(S=S, position=position, **rest)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_levels={self.num_levels}"


@register(
    "log_linear_mamba2",
    family="log-linear attention",
    paper="Guo et al. 2025, Log-Linear Attention",
    negative_eigenvalues=True,
    tier=2,
)
class LogLinearMamba2(LogLinearLayer, Mamba2):
    """Log-linear Mamba-2: :class:`~rnnzoo.layers.mamba2.Mamba2` with its SSD output spread over ``num_levels``
    Fenwick buckets, each weighted per head by ``λ_t = softplus(W_λ x_t + b)``::

        y_t = Σ_{s<=t} λ_t^{ℓ(t, s)} C_t^T (Π_{r=s+1..t} α_r) B_s (Δ_s x_s) + D ⊙ x_t
        out = out_proj(RMSNorm(y ⊙ SiLU(z)))             # Mamba-2's gate and norm

    (:mod:`rnnzoo.layers.log_linear`). Arguments as Mamba-2's, plus ``num_levels`` (``L >= 2``; tokens
    ``2^(L-2)`` or more apart share the last level). State: :class:`LogLinearMamba2State`. Operator: Mamba-2's
    (one group per head, mixing ``Δ x``) times the level weights.
    """

    engine = LogLinearEngine(MatrixEngine())
    state_type = LogLinearMamba2State

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        d_conv: int = 4,
        expand: float = 2,
        headdim: int | None = None,
        num_heads: int | None = None,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        negative_eigenvalues: bool = False,
        norm_eps: float = 1e-5,
        num_levels: int = DEFAULT_NUM_LEVELS,
        mode: str = "auto",
    ) -> None:
        super().__init__(
            d_model, d_state, d_conv, expand, headdim, num_heads, ngroups, A_init_range, dt_min, dt_max,
            negative_eigenvalues, norm_eps, mode,
        )  # fmt: skip
        self._add_levels(num_levels)


@register(
    "log_linear_gated_deltanet",
    family="log-linear attention",
    paper="Guo et al. 2025, Log-Linear Attention",
    negative_eigenvalues=True,
    tier=2,
)
class LogLinearGatedDeltaNet(LogLinearLayer, GatedDeltaNet):
    """Log-linear Gated DeltaNet: :class:`~rnnzoo.layers.deltanet.GatedDeltaNet` with its delta-rule output
    spread over ``num_levels`` Fenwick buckets, each weighted per head by ``λ_t = softplus(W_λ x_t + b)``::

        o_t = Σ_{s<=t} λ_t^{ℓ(t, s)} q_t^T A_t ⋯ A_{s+1} β_s k_s v_s^T,   A_r = α_r (I - β_r k_r k_r^T)
        y_t = W_o (RMSNorm_h(o_t) ⊙ SiLU(W_g x_t))

    (:mod:`rnnzoo.layers.log_linear`). Arguments as Gated DeltaNet's, plus ``num_levels`` (``L >= 2``).
    State: :class:`LogLinearDeltaNetState`. Operator: Gated DeltaNet's (one group per head) times the level
    weights.
    """

    engine = LogLinearEngine(DeltaRuleEngine())
    state_type = LogLinearDeltaNetState

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        expand_k: float = 1.0,
        expand_v: float = 2.0,
        d_conv: int = 4,
        norm_eps: float = 1e-5,
        negative_eigenvalues: bool = False,
        num_levels: int = DEFAULT_NUM_LEVELS,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, num_heads, expand_k, expand_v, d_conv, norm_eps, negative_eigenvalues, mode)
        self._add_levels(num_levels)
