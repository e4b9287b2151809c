"""``rnnzoo bench --suite lm``: language modelling on real text, every tier-1 mixer and two hybrids side by side.

Each model is a causal LM of the same parameter budget trained for the same number of tokens on the same data
(``rnnzoo train``'s loop, one thread per run, ``--jobs`` runs at once; each run is its own resumable run
directory under ``--out``, so an interrupted benchmark continues where it stopped). The table gives, per
model, the validation bits per byte, training throughput, generation throughput (tokens per second of
``stream`` after a prompt, one token per ``step``) and the floats of recurrent state after a training context;
the plot, validation bits per byte against training tokens.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from ..train import TrainConfig, latest_checkpoint, train
from ..train.checkpoint import load_checkpoint
from .files import write_json_atomic
from .suites import tier_models

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["HYBRIDS", "LMRow", "lm_models", "run_lm_bench"]

# Griffin's pattern (two recurrent blocks per local-attention block) and a GLA hybrid with full attention
HYBRIDS = {
    "hawk,hawk,attention": {"attention": {"window": 64}},
    "gla,gla,attention": {},
}
GENERATE_TOKENS = 64


@dataclasses.dataclass
class LMRow:
    model: str
    params: int
    val_bpb: float
    train_tokens_per_s: float
    generate_tokens_per_s: float
    state_floats: int
    curve: list  # (tokens, val_bpb) at each evaluation


def lm_models() -> list[str]:
    """Every tier-1 mixer, then the hybrids."""
    return [*tier_models(1), *HYBRIDS]


def _run_dir(out: Path, model: str) -> Path:
    return out / model.replace(",", "+")


def _config(base: TrainConfig, model: str) -> TrainConfig:
    kwargs = HYBRIDS.get(model, base.mixer_kwargs if model == base.mixer else {})
    return dataclasses.replace(base, mixer=model, mixer_kwargs=kwargs, threads=1)


def _train_one(base: dict, model: str, out: str) -> str:
    """One run to its last step (resuming a finished or interrupted one); returns its directory."""
    torch.set_num_threads(1)
    config = _config(TrainConfig(**base), model)
    run = _run_dir(Path(out), model)
    checkpoint = latest_checkpoint(run)
    if checkpoint is None or load_checkpoint(checkpoint)[1]["step"] < config.steps:
        train(config, run, resume=checkpoint is not None)
    return str(run)


@torch.no_grad()
def _measure(run: Path, context: int) -> LMRow:
    """A finished run's row: its metrics, and generation speed and state size measured now."""
    from ..train.evaluate import load_run

    loaded = load_run(run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_bpb" in r]
    train_speed = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    prompt = torch.randint(loaded.model.vocab_size, (1, context), generator=torch.Generator().manual_seed(0))
    _, state = loaded.model(prompt)
    floats = sum(t.numel() * (2 if t.is_complex() else 1) for s in state for t in s.tensors().values()
                 if t.is_floating_point() or t.is_complex())  # fmt: skip
    list(loaded.model.stream(prompt[:, :8], 4))  # warm-up
    start = time.perf_counter()
    list(loaded.model.stream(prompt, GENERATE_TOKENS))
    seconds = time.perf_counter() - start
    return LMRow(
        loaded.config.mixer, loaded.model.num_parameters(), evals[-1]["val_bpb"], sorted(train_speed)[len(train_speed) // 2],
        GENERATE_TOKENS / seconds, floats, [(r["tokens"], r["val_bpb"]) for r in evals],
    )  # fmt: skip


def run_lm_bench(base: TrainConfig, models: Sequence[str], out: Path, jobs: int, console: Console) -> list[LMRow]:
    """Train every model (``jobs`` processes), then measure each; writes ``lm.json`` and ``lm.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    base_dict = dataclasses.asdict(base)
    if jobs > 1 and len(models) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(jobs, len(models)), mp_context=context) as pool:
            futures = {pool.submit(_train_one, base_dict, m, str(out)): m for m in models}
            for future in as_completed(futures):
                future.result()
                console.print(f"trained {futures[future]}", highlight=False)
    else:
        for model in models:
            _train_one(base_dict, model, str(out))
            console.print(f"trained {model}", highlight=False)
    torch.set_num_threads(1)
    rows = [_measure(_run_dir(out, m), base.context) for m in models]
    write_json_atomic(out / "lm.json", {"config": base_dict, "rows": [dataclasses.asdict(r) for r in rows]})
    plot_lm(rows, out / "lm.png", f"validation bits per byte on {base.data}")
    return rows


def plot_lm(rows: Sequence[LMRow], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for row in rows:
        tokens, bpb = zip(*row.curve)
        ax.plot(tokens, bpb, marker=".", label=row.model)
    ax.set(xlabel="training tokens", ylabel="validation bits per byte", title=title)
    ax.legend(fontsize=6, ncol=2)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)


def report_lm(rows: Sequence[LMRow], console: Console, caption: str) -> None:
    from rich.table import Table

    table = Table(title="rnnzoo bench --suite lm", caption=caption)
    for name in ("model", "params", "val bpb", "train tokens/s", "generate tokens/s", "state floats"):
        table.add_column(name, justify="left" if name == "model" else "right")
    for r in sorted(rows, key=lambda r: r.val_bpb):
        table.add_row(r.model, f"{r.params:,}", f"{r.val_bpb:.3f}", f"{r.train_tokens_per_s:,.0f}",
                      f"{r.generate_tokens_per_s:,.1f}", f"{r.state_floats:,}")  # fmt: skip
    console.print(table)
