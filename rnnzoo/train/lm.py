"""``rnnzoo train``: a causal language model (:class:`~rnnzoo.models.SequenceModel` around any mixer or a
pattern of mixers) trained on real text, evaluated in bits per byte, checkpointed and resumable exactly.

One optimizer step: ``grad_accum`` micro-batches of ``batch_size`` windows of ``context`` tokens (random windows,
or stateful streams whose recurrent state is carried, detached, from one window to the next), cross-entropy
at every position, backward, gradient clipping, AdamW with linear warm-up then cosine decay. Every
``eval_every`` steps the validation loss over a fixed set of windows gives **bits per byte**
(``loss / ln 2 · tokens / bytes`` of the split: comparable across tokenizers) and perplexity. The run directory
holds ``config.json``, ``metrics.jsonl`` (one line per log and per evaluation), ``loss.png`` and the checkpoints
(:mod:`rnnzoo.train.checkpoint`). Resuming restores weights, optimizer, schedule, random generators, the data
position and carried states, so the resumed run computes the same losses as an uninterrupted one.

Under ``torchrun`` the processes train one model on the same global batch (:mod:`rnnzoo.train.distributed`):
each computes its rows, DistributedDataParallel averages the gradients, the logged loss and the validation
figures are the global ones, and the main process alone writes the run directory and prints. A checkpoint
holds the whole batch's carried states, so a run resumes on any number of processes.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..bench.files import write_json_atomic
from ..data import (
    ByteTokenizer,
    IdTokenizer,
    StatefulStreams,
    Tokenizer,
    TokenSplit,
    bits_per_byte,
    open_corpus,
    random_windows,
    token_split,
    tokenizer_from_json,
    tokenizer_from_spec,
)  # fmt: skip
from ..models import SequenceModel, size_model, holds_cache
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig
from .distributed import Processes, from_environment, gradient_sync

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["RESUMABLE_CHANGES", "TrainResult", "build_model", "evaluate", "learning_rate", "train"]

EVAL_SEED = 2**31 - 1  # the validation windows' generator: the same windows at every evaluation
# fields a resumed run may change: they decide how long and how often, not what is computed
RESUMABLE_CHANGES = ("steps", "eval_every", "log_every", "checkpoint_every", "keep_checkpoints", "threads", "device")


@dataclass
class TrainResult:
    step: int
    tokens: int
    val_loss: float | None
    val_bpb: float | None
    seconds: float
    out: Path


def build_model(config: TrainConfig, vocab_size: int) -> SequenceModel:
    """The LM of ``config``: sized to ``params`` by :func:`~rnnzoo.models.size_model` unless ``d_model`` is set."""
    model_config = dict(vocab_size=vocab_size, mixer=config.mixer, n_layers=config.n_layers,
                        mixer_kwargs=config.mixer_kwargs)  # fmt: skip
    try:
        sized = {"d_model": config.d_model} if config.d_model else size_model(config.params, **model_config)
        return SequenceModel(**model_config, **sized)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model (mixer={config.mixer!r}): {e}") from None


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup`` steps, then cosine decay to ``min_lr`` at ``steps``."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def _optimizer(model: SequenceModel, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (embedding, projections), none on norms, biases and gate vectors."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95))


@torch.no_grad()
def evaluate(
    model: SequenceModel, split: TokenSplit, config: TrainConfig, processes: Processes | None = None
) -> dict[str, float]:
    """Validation loss (nats per token), bits per byte and perplexity over ``eval_batches`` fixed batches, on
    the model's device. Data-parallel ``processes`` each take their rows of every batch and sum the losses, so
    they report what one process does."""
    processes = processes or Processes()
    device = next(model.parameters()).device
    model.eval()
    generator = torch.Generator().manual_seed(EVAL_SEED)
    rows = processes.rows(config.batch_size)
    total, count = 0.0, 0
    for _ in range(config.eval_batches):
        x, y = random_windows(split.tokens, config.batch_size, config.context, generator, rows)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
            logits, _ = model(x)
        total += float(F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum"))
        count += y.numel()
    model.train()
    total, count = processes.sum([total, count])
    loss = total / count
    bpb = bits_per_byte(loss, len(split.tokens), split.text_bytes) if split.text_bytes else loss / math.log(2)
    return {"val_loss": loss, "val_bpb": bpb, "val_ppl": math.exp(min(loss, 700))}


def _data(config: TrainConfig, saved_tokenizer: str | None):
    try:
        corpus = open_corpus(config.data)
    except ValueError as e:
        raise ConfigError(f"`data`: {e}") from None
    if saved_tokenizer is not None:
        tokenizer = tokenizer_from_json(saved_tokenizer)
    elif corpus.pretokenised and corpus.token_dtype == "uint8":
        tokenizer = ByteTokenizer()  # bytes as tokens (enwik8's convention)
    elif corpus.pretokenised:
        ids = np.memmap(corpus.token_file, dtype=corpus.token_dtype, mode="r")
        tokenizer = IdTokenizer(int(ids.max()) + 1)
    else:
        texts = corpus.texts("train") if config.tokenizer != "byte" else None
        try:
            tokenizer = tokenizer_from_spec(config.tokenizer, texts)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    train_split, val_split = (token_split(corpus, tokenizer, s) for s in ("train", "validation"))
    vocab = tokenizer.vocab_size
    for name, split in (("train", train_split), ("validation", val_split)):
        if len(split.tokens) < config.context + 1:
            raise ConfigError(
                f"`context`={config.context} is longer than the {name} split ({len(split.tokens)} tokens)"
            )
    return tokenizer, train_split, val_split, vocab


def _check_carried_state_is_bounded(model: SequenceModel) -> None:
    """Stateful streams carry the state from window to window: a cache that grows with every token (full
    attention's KV cache) would grow without bound, and attention has no recurrence to truncate."""
    for block in model.blocks:
        if holds_cache(block.mixer) and getattr(block.mixer, "window", None) is None:
            raise ConfigError(
                f"`stateful`: the {type(block.mixer).__name__} layer's state is a cache that grows with every token; "
                "carried across windows it would grow without bound: give it a window (mixer_kwargs) or stateful=false"
            )


def _check_resume(config: TrainConfig, saved: dict) -> None:
    """A resumed run must compute what the checkpointed one did: only :data:`RESUMABLE_CHANGES` may differ."""
    ours = config.to_dict()
    for name, value in saved.items():
        if name not in RESUMABLE_CHANGES and ours.get(name) != value:
            raise ConfigError(
                f"--resume: `{name}` is {ours.get(name)!r} but the checkpoint was trained with {value!r}"
                + (" (the vocabulary would not match)" if name in ("tokenizer", "data") else "")
            )


class _Metrics:
    """``metrics.jsonl``: appended line by line; on resume cut back to the checkpoint's step. With no ``path``
    (a data-parallel process other than the main one) the records are kept in memory only."""

    def __init__(self, path: Path | None, resume_step: int | None) -> None:
        self.path = path
        lines = path.read_text().splitlines() if path is not None and path.exists() and resume_step is not None else []
        self.records = [r for r in map(json.loads, lines) if r["step"] <= resume_step]
        if path is not None:
            path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def add(self, record: dict) -> None:
        self.records.append(record)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def plot_losses(records: list[dict], path: Path, title: str) -> None:
    """Training and validation loss (bits per byte for validation) against tokens, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_loss" in r]
    ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], label="train loss (nats/token)", lw=1)
    ax.plot([r["tokens"] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss (nats/token)")
    if val and "val_bpb" in val[0]:
        ax.plot([r["tokens"] for r in val], [r["val_bpb"] for r in val], "s--", label="validation bits per byte")
    ax.set(xlabel="training tokens", title=title)
    ax.legend()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


class _ProgressBar:
    """On a terminal, a rich progress bar with tokens/s, loss and learning rate; elsewhere nothing (the
    evaluations print one line each)."""

    def __init__(self, console: Console | None, steps: int, done: int) -> None:
        self.progress = None
        if console is None or not console.is_terminal:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"), console=console, transient=True,
        )  # fmt: skip
        self.progress.start()
        self.task = self.progress.add_task("train", total=steps, completed=done, status="")

    def update(self, step: int, record: dict) -> None:
        if self.progress is not None:
            status = f"loss {record['loss']:.3f}  lr {record['lr']:.2e}  {record['tokens_per_s']:,.0f} tokens/s"
            self.progress.update(self.task, completed=step, status=status)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    console: Console | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train (or, with ``resume``, continue) the run in ``out``; see the module docstring. Under ``torchrun``
    every process calls it: they train one model together (:mod:`rnnzoo.train.distributed`), the main process
    alone writing ``out`` and printing to ``console``."""
    out = Path(out)
    processes = from_environment(config.device, config.batch_size)
    latest = latest_checkpoint(out)
    if latest is not None and not resume:
        raise ConfigError(f"--out {out} holds checkpoints already: pass --resume to continue, or choose another --out")
    saved = load_checkpoint(latest) if resume and latest is not None else None
    if saved is not None:
        if "optimizer" not in saved[1]:
            raise ConfigError(
                f"--resume: {latest} holds weights only (written by `rnnzoo hf import`): there is no optimizer "
                "state or data position to resume; evaluate or generate from it instead"
            )
        _check_resume(config, saved[2])
    if config.threads:
        torch.set_num_threads(config.threads)
    processes.join()
    return _train(config, out, saved, processes, console if processes.is_main else None, on_step)


def _shared_data(
    config: TrainConfig, saved_tokenizer: str | None, processes: Processes
) -> tuple[Tokenizer, TokenSplit, TokenSplit, int]:
    """:func:`_data` on the main process first (which trains a BPE tokenizer and fills the token cache), then
    on the others with its tokenizer, so that every process reads the same tokens."""
    data = _data(config, saved_tokenizer) if processes.is_main else None
    tokenizer = processes.broadcast(data[0].to_json() if processes.is_main else None)
    return data if processes.is_main else _data(config, tokenizer)


def _train(
    config: TrainConfig,
    out: Path,
    saved: tuple | None,
    processes: Processes,
    console: Console | None,
    on_step: Callable[[int], None] | None,
) -> TrainResult:
    """:func:`train` in this process, once the run is checked and the processes have joined."""
    main, device = processes.is_main, processes.device
    tokenizer, train_split, val_split, vocab = _shared_data(config, None if saved is None else saved[3], processes)
    torch.manual_seed(config.seed)
    model = build_model(config, vocab).to(device)
    if config.stateful:
        _check_carried_state_is_bounded(model)
    optimizer = _optimizer(model, config)
    generator = torch.Generator().manual_seed(config.seed + 1)
    rows = processes.rows(config.batch_size)
    streams = None
    if config.stateful:
        streams = StatefulStreams(train_split.tokens, config.batch_size, config.context, rows=rows)
    carried, step = None, 0
    if saved is not None:
        weights, trainer, *_ = saved
        model.load_state_dict(weights)
        optimizer.load_state_dict(trainer["optimizer"])
        generator.set_state(trainer["generator"])
        torch.set_rng_state(trainer["torch_rng"])
        if streams is not None:
            streams.load_state_dict(trainer["streams"])
        carried, step = processes.own_rows(trainer["carried"], config.batch_size), trainer["step"]
    parallel = processes.wrap(model)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "config.json", config.to_dict())
    metrics = _Metrics(out / "metrics.jsonl" if main else None, step if saved is not None else None)
    tokens_per_step = config.batch_size * config.context * config.grad_accum  # the global batch's
    say = console.print if console is not None else (lambda *a, **k: None)
    say(f"{model.mixer_name}: {model.num_parameters():,} parameters, d_model {model.d_model}, vocabulary {vocab}, "
        f"{len(train_split):,} training tokens; {'resuming at step ' + str(step) if step else 'from scratch'}"
        + (f"; {processes.world_size} processes" if processes.world_size > 1 else ""), highlight=False)  # fmt: skip

    def checkpoint(at: int) -> None:
        carried_global = processes.gather_rows(carried)  # every process takes part; the main one writes
        if not main:
            return
        trainer_state = {
            "optimizer": optimizer.state_dict(), "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            "streams": None if streams is None else streams.state_dict(), "carried": carried_global, "step": at,
        }  # fmt: skip
        save_checkpoint(out, at, model, trainer_state, config.to_dict(), tokenizer.to_json(), config.keep_checkpoints)

    bar = _ProgressBar(console, config.steps, step)
    start, window_loss, window_steps, window_start = time.perf_counter(), 0.0, 0, time.perf_counter()
    last_eval = next((r for r in reversed(metrics.records) if "val_loss" in r), None)
    model.train()
    try:
        while step < config.steps:
            lr = learning_rate(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro in range(config.grad_accum):
                if streams is None:
                    x, y = random_windows(train_split.tokens, config.batch_size, config.context, generator, rows)
                    state = None
                else:
                    x, y, fresh = next(streams)
                    state = None if fresh or carried is None else carried
                x, y = x.to(device), y.to(device)
                with gradient_sync(parallel, micro == config.grad_accum - 1):
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                        logits, new_state = parallel(x, state)
                    loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
                    (loss / config.grad_accum).backward()
                step_loss += float(loss.detach()) / config.grad_accum
                if streams is not None:
                    carried = [s.detach() for s in new_state]
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            step += 1
            window_loss, window_steps = window_loss + step_loss, window_steps + 1
            if step % config.log_every == 0 or step == config.steps:
                now = time.perf_counter()
                (window_loss,) = processes.sum([window_loss / processes.world_size])  # the mean of equal shares
                record = {"step": step, "tokens": step * tokens_per_step, "loss": window_loss / window_steps, "lr": lr,
                          "tokens_per_s": window_steps * tokens_per_step / max(now - window_start, 1e-9)}  # fmt: skip
                metrics.add(record)
                bar.update(step, record)
                window_loss, window_steps, window_start = 0.0, 0, now
            if step % config.eval_every == 0 or step == config.steps:
                scores = evaluate(model, val_split, config, processes)
                last_eval = {"step": step, "tokens": step * tokens_per_step, **scores}
                metrics.add(last_eval)
                if main:
                    plot_losses(metrics.records, out / "loss.png", f"{model.mixer_name} on {config.data}")
                say(f"step {step:,}/{config.steps:,}  tokens {last_eval['tokens']:,}  "
                    f"val loss {last_eval['val_loss']:.4f}  bpb {last_eval['val_bpb']:.3f}", highlight=False)  # fmt: skip
            if step % config.checkpoint_every == 0 or step == config.steps:
                checkpoint(step)
            if on_step is not None:
                on_step(step)
    finally:
        bar.close()
    return TrainResult(
        step, step * tokens_per_step, None if last_eval is None else last_eval["val_loss"],
        None if last_eval is None else last_eval["val_bpb"], time.perf_counter() - start, out,
    )  # fmt: skip
