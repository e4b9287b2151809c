"""``rnnzoo speed --decode``: greedy decoding after a long prompt, eager :meth:`~rnnzoo.models.SequenceModel.step`
against :meth:`~rnnzoo.models.SequenceModel.compiled_step`.

Each model is a causal LM of ``params`` parameters (:func:`~rnnzoo.models.size_model`, ``n_layers`` blocks,
byte vocabulary) with random weights. The prompt of ``context`` tokens runs once in parallel; then both forms
decode ``tokens`` greedy tokens from its state, in rounds that alternate eager and compiled (after a warm-up
round that also compiles), so that the machine's drift hits both alike. A row reports the medians of tokens per
second over the rounds, their ratio, and whether the two forms chose the same tokens (they must).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..models import SequenceModel, size_model

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["DEFAULT_MODELS", "DecodeRow", "measure", "report"]

DEFAULT_MODELS = ("gla", "mamba", "deltanet", "lstm")
VOCAB = 256


@dataclass
class DecodeRow:
    model: str
    params: int
    eager_tokens_per_s: float
    compiled_tokens_per_s: float
    ratio: float  # compiled / eager
    compile_s: float  # the first compiled call
    same_tokens: bool


def _decode(step, token: torch.Tensor, state, count: int) -> tuple[list[int], float]:
    """``count`` greedy tokens from ``token`` and ``state``; returns them and the seconds taken."""
    tokens, start = [], time.perf_counter()
    for _ in range(count):
        logits, state = step(token, state)
        token = logits.argmax(-1)
        tokens.append(int(token[0]))
    return tokens, time.perf_counter() - start


@torch.no_grad()
def measure(names: list[str], *, context: int, tokens: int, params: int, n_layers: int, rounds: int,
            threads: int, seed: int = 0) -> list[DecodeRow]:  # fmt: skip
    """One :class:`DecodeRow` per model (see the module docstring)."""
    torch.set_num_threads(threads)
    rows = []
    for name in names:
        config = dict(vocab_size=VOCAB, mixer=name, n_layers=n_layers)
        torch.manual_seed(seed)
        model = SequenceModel(**config, **size_model(params, **config)).eval()
        prompt = torch.randint(VOCAB, (1, context), generator=torch.Generator().manual_seed(seed))
        logits, state = model(prompt)
        first = logits[:, -1].argmax(-1)
        compiled = model.compiled_step()
        start = time.perf_counter()
        compiled(first, state)
        compile_s = time.perf_counter() - start
        speeds: dict[str, list[float]] = {"eager": [], "compiled": []}
        chosen: dict[str, list[int]] = {}
        for round_ in range(rounds + 1):  # round 0 warms up
            for form, step in (("eager", model.step), ("compiled", compiled)):
                got, seconds = _decode(step, first, state, tokens)
                chosen[form] = got
                if round_:
                    speeds[form].append(tokens / seconds)
        eager, fused = statistics.median(speeds["eager"]), statistics.median(speeds["compiled"])
        rows.append(DecodeRow(name, model.num_parameters(), eager, fused, fused / eager, compile_s,
                              chosen["eager"] == chosen["compiled"]))  # fmt: skip
    return rows


def report(rows: list[DecodeRow], console: Console, caption: str) -> None:
    from rich.table import Table

    table = Table(title="greedy decoding: eager step vs compiled step", caption=caption)
    for column in ("model", "parameters", "eager tokens/s", "compiled tokens/s", "ratio", "compile s", "same tokens"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in rows:
        table.add_row(r.model, f"{r.params:,}", f"{r.eager_tokens_per_s:,.0f}", f"{r.compiled_tokens_per_s:,.0f}",
                      f"{r.ratio:.1f}×", f"{r.compile_s:.1f}", "yes" if r.same_tokens else "NO")  # fmt: skip
    console.print(table)
