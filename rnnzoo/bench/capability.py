"""``rnnzoo bench``: train sequence models on synthetic tasks and measure what they learn and extrapolate.

For each :class:`~rnnzoo.bench.suites.RunConfig` of a suite, :func:`train_run` builds a
:class:`~rnnzoo.models.SequenceModel` sized to the budget (parameters, or recurrent state), trains it with
AdamW on batches drawn on the fly (cross-entropy on the task's scored positions) until the step budget (or a
time cap) runs out or it is solved, then scores it at the task's train-score lengths and at every test
length, from a fixed evaluation seed.

Each finished run is cached as ``OUT/runs/<task>_<model>_s<seed>_<key>.json``, ``key`` a hash of the run's
configuration (:meth:`RunConfig.key`, thread count included), so an interrupted suite resumes and a finished
run is not repeated (``force=True`` reruns); ``jobs > 1`` trains runs in parallel processes.
:mod:`rnnzoo.bench.report` turns the results into a table, JSON and a plot.

Accuracy is the fraction of scored positions predicted right; scaled accuracy is
``(acc - chance) / (1 - chance)`` (0 at chance, 1 perfect), as in Grazzi et al. 2024; sequence accuracy is
the fraction of sequences with every scored position right (Siems et al. 2025).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..layers.base import RecurrentState
from ..models import SequenceModel, state_size
from .files import write_json_atomic
from .machine import loadavg_1min
from .suites import RunConfig, Suite

__all__ = [
    "RunDone", "TrainProgress", "accuracy_at", "cache_path", "evaluate", "run_suite", "scaled_accuracy", "train_run",
    "train_lengths_to_score",
]  # fmt: skip


EVAL_CHUNK = 64


def scaled_accuracy(accuracy: float, chance: float) -> float:
    """``(accuracy - chance) / (1 - chance)``."""
    return (accuracy - chance) / (1 - chance)


@dataclass
class TrainProgress:
    """What :func:`train_run` reports every ``eval_every`` steps."""

    step: int
    loss: float
    accuracy: float  # mean over the last eval_every training batches


def _lr_factor(step: int, warmup_steps: int) -> float:
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def _masked_loss_and_hits(model: SequenceModel, batch, state=None) -> tuple[torch.Tensor, int, int, list]:
    """Cross-entropy over the scored positions, the number right and scored, and the final state."""
    logits, state = model(batch.inputs, state)
    scored = logits[batch.mask]
    targets = batch.targets[batch.mask]
    loss = F.cross_entropy(scored.float(), targets)
    return loss, int((scored.argmax(-1) == targets).sum()), targets.numel(), state


@torch.no_grad()
def scores_at(model: SequenceModel, task, length: int, batch_size: int, generator: torch.Generator) -> tuple[float, float]:
    """``(accuracy, sequence accuracy)`` of ``batch_size`` sequences of ``length`` tokens: the fraction of scored
    positions predicted right, and the fraction of sequences with every scored position right (Siems et al.'s
    "sequence accuracy": every prefix up to ``length`` right). In chunks of at most ``EVAL_CHUNK`` sequences,
    which bounds the memory of long test lengths."""
    right = total = whole = 0
    for start in range(0, batch_size, EVAL_CHUNK):
        batch = task.sample(min(EVAL_CHUNK, batch_size - start), length, generator)
        logits, _ = model(batch.inputs)
        wrong = (logits.argmax(-1) != batch.targets) & batch.mask
        right += int(batch.mask.sum()) - int(wrong.sum())
        total += int(batch.mask.sum())
        whole += int((~wrong.any(-1)).sum())
    return right / total, whole / batch_size


def accuracy_at(model: SequenceModel, task, length: int, batch_size: int, generator: torch.Generator) -> float:
    """Accuracy on the scored positions of ``batch_size`` sequences of ``length`` tokens (:func:`scores_at`)."""
    return scores_at(model, task, length, batch_size, generator)[0]


def train_lengths_to_score(task, count: int) -> list[int]:
    """``count`` lengths at which a task's "train" accuracy is taken: the task's own rule
    (:meth:`~rnnzoo.tasks.Task.train_score_lengths`, where its labels are not trivial)."""
    return list(task.train_score_lengths(count))


def evaluate(model: SequenceModel, task, batch_size: int, seed: int, n_train_lengths: int) -> dict:
    """Accuracy and sequence accuracy at training lengths (the mean over :func:`train_lengths_to_score`; sequence
    accuracy at the longest of them) and at each test length, every length from its own generator seeded by
    ``seed`` and the length (so the data do not depend on which lengths are scored)."""
    was_training = model.training
    model.eval()
    generator = lambda length: torch.Generator().manual_seed(seed * 100_003 + length)  # noqa: E731
    lengths = train_lengths_to_score(task, n_train_lengths)
    train = [scores_at(model, task, n, batch_size, generator(n)) for n in lengths]
    test = {n: scores_at(model, task, n, batch_size, generator(n)) for n in task.test_lengths}
    model.train(was_training)
    return {
        "train": sum(a for a, _ in train) / len(train),
        "train_lengths": lengths,
        "sequence_train": train[-1][1],
        "test": {n: a for n, (a, _) in test.items()},
        "sequence_test": {n: s for n, (_, s) in test.items()},
    }


def _perturbed(states: list[RecurrentState], scale: float, generator: torch.Generator) -> list[RecurrentState]:
    """``states`` with N(0, scale²) noise added to every floating tensor (Buitrago Ruiz & Gu's random-noise
    initial states)."""
    out = []
    for state in states:
        noisy = {}
        for name, t in state.tensors().items():
            if t.is_floating_point() or t.is_complex():
                t = t + scale * torch.randn(t.shape, generator=generator, dtype=t.dtype)
            noisy[name] = t
        out.append(dataclasses.replace(state, **noisy))
    return out


def train_run(run: RunConfig, on_progress: Callable[[TrainProgress], None] | None = None) -> dict:
    """Train and evaluate one run on ``run.train.threads`` torch threads; returns its result record (JSON-able).

    The model is initialised from ``torch.manual_seed(seed)``; the training data come from a generator seeded
    with ``seed``. The run stops at ``budget.steps`` steps, after ``budget.seconds`` seconds of training (a
    safety cap), or when solved (:class:`~rnnzoo.bench.suites.TrainSettings`); evaluation time is not part of
    the budget. Each batch starts from the state ``initial_state`` names: zero, noise, or the previous batch's
    final state (detached). The record holds the 1-minute load average sampled at every check, so a reader
    can see how loaded the machine was while the run trained.
    """
    settings, budget = run.train, run.budget
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        return _train_run(run, settings, budget, on_progress)
    finally:
        torch.set_num_threads(previous_threads)


def _train_run(run: RunConfig, settings, budget, on_progress) -> dict:
    task = run.task.make()
    model_config = run.model_config(task)
    torch.manual_seed(run.seed)
    model = SequenceModel(**model_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, settings.warmup_steps))
    generator = torch.Generator().manual_seed(run.seed)
    state_generator = torch.Generator().manual_seed(run.seed + 1)
    low, high = task.train_lengths
    max_steps = budget.steps if budget.steps is not None else math.inf
    max_seconds = budget.seconds if budget.seconds is not None else math.inf

    history: list[list[float]] = []  # [step, loss, accuracy] at each check
    loads = [loadavg_1min()]
    window_right = window_total = 0
    window_loss, solved_streak, step, stopped = 0.0, 0, 0, "steps"
    carried = None
    cpu_start, start = time.process_time(), time.perf_counter()
    while step < max_steps:
        if time.perf_counter() - start >= max_seconds:
            stopped = "time"
            break
        length = int(torch.randint(low, high + 1, (1,), generator=generator))
        batch = task.sample(settings.batch_size, length, generator)
        state = None
        if settings.initial_state == "noise":
            state = _perturbed(model.init_state(settings.batch_size), settings.state_noise, state_generator)
        elif settings.initial_state == "carried":
            state = carried
        loss, right, total, final = _masked_loss_and_hits(model, batch, state)
        if settings.initial_state == "carried":
            carried = [s.detach() for s in final]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        last_loss = loss.item()
        if not math.isfinite(last_loss):
            stopped = "diverged"
            break
        window_loss += last_loss
        window_right, window_total = window_right + right, window_total + total
        if step % settings.eval_every == 0:
            progress = TrainProgress(step, window_loss / settings.eval_every, window_right / window_total)
            history.append([step, round(progress.loss, 5), round(progress.accuracy, 5)])
            loads.append(loadavg_1min())
            if on_progress is not None:
                on_progress(progress)
            solved_streak = solved_streak + 1 if progress.accuracy >= settings.solved_accuracy else 0
            window_right = window_total = 0
            window_loss = 0.0
            if solved_streak >= settings.solved_evals:
                stopped = "solved"
                break
    train_seconds, train_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    loads.append(loadavg_1min())
    result = evaluate(model, task, settings.eval_batch_size, settings.eval_seed, settings.train_eval_lengths)
    chance = task.chance
    test = result["test"]
    loads = [x for x in loads if x is not None]
    return {
        "key": run.key(),
        "config": run.describe(),
        "task": run.task.name,
        "model": run.model.display,
        "seed": run.seed,
        "params": model.num_parameters(),
        "state_size": state_size(model, length=high),
        "d_model": model_config["d_model"],
        "chance": chance,
        "train_lengths": list(task.train_lengths),
        "train_score_lengths": result["train_lengths"],
        "steps": step,
        "stopped": stopped,
        "train_seconds": round(train_seconds, 3),
        "train_cpu_seconds": round(train_cpu, 3),
        "eval_seconds": round(time.perf_counter() - start - train_seconds, 3),
        "eval_cpu_seconds": round(time.process_time() - cpu_start - train_cpu, 3),
        "threads": torch.get_num_threads(),
        "loadavg_1min": round(loads[0], 2) if loads else None,
        "loadavg_mean": round(sum(loads) / len(loads), 2) if loads else None,
        "loadavg_max": round(max(loads), 2) if loads else None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "accuracy": {"train": result["train"], **{str(n): a for n, a in test.items()}},
        "scaled": {
            "train": scaled_accuracy(result["train"], chance),
            **{str(n): scaled_accuracy(a, chance) for n, a in test.items()},
        },
        "sequence_accuracy": {
            "train": result["sequence_train"], **{str(n): a for n, a in result["sequence_test"].items()},
        },
        "history": history,
    }


# ----------------------------------------------------------------------------
# running a suite, with a cache of finished runs


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:60]


def cache_path(out: str | Path, run: RunConfig) -> Path:
    """Where a run's result is cached under ``out``."""
    return Path(out) / "runs" / f"{_slug(run.task.name)}_{_slug(run.model.display)}_s{run.seed}_{run.key()}.json"


CACHED_FIELDS = ("accuracy", "scaled", "steps", "stopped", "train_seconds", "params")  # what reports read


def _load_cached(path: Path, run: RunConfig) -> dict | None:
    """The cached result of ``run``, or None (train it) if the file is missing, unreadable, not a result record,
    or the record of another run: a file copied from another configuration or code version is not trusted."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != run.key() or not all(f in record for f in CACHED_FIELDS):
        return None
    return record if isinstance(record["accuracy"], dict) and "train" in record["accuracy"] else None


@dataclass
class RunDone:
    """What :func:`run_suite` reports after each run: its result, whether it came from the cache, or its error."""

    index: int
    total: int
    run: RunConfig
    result: dict | None
    cached: bool
    error: str | None = None


def _run_title(run: RunConfig, index: int, total: int) -> str:
    task = " ".join([run.task.name, *(f"{k}={v}" for k, v in run.task.config.items())])
    start = "" if run.train.initial_state == "zero" else f" · initial_state={run.train.initial_state}"
    return f"[{index + 1}/{total}] {task} · {run.model.display} · seed {run.seed}{start}"


def _run_line(event: RunDone) -> str:
    """One line about a finished run: how it ended and its accuracy at train lengths and the longest test length."""
    if event.error:
        from rich.markup import escape

        return f"{_run_title(event.run, event.index, event.total)}: [red]error[/] {escape(event.error)}"
    r = event.result
    longest = str(max(int(n) for n in r["accuracy"] if n != "train"))
    how = "cached" if event.cached else f"{r['steps']} steps in {r['train_seconds']:.1f} s ({r['stopped']})"
    return (
        f"{_run_title(event.run, event.index, event.total)}: {how}; accuracy {r['accuracy']['train']:.3f} at "
        f"training lengths, {r['accuracy'][longest]:.3f} at {longest}"
    )


class _Display:
    """Rich progress bars on a terminal (one per run: steps, loss, accuracy; one over all runs), else a line
    per finished run; nothing if ``quiet``."""

    def __init__(self, console, total: int, quiet: bool, per_run_bars: bool = True) -> None:
        self.console = None if quiet else console
        self.progress = self.bar = None
        self.per_run_bars = per_run_bars
        if self.console is not None and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[status]}"), console=self.console,
            )  # fmt: skip
            self.overall = self.progress.add_task("all runs", total=total, status="")

    def __enter__(self) -> _Display:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def start(self, run: RunConfig, index: int, total: int) -> Callable[[TrainProgress], None] | None:
        """A new bar for ``run``; returns the callback that moves it (None without bars)."""
        if self.progress is None or not self.per_run_bars:
            return None
        bar = self.bar = self.progress.add_task(_run_title(run, index, total), total=run.budget.steps, status="")

        def update(p: TrainProgress) -> None:
            self.progress.update(bar, completed=p.step, status=f"loss {p.loss:.3f} acc {p.accuracy:.3f}")

        return update

    def done(self, event: RunDone) -> None:
        if self.console is None:
            return
        if self.progress is None:
            self.console.print(_run_line(event), highlight=False)
            return
        if self.bar is not None:
            self.progress.remove_task(self.bar)
            self.bar = None
        self.progress.advance(self.overall)
        self.progress.console.print(_run_line(event), highlight=False)


def _store(path: Path, result: dict) -> None:
    """Cache a result atomically (:func:`~rnnzoo.bench.files.write_json_atomic`): never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, result)


def _train_or_error(run: RunConfig, on_progress=None) -> tuple[dict | None, str | None]:
    """``(result, None)``, or ``(None, error)`` for a run whose model or data fail: one broken model must not
    sink a suite."""
    try:
        return train_run(run, on_progress), None
    except (RuntimeError, ValueError, TypeError) as e:
        return None, f"{type(e).__name__}: {e}"


def run_suite(
    suite: Suite | Sequence[RunConfig],
    out: str | Path,
    *,
    force: bool = False,
    jobs: int = 1,
    console=None,
    quiet: bool = False,
    on_run: Callable[[RunDone], None] | None = None,
) -> list[dict]:
    """Run every run of ``suite`` not already cached under ``out`` (all of them with ``force``), caching each
    result as it finishes; returns the results in suite order (failed runs left out, reported to ``on_run``).

    Each run trains on its own ``train.threads`` torch threads. ``jobs > 1`` trains that many runs at once, in
    separate processes (``spawn``): a run's result does not depend on ``jobs``. As with any ``spawn`` pool, a
    script that calls this with ``jobs > 1`` must guard its entry point with ``if __name__ == "__main__":``.
    Progress goes to ``console`` (a rich Console; bars on a terminal, a line per finished run otherwise) unless
    ``quiet``.
    """
    runs = suite.runs() if isinstance(suite, Suite) else list(suite)
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"run_suite: `jobs` must be an int >= 1, got {jobs!r}")
    results: dict[int, dict] = {}
    with _Display(console, len(runs), quiet, per_run_bars=jobs == 1) as display:

        def finish(event: RunDone) -> None:
            if event.result is not None:
                results[event.index] = event.result
            display.done(event)
            if on_run is not None:
                on_run(event)

        def trained(i: int, result: dict | None, error: str | None) -> None:
            if result is not None:
                _store(cache_path(out, runs[i]), result)
            finish(RunDone(i, len(runs), runs[i], result, cached=False, error=error))

        pending = []
        for i, run in enumerate(runs):
            cached = None if force else _load_cached(cache_path(out, run), run)
            if cached is not None:
                finish(RunDone(i, len(runs), run, cached, cached=True))
            else:
                pending.append(i)
        if jobs == 1:
            for i in pending:
                trained(i, *_train_or_error(runs[i], display.start(runs[i], i, len(runs))))
        elif pending:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(jobs, len(pending)), mp_context=context) as pool:
                futures = {pool.submit(_train_or_error, runs[i]): i for i in pending}
                try:
                    for future in as_completed(futures):
                        trained(futures[future], *future.result())
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    return [results[i] for i in sorted(results)]
