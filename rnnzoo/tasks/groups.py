"""Group word problems: the running product of permutations in S3 (non-abelian), A5 and S5 (non-solvable).

Merrill, Petty, Sabharwal (2024), "The Illusion of State in State-Space Models" (S5 needs more than a
diagonal or fixed-depth model); Siems et al. (2025), "DeltaProduct: Improving State-Tracking in Linear RNNs
via Householder Products" (S3, A5, S5 with a label at every position).

A permutation of ``{0, …, n-1}`` is the tuple ``p`` of its images (``p[i]`` the image of ``i``). The product
``a · b`` is "``a`` then ``b``": ``(a · b)[i] = b[a[i]]``. Token ``g_t`` is an element, and the label at ``t``
is the prefix product ``g_1 · g_2 · … · g_t``, the permutation sending ``i`` to ``g_t[… g_2[g_1[i]] …]``.
Element (and class) ids number the group's permutations in lexicographic order of their tuples, so id 0 is the
identity. Elements are uniform, so every prefix product is uniform: chance ``1 / |G|``.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .base import Batch, PrefixTask, compose_prefix, register_task

__all__ = ["GroupWordProblem", "S3", "A5", "S5"]


@functools.lru_cache(maxsize=None)
def _permutations(degree: int, alternating: bool) -> tuple[tuple[int, ...], ...]:
    """S_n, or A_n (the even permutations), in lexicographic order."""
    def is_even(p: tuple[int, ...]) -> bool:
        return sum(p[i] > p[j] for i, j in itertools.combinations(range(degree), 2)) % 2 == 0

    return tuple(p for p in itertools.permutations(range(degree)) if not alternating or is_even(p))


@functools.lru_cache(maxsize=None)
def _id_of_code(degree: int, alternating: bool) -> Tensor:
    """``(n^n,)``: the id of the permutation whose images read as base-``n`` digits give the index (−1 if none)."""
    ids = torch.full((degree**degree,), -1, dtype=torch.long)
    for i, p in enumerate(_permutations(degree, alternating)):
        ids[sum(image * degree**j for j, image in enumerate(p))] = i
    return ids


@dataclass(frozen=True)
class GroupWordProblem(PrefixTask):
    """Running product of uniform elements of a permutation group (the module docstring gives the order).

    Vocabulary and classes: the ``|G|`` element ids. Scored: every position (or the last).
    Train lengths 4–32, test 32, 64, 128; train score over 16–32 (the default rule: the upper half, as the first
    label is the first token).
    """

    degree: ClassVar[int]
    alternating: ClassVar[bool]
    train_lengths: tuple[int, int] = (4, 32)
    test_lengths: tuple[int, ...] = (32, 64, 128)

    @property
    def elements(self) -> tuple[tuple[int, ...], ...]:
        """The group's permutations as image tuples, indexed by id."""
        return _permutations(self.degree, self.alternating)

    @property
    def vocab_size(self) -> int:
        return len(self.elements)

    @property
    def num_classes(self) -> int:
        return len(self.elements)

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        device, n = generator.device, self.degree
        tokens = torch.randint(0, len(self.elements), (batch_size, length), generator=generator, device=device)
        images = torch.tensor(self.elements, device=device)[tokens]  # (B, T, n)
        products = compose_prefix(images)  # g_t ∘ … ∘ g_1 as maps: g_1 · … · g_t in the module's order
        codes = (products * n ** torch.arange(n, device=device)).sum(-1)
        targets = _id_of_code(n, self.alternating).to(device)[codes]
        mask = self._scored(torch.ones(length, dtype=torch.bool, device=device))
        return Batch(tokens, targets, mask.repeat(batch_size, 1))


@register_task
@dataclass(frozen=True)
class S3(GroupWordProblem):
    """The symmetric group on 3 points: 6 elements, the smallest non-abelian group (order matters)."""

    name: ClassVar[str] = "s3"
    degree: ClassVar[int] = 3
    alternating: ClassVar[bool] = False


@register_task
@dataclass(frozen=True)
class A5(GroupWordProblem):
    """The alternating group on 5 points: 60 even permutations, the smallest non-solvable group."""

    name: ClassVar[str] = "a5"
    degree: ClassVar[int] = 5
    alternating: ClassVar[bool] = True


@register_task
@dataclass(frozen=True)
class S5(GroupWordProblem):
    """The symmetric group on 5 points: 120 elements, non-solvable (the word problem of Merrill et al.)."""

    name: ClassVar[str] = "s5"
    degree: ClassVar[int] = 5
    alternating: ClassVar[bool] = False
