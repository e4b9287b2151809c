"""The layer API every rnnzoo model follows.

A layer maps ``x`` of shape ``(batch, time, d_model)`` to ``y`` of the same
shape and carries a recurrent state between calls::

    y, state = layer(x)                  # parallel form over the whole sequence
    y2, state = layer(x2, state)         # continue where it stopped
    y_t, state = layer.step(x_t, state)  # one token, O(1) memory

Any split of a sequence (whole, in pieces, token by token) gives the same
outputs and final state. ``mode`` selects the algorithm: ``"recurrent"`` (the
reference loop), the layer's parallel form (``"scan"`` for engine 2), or
``"auto"`` (the fastest correct one). Subclasses implement ``_forward`` and
``init_state``; the checks of inputs and states live here, once.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import warnings
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn

from .._checks import check_int, checking_values
from .common import state_dtype
from .padding import Padding, check_attention_mask, check_cu_seqlens, gather_rows, pack, select_rows, unpack

if TYPE_CHECKING:
    from .engines import Engine

__all__ = ["BlockState", "DiagonalState", "EngineLayer", "MatrixState", "RecurrentState", "SequenceLayer", "state_dtype"]


class RecurrentState:
    """Base for the dataclasses that hold a layer's recurrent state (fields are tensors).

    ``engine_fields`` names the fields that are the engine's state (:meth:`engine_state`); the others belong
    to the layer (a short convolution's last inputs, a position).
    """

    engine_fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs) -> None:
        """Every state type is a pytree (its tensors the leaves), so ``torch.export`` and ``torch.compile`` take
        states as inputs and outputs."""
        super().__init_subclass__(**kwargs)
        pytree.register_pytree_node(
            cls, _flatten_state, functools.partial(_unflatten_state, cls),
            flatten_with_keys_fn=_flatten_state_with_keys, serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
        )  # fmt: skip

    def pytree_context(self) -> dict:
        """Constructor fields besides the tensors that a flattened state must keep (none by default)."""
        return {}

    def engine_state(self):
        """What the layer's engine continues from: the one engine field, or a tuple of them."""
        values = tuple(getattr(self, name) for name in self.engine_fields)
        return values[0] if len(values) == 1 else values

    def tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def detach(self):
        """The same state cut from the autograd graph (truncated backpropagation through time)."""
        return dataclasses.replace(self, **{k: v.detach() for k, v in self.tensors().items()})

    @property
    def batch_size(self) -> int:
        return next(iter(self.tensors().values())).shape[0]


def _flatten_state(state: RecurrentState) -> tuple[list[Tensor], tuple]:
    tensors = state.tensors()
    return list(tensors.values()), (tuple(tensors), state.pytree_context())


def _flatten_state_with_keys(state: RecurrentState) -> tuple[list, tuple]:
    leaves, context = _flatten_state(state)
    return [(pytree.GetAttrKey(name), leaf) for name, leaf in zip(context[0], leaves)], context


def _unflatten_state(cls: type, leaves, context: tuple) -> RecurrentState:
    names, extra = context
    return cls(**dict(zip(names, leaves)), **extra)


@dataclasses.dataclass
class DiagonalState(RecurrentState):
    """State of a diagonal linear recurrence: ``h`` of shape ``(batch, *state)``."""

    engine_fields: ClassVar[tuple[str, ...]] = ("h",)
    h: Tensor


@dataclasses.dataclass
class BlockState(RecurrentState):
    """State of a block-diagonal linear recurrence: ``h`` of shape ``(batch, k, channels)``, k the block size
    (the block scan's layout)."""

    engine_fields: ClassVar[tuple[str, ...]] = ("h",)
    h: Tensor


@dataclasses.dataclass
class MatrixState(RecurrentState):
    """State of a gated linear attention layer: ``S`` of shape ``(batch, heads, d_k, d_v)``."""

    engine_fields: ClassVar[tuple[str, ...]] = ("S",)
    S: Tensor


def first_nonfinite_step(x: Tensor) -> int | None:
    """The first time step of ``x`` ``(batch, time, ...)`` holding a NaN or an infinity in any row, or ``None``."""
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return None
    return int((~finite.flatten(2).all(-1).all(0)).nonzero()[0, 0])


FORM_ARGUMENTS = ("mode",)  # constructor arguments that choose an algorithm, not the function


def _config(init, layer: nn.Module, args: tuple, kwargs: dict) -> dict:
    """The constructor's arguments that define the layer's function, defaults included, as JSON values."""
    bound = inspect.signature(init).bind(layer, *args, **kwargs)
    bound.apply_defaults()
    config = {}
    for name, value in list(bound.arguments.items())[1:]:
        if name in FORM_ARGUMENTS:
            continue
        if isinstance(value, Tensor):
            value = value.tolist()
        config[name] = value
    return json.loads(json.dumps(config, default=str))  # as it will read back (tuples as lists)


def _with_factory_keywords(init):
    """A layer's ``init`` taking PyTorch's ``device=`` and ``dtype=`` factory keywords (the finished layer is
    moved and cast, once, by the outermost constructor), ``chunk_size=`` where its engine has a chunked form,
    and the old names in its ``renamed_arguments`` (passed on under their new names, with a
    ``DeprecationWarning``)."""

    @functools.wraps(init)
    def __init__(self, *args, device: torch.device | str | None = None, dtype: torch.dtype | None = None, **kwargs):
        chunk_size = kwargs.pop("chunk_size", None) if getattr(type(self), "takes_chunk_size", False) else None
        for old, new in type(self).renamed_arguments.items():
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{type(self).__name__}: give `{new}` only (`{old}` is its old name)")
                warnings.warn(
                    f"{type(self).__name__}: `{old}` is deprecated and will be removed; use `{new}`",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
        init(self, *args, **kwargs)
        outermost = type(self).__init__ is __init__  # not a parent's constructor called through super()
        if outermost:
            self.config = _config(init, self, args, kwargs)
        if outermost and chunk_size is not None:
            self.chunk_size = check_int(type(self).__name__, "chunk_size", chunk_size)
        if outermost and (device is not None or dtype is not None):
            self.to(device=device, dtype=dtype)

    return __init__


class SequenceLayer(nn.Module):
    """Base class: argument checks, mode selection and ``step`` for every layer.

    Subclasses set ``parallel_modes`` (the parallel algorithms they offer; the
    first is what ``"auto"`` picks) and implement ``_forward(x, state, mode)``
    and ``init_state``. Every layer's constructor also takes PyTorch's
    ``device=`` and ``dtype=`` keywords, and the old names of renamed arguments
    (``renamed_arguments``, old name -> new) for one release.
    """

    parallel_modes: ClassVar[tuple[str, ...]] = ()
    renamed_arguments: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _with_factory_keywords(cls.__dict__["__init__"])

    def __init__(self, d_model: int, mode: str = "auto") -> None:
        super().__init__()
        self.d_model = check_int(type(self).__name__, "d_model", d_model)
        self.mode = mode

    @property
    def mode(self) -> str:
        """The form ``forward`` runs unless told otherwise: one of :attr:`modes` (checked when set)."""
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        self._mode = self._check_mode(mode)

    # -- what subclasses provide ------------------------------------------------

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> RecurrentState:
        raise NotImplementedError

    def _forward(self, x: Tensor, state: RecurrentState | None, mode: str) -> tuple[Tensor, RecurrentState]:
        raise NotImplementedError

    # -- public API ---------------------------------------------------------------

    @property
    def modes(self) -> tuple[str, ...]:
        """Every valid value of ``mode``."""
        return ("auto", "recurrent", *self.parallel_modes)

    def forward(
        self,
        x: Tensor,
        state: RecurrentState | None = None,
        *,
        mode: str | None = None,
        attention_mask: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
    ) -> tuple[Tensor, RecurrentState]:
        """Run the layer over a sequence ``x`` of shape ``(batch, time, d_model)``.

        Returns ``(y, state)``: ``y`` of the same shape, ``state`` the final
        recurrent state, which continues the sequence when passed back in.

        Sequences of different lengths (:mod:`rnnzoo.layers.padding`): ``attention_mask`` ``(batch, time)``
        marks each row's tokens (1) and padding (0), right or left; ``cu_seqlens`` ``(n + 1,)`` gives the
        boundaries of ``n`` sequences packed into ``x`` ``(1, total, d_model)``, and ``state`` then has batch
        ``n``. Each sequence runs as if alone: its outputs are its own, its final state is the state at its
        last token (a sequence without tokens keeps its initial state), and padding gets zero outputs.
        """
        self._check_input(x, "x", ("batch", "time", "d_model"))
        where = type(self).__name__
        if cu_seqlens is not None:
            if attention_mask is not None:
                raise ValueError(f"{where}: give `attention_mask` (a padded batch) or `cu_seqlens` (a packed one), not both")
            bounds = check_cu_seqlens(cu_seqlens, x.shape[0], x.shape[1], where)
            padded, valid = unpack(x, bounds)
            y, state = self(padded, state, mode=mode, attention_mask=valid)
            return pack(y, bounds), state
        self._check_state(state, x.shape[0], x.device)
        mode = self._resolve_mode(mode, x)
        if attention_mask is not None:
            if torch.compiler.is_compiling():
                raise NotImplementedError(f"{where}: `attention_mask` is not supported under torch.compile")
            valid = check_attention_mask(attention_mask, x.shape[0], x.shape[1], where)
            if not bool(valid.all()):
                return self._forward_padded(x, state, mode, Padding.of(valid))
        return self._forward_checked(x, state, mode)

    def _forward_checked(self, x: Tensor, state: RecurrentState | None, mode: str) -> tuple[Tensor, RecurrentState]:
        """:meth:`_forward`, keeping outputs before a NaN or infinity exact (:meth:`_forward_causal`)."""
        if mode != "recurrent" and checking_values():  # a compiled graph cannot branch on values
            bad = first_nonfinite_step(x)
            if bad is not None:
                return self._forward_causal(x, state, mode, bad)
        return self._forward(x, state, mode)

    def _forward_padded(
        self, x: Tensor, state: RecurrentState | None, mode: str, padding: Padding
    ) -> tuple[Tensor, RecurrentState]:
        """A padded batch through the layer's own state passing. Every row is rotated so that its tokens come
        first (padding zeroed), then the sequence runs in segments ending at each distinct row length
        ``L_1 < L_2 < ...``, each continuing from the state the last one left; a row of length ``L_i`` takes its
        final state from segment ``i``. Causality keeps each row's outputs its own, so this is exact for any
        layer, at the cost of one call per distinct length. Layers whose state grows with the tokens (a KV
        cache) cannot keep rows of different lengths in one state this way and override this."""
        batch = x.shape[0]
        index, inverse = padding.aligned("start")
        tokens_first = Padding(torch.zeros_like(padding.start), padding.length, padding.time).valid()
        x = gather_rows(x, index).masked_fill(~tokens_first[..., None], 0.0)
        final = self.init_state(batch, x.device, x.dtype) if state is None else state
        outputs, begin = [], 0
        for end in sorted(set(padding.length.tolist()) - {0}):
            y, state = self._forward_checked(x[:, begin:end], state, mode)
            outputs.append(y)
            final = select_rows(padding.length == end, state, final)
            begin = end
        y = torch.cat([*outputs, x.new_zeros(batch, padding.time - begin, *x.shape[2:])], 1)
        return gather_rows(y, inverse).masked_fill(~padding.valid()[..., None], 0.0), final

    def _forward_causal(self, x: Tensor, state: RecurrentState | None, mode: str, bad: int) -> tuple[Tensor, RecurrentState]:
        """The parallel form before step ``bad``, the first holding a NaN or infinity, then the loop from it.

        A parallel form mixes every position of a chunk (or of the sequence) in one matmul, in which a
        NaN at a later position poisons earlier outputs through ``0 · NaN``; the loop never reads ahead,
        so outputs before ``bad`` stay exactly those of the clean prefix.
        """
        ys = []
        if bad:
            y, state = self._forward(x[:, :bad], state, mode)
            ys.append(y)
        y, state = self._forward(x[:, bad:], state, "recurrent")
        return torch.cat([*ys, y], 1), state

    def step(self, x_t: Tensor, state: RecurrentState | None = None) -> tuple[Tensor, RecurrentState]:
        """Advance one token: ``x_t`` of shape ``(batch, d_model)`` -> ``(y_t, state)``."""
        self._check_input(x_t, "x_t", ("batch", "d_model"))
        self._check_state(state, x_t.shape[0], x_t.device)
        y, state = self._forward(x_t.unsqueeze(1), state, "recurrent")
        return y.squeeze(1), state

    def materialize(self, x: Tensor) -> Tensor:
        """The layer's implicit T×T operator for input ``x`` ``(batch, time, d_model)``.

        Returns ``M`` ``(batch, groups, T, T)``, lower-triangular, such that the
        mixer's output (see :meth:`mixer_io`) equals ``M @ V`` from a zero state;
        ``groups`` are the layer's heads or channels (documented per layer).
        """
        self._check_input(x, "x", ("batch", "time", "d_model"))
        return self._materialize(x)

    def mixer_io(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(V, Y)`` for input ``x``: the values the operator mixes ``(batch, groups, T, d_v)`` and the
        mixer's output ``(batch, groups, T, d_v)`` computed by the parallel form, so ``materialize(x) @ V == Y``."""
        self._check_input(x, "x", ("batch", "time", "d_model"))
        return self._mixer_io(x)

    def transition_eigenvalues(self, x: Tensor) -> Tensor:
        """Eigenvalues of each token's state transition ``A_t`` (in ``S_t = A_t S_{t-1} + B_t``) for input
        ``x`` ``(batch, time, d_model)``.

        Returns ``(batch, time, *)`` in the state dtype: real, complex for complex
        transitions (LRU, S4D). The trailing dims are documented per layer:

        * engine 2 (diagonal): ``a_t`` itself, one eigenvalue per state element;
        * engine 3 (gated linear attention): ``α_t`` per head, or per head and key
          dim (each repeated ``d_v`` times in ``A_t``), signed when ``negative_eigenvalues=True``;
        * engine 4 (delta rule, ``A_t = α_t (I - β_t k_t k_t^T)`` with ``|k_t| = 1``):
          per head, ``α_t`` (on the complement of ``k_t``) and ``α_t (1 - β_t)`` (on ``k_t``).

        A model that can track state (``negative_eigenvalues=True``) gives values in
        ``[-1, 1]``, some negative for some input; otherwise they lie in ``[0, 1]``
        (modulus ``<= 1`` for complex transitions).
        """
        self._check_input(x, "x", ("batch", "time", "d_model"))
        return self._transition_eigenvalues(x)

    def _transition_eigenvalues(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not report its transition eigenvalues")

    @classmethod
    def has_operator(cls) -> bool:
        """Whether the layer implements :meth:`materialize` (engine-2 and engine-3 layers do)."""
        return cls._materialize is not SequenceLayer._materialize

    def _materialize(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not materialise its operator")

    def _mixer_io(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not materialise its operator")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, mode={self.mode!r}"

    # -- the configuration, stored with the weights ------------------------------------

    def get_extra_state(self) -> Tensor:
        """The layer's class and :attr:`config` (every constructor argument that defines its function, e.g.
        ``negative_eigenvalues``), as UTF-8 JSON in a uint8 tensor, so ``state_dict`` carries it through
        ``torch.save`` and safetensors alike."""
        record = {"layer": type(self).__name__, "config": self.config}
        return torch.frombuffer(bytearray(json.dumps(record, sort_keys=True).encode()), dtype=torch.uint8)

    def set_extra_state(self, state: Tensor) -> None:
        """Refuse a checkpoint saved from another layer class or configuration, naming what differs."""
        saved = json.loads(bytes(state.to(torch.uint8).tolist()).decode())
        where = type(self).__name__
        if saved.get("layer") != where:
            raise ValueError(f"{where}: the checkpoint holds a {saved.get('layer')} layer, not a {where}")
        ours, theirs = self.config, saved.get("config", {})
        # an argument the checkpoint does not record was added to the layer later: the checkpoint had its default
        defaults = {
            name: json.loads(json.dumps(p.default, default=str))
            for name, p in inspect.signature(type(self).__init__).parameters.items()
            if name in set(ours) - set(theirs) and p.default is not p.empty
        }
        theirs = {**defaults, **theirs}
        differ = [
            f"{name}={theirs.get(name, '(none)')!r} (this layer: {ours.get(name, '(none)')!r})"
            for name in sorted(set(ours) | set(theirs)) if ours.get(name) != theirs.get(name)
        ]  # fmt: skip
        if differ:
            raise ValueError(f"{where}: the checkpoint was saved with another configuration: {', '.join(differ)}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, *args) -> None:
        """A checkpoint without the configuration (saved before it was stored) loads unchecked."""
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, *args)
        key = prefix + "_extra_state"
        if key not in state_dict and key in missing_keys:
            missing_keys.remove(key)

    # -- helpers for subclasses ---------------------------------------------------

    def _param_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _state_kwargs(self, device, dtype) -> dict:
        """Resolve ``init_state``'s device and dtype defaults from the parameters."""
        param = next(self.parameters())
        return {
            "device": param.device if device is None else device,
            "dtype": param.dtype if dtype is None else dtype,
        }

    # -- checks -----------------------------------------------------------------

    def _check_mode(self, mode: str) -> str:
        if mode not in self.modes:
            raise ValueError(f"{type(self).__name__}: `mode` must be one of {self.modes}, got {mode!r}")
        return mode

    def _resolve_mode(self, mode: str | None, x: Tensor) -> str:
        mode = self.mode if mode is None else self._check_mode(mode)
        return self._auto_mode(x) if mode == "auto" else mode

    def _auto_mode(self, x: Tensor) -> str:
        """The form ``"auto"`` runs for the (checked) input ``x``: the first parallel mode, or the loop if the
        layer has none. A layer whose fastest form depends on the input's length or device overrides this."""
        return self.parallel_modes[0] if self.parallel_modes else "recurrent"

    def _check_input(self, x: Tensor, name: str, dims: tuple[str, ...]) -> None:
        where = type(self).__name__
        shape = "(" + ", ".join(f"d_model={self.d_model}" if d == "d_model" else d for d in dims) + ")"
        if not isinstance(x, Tensor):
            raise TypeError(f"{where}: `{name}` must be a torch.Tensor of shape {shape}, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{where}: `{name}` must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() != len(dims):
            raise ValueError(f"{where}: `{name}` must have shape {shape}, got {x.dim()} dims {tuple(x.shape)}")
        if x.shape[-1] != self.d_model:
            raise ValueError(f"{where}: last dim of `{name}` must be d_model={self.d_model}, got shape {tuple(x.shape)}")
        for size, dim in zip(x.shape, dims):
            if size == 0:
                raise ValueError(f"{where}: `{name}` has an empty {dim} dimension, shape {tuple(x.shape)}")
        param_dtype = self._param_dtype()
        if x.dtype != param_dtype:
            raise TypeError(
                f"{where}: `{name}` has dtype {x.dtype} but the layer's parameters are {param_dtype}; "
                f"cast one to match (e.g. layer.to({x.dtype}))"
            )

    def _check_state(self, state: RecurrentState | None, batch_size: int, device: torch.device) -> None:
        if state is None:
            return
        where = type(self).__name__
        expected = self.init_state(batch_size, device="meta", dtype=self._param_dtype())
        if type(state) is not type(expected):
            raise TypeError(
                f"{where}: `state` must be a {type(expected).__name__} (from this layer's init_state, "
                f"forward or step), got {type(state).__name__}"
            )
        for name, want in expected.tensors().items():
            got = getattr(state, name)
            if not isinstance(got, Tensor) or got.shape != want.shape:
                got_shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
                raise ValueError(
                    f"{where}: `state.{name}` must have shape {tuple(want.shape)} "
                    f"(batch={batch_size}), got {got_shape}; was the state made for another batch size or layer?"
                )
            self._check_state_tensor(name, got, want.dtype, device)

    def _check_state_tensor(self, name: str, got: Tensor, dtype: torch.dtype, device: torch.device) -> None:
        """A state tensor of another dtype would silently change the output's dtype (or drop an imaginary
        part); one on another device would fail deep inside the engine."""
        where = type(self).__name__
        if got.dtype != dtype:
            raise TypeError(
                f"{where}: `state.{name}` must have dtype {dtype} (this layer's state dtype for "
                f"{self._param_dtype()} parameters), got {got.dtype}; make states with layer.init_state"
            )
        if got.device != device:
            raise ValueError(f"{where}: `state.{name}` is on {got.device} but the input is on {device}")


class EngineLayer(SequenceLayer):
    """A layer on one of the engines: a subclass sets ``engine`` (an adapter of :mod:`rnnzoo.layers.engines`)
    and writes two methods,

    * ``engine_inputs(x, state=None) -> (inputs, carry)``: the engine's inputs for ``x`` (in the state dtype),
      continuing from ``state`` where the layer keeps more than the engine's state (a short convolution's
      last inputs, a position), and whatever ``read_output`` needs;
    * ``read_output(x, out, final, carry) -> (y, state)``: the layer's output from the engine's outputs
      ``out``, and its state from the engine's final state ``final``;

    and forward, step, :meth:`materialize`, :meth:`mixer_io` and :meth:`transition_eigenvalues` follow from
    the adapter. The state's ``engine_fields`` are what the engine continues from. Where the engine has a
    chunked parallel form the constructor also takes ``chunk_size=`` (default ``None``: the engine picks it
    from the shapes), which every parallel call passes on.
    """

    engine: ClassVar[Engine]
    chunk_size: int | None = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "engine" in cls.__dict__:
            cls.parallel_modes = cls.engine.parallel_modes
            cls.takes_chunk_size = cls.engine.chunked

    def engine_inputs(self, x: Tensor, state: RecurrentState | None = None) -> tuple[Any, Any]:
        raise NotImplementedError

    def read_output(self, x: Tensor, out: Tensor, final: Any, carry: Any) -> tuple[Tensor, RecurrentState]:
        raise NotImplementedError

    def _run(self, inputs: Any, state: Any, mode: str) -> tuple[Tensor, Any]:
        # An engine picks its own precision (float32 for half-precision inputs, rnnzoo.ops.dtypes); autocast
        # would recast the matmuls inside it to half precision, against the float32 operands it prepared.
        device = next(t for t in vars(inputs).values() if isinstance(t, Tensor)).device.type
        with torch.autocast(device, enabled=False):
            return self.engine.run(inputs, state, mode, self.chunk_size)

    def _forward(self, x: Tensor, state: RecurrentState | None, mode: str) -> tuple[Tensor, RecurrentState]:
        inputs, carry = self.engine_inputs(x, state)
        out, final = self._run(inputs, None if state is None else state.engine_state(), mode)
        return self.read_output(x, out, final, carry)

    @classmethod
    def has_operator(cls) -> bool:
        """Whether the layer implements :meth:`materialize`: its engine has a T×T operator per group (the block
        scan's is of k×k blocks)."""
        return super().has_operator() and cls.engine.has_operator

    def _materialize(self, x: Tensor) -> Tensor:
        return self.engine.operator(self.engine_inputs(x)[0])

    def _mixer_io(self, x: Tensor) -> tuple[Tensor, Tensor]:
        inputs = self.engine_inputs(x)[0]
        out = self._run(inputs, None, self.parallel_modes[0])[0]
        return self.engine.mixer_io(inputs, out, self.chunk_size)

    def _transition_eigenvalues(self, x: Tensor) -> Tensor:
        return self.engine.eigenvalues(self.engine_inputs(x)[0])

    def extra_repr(self) -> str:
        chunk = "" if self.chunk_size is None else f", chunk_size={self.chunk_size}"
        return super().extra_repr() + chunk
