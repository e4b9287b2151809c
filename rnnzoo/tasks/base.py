"""What every capability task shares: the :class:`Batch` it samples, the :class:`Task` base class and the registry.

A task is a small frozen dataclass whose fields are its configuration (``make_task("parity", dense=False)``).
``task.sample(batch_size, length, generator)`` draws a :class:`Batch` of token ids, class ids and the mask of
scored positions, with every random number taken from ``generator`` (on its device), so a seed fixes the batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import torch
from torch import Tensor

from .._checks import check_int

__all__ = ["Batch", "Task", "PrefixTask", "BitTask", "register_task", "list_tasks", "make_task", "compose_prefix"]


@dataclass(frozen=True)
class Batch:
    """One sampled batch: inputs ``(B, T)`` token ids, targets ``(B, T)`` class ids, mask ``(B, T)`` scored positions.

    Targets are the labels only where ``mask`` is True; elsewhere they hold some class id in range too, so a
    loss can be taken at every position and masked.
    """

    inputs: Tensor
    targets: Tensor
    mask: Tensor

    def __post_init__(self):
        if self.inputs.dim() != 2 or self.targets.shape != self.inputs.shape or self.mask.shape != self.inputs.shape:
            raise ValueError(
                "Batch: `inputs`, `targets` and `mask` must share one (batch, time) shape, got "
                f"{tuple(self.inputs.shape)}, {tuple(self.targets.shape)}, {tuple(self.mask.shape)}"
            )
        if self.inputs.dtype != torch.long or self.targets.dtype != torch.long or self.mask.dtype != torch.bool:
            raise ValueError(
                "Batch: `inputs` and `targets` must be torch.long and `mask` torch.bool, got "
                f"{self.inputs.dtype}, {self.targets.dtype}, {self.mask.dtype}"
            )


@dataclass(frozen=True)
class Task:
    """A synthetic sequence task: vocabulary, lengths, scored positions and chance accuracy.

    ``train_lengths`` ``(min, max)``, inclusive: training draws one length per batch uniformly from it.
    ``test_lengths``: the lengths evaluated after training, longer ones measuring extrapolation.
    :meth:`train_score_lengths` picks the training lengths at which the "train" accuracy is taken.
    Lists are accepted for both (as a TOML or JSON suite gives them) and stored as tuples.

    Subclasses set ``name``, override ``vocab_size``, ``num_classes``, ``_sample`` and, when a sequence needs
    room, ``min_length``. Every task here draws its scored labels uniformly over ``num_classes`` (each module
    says why), so :attr:`chance` is ``1 / num_classes``; a task with another label distribution overrides it.
    """

    name: ClassVar[str]
    train_lengths: tuple[int, int] = (3, 40)
    test_lengths: tuple[int, ...] = (40, 64, 128, 256)

    def __post_init__(self):
        train, test = self.train_lengths, self.test_lengths
        if isinstance(train, str) or not isinstance(train, Sequence) or len(train) != 2:
            raise ValueError(f"{self.name}: `train_lengths` must be (min, max) with min <= max, got {train!r}")
        if isinstance(test, str) or not isinstance(test, Sequence) or len(test) == 0:
            raise ValueError(f"{self.name}: `test_lengths` must be a non-empty sequence of lengths, got {test!r}")
        for field, lengths in (("train_lengths", train), ("test_lengths", test)):
            object.__setattr__(self, field, tuple(self.valid_length(n, f"{field}[{i}]") for i, n in enumerate(lengths)))
        if train[0] > train[1]:
            raise ValueError(f"{self.name}: `train_lengths` must be (min, max) with min <= max, got {train!r}")

    @property
    def vocab_size(self) -> int:
        """Number of input token ids: inputs lie in ``[0, vocab_size)``."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """Number of target class ids: targets at scored positions lie in ``[0, num_classes)``."""
        raise NotImplementedError

    @property
    def chance(self) -> float:
        """Accuracy of the best input-independent guess on scored positions (labels uniform: ``1 / num_classes``)."""
        return 1.0 / self.num_classes

    @property
    def min_length(self) -> int:
        """The shortest sequence the task can make."""
        return 1

    def valid_length(self, length: int, argument: str = "length") -> int:
        """``length`` if the task can make a sequence that long, else a ``ValueError`` naming ``argument``."""
        if isinstance(length, bool) or not isinstance(length, int) or length < self.min_length:
            expected = f"an int >= {self.min_length}{self._length_reason()}"
            raise ValueError(f"{self.name}: `{argument}` must be {expected}, got {length!r}")
        return length

    def _length_reason(self) -> str:
        """Why ``min_length`` is what it is, appended to the length error (empty when it is 1)."""
        return ""

    def train_score_lengths(self, count: int) -> list[int]:
        """The lengths at which accuracy "at training lengths" is taken: ``count`` of them (fewer if the range
        holds fewer), sorted and distinct, always including the longest training length.

        The default rule spreads them evenly over the upper half of the training range,
        ``[max(low, high // 2), high]`` for ``train_lengths = (low, high)``: at the shortest lengths a prefix
        task's labels are mostly its first few, which a model reads off the last tokens (the label at the first
        number of modular arithmetic is that number), so averaging down to ``low`` credits a model that learned
        nothing. A single length is ``high``. A task whose labels stay trivial further up overrides this.
        """
        check_int(self.name, "count", count)
        low, high = self.train_lengths
        low = max(low, high // 2)
        if count == 1:
            return [high]
        return sorted({round(low + (high - low) * i / (count - 1)) for i in range(count)})

    def sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        """A batch of ``batch_size`` sequences of ``length`` tokens, drawn from ``generator`` on its device."""
        check_int(self.name, "batch_size", batch_size)
        self.valid_length(length)
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"{self.name}: `generator` must be a torch.Generator, got {type(generator).__name__}")
        return self._sample(batch_size, length, generator)

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        """Draw the batch; the arguments are already checked."""
        raise NotImplementedError


@dataclass(frozen=True)
class PrefixTask(Task):
    """A task labelled by a function of the prefix: ``dense=True`` scores every labelled position, ``False``
    only the last one (the published single-label form; far slower to learn)."""

    dense: bool = True

    def __post_init__(self):
        if not isinstance(self.dense, bool):
            raise ValueError(f"{self.name}: `dense` must be a bool, got {self.dense!r}")
        super().__post_init__()

    def _scored(self, labelled: Tensor) -> Tensor:
        """The mask from the ``(T,)`` bool of labelled positions: all of them if dense, else the last one."""
        if self.dense:
            return labelled
        last = torch.zeros_like(labelled)
        last[labelled.nonzero()[-1]] = True
        return last



@dataclass(frozen=True)
class BitTask(PrefixTask):
    """A prefix task over uniform bit strings: ids 0, 1 are the bits, two classes."""

    @property
    def vocab_size(self) -> int:
        return 2

    @property
    def num_classes(self) -> int:
        return 2

    @staticmethod
    def _bits(batch_size: int, length: int, generator: torch.Generator) -> Tensor:
        """``(batch_size, length)`` uniform bits from ``generator``, on its device."""
        return torch.randint(0, 2, (batch_size, length), generator=generator, device=generator.device)

def compose_prefix(maps: Tensor) -> Tensor:
    """Running composition of maps of ``{0, …, n-1}`` to itself, each given as its table of images.

    ``maps`` ``(..., T, n)`` long, ``maps[..., t, i]`` the image of ``i`` under ``f_t``; returns ``(..., T, n)``
    holding ``f_t ∘ … ∘ f_1`` (``f_1`` applied first) at each ``t``. A Hillis–Steele scan: ``⌈log2 T⌉``
    gathers.
    """
    maps, shift = maps.clone(), 1
    while shift < maps.shape[-2]:
        maps[..., shift:, :] = maps[..., shift:, :].gather(-1, maps[..., :-shift, :])  # later ∘ earlier
        shift *= 2
    return maps


_TASKS: dict[str, type[Task]] = {}
T = TypeVar("T", bound=type[Task])


def register_task(cls: T) -> T:
    """Class decorator adding a task to the registry under ``cls.name``."""
    if cls.name in _TASKS:
        raise ValueError(f"task name {cls.name!r} is already registered to {_TASKS[cls.name].__name__}")
    _TASKS[cls.name] = cls
    return cls


def list_tasks() -> list[str]:
    """Every registered task name, in catalogue order (state tracking, groups, recall, memory)."""
    return list(_TASKS)


def make_task(name: str, **config) -> Task:
    """The task ``name`` with config fields overridden by ``config``; a ``ValueError`` lists valid names or fields."""
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(_TASKS)}")
    cls = _TASKS[name]
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(config) - set(fields))
    if unknown:
        unknown_list = ", ".join(map(repr, unknown))
        raise ValueError(f"task {name!r} has no config field {unknown_list}; valid fields: {', '.join(fields)}")
    return cls(**config)
