"""``rnnzoo speed --train-step``: one full training step of a capability-benchmark model around each layer.

The step is what a claim's budget buys: forward, cross-entropy at every position, backward, gradient clipping
and an AdamW update of a :class:`~rnnzoo.models.SequenceModel` sized like the benchmark's (``params``
parameters within 3% by :func:`~rnnzoo.models.size_model`, ``n_layers`` blocks), on a batch of ``batch``
sequences of ``length`` tokens. Every model is timed in one process, round-robin (one step of each model per
round, after warm-up rounds), so the machine's drift hits them alike; a row reports the median over rounds of
the step's thread CPU time (steadier than wall time on a shared machine) and of its wall time, and the ratio of
the CPU times to the ``lstm`` model's (the README's speed section gives the required ratio).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F

from ..models import SequenceModel, size_model

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["BASELINE", "TrainStepRow", "measure", "report"]

BASELINE = "lstm"
VOCAB = 8  # the state-tracking tasks' vocabulary size (modular arithmetic: 5 digits, 3 operators)


@dataclass
class TrainStepRow:
    model: str
    params: int
    d_model: int
    cpu_ms: float  # median thread CPU time of one step
    wall_ms: float  # median wall time of one step
    ratio: float | None = None  # cpu_ms / the baseline's cpu_ms


def _step_fn(name: str, batch: int, length: int, params: int, n_layers: int, seed: int) -> tuple[SequenceModel, Callable]:
    config = dict(vocab_size=VOCAB, num_classes=VOCAB, mixer=name, n_layers=n_layers)
    torch.manual_seed(seed)
    model = SequenceModel(**config, **size_model(params, **config))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(VOCAB, (batch, length), generator=generator)
    targets = torch.randint(VOCAB, (batch, length), generator=generator)

    def step() -> None:
        logits, _ = model(tokens)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return model, step


def measure(
    names: Sequence[str],
    *,
    batch: int = 64,
    length: int = 40,
    params: int = 30_000,
    n_layers: int = 2,
    rounds: int = 15,
    warmup: int = 3,
    threads: int = 1,
    on_round: Callable[[int], None] | None = None,
) -> list[TrainStepRow]:
    """Time a training step of each model (and of ``lstm``, the baseline) round-robin; rows in ``names`` order
    with the baseline first."""
    names = list(dict.fromkeys([BASELINE, *names]))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        built = {n: _step_fn(n, batch, length, params, n_layers, seed=0) for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in names}
        wall: dict[str, list[float]] = {n: [] for n in names}
        for r in range(warmup + rounds):
            for n in names:
                c0, w0 = time.thread_time(), time.perf_counter()
                built[n][1]()
                if r >= warmup:
                    cpu[n].append(time.thread_time() - c0)
                    wall[n].append(time.perf_counter() - w0)
            if on_round is not None:
                on_round(r)
    finally:
        torch.set_num_threads(previous)
    rows = [
        TrainStepRow(n, built[n][0].num_parameters(), built[n][0].d_model,
                     1e3 * statistics.median(cpu[n]), 1e3 * statistics.median(wall[n]))
        for n in names
    ]  # fmt: skip
    for row in rows:
        row.ratio = row.cpu_ms / rows[0].cpu_ms
    return rows


def report(rows: Sequence[TrainStepRow], console: Console, caption: str = "") -> None:
    """A table: model, parameters, d_model, CPU and wall ms per step, ratio to lstm; then the largest ratio."""
    from rich import box
    from rich.table import Table

    table = Table(
        title=f"one training step (forward, loss, backward, AdamW) vs {BASELINE}",
        box=box.SIMPLE_HEAD, caption=caption or None,
    )  # fmt: skip
    for name in ("model", "params", "d_model", "CPU ms", "wall ms", f"× {BASELINE}"):
        table.add_column(name, justify="left" if name == "model" else "right")
    for r in rows:
        table.add_row(r.model, f"{r.params:,}", str(r.d_model), f"{r.cpu_ms:.1f}", f"{r.wall_ms:.1f}", f"{r.ratio:.2f}")
    console.print(table)
    others = sorted(rows[1:], key=lambda r: r.ratio, reverse=True)
    if others:
        top = ", ".join(f"{r.model} {r.ratio:.2f}×" for r in others[:3])
        console.print(f"largest ratios to {BASELINE}: {top}", highlight=False)
