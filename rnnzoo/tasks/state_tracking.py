"""Regular-language state tracking: parity, modular arithmetic, cycle navigation, even pairs.

Delétang et al. (2023), "Neural Networks and the Chomsky Hierarchy" (the tasks, single label at the end), and
Grazzi et al. (2025), "Unlocking State-Tracking in Linear RNNs Through Negative Eigenvalues" (parity and
modular arithmetic, the latter with + and − only: ``precedence=False``; train lengths 3–40, test 40–256).
Labels are dense by default (``dense=True``: one at every labelled position, far faster to learn);
``dense=False`` scores only the last labelled position, as published.
Each label is uniform over the classes at every position, so chance is exactly ``1 / num_classes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .._checks import check_int
from .base import Batch, BitTask, PrefixTask, compose_prefix, register_task

__all__ = ["Parity", "ModularArithmetic", "CycleNavigation", "EvenPairs"]


@register_task
@dataclass(frozen=True)
class Parity(BitTask):
    """Running parity of a bit string: ``label_t = (x_1 + … + x_t) mod 2``.

    Vocabulary: ids 0, 1 are the bits. Classes: 0 even, 1 odd. Scored: every position (or the last).
    Train lengths 3–40, test 40, 64, 128, 256; train score over 20–40 (the default rule: the upper half, as the
    first label is the first bit). Bits are uniform, so every label is too: chance 1/2.
    """

    name: ClassVar[str] = "parity"

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        bits = self._bits(batch_size, length, generator)
        mask = self._scored(torch.ones(length, dtype=torch.bool, device=bits.device))
        return Batch(bits, bits.cumsum(1) % 2, mask.repeat(batch_size, 1))


@dataclass(frozen=True)
class _ModularTask(PrefixTask):
    """Shared by the tasks mod ``modulus``: ``modulus`` value ids, then three operator/move ids; the value as class."""

    modulus: int = 5

    def __post_init__(self):
        check_int(self.name, "modulus", self.modulus, minimum=2)
        super().__post_init__()

    @property
    def vocab_size(self) -> int:
        return self.modulus + 3

    @property
    def num_classes(self) -> int:
        return self.modulus


@register_task
@dataclass(frozen=True)
class ModularArithmetic(_ModularTask):
    """An expression mod ``modulus`` (5), labelled at each number: + − × with operator precedence (the default),
    or + − only, evaluated left to right (``precedence=False``).

    The sequence alternates numbers and operators, ``d_1 o_1 d_2 o_2 d_3 …``: digits at even positions, operators
    at odd ones (an even length ends on an operator, which is not scored). The label at ``d_k`` is the value mod
    ``modulus`` of the prefix ``d_1 o_1 … d_k``.

    ``precedence=True`` (Delétang et al.'s task, with ×): evaluated with × before + and − (as Python evaluates
    ``"3+4*2-1"``). The first operator is + or −, so ``d_1`` is a term of its own and every label is ``d_1`` plus
    something independent of it: uniform, chance exactly ``1 / modulus``. Later operators are uniform over + − ×.

    ``precedence=False`` (Grazzi et al.'s modular arithmetic without precedence; Delétang et al.'s generator with
    ``operators=("+", "-")``): every operator is uniform over + and −, and the label at ``d_k`` is the running
    value ``d_1 ± d_2 ± … ± d_k`` mod ``modulus`` (left to right and with precedence agree when there is no ×).
    Every label is ``d_1`` plus something independent of it, so chance is again exactly ``1 / modulus``.

    Vocabulary (both forms, so token ids mean the same): ids ``0 … modulus-1`` digits, ``modulus`` +,
    ``modulus+1`` −, ``modulus+2`` × (never drawn when ``precedence=False``). Classes: the value. Scored: every
    number (or the last). Train lengths 3–40, test 40, 64, 128, 256; train score over 20–40 (the default rule of
    :meth:`~rnnzoo.tasks.Task.train_score_lengths`: the label at ``d_1`` is ``d_1``, and at length 3 it is one
    of the two labels).
    """

    name: ClassVar[str] = "modular_arithmetic"
    precedence: bool = True

    def __post_init__(self):
        if not isinstance(self.precedence, bool):
            raise ValueError(f"{self.name}: `precedence` must be a bool, got {self.precedence!r}")
        super().__post_init__()

    def _running_values(self, digits: Tensor, ops: Tensor) -> Tensor:
        """``(B, N)``: the value at each digit of ``d_1 o_1 d_2 … d_N``, from ``digits`` ``(B, N)`` and ``ops``
        ``(B, N-1)`` (0 +, 1 −, 2 ×), as ``S + P``: ``P`` the signed product of the current term, ``S`` the sum of
        the terms before it. ``P`` is a running composition of maps of ``Z_m`` (``+ d``: ``P ↦ d``, ``− d``:
        ``P ↦ -d``, ``× d``: ``P ↦ P·d``); a term closes where the next operator is + or −."""
        m = self.modulus
        op = torch.cat([torch.zeros_like(digits[:, :1]), ops], dim=1)[..., None]  # d_1 starts a term, as after +
        places = torch.arange(m, device=digits.device)
        new_term = ((1 - 2 * (op == 1)) * digits[..., None] % m).expand(-1, -1, m)
        maps = torch.where(op == 2, places * digits[..., None] % m, new_term)
        products = compose_prefix(maps)[..., 0]
        closed = products[:, :-1] * (ops != 2)
        sums = torch.cat([torch.zeros_like(products[:, :1]), closed.cumsum(1)], dim=1)
        return (sums + products) % m

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        m, numbers, device = self.modulus, (length + 1) // 2, generator.device
        digits = torch.randint(0, m, (batch_size, numbers), generator=generator, device=device)
        kinds = 3 if self.precedence else 2  # + − × or + −
        ops = torch.randint(0, kinds, (batch_size, length // 2), generator=generator, device=device)
        ops[:, :1] %= 2  # the first operator is + or −
        tokens = torch.empty(batch_size, length, dtype=torch.long, device=device)
        tokens[:, 0::2], tokens[:, 1::2] = digits, m + ops
        targets = torch.zeros_like(tokens)
        if self.precedence:
            targets[:, 0::2] = self._running_values(digits, ops[:, : numbers - 1])
        else:  # a running sum of the signed digits, d_1 counted as after +
            signs = 1 - 2 * torch.cat([torch.zeros_like(digits[:, :1]), ops[:, : numbers - 1]], dim=1)
            targets[:, 0::2] = (signs * digits).cumsum(1) % m
        mask = self._scored(torch.arange(length, device=device) % 2 == 0)
        return Batch(tokens, targets, mask.repeat(batch_size, 1))


@register_task
@dataclass(frozen=True)
class CycleNavigation(_ModularTask):
    """A pointer on a cycle of ``modulus`` (5) places: a start place, then moves −1, 0, +1; label = its place.

    ``label_t = (s + a_2 + … + a_t) mod modulus`` (a running sum), with ``s`` the first token and ``a`` the moves.
    Delétang et al. start at place 0; the start drawn uniformly (and shown as the first token) makes every label
    uniform, so chance is exactly ``1 / modulus``.

    Vocabulary: ids ``0 … modulus-1`` start places (first token only), ``modulus``, ``modulus+1``, ``modulus+2``
    the moves −1, 0, +1. Classes: the place. Scored: every position (or the last). Train lengths 3–40, test 40,
    64, 128, 256; train score over 20–40 (the default rule: the upper half, as the first label is the first
    token).
    """

    name: ClassVar[str] = "cycle_navigation"

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        m, device = self.modulus, generator.device
        start = torch.randint(0, m, (batch_size, 1), generator=generator, device=device)
        moves = torch.randint(0, 3, (batch_size, length - 1), generator=generator, device=device)
        tokens = torch.cat([start, m + moves], dim=1)
        targets = torch.cat([start, moves - 1], dim=1).cumsum(1) % m
        mask = self._scored(torch.ones(length, dtype=torch.bool, device=device))
        return Batch(tokens, targets, mask.repeat(batch_size, 1))


@register_task
@dataclass(frozen=True)
class EvenPairs(BitTask):
    """Whether a bit string has an even number of unequal adjacent pairs; equivalently ``x_1 == x_t``.

    A control task: a regular language that needs no counting. Vocabulary: ids 0, 1 the bits. Classes: 1 even,
    0 odd. Scored: positions 2…T (a single bit has no pairs), or the last. Train lengths 3–40, test 40, 64, 128,
    256; train score over 20–40 (the default rule: the upper half). ``x_t`` is uniform and independent of
    ``x_1`` for ``t ≥ 2``, so chance is 1/2.
    """

    name: ClassVar[str] = "even_pairs"

    @property
    def min_length(self) -> int:
        return 2

    def _length_reason(self) -> str:
        return " (one pair at least)"

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        bits = self._bits(batch_size, length, generator)
        mask = self._scored(torch.arange(length, device=bits.device) > 0)
        return Batch(bits, (bits == bits[:, :1]).long(), mask.repeat(batch_size, 1))
