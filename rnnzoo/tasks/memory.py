"""Memory: copying and selective copying (hold tokens across a blank stretch), induction heads (recall one),
window parity (keep the last few inputs, forget the rest).

Copying as in Arjovsky et al. (2016) and S4 (Gu, Goel, Ré 2022); selective copying and induction heads as in
Mamba (Gu, Dao 2023), whose copying data puts ``M`` tokens among ``L`` blanks, then ``M`` markers at which the
model emits the tokens in order. Mamba's setting is ``T = 4096``, 16 tokens from a vocabulary of 16; the default
here is CPU-sized: ``L = 32`` blanks, ``M = 4`` tokens of 10 symbols (``T = L + 2M = 40``), tested at 64 and 128.
Induction heads (Olsson et al. 2022, "In-context Learning and Induction Heads"; Mamba's vocabulary of 16).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .._checks import check_int
from .base import Batch, BitTask, Task, register_task

__all__ = ["Copying", "SelectiveCopying", "InductionHeads", "WindowParity"]


@dataclass(frozen=True)
class _Copying(Task):
    """``T - M`` tokens holding ``M`` symbols among blanks, then ``M`` markers labelled with the symbols in order.

    Vocabulary: ids ``0 … num_symbols-1`` symbols, ``num_symbols`` blank, ``num_symbols+1`` marker. Classes: the
    symbols. Scored: the ``M = num_copied`` markers (the last ``M`` positions). Symbols are uniform, so chance is
    ``1 / num_symbols``. Train length 40, test 40, 64, 128: the blank stretch ``T - 2M`` grows with ``T``. Train
    score at 40 (the default rule: the upper half of the training range, here its one length).
    """

    selective: ClassVar[bool]
    num_symbols: int = 10
    num_copied: int = 4
    train_lengths: tuple[int, int] = (40, 40)
    test_lengths: tuple[int, ...] = (40, 64, 128)

    def __post_init__(self):
        check_int(self.name, "num_symbols", self.num_symbols)
        check_int(self.name, "num_copied", self.num_copied)
        super().__post_init__()

    @property
    def vocab_size(self) -> int:
        return self.num_symbols + 2

    @property
    def num_classes(self) -> int:
        return self.num_symbols

    @property
    def min_length(self) -> int:
        return 2 * self.num_copied

    def _length_reason(self) -> str:
        return f" (2 * num_copied: {self.num_copied} symbols and {self.num_copied} markers)"

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        device, copied, blank = generator.device, self.num_copied, self.num_symbols
        symbols = torch.randint(0, self.num_symbols, (batch_size, copied), generator=generator, device=device)
        if self.selective:
            shuffled = torch.rand(batch_size, length - copied, generator=generator, device=device).argsort(-1)
            positions = shuffled[:, :copied].sort(-1).values
        else:
            positions = torch.arange(copied, device=device).repeat(batch_size, 1)
        tokens = torch.full((batch_size, length), blank, dtype=torch.long, device=device)
        tokens.scatter_(1, positions, symbols)
        tokens[:, -copied:] = blank + 1
        targets = torch.zeros_like(tokens)
        targets[:, -copied:] = symbols
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        mask[:, -copied:] = True
        return Batch(tokens, targets, mask)


@register_task
@dataclass(frozen=True)
class Copying(_Copying):
    """Copying: the ``M`` symbols are the first ``M`` tokens, so the blank stretch sits between them and the markers."""

    name: ClassVar[str] = "copying"
    selective: ClassVar[bool] = False


@register_task
@dataclass(frozen=True)
class SelectiveCopying(_Copying):
    """Selective copying: the ``M`` symbols sit at uniformly random positions (kept in order) among the first
    ``T - M``, so the model must pick them out of the blanks rather than count time."""

    name: ClassVar[str] = "selective_copying"
    selective: ClassVar[bool] = True


@register_task
@dataclass(frozen=True)
class InductionHeads(Task):
    """Uniform symbols with one trigger followed by a value; the trigger ends the sequence, labelled with the value.

    The trigger sits at a uniform position ``i ∈ [0, T-3]``, its value at ``i + 1`` (a uniform symbol), the trigger
    again at ``T - 1``; no other position holds the trigger. Vocabulary: ids ``0 … num_symbols-1`` symbols,
    ``num_symbols`` the trigger. Classes: the symbols. Scored: the last position. Chance ``1 / num_symbols``.
    Train lengths 16–64, test 64, 128, 256, 512; train score over 32–64 (the default rule: the upper half).
    """

    name: ClassVar[str] = "induction_heads"
    num_symbols: int = 16
    train_lengths: tuple[int, int] = (16, 64)
    test_lengths: tuple[int, ...] = (64, 128, 256, 512)

    def __post_init__(self):
        check_int(self.name, "num_symbols", self.num_symbols)
        super().__post_init__()

    @property
    def vocab_size(self) -> int:
        return self.num_symbols + 1

    @property
    def num_classes(self) -> int:
        return self.num_symbols

    @property
    def min_length(self) -> int:
        return 3

    def _length_reason(self) -> str:
        return " (trigger, value, trigger)"

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        device, trigger = generator.device, self.num_symbols
        tokens = torch.randint(0, self.num_symbols, (batch_size, length), generator=generator, device=device)
        first = torch.randint(0, length - 2, (batch_size, 1), generator=generator, device=device)
        targets = torch.zeros_like(tokens)
        targets[:, -1:] = tokens.gather(1, first + 1)
        tokens.scatter_(1, first, trigger)
        tokens[:, -1] = trigger
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        mask[:, -1] = True
        return Batch(tokens, targets, mask)


@register_task
@dataclass(frozen=True)
class WindowParity(BitTask):
    """N-parity: the parity of the last ``window`` bits, ``label_t = x_{t-N+1} ⊕ … ⊕ x_t`` with ``N = window``.

    From "Emergent mechanisms for long timescales depend on training curriculum and affect performance in
    memory tasks" (Khajehabdollahi et al. 2024). The label depends on the last ``N`` inputs only, so a model
    must keep a short window and forget the rest: a recurrent state that does not forget drifts at lengths it
    never saw, and a sequence may start from any earlier state (carried from another sequence) without
    changing a label. Vocabulary: ids 0, 1 the bits. Classes: 0 even, 1 odd. Scored: positions ``N … T`` (a
    full window), or the last. Train lengths 8–40, test 40, 128, 512, 1024; train score over 20–40 (the
    default rule: the upper half). Bits are uniform, so every label is too: chance 1/2.
    """

    name: ClassVar[str] = "window_parity"
    window: int = 4
    train_lengths: tuple[int, int] = (8, 40)
    test_lengths: tuple[int, ...] = (40, 128, 512, 1024)

    def __post_init__(self):
        check_int(self.name, "window", self.window)
        super().__post_init__()

    @property
    def min_length(self) -> int:
        return self.window

    def _length_reason(self) -> str:
        return f" (window: one full window of {self.window} bits)"

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        bits = self._bits(batch_size, length, generator)
        sums = torch.nn.functional.pad(bits.cumsum(1), (self.window, 0))
        targets = (sums[:, self.window :] - sums[:, :-self.window]) % 2
        mask = self._scored(torch.arange(length, device=bits.device) >= self.window - 1)
        return Batch(bits, targets, mask.repeat(batch_size, 1))
