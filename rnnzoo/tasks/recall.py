"""Multi-query associative recall (MQAR), as Zoology generates it.

Arora et al. (2024), "Zoology: Measuring and Improving Recall in Efficient Language Models". A model with a
fixed-size state must hold every key–value pair it has seen to answer queries in any order; attention can look
them up. The published grid uses vocabulary 8192 and ``(T, K)`` up to ``(512, 64)``; the default here is the
CPU-sized one: 128 tokens, ``K = 8`` pairs, trained at ``T = 64`` and tested at 64, 128, 256.

``read_twice=True``: Arora et al. (2024), "Just read twice: closing the recall gap for recurrent language
models": the key–value block is shown twice before the queries (their JRT-Prompt, repeating the context before
the questions, which narrows the recall gap of fixed-state models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .._checks import check_int
from .base import Batch, Task, register_task

__all__ = ["MQAR"]

POWER_A = 0.01  # Zoology's power law: query gap g = 1, 2, … drawn with probability ∝ g^(POWER_A - 1)


@register_task
@dataclass(frozen=True)
class MQAR(Task):
    """``K`` key–value pairs, then each key queried once more; the label at a query is its key's value.

    Tokens ``0 … 2K-1``: ``k_1 v_1 k_2 v_2 … k_K v_K``, ``K`` distinct keys and ``K`` distinct values, uniform.
    The remaining ``T - 2K`` tokens are the query stretch: key ``k_i`` appears at offset ``2 g_i`` in it, the
    gaps ``g_i`` drawn without replacement from ``0 … (T-2K)/2 - 1`` with probability ∝ ``(g + 1)^(a - 1)``,
    ``a = 0.01`` (power law: most queries come soon after the pairs), and every other position of the stretch
    holds a uniform token of the whole vocabulary (noise, which may repeat a key; unscored). ``T ≥ 4K`` leaves
    room for the ``K`` query slots.

    Vocabulary: ids ``0 … num_values-1`` values, ``num_values … num_values+num_keys-1`` keys. Classes: the value
    ids. Scored: the ``K`` query positions. Every value is uniform, so chance is ``1 / num_values``.

    ``read_twice=True``: the block is repeated, ``k_1 v_1 … k_K v_K k_1 v_1 … k_K v_K``, and the query stretch is
    the remaining ``T - 4K`` tokens (gaps from ``0 … (T-4K)/2 - 1``, as above); ``T ≥ 6K``. Labels, vocabulary,
    classes and chance are unchanged. Train score at 64 (the default rule of
    :meth:`~rnnzoo.tasks.Task.train_score_lengths`: the upper half of the training range, here its one length).
    """

    name: ClassVar[str] = "mqar"
    num_pairs: int = 8
    num_keys: int = 64
    num_values: int = 64
    read_twice: bool = False
    train_lengths: tuple[int, int] = (64, 64)
    test_lengths: tuple[int, ...] = (64, 128, 256)

    def __post_init__(self):
        check_int(self.name, "num_pairs", self.num_pairs)
        check_int(self.name, "num_keys", self.num_keys, minimum=self.num_pairs)
        check_int(self.name, "num_values", self.num_values, minimum=self.num_pairs)
        if not isinstance(self.read_twice, bool):
            raise ValueError(f"{self.name}: `read_twice` must be a bool, got {self.read_twice!r}")
        super().__post_init__()

    @property
    def vocab_size(self) -> int:
        return self.num_values + self.num_keys

    @property
    def num_classes(self) -> int:
        return self.num_values

    @property
    def min_length(self) -> int:
        return (6 if self.read_twice else 4) * self.num_pairs

    def _length_reason(self) -> str:
        if self.read_twice:
            return f" (6 * num_pairs: room for {self.num_pairs} key-value pairs twice and their query slots)"
        return f" (4 * num_pairs: room for {self.num_pairs} key-value pairs and their query slots)"

    def _sample(self, batch_size: int, length: int, generator: torch.Generator) -> Batch:
        device, pairs, block = generator.device, self.num_pairs, 2 * self.num_pairs
        context = 2 * block if self.read_twice else block

        def distinct(count: int) -> torch.Tensor:  # (B, K): K distinct uniform ids in [0, count)
            return torch.rand(batch_size, count, generator=generator, device=device).argsort(-1)[:, :pairs]

        keys, values = self.num_values + distinct(self.num_keys), distinct(self.num_values)
        tokens = torch.randint(0, self.vocab_size, (batch_size, length), generator=generator, device=device)
        tokens[:, 0:block:2], tokens[:, 1:block:2] = keys, values
        if self.read_twice:
            tokens[:, block:context] = tokens[:, :block]
        slots = (length - context) // 2
        weights = torch.arange(1, slots + 1, device=device, dtype=torch.float64) ** (POWER_A - 1)
        gaps = torch.multinomial(weights.expand(batch_size, slots), pairs, replacement=False, generator=generator)
        queries = context + 2 * gaps
        tokens.scatter_(1, queries, keys)
        targets = torch.zeros_like(tokens).scatter_(1, queries, values)
        mask = torch.zeros_like(tokens, dtype=torch.bool).scatter_(1, queries, True)
        return Batch(tokens, targets, mask)
