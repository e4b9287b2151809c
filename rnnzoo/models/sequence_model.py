"""A token-level sequence model around any registered layer: a causal LM or a per-position classifier.

    h_0 = Embedding(tokens)
    h_l = h_{l-1} + mixer_l(RMSNorm(h_{l-1}))        # any registered layer, with its state
    h_l = h_l + MLP_l(RMSNorm(h_l))                   # SwiGLU or GELU (or none)
    logits = Linear(RMSNorm(h_L))                     # per position: (batch, time, num_classes)

The pre-norm residual block of GPT-2 / Llama (as in nanoGPT's ``model.py``), with the attention
replaced by a layer from :mod:`rnnzoo.registry` chosen by name. The model's state is the list of its
mixers' states, so it runs like its layers: in parallel over a sequence, continued through ``state``,
or one token at a time with :meth:`SequenceModel.step`, all giving the same logits.

>>> model = SequenceModel(vocab_size=16, mixer="mamba", d_model=32)
>>> logits, state = model(torch.randint(16, (2, 10)))          # (2, 10, 16)
>>> logits_t, state = model.step(torch.randint(16, (2,)), state)
>>> size_d_model(100_000, vocab_size=16, mixer="mamba")        # the d_model of a ~100k-parameter model
>>> size_model(100_000, vocab_size=16, mixer="gla")              # {"d_model": ..., "mlp_hidden": ...}: 100k ± 3%
>>> state_size(dict(vocab_size=16, mixer="gla", d_model=64))     # floats in its recurrent state (batch 1)
"""

from __future__ import annotations

import inspect
import math
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int, checking_values
from ..layers.base import RecurrentState
from ..registry import create, model_info

__all__ = [
    "MATCHES",
    "MLP",
    "MLP_KINDS",
    "PARAM_TOLERANCE",
    "Block",
    "SequenceModel",
    "size_d_model",
    "size_model",
    "state_size",
]  # fmt: skip

MLP_KINDS = ("swiglu", "gelu", "none")


class MLP(nn.Module):
    """The channel mixer: ``W_2 GELU(W_1 x)`` (``"gelu"``, hidden ``mlp_ratio · d``) or
    ``W_2 (SiLU(W_1 x) ⊙ W_3 x)`` (``"swiglu"``, Shazeer 2020; hidden ``2/3 · mlp_ratio · d`` so both
    kinds have about the same parameter count). Works on any leading shape.

    ``d_hidden``, when given, is the hidden width itself and ``mlp_ratio`` is ignored (the fine knob
    :func:`size_model` turns to hit a parameter budget)."""

    def __init__(self, d_model: int, kind: str = "swiglu", mlp_ratio: float = 4.0, d_hidden: int | None = None) -> None:
        super().__init__()
        self.kind = kind
        if d_hidden is not None:
            d_hidden = check_int("MLP", "d_hidden", d_hidden)
        if kind == "swiglu":
            d_hidden = d_hidden or max(1, round(2 / 3 * mlp_ratio * d_model))
            self.w_in = nn.Linear(d_model, 2 * d_hidden, bias=False)
            self.w_out = nn.Linear(d_hidden, d_model, bias=False)
        else:
            d_hidden = d_hidden or max(1, round(mlp_ratio * d_model))
            self.w_in = nn.Linear(d_model, d_hidden)
            self.w_out = nn.Linear(d_hidden, d_model)
        self.d_hidden = d_hidden

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "swiglu":
            gate, value = self.w_in(x).chunk(2, dim=-1)
            return self.w_out(F.silu(gate) * value)
        return self.w_out(F.gelu(self.w_in(x)))


class Block(nn.Module):
    """``x + mixer(RMSNorm(x))``, then ``x + MLP(RMSNorm(x))`` (no MLP with ``mlp="none"``)."""

    def __init__(
        self, d_model: int, mixer: nn.Module, mlp: str, mlp_ratio: float, mlp_hidden: int | None = None
    ) -> None:
        super().__init__()
        self.mixer_norm = nn.RMSNorm(d_model)
        self.mixer = mixer
        self.mlp_norm = nn.RMSNorm(d_model) if mlp != "none" else None
        self.mlp = MLP(d_model, mlp, mlp_ratio, mlp_hidden) if mlp != "none" else None

    def _mlp(self, x: Tensor) -> Tensor:
        return x if self.mlp is None else x + self.mlp(self.mlp_norm(x))

    def forward(self, x: Tensor, state: RecurrentState | None, mode: str | None, **lengths) -> tuple[Tensor, RecurrentState]:
        """``lengths``: the mixer's ``attention_mask`` or ``cu_seqlens`` (the norms and the MLP act per token)."""
        y, state = self.mixer(self.mixer_norm(x), state, mode=mode, **lengths)
        return self._mlp(x + y), state

    def step(self, x_t: Tensor, state: RecurrentState | None) -> tuple[Tensor, RecurrentState]:
        y_t, state = self.mixer.step(self.mixer_norm(x_t), state)
        return self._mlp(x_t + y_t), state


def _takes(cls: type, name: str) -> bool:
    return name in inspect.signature(cls.__init__).parameters


def mixer_pattern(mixer: str) -> list[str]:
    """The registered layers of ``mixer``: one name, or a comma-separated pattern repeated over the blocks
    (``"hawk,hawk,attention"``: Griffin's two recurrent blocks per attention block)."""
    if not isinstance(mixer, str) or not mixer.strip():
        raise ValueError(f"SequenceModel: `mixer` must be a registered layer name or a comma-separated pattern, got {mixer!r}")
    pattern = [name.strip() for name in mixer.split(",")]
    for name in pattern:
        try:
            model_info(name)
        except ValueError as e:
            raise ValueError(f"SequenceModel: `mixer`: {e}") from None
    return pattern


def _kwargs_per_mixer(where: str, pattern: list[str], mixer_kwargs: dict) -> dict[str, dict]:
    """Keywords for each layer of ``pattern``: ``mixer_kwargs`` itself for one layer; for a pattern, a dict of
    keyword dicts keyed by layer name (layers not named get none)."""
    if len(set(pattern)) == 1:
        return {pattern[0]: mixer_kwargs}
    unknown = set(mixer_kwargs) - set(pattern)
    if unknown or not all(isinstance(v, dict) for v in mixer_kwargs.values()):
        raise ValueError(
            f"{where}: with a mixer pattern, `mixer_kwargs` maps layer names of the pattern {sorted(set(pattern))} to "
            f"their keywords (e.g. {{'attention': {{'num_heads': 2}}}}), got {mixer_kwargs!r}"
        )
    return {name: dict(mixer_kwargs.get(name, {})) for name in pattern}


class SequenceModel(nn.Module):
    """Embedding, ``n_layers`` pre-norm residual blocks around the registered layer ``mixer``, final RMSNorm,
    linear head to ``num_classes`` per position (``None``: ``vocab_size``, a causal LM). ``mixer`` may be a
    comma-separated pattern of layers repeated over the blocks, for hybrids (``"gla,gla,attention"``); its
    ``mixer_kwargs`` then map each layer name to its keywords.

    ``mixer_kwargs`` go to every layer (e.g. ``{"negative_eigenvalues": True}``). A mixer taking
    ``lower_bound`` (HGRN, HGRN2) that is not given one gets the bound rising with depth ``l / n_layers``
    for layer ``l = 0..n_layers-1`` (the HGRN paper's learned bounds ``cumsum(softmax(Γ)) - softmax(Γ)_0``
    at their zero initialisation, kept fixed here). Embedding and head are not tied.

    ``mlp_hidden`` fixes the MLPs' hidden width (default: from ``mlp_ratio``, see :class:`MLP`); it is
    the fine knob with which :func:`size_model` lands on a parameter budget.

    The state is a list of the mixers' states, one per block.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int | None = None,
        *,
        mixer: str,
        d_model: int,
        n_layers: int = 2,
        mixer_kwargs: dict | None = None,
        mlp: str = "swiglu",
        mlp_ratio: float = 4.0,
        mlp_hidden: int | None = None,
    ) -> None:
        super().__init__()
        where = "SequenceModel"
        self.vocab_size = check_int(where, "vocab_size", vocab_size)
        self.num_classes = vocab_size if num_classes is None else check_int(where, "num_classes", num_classes)
        self.d_model = check_int(where, "d_model", d_model)
        self.n_layers = check_int(where, "n_layers", n_layers)
        if mlp not in MLP_KINDS:
            raise ValueError(f"{where}: `mlp` must be one of {MLP_KINDS}, got {mlp!r}")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not mlp_ratio > 0:
            raise ValueError(f"{where}: `mlp_ratio` must be a number > 0, got {mlp_ratio!r}")
        if mlp_hidden is not None:
            check_int(where, "mlp_hidden", mlp_hidden)
            if mlp == "none":
                raise ValueError(f"{where}: `mlp_hidden` needs an MLP, but mlp='none'")
        self.mlp_hidden = mlp_hidden
        pattern = mixer_pattern(mixer)
        mixer_kwargs = dict(mixer_kwargs or {})
        self.mixer_name = mixer
        self.mixer_kwargs = mixer_kwargs
        per_mixer = _kwargs_per_mixer(where, pattern, mixer_kwargs)

        def make_mixer(layer: int) -> nn.Module:
            name = pattern[layer % len(pattern)]
            kwargs = per_mixer[name]
            rising_bound = "lower_bound" not in kwargs and _takes(model_info(name).cls, "lower_bound")
            bound = {"lower_bound": layer / n_layers} if rising_bound else {}
            return create(name, d_model, **kwargs, **bound)

        self.embedding = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(Block(d_model, make_mixer(i), mlp, mlp_ratio, mlp_hidden) for i in range(n_layers))
        self.norm = nn.RMSNorm(d_model)
        self.head = nn.Linear(d_model, self.num_classes, bias=False)

    def num_parameters(self) -> int:
        """Number of trainable parameters (embedding and head included)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> list[RecurrentState]:
        """Every mixer's initial (zero) state."""
        return [block.mixer.init_state(batch_size, device=device, dtype=dtype) for block in self.blocks]

    def forward(
        self,
        tokens: Tensor,
        state: Sequence[RecurrentState] | None = None,
        *,
        mode: str | None = None,
        attention_mask: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, list[RecurrentState]]:
        """``tokens`` ``(batch, time)`` of ids in ``[0, vocab_size)`` -> ``(logits (batch, time, num_classes),
        state)``; ``mode`` goes to every mixer (``"recurrent"``, ``"auto"`` or a parallel mode they all offer).

        Sequences of different lengths: ``attention_mask`` ``(batch, time)`` (1 at a token, 0 at right or left
        padding) or ``cu_seqlens`` (``n`` sequences packed into ``tokens`` ``(1, total)``), as every layer takes
        them (:meth:`~rnnzoo.layers.base.SequenceLayer.forward`): each sequence runs as if alone."""
        self._check_tokens(tokens, "tokens", ("batch", "time"))
        states = self._check_state(state)
        lengths = {k: v for k, v in (("attention_mask", attention_mask), ("cu_seqlens", cu_seqlens)) if v is not None}
        x = self.embedding(tokens)
        new_states = []
        for block, s in zip(self.blocks, states):
            x, s = block(x, s, mode, **lengths)
            new_states.append(s)
        return self.head(self.norm(x)), new_states

    def step(
        self, token: Tensor, state: Sequence[RecurrentState] | None = None
    ) -> tuple[Tensor, list[RecurrentState]]:
        """One token per sequence, ``token`` ``(batch,)`` -> ``(logits (batch, num_classes), state)``."""
        self._check_tokens(token, "token", ("batch",))
        states = self._check_state(state)
        x = self.embedding(token)
        new_states = []
        for block, s in zip(self.blocks, states):
            x, s = block.step(x, s)
            new_states.append(s)
        return self.head(self.norm(x)), new_states

    @torch.no_grad()
    def generate(
        self,
        prompt: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        top_p: float | None = None,
        compile: bool | None = None,
    ) -> Tensor:
        """Continue ``prompt`` ``(batch, time)`` by ``max_new_tokens`` sampled tokens; returns
        ``(batch, time + max_new_tokens)`` (:meth:`stream` gives them one at a time)."""
        new = list(self.stream(prompt, max_new_tokens, temperature, top_k, generator, top_p, compile))
        return torch.cat([prompt, *(t.unsqueeze(1) for t in new)], dim=1)

    def compiled_step(self) -> Callable[[Tensor, Sequence[RecurrentState]], tuple[Tensor, list[RecurrentState]]]:
        """:meth:`step` compiled whole (``torch.compile``, ``fullgraph=True``), made once per model: one fused
        program per token instead of one kernel launch per operation of every layer. Eager :meth:`step` takes
        over, with a warning, if compiling fails."""
        if self not in _COMPILED_STEPS:
            _COMPILED_STEPS[self] = _with_eager_fallback(torch.compile(self.step, fullgraph=True, dynamic=False), self.step)
        return _COMPILED_STEPS[self]

    @torch.no_grad()
    def stream(
        self,
        prompt: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        top_p: float | None = None,
        compile: bool | None = None,
    ) -> Iterator[Tensor]:
        """Sample ``max_new_tokens`` tokens after ``prompt`` ``(batch, time)``, yielding each ``(batch,)`` as it
        comes. The prompt runs in parallel, then each new token costs one :meth:`step` (the recurrent state:
        O(1) per token; attention's cache, O(context); a sliding window's, O(window)).

        ``compile``: whether the steps run :meth:`compiled_step`, the same tokens several times faster once
        compiled (seconds, once per model and shapes). ``None`` (default) compiles for at least
        :data:`COMPILE_FROM` new tokens when no layer keeps a cache (a cache changes shape every step).

        Sampling from ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens and to the
        smallest set whose probability reaches ``top_p`` (nucleus; all if ``None``); ``temperature=0`` is greedy.
        Only for a causal LM (``num_classes == vocab_size``).
        """
        where = "SequenceModel.generate"
        if self.num_classes != self.vocab_size:
            raise ValueError(
                f"{where}: needs a causal LM (num_classes == vocab_size), this model has "
                f"num_classes={self.num_classes}, vocab_size={self.vocab_size}"
            )
        check_int(where, "max_new_tokens", max_new_tokens, minimum=0)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < math.inf:
            raise ValueError(f"{where}: `temperature` must be a finite number >= 0, got {temperature!r}")
        if top_k is not None:
            check_int(where, "top_k", top_k)
        if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
            raise ValueError(f"{where}: `top_p` must be a number in (0, 1], got {top_p!r}")
        if compile is None:
            compile = max_new_tokens >= COMPILE_FROM and not any(holds_cache(block.mixer) for block in self.blocks)
        step = self.compiled_step() if compile else self.step
        logits, state = self(prompt)
        logits = logits[:, -1]
        for i in range(max_new_tokens):
            token = _sample(logits, temperature, top_k, generator, top_p)
            yield token
            if i + 1 < max_new_tokens:
                logits, state = step(token, state)

    def extra_repr(self) -> str:
        return f"mixer={self.mixer_name!r}, mixer_kwargs={self.mixer_kwargs}, parameters={self.num_parameters():,}"

    # -- checks -------------------------------------------------------------------

    def _check_tokens(self, tokens: Tensor, name: str, dims: tuple[str, ...]) -> None:
        where = f"SequenceModel ({self.mixer_name})"
        shape = "(" + ", ".join(dims) + ")"
        if not isinstance(tokens, Tensor) or tokens.dtype not in (torch.int64, torch.int32):
            got = tokens.dtype if isinstance(tokens, Tensor) else type(tokens).__name__
            raise TypeError(f"{where}: `{name}` must be a torch.long tensor of token ids {shape}, got {got}")
        if tokens.dim() != len(dims) or 0 in tokens.shape:
            raise ValueError(f"{where}: `{name}` must have non-empty shape {shape}, got {tuple(tokens.shape)}")
        if not checking_values():  # a compiled graph cannot read the ids
            return
        low, high = tokens.min().item(), tokens.max().item()
        if low < 0 or high >= self.vocab_size:
            raise ValueError(
                f"{where}: `{name}` must hold ids in [0, vocab_size={self.vocab_size}), got values in [{low}, {high}]"
            )

    def _check_state(self, state: Sequence[RecurrentState] | None) -> Sequence[RecurrentState | None]:
        if state is None:
            return [None] * self.n_layers
        if not isinstance(state, (list, tuple)) or len(state) != self.n_layers:
            sized = isinstance(state, (list, tuple))
            got = f"a {type(state).__name__} of {len(state)}" if sized else type(state).__name__
            raise ValueError(
                f"SequenceModel: `state` must be a list of {self.n_layers} layer states (from init_state, forward "
                f"or step), got {got}"
            )
        return state


COMPILE_FROM = 2000  # new tokens from which generation compiles its step by default (compiling takes seconds)
_COMPILED_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def holds_cache(layer: nn.Module) -> bool:
    """Whether ``layer``'s state is a cache that grows with the tokens (attention's), not a fixed-size state."""
    return any(0 in t.shape for t in layer.init_state(1, device="meta").tensors().values())


def _with_eager_fallback(compiled: Callable, eager: Callable) -> Callable:
    """``compiled``, or ``eager`` from the first call on which compiling fails (with a warning)."""
    use = [compiled]

    def step(*args):
        if use[0] is compiled:
            try:
                return compiled(*args)
            except Exception as e:  # noqa: BLE001 - a genuine input error is raised again by the eager call
                warnings.warn(f"compiled step failed ({type(e).__name__}: {e}); decoding eagerly", stacklevel=3)
                use[0] = eager
        return eager(*args)

    return step


def _sample(
    logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None, top_p: float | None = None
) -> Tensor:
    """One token id per row of ``logits`` ``(batch, vocab)``."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    if top_p is not None and top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # the mass before a token already reaches p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _build(d_model: int, model_config: dict) -> SequenceModel | None:
    """The model at ``d_model``, built on the meta device where the layers allow it (no memory touched; else on
    the CPU), or ``None`` if the layer rejects this ``d_model`` (e.g. not a multiple of its heads)."""
    try:
        try:
            with torch.device("meta"):
                return SequenceModel(d_model=d_model, **model_config)
        except (RuntimeError, NotImplementedError):  # a layer reading a tensor's value at construction
            return SequenceModel(d_model=d_model, **model_config)
    except ValueError:
        return None


def _count(d_model: int, model_config: dict) -> int | None:
    """Parameters of the model at ``d_model`` (see :func:`_build`), ``None`` if the layer rejects ``d_model``."""
    model = _build(d_model, model_config)
    return None if model is None else model.num_parameters()


MAX_GAP = 256  # size_d_model gives up if no d_model in this many consecutive values builds


def _closest_d_model(
    target: int, measure: Callable[[int], int | None], max_d_model: int, model_config: dict, where: str
) -> tuple[int, int, bool]:
    """The accepted ``d_model`` in ``[1, max_d_model]`` whose ``measure`` (non-decreasing in ``d_model``; ``None``
    where the mixer rejects that ``d_model``) is closest to ``target``, ties to the smaller; returns it, its
    measure, and whether accepted values on both sides of ``target`` were found (else the target is out of range).

    Doubling finds an upper bound, bisection the first accepted ``d_model`` at or over target, which is
    compared with the accepted one below it. If the mixer accepts none of ``MAX_GAP`` consecutive values, the
    ``ValueError`` it raises is passed on.
    """
    values: dict[int, int | None] = {}

    def accepted_from(d: int, direction: int = 1) -> tuple[int, int] | None:
        """The first accepted ``d_model`` from ``d`` on (``direction=-1``: downwards) and its measure."""
        for candidate in range(d, d + direction * MAX_GAP, direction):
            if not 1 <= candidate <= max_d_model:
                return None
            if candidate not in values:
                values[candidate] = measure(candidate)
            if values[candidate] is not None:
                return candidate, values[candidate]
        if direction == 1:
            SequenceModel(d_model=d, **model_config)  # raises the mixer's error
        return None

    hi = 8
    while hi < max_d_model and (found := accepted_from(hi)) is not None and found[1] < target:
        hi *= 2
    lo, hi = 1, min(hi, max_d_model)
    while lo < hi:  # smallest d whose next accepted d_model reaches the target
        mid = (lo + hi) // 2
        found = accepted_from(mid)
        if found is not None and found[1] >= target:
            hi = mid
        else:
            lo = mid + 1
    above = accepted_from(lo)
    below = accepted_from((above[0] if above else lo) - 1, direction=-1)
    candidates = [c for c in (above, below) if c is not None]
    if not candidates:
        raise ValueError(f"{where}: no d_model in [1, {max_d_model}] builds this model")
    d_model, value = min(candidates, key=lambda c: (abs(c[1] - target), c[0]))
    bracketed = above is not None and below is not None and below[1] <= target <= above[1]
    return d_model, value, bracketed


def size_d_model(budget: int, *, max_d_model: int = 8192, **model_config) -> int:
    """The ``d_model`` at which ``SequenceModel(d_model=..., **model_config)`` has the number of parameters
    closest to ``budget``, among the values the mixer accepts (e.g. multiples of its heads) up to ``max_d_model``.

    The count grows with ``d_model``: doubling finds an upper bound, bisection the first accepted ``d_model``
    at or over budget, which is compared with the accepted one below it. If the mixer accepts none of
    ``MAX_GAP`` consecutive values, the ``ValueError`` it raises is passed on. Only ``d_model`` moves, so the
    count can miss the budget by a step of ``d_model`` (up to ~20% for multi-head mixers at small budgets):
    :func:`size_model` also sets the MLP width and lands within ``PARAM_TOLERANCE``.
    """
    check_int("size_d_model", "budget", budget)
    check_int("size_d_model", "max_d_model", max_d_model)
    if "d_model" in model_config:
        raise TypeError("size_d_model: `d_model` is what it computes; pass the other model settings only")
    return _closest_d_model(budget, lambda d: _count(d, model_config), max_d_model, model_config, "size_d_model")[0]


# -- state size -------------------------------------------------------------------


def _state_floats(state: RecurrentState, length: int | None, where: str) -> int:
    """Floats in one layer's state made by ``init_state(1)``: float tensors count their elements, complex ones
    twice, others (ints, bools) not at all. A dimension of size 0 (beyond the batch) is a cache that grows by
    one entry per token (attention's keys and values) and counts ``length`` entries."""
    total = 0
    for name, tensor in state.tensors().items():
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        sizes = list(tensor.shape[1:])
        if 0 in sizes:
            if length is None:
                raise ValueError(
                    f"{where}: `length` is needed: the state field {name!r} of {type(state).__name__} grows with "
                    f"the context (e.g. attention's KV cache); pass the number of tokens seen"
                )
            sizes = [length if size == 0 else size for size in sizes]
        total += math.prod(sizes) * (2 if tensor.is_complex() else 1)
    return total


def state_size(model_or_config: SequenceModel | dict, length: int | None = None) -> int:
    """Number of floats in the model's recurrent state for one sequence (batch 1), summed over its layers.

    ``model_or_config`` is a :class:`SequenceModel` or the keywords that build one (``d_model`` included; built
    on the meta device where possible, so nothing is allocated). The state is each mixer's ``init_state(1)``
    (on the meta device): every float element counts 1, a complex one 2 (real and imaginary part), integer or
    boolean bookkeeping 0. RetNet's position counter is a float and counts (one per layer).

    A fixed-size state (every RNN, SSM and linear-attention layer; Aaren) is the same after any context, and
    ``length`` is ignored. Attention's state is its KV cache, which grows with the context: it is counted after
    ``length`` tokens, ``2 · n_layers · length · d_model`` floats (keys and values of every head), and
    ``length`` is required for it (a ``ValueError`` otherwise). Generally, a state tensor with a dimension of
    size 0 in ``init_state`` is read as a cache that grows by one entry per token along it.
    """
    where = "state_size"
    if length is not None:
        check_int(where, "length", length)
    if isinstance(model_or_config, SequenceModel):
        model = model_or_config
    elif isinstance(model_or_config, dict):
        if "d_model" not in model_or_config:
            raise ValueError(f"{where}: `model_or_config` must include `d_model` (see size_model to choose one)")
        config = {k: v for k, v in model_or_config.items() if k != "d_model"}
        model = _build(model_or_config["d_model"], config)
        if model is None:
            SequenceModel(**model_or_config)  # raises the layer's error
    else:
        raise TypeError(
            f"{where}: `model_or_config` must be a SequenceModel or a dict of its keywords, "
            f"got {type(model_or_config).__name__}"
        )
    states = model.init_state(1, device="meta")
    return sum(_state_floats(state, length, where) for state in states)


# -- sizing to a budget -------------------------------------------------------------

MATCHES = ("params", "state")
PARAM_TOLERANCE = 0.03  # size_model(match="params") lands within this relative distance of the budget


def _solve_mlp_hidden(budget: int, d_model: int, model_config: dict) -> tuple[int, int]:
    """The MLP hidden width at ``d_model`` whose parameter count is closest to ``budget``, and that count.

    The count is affine in the hidden width ``h`` (each block's MLP has ``3 d h`` weights for SwiGLU,
    ``2 d h + h`` with GELU's biases), so two counts give it exactly."""
    at_1 = _count(d_model, {**model_config, "mlp_hidden": 1})
    slope = _count(d_model, {**model_config, "mlp_hidden": 2}) - at_1
    hidden = max(1, 1 + round((budget - at_1) / slope))
    return hidden, at_1 + slope * (hidden - 1)


def _size_params(budget: int, max_d_model: int, model_config: dict) -> dict:
    """``d_model`` from :func:`size_d_model`, then the MLP width solved for the budget; if even the narrowest
    MLP leaves the count over ``PARAM_TOLERANCE`` (a mixer much bigger than the MLP), smaller accepted
    ``d_model`` are tried, down to 1, keeping the closest."""
    d_model = size_d_model(budget, max_d_model=max_d_model, **model_config)
    if model_config.get("mlp", "swiglu") == "none":
        return {"d_model": d_model}  # no MLP, no fine knob: the closest d_model is the best there is
    best: tuple[float, int, int] | None = None
    for d in range(d_model, 0, -1):
        if d != d_model and _build(d, model_config) is None:
            continue  # not accepted by the mixer
        hidden, count = _solve_mlp_hidden(budget, d, model_config)
        miss = abs(count - budget) / budget
        if best is None or miss < best[0]:
            best = (miss, d, hidden)
        if miss <= PARAM_TOLERANCE:
            break
    return {"d_model": best[1], "mlp_hidden": best[2]}


def size_model(
    budget: int, *, match: str = "params", length: int | None = None, max_d_model: int = 8192, **model_config
) -> dict:
    """The :class:`SequenceModel` keywords that size a model to ``budget``: pass them with the rest,
    ``SequenceModel(**model_config, **size_model(budget, **model_config))``.

    ``match="params"``: ``budget`` is a parameter count. ``d_model`` is chosen by :func:`size_d_model` (closest
    count among the values the mixer accepts), then the MLPs' hidden width ``mlp_hidden`` is solved so the
    count lands on the budget; returns ``{"d_model", "mlp_hidden"}``, within ``PARAM_TOLERANCE`` (3%) of the
    budget whenever some accepted ``d_model`` gets there (in practice much closer: one unit of ``mlp_hidden``
    is ``3 · d_model · n_layers`` parameters). The MLP ratio then differs a little from ``mlp_ratio``. With
    ``mlp="none"`` there is no fine knob: returns ``{"d_model"}`` alone, which can miss by a step of
    ``d_model`` (as :func:`size_d_model`).

    ``match="state"``: ``budget`` is a number of floats in the recurrent state (:func:`state_size`, batch 1,
    attention counted after ``length`` tokens). Returns ``{"d_model"}``, the accepted ``d_model`` whose state is
    closest; every mixer keyword (state width, heads, expansion) stays as given, so the miss is at most half
    the state's step between neighbouring accepted ``d_model`` values, and the parameter count is whatever
    results (report it). A ``ValueError`` names ``budget`` when no ``d_model`` in ``[1, max_d_model]`` brackets
    it, and says so when the state does not grow with ``d_model`` at all (LRU: its ``d_state`` alone). This
    is the control of Zoology (Arora et al. 2024, "Zoology: Measuring and Improving Recall in Efficient
    Language Models") for multi-query associative recall, where recall is bounded by the state size rather
    than by the parameters. ``length`` is only read here (ignored with ``match="params"``).
    """
    where = "size_model"
    check_int(where, "budget", budget)
    check_int(where, "max_d_model", max_d_model)
    if match not in MATCHES:
        raise ValueError(f"{where}: `match` must be one of {MATCHES}, got {match!r}")
    if length is not None:
        check_int(where, "length", length)
    if "d_model" in model_config:
        raise TypeError(f"{where}: `d_model` is what it computes; pass the other model settings only")
    if match == "params":
        if "mlp_hidden" in model_config:
            raise TypeError(f"{where}: `mlp_hidden` is what match='params' computes; pass mlp_ratio or nothing")
        return _size_params(budget, max_d_model, model_config)

    def floats(d: int) -> int | None:
        model = _build(d, model_config)
        return None if model is None else state_size(model, length)

    name = model_config.get("mixer")
    low, high = (_first_accepted(model_config, d, max_d_model) for d in (1, min(64, max_d_model)))
    if low is not None and high is not None and low != high and floats(low) == floats(high):
        raise ValueError(
            f"{where}: the state of {name!r} does not grow with d_model ({floats(low)} floats at d_model={low} "
            f"and {high}); match='state' sizes by d_model only: set its state width in `mixer_kwargs` instead"
        )
    d_model, floats_at, bracketed = _closest_d_model(budget, floats, max_d_model, model_config, where)
    if not bracketed and floats_at != budget:
        raise ValueError(
            f"{where}: `budget`={budget} floats is out of reach of {name!r} by d_model alone: the closest, "
            f"d_model={d_model}, has {floats_at} floats (d_model in [1, max_d_model={max_d_model}])"
        )
    return {"d_model": d_model}


def _first_accepted(model_config: dict, start: int, stop: int) -> int | None:
    """The first ``d_model`` in ``[start, min(stop, start + MAX_GAP))`` the mixer accepts, or ``None``."""
    return next((d for d in range(start, min(stop + 1, start + MAX_GAP)) if _build(d, model_config) is not None), None)
