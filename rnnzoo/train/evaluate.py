"""Trained language models after training: ``rnnzoo eval`` (bits per byte, loss against position out to
several training contexts: the length-extrapolation figure of the papers) and ``rnnzoo generate``."""

from __future__ import annotations

import codecs
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import Tokenizer, open_corpus, token_split, tokenizer_from_json
from ..models import SequenceModel
from .checkpoint import latest_checkpoint, load_checkpoint
from .config import ConfigError, TrainConfig
from .lm import build_model, evaluate

__all__ = ["LoadedRun", "load_run", "loss_by_position", "plot_loss_by_position", "stream_text"]


class LoadedRun:
    """A checkpoint's model (eval mode), configuration, tokenizer and name."""

    def __init__(self, model: SequenceModel, config: TrainConfig, tokenizer: Tokenizer, name: str, step: int) -> None:
        self.model, self.config, self.tokenizer, self.name, self.step = model, config, tokenizer, name, step


def load_run(path: str | Path) -> LoadedRun:
    """A run directory (its last checkpoint) or a checkpoint directory, as a model ready to evaluate."""
    path = Path(path)
    checkpoint = latest_checkpoint(path) if (path / "checkpoints").is_dir() else path
    if checkpoint is None or not checkpoint.is_dir():
        raise ConfigError(f"--checkpoint {path}: no checkpoint there (a run directory or one of its checkpoints)")
    try:
        weights, trainer, saved, tokenizer_json = load_checkpoint(checkpoint)
        config = TrainConfig(**saved)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"--checkpoint {checkpoint}: {e}") from None
    tokenizer = tokenizer_from_json(tokenizer_json)
    model = build_model(config, weights["embedding.weight"].shape[0])
    model.load_state_dict(weights)
    model.eval()
    name = path.name if checkpoint != path else f"{checkpoint.parent.parent.name}/{checkpoint.name}"
    return LoadedRun(model, config, tokenizer, name, trainer["step"])


@torch.no_grad()
def loss_by_position(model: SequenceModel, tokens, length: int, sequences: int, seed: int = 0) -> torch.Tensor:
    """Mean cross-entropy (nats) at each position ``0..length-1`` over ``sequences`` windows of ``length + 1``
    tokens at fixed random offsets, each from an empty state: ``(length,)``."""
    if len(tokens) < length + 1:
        raise ConfigError(f"the split has {len(tokens)} tokens, fewer than a window of {length + 1}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(tokens) - length, (sequences,), generator=generator).tolist()
    total = torch.zeros(length, dtype=torch.float64)
    for start in starts:
        window = torch.as_tensor(tokens[start : start + length + 1].astype("int64"))[None]
        logits, _ = model(window[:, :-1])
        total += F.cross_entropy(logits[0].float(), window[0, 1:], reduction="none").double()
    return total / sequences


def bucketed(curve: torch.Tensor, context: int) -> list[tuple[str, float]]:
    """The curve's mean over the training context and over each further context-long stretch."""
    rows = []
    for start in range(0, len(curve), context):
        end = min(start + context, len(curve))
        rows.append((f"{start}-{end - 1}", float(curve[start:end].mean())))
    return rows


def plot_loss_by_position(curves: dict[str, tuple[torch.Tensor, int]], path: Path, title: str) -> None:
    """One curve per run: loss (nats per token) against position, smoothed over windows of 1/16 of the context,
    the training context marked; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, (curve, context) in curves.items():
        width = max(1, context // 16)
        smooth = F.avg_pool1d(curve[None, None].float(), width, stride=width)[0, 0]
        ax.plot((torch.arange(len(smooth)) * width + width / 2).tolist(), smooth.tolist(), label=name)
        ax.axvline(context, color="0.7", lw=0.8, ls=":")
    ax.set(xlabel="position in the sequence (tokens)", ylabel="loss (nats per token)", title=title)
    ax.legend()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def eval_split(run: LoadedRun, data: str | None, split: str):
    """The tokens of ``split`` of ``data`` (default: the run's) under the run's tokenizer."""
    try:
        corpus = open_corpus(data or run.config.data)
    except ValueError as e:
        raise ConfigError(f"--data: {e}") from None
    return token_split(corpus, run.tokenizer, split)


def split_scores(run: LoadedRun, split_tokens, batches: int) -> dict[str, float]:
    """:func:`~rnnzoo.train.lm.evaluate` at the run's context and batch size, over ``batches`` batches."""
    config = TrainConfig(**{**run.config.to_dict(), "eval_batches": batches})
    return evaluate(run.model, split_tokens, config)


def stream_text(run: LoadedRun, prompt: str, max_new_tokens: int, temperature: float, top_k: int | None,
                top_p: float | None, seed: int, compile: bool | None = None) -> Iterator[str]:  # fmt: skip
    """The generated text piece by piece as tokens come (UTF-8 decoded incrementally for byte tokens)."""
    ids = run.tokenizer.encode(prompt)
    if len(ids) == 0:
        raise ConfigError("--prompt: give at least one character")
    prompt_ids = torch.as_tensor(ids.astype("int64"))[None]
    generator = torch.Generator().manual_seed(seed)
    tokens = run.model.stream(prompt_ids, max_new_tokens, temperature, top_k, generator, top_p, compile)
    if run.tokenizer.name == "byte":
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for token in tokens:
            yield decoder.decode(bytes([int(token)]))
        yield decoder.decode(b"", final=True)
    else:
        for token in tokens:
            yield run.tokenizer.decode([int(token)])


def timed(pieces: Iterator[str]) -> Iterator[tuple[str, float]]:
    """Each piece with the seconds since the first was asked for."""
    start = time.perf_counter()
    for piece in pieces:
        yield piece, time.perf_counter() - start


def per_second(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.inf
