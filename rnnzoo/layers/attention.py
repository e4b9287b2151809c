"""Softmax attention: the Transformer's causal multi-head self-attention with rotary positions and a KV cache.

Vaswani et al. (2017), "Attention Is All You Need"; rotary positions from Su,
Lu, Pan, Murtadha, Wen, Liu (2021), "RoFormer: Enhanced Transformer with Rotary
Position Embedding". The baseline every recurrent model is compared with. Its
"state" is the cache of every past key and value, which grows by one entry
per token: O(t) memory and O(t) work per step, where a recurrent model's are
O(1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..registry import register
from .base import EngineLayer, RecurrentState, state_dtype
from .common import ROTARY_BASE, head_size, merge_heads, rotate, split_heads
from .engines import AttentionEngine, AttentionInputs
from .padding import Padding, gather_rows

__all__ = ["Attention", "KVCache", "append_to_cache"]

@dataclass
class _Room:
    """Preallocated key and value buffers ``(batch, heads, capacity, d_head)`` whose first ``filled`` tokens
    are written; the caches that view them share it."""

    k: Tensor
    v: Tensor
    filled: int


@dataclass
class KVCache(RecurrentState):
    """The rotated keys ``k`` and the values ``v`` of the ``t`` tokens seen, each ``(batch, heads, t, d_head)``.

    The next token's position is ``t`` (:attr:`position`). ``_room``, when set,
    holds the buffers that ``k`` and ``v`` are views of, with space for more
    tokens (see :func:`append_to_cache`); it is not part of the state's value.
    ``valid`` ``(batch, t)``, when set, is False at the padding of a batch of
    different lengths (:meth:`Attention._forward_padded`): no token attends to
    those entries, now or later; ``pads`` ``(batch,)`` counts them, so that a
    row's next token takes its own position (:attr:`row_position`).
    """

    k: Tensor
    v: Tensor
    _room: _Room | None = field(default=None, repr=False, compare=False)
    dropped: int = 0  # tokens seen before the first one stored (sliding-window attention keeps the last ones)
    valid: Tensor | None = None
    pads: Tensor | None = None

    def tensors(self) -> dict[str, Tensor]:
        masks = {} if self.valid is None else {"valid": self.valid, "pads": self.pads}
        return {"k": self.k, "v": self.v, **masks}

    def engine_state(self) -> KVCache:
        return self

    def pytree_context(self) -> dict:
        return {"dropped": self.dropped}

    @classmethod
    def empty(cls, like: Tensor) -> KVCache:
        """No tokens seen, for queries ``like`` ``(batch, heads, ·, d_head)``."""
        empty = like.new_zeros(*like.shape[:2], 0, like.shape[-1])
        return cls(empty, empty.clone())

    def append(self, k: Tensor, v: Tensor, valid: Tensor | None = None) -> KVCache:
        """:func:`append_to_cache`."""
        return append_to_cache(self, k, v, valid)

    @property
    def position(self) -> int:
        """Entries seen so far (tokens and padding): the position of the next one."""
        return self.dropped + self.k.shape[2]

    @property
    def row_position(self) -> int | Tensor:
        """The position of each row's next token: :attr:`position`, less the row's padding (a ``(batch,)``
        tensor) where the cache holds some."""
        return self.position if self.pads is None else self.position - self.pads

    def trimmed(self, keep: int) -> KVCache:
        """The cache of the last ``keep`` tokens only (sliding-window attention), positions kept."""
        stored = self.k.shape[2]
        if stored <= keep:
            return self
        valid = None if self.valid is None else self.valid[:, stored - keep :]
        kept = (self.k[:, :, stored - keep :], self.v[:, :, stored - keep :])
        return KVCache(*kept, dropped=self.dropped + stored - keep, valid=valid, pads=self.pads)


def append_to_cache(cache: KVCache, k: Tensor, v: Tensor, valid: Tensor | None = None) -> KVCache:
    """The cache after the tokens ``k, v`` ``(batch, heads, n, d_head)``, padding where ``valid`` ``(batch, n)``
    is False; ``cache`` itself stays valid.

    Under autograd (a tensor requires grad) by concatenation, so gradients
    reach the old cache, and likewise in a compiled graph (which keeps no buffers between calls). Otherwise the tokens are written in place into
    buffers of twice the needed capacity (amortised doubling), so a step costs
    O(n), not a copy of the whole cache. A buffer is written only at its end
    (``filled == cache.position``): appending twice to one cache (branching
    generation) copies the second branch into buffers of its own.
    """
    t, n, dropped = cache.k.shape[2], k.shape[2], cache.dropped
    if cache.valid is not None or valid is not None:  # a padded batch: concatenated, with its mask
        batch = k.shape[0]
        old = cache.valid if cache.valid is not None else torch.ones(batch, t, dtype=torch.bool, device=k.device)
        new = valid if valid is not None else torch.ones(batch, n, dtype=torch.bool, device=k.device)
        keys, values = torch.cat([cache.k, k], 2), torch.cat([cache.v, v], 2)
        pads = (~new).sum(1) + (0 if cache.pads is None else cache.pads)
        return KVCache(keys, values, dropped=dropped, valid=torch.cat([old, new], 1), pads=pads)
    if t == 0:
        return KVCache(k, v, dropped=dropped)
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in (cache.k, cache.v, k, v))
    if grad or torch.compiler.is_compiling():
        return KVCache(torch.cat([cache.k, k], 2), torch.cat([cache.v, v], 2), dropped=dropped)
    room = cache._room
    if (
        room is None
        or room.filled != t
        or room.k.shape[2] < t + n
        or (room.k.is_inference() and not torch.is_inference_mode_enabled())
    ):
        batch, heads, _, d_head = cache.k.shape
        buffers = [cache.k.new_empty(batch, heads, 2 * (t + n), d_head) for _ in range(2)]
        room = _Room(*buffers, filled=t)
        room.k[:, :, :t], room.v[:, :, :t] = cache.k, cache.v
    room.k[:, :, t : t + n], room.v[:, :, t : t + n] = k, v
    room.filled = t + n
    return KVCache(room.k[:, :, : t + n], room.v[:, :, : t + n], room, dropped)


@register(
    "attention",
    family="Transformer",
    paper="Vaswani et al. 2017, Attention Is All You Need; Su et al. 2021, RoFormer (rotary positions)",
)
class Attention(EngineLayer):
    """Causal multi-head softmax attention with rotary positions, per head at position ``n``::

        q_n, k_n, v_n = R_n W_q x_n,  R_n W_k x_n,  W_v x_n
        o_n = Σ_{n-w < m <= n} softmax_m(q_n · k_m / sqrt(d_head)) v_m      (w = window; all m <= n if None)
        y_n = W_o [o_n of every head]

    With ``window`` (sliding-window or local attention, as Griffin's and Mistral's), each token attends to
    itself and the ``window - 1`` before it, and the cache keeps only those: the state and a step cost
    O(window), whatever the context.

    ``R_n`` is the rotary embedding (:func:`rotate`), ``d_head = d_model /
    num_heads`` (even). Projections have no biases (``W_q, W_k, W_v`` fused into
    one linear map) and PyTorch's default initialisation.

    Modes: ``"sdpa"`` runs ``F.scaled_dot_product_attention`` over the whole
    input (``is_causal`` from an empty cache; after a cache, over cache and
    input with the causal mask offset by the cache length); ``"recurrent"`` is
    token by token through the cache, as :meth:`step`. State: :class:`KVCache`,
    which ``layer(x2, state)`` continues at the right positions. For
    half-precision parameters the cache and the attention are float32.
    """

    engine = AttentionEngine(KVCache)

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        rotary_base: float = ROTARY_BASE,
        window: int | None = None,
        mode: str = "auto",
    ) -> None:
        super().__init__(d_model, mode)
        self.num_heads = check_int("Attention", "num_heads", num_heads)
        self.window = None if window is None else check_int("Attention", "window", window)
        self.head_dim = head_size("Attention", "d_model", d_model, num_heads)
        if self.head_dim % 2:
            raise ValueError(f"Attention: d_model / num_heads = {self.head_dim} must be even (rotary pairs)")
        if not rotary_base > 1:
            raise ValueError(f"Attention: `rotary_base` must be > 1, got {rotary_base!r}")
        self.rotary_base = float(rotary_base)
        self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch_size: int, device=None, dtype=None) -> KVCache:
        kw = self._state_kwargs(device, dtype)
        kw["dtype"] = state_dtype(kw["dtype"])
        empty = torch.zeros(batch_size, self.num_heads, 0, self.head_dim, **kw)
        return KVCache(empty, empty.clone())

    def engine_inputs(self, x: Tensor, state: KVCache | None = None) -> tuple[AttentionInputs, None]:
        """``(q, k, v)`` ``(batch, heads, time, d_head)`` in the state dtype, rotated from the cache's position."""
        return self._inputs(x, 0 if state is None else state.row_position), None

    def _inputs(self, x: Tensor, start: int | Tensor) -> AttentionInputs:
        """``(q, k, v)``, rotated from position ``start`` (per row, a ``(batch,)`` tensor)."""
        heads = split_heads(self.qkv_proj(x), 3 * self.num_heads, state_dtype(x.dtype))  # q, k, v heads in turn
        q, k = rotate(heads[:, : 2 * self.num_heads], start, self.rotary_base).chunk(2, 1)
        return AttentionInputs(q, k, heads[:, 2 * self.num_heads :], self.window)

    def read_output(self, x: Tensor, o: Tensor, cache: KVCache, carry: None) -> tuple[Tensor, KVCache]:
        return self.out_proj(merge_heads(o, x.dtype)), cache

    def _check_state(self, state: KVCache | None, batch_size: int, device: torch.device) -> None:
        """A cache of any length ``t``: ``k`` and ``v`` ``(batch, heads, t, d_head)``."""
        if state is None:
            return
        if not isinstance(state, KVCache):
            raise TypeError(
                f"Attention: `state` must be a KVCache (from this layer's init_state, forward or step), "
                f"got {type(state).__name__}"
            )
        want = (batch_size, self.num_heads, self.head_dim)
        for name, got in {"k": state.k, "v": state.v}.items():
            shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
            if not isinstance(got, Tensor) or got.dim() != 4 or (*got.shape[:2], got.shape[3]) != want:
                raise ValueError(
                    f"Attention: `state.{name}` must have shape ({batch_size}, {self.num_heads}, t, {self.head_dim}) "
                    f"(batch={batch_size}, heads, tokens seen, d_head), got {shape}; was the state made for another "
                    f"batch size or layer?"
                )
            self._check_state_tensor(name, got, state_dtype(self._param_dtype()), device)
        if state.k.shape[2] != state.v.shape[2]:
            tokens = f"{state.k.shape[2]} and {state.v.shape[2]}"
            raise ValueError(f"Attention: `state.k` and `state.v` must hold as many tokens, got {tokens}")
        masks = {"valid": (torch.bool, (batch_size, state.k.shape[2])), "pads": (torch.int64, (batch_size,))}
        for name, (dtype, shape) in masks.items():
            got = getattr(state, name)
            if (got is None) != (state.valid is None) or (got is not None and (got.dtype, tuple(got.shape)) != (dtype, shape)):
                found = "None" if got is None else f"{got.dtype} {tuple(got.shape)}"
                raise ValueError(f"Attention: `state.{name}` must be {dtype} of shape {shape} with the padding mask, got {found}")

    def _forward_padded(self, x: Tensor, state: KVCache | None, mode: str, padding: Padding) -> tuple[Tensor, KVCache]:
        """Every row's keys in one cache: the rows are rotated so that their tokens end together (left padding),
        the padding's entries masked in the cache (``KVCache.valid``) for this call and every later one, and
        each row's tokens rotated from the row's own position (``KVCache.pads``)."""
        index, inverse = padding.aligned("end")
        pads = padding.time - padding.length
        valid = Padding(pads, padding.length, padding.time).valid()
        x_end = gather_rows(x, index).masked_fill(~valid[..., None], 0.0)
        start = (0 if state is None else state.row_position) - pads  # the first token of each row at its position
        inputs = dataclasses.replace(self._inputs(x_end, start), valid=valid)
        out, cache = self._run(inputs, state, mode)
        y, cache = self.read_output(x_end, out, cache, None)
        return gather_rows(y, inverse).masked_fill(~padding.valid()[..., None], 0.0), cache

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_heads={self.num_heads}, head_dim={self.head_dim}"
