"""The capability benchmark's output: per task × model rows over seeds, a rich table, ``results.json`` and a
PNG of accuracy against test length.

A run's **extrapolation score** is its scaled accuracy averaged over the test lengths beyond the training
range (over every test length if none is beyond), Grazzi et al.'s metric restricted to unseen lengths.
Runs that differ only in seed form one row (:func:`summarize`): its cells are the **best** seed's (highest
score, as the papers report best of seeds), with the seeds' mean score beside it. Marks:

* **solved**: accuracy at training lengths ``>= solved_accuracy`` (the suite's setting, 0.999 by default);
* **extrapolates**: extrapolation score ``>= EXTRAPOLATES``.

With several seeds a mark counts the seeds that earn it (``2/3``).
"""

from __future__ import annotations

import json
import math
import statistics
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .files import write_json_atomic

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "EXTRAPOLATES", "extrapolates", "is_solved", "load_results", "plot", "print_tables", "score", "score_lengths",
    "summarize", "write_results",
]  # fmt: skip

EXTRAPOLATES = 0.9  # extrapolation score (mean scaled accuracy beyond training) for the "extrapolates" mark
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def _test_lengths(result: dict) -> list[int]:
    return sorted(int(n) for n in result["accuracy"] if n != "train")


def _beyond(result: dict) -> list[int]:
    """The test lengths longer than the longest training length."""
    return [n for n in _test_lengths(result) if n > result["train_lengths"][1]]


def score_lengths(result: dict) -> list[int]:
    """The test lengths a score is taken over: those beyond training (all of them if none is)."""
    return _beyond(result) or _test_lengths(result)


def score(result: dict) -> float:
    """The extrapolation score: mean scaled accuracy over the test lengths beyond training (or over all)."""
    return statistics.fmean(result["scaled"][str(n)] for n in score_lengths(result))


def is_solved(result: dict) -> bool:
    return result["accuracy"]["train"] >= result["config"]["train"]["solved_accuracy"]


def extrapolates(result: dict) -> bool | None:
    """Whether the score reaches ``EXTRAPOLATES`` (None if no test length is beyond training)."""
    return score(result) >= EXTRAPOLATES if _beyond(result) else None


def _budget_label(result: dict) -> str:
    b = result["config"]["budget"]
    parts = [f"{b['params'] / 1000:g}k params"]
    if b["steps"] is not None:
        parts.append(f"{b['steps']} steps")
    if b["seconds"] is not None:
        parts.append(f"{b['seconds']:g} s")
    return ", ".join(parts)


def _task_labels(results: Sequence[dict]) -> list[str]:
    """Each result's task name, followed by the config fields that differ where one task has several configs."""
    configs: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        if r["config"]["task"]["config"] not in configs[r["task"]]:
            configs[r["task"]].append(r["config"]["task"]["config"])
    labels = []
    for r in results:
        mine, others = r["config"]["task"]["config"], configs[r["task"]]
        differing = [f"{k}={v}" for k, v in mine.items() if any(o.get(k) != v for o in others)]
        labels.append(f"{r['task']} ({', '.join(differing)})" if differing else r["task"])
    return labels


def summarize(results: Sequence[dict]) -> list[dict]:
    """One row per (task config, model, budget), in first-seen order: the best seed's result and the seeds'
    means. A task run with several configs gets one label per config (``parity (dense=False)``)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r, task in zip(results, _task_labels(results)):
        groups[(task, r["model"], json.dumps(r["config"]["budget"], sort_keys=True))].append(r)
    several_budgets = {task: len({b for t, _, b in groups if t == task}) > 1 for task, _, _ in groups}
    rows = []
    for (task, model, _), runs in groups.items():
        best = max(runs, key=lambda r: (score(r), r["accuracy"]["train"]))
        lengths = ["train", *map(str, _test_lengths(best))]
        rows.append({
            "task": task,
            "model": f"{model} ({_budget_label(best)})" if several_budgets[task] else model,
            "seeds": sorted(r["seed"] for r in runs),
            "best_seed": best["seed"],
            "params": best["params"],
            "state_size": best.get("state_size"),
            "train_score_lengths": best.get("train_score_lengths"),
            "chance": best["chance"],
            "train_lengths": best["train_lengths"],
            "steps": best["steps"],
            "train_seconds": statistics.fmean(r["train_seconds"] for r in runs),
            "accuracy": best["accuracy"],
            "scaled": best["scaled"],
            "mean_accuracy": {n: statistics.fmean(r["accuracy"][n] for r in runs) for n in lengths},
            "mean_scaled": {n: statistics.fmean(r["scaled"][n] for r in runs) for n in lengths},
            "score": score(best),
            "mean_score": statistics.fmean(score(r) for r in runs),
            "solved": sum(is_solved(r) for r in runs),
            "extrapolates": None if extrapolates(best) is None else sum(bool(extrapolates(r)) for r in runs),
        })  # fmt: skip
    return rows


def _mark(count: int | None, seeds: int) -> str:
    if count is None:
        return "-"
    text = ("yes" if count else "no") if seeds == 1 else f"{count}/{seeds}"
    return f"[green]{text}[/]" if count == seeds else f"[red]{text}[/]" if count == 0 else f"[yellow]{text}[/]"


def _cell(accuracy: float, scaled: float) -> str:
    color = "green" if scaled >= EXTRAPOLATES else "red" if scaled < 0.5 else "yellow"
    return f"{accuracy:.3f} [{color}]({scaled:.2f})[/]"


def print_tables(rows: Sequence[dict], console: Console, caption: str = "") -> None:
    """One table per task: parameters, steps, training time, accuracy (scaled) at training lengths and each
    test length, the extrapolation score, the marks; with several seeds, the best seed's cells and the seeds'
    mean score. Then ``caption`` (the machine), once."""
    from rich import box
    from rich.table import Table

    by_task: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_task[row["task"]].append(row)
    for task, task_rows in by_task.items():
        low, high = task_rows[0]["train_lengths"]
        scored_train = task_rows[0].get("train_score_lengths") or [low, high]
        chance = task_rows[0]["chance"]
        lengths = sorted({int(n) for r in task_rows for n in r["accuracy"] if n != "train"})
        seeds = max(len(r["seeds"]) for r in task_rows)
        beyond = [n for n in lengths if n > high]
        scored = f"lengths {', '.join(map(str, beyond))}" if beyond else "all test lengths"
        notes = (
            f"chance {chance:.3g}; scaled = (acc − chance) / (1 − chance); score: mean scaled accuracy at {scored}; "
            f"solved: accuracy ≥ the suite's solved_accuracy at training lengths; extrap.(olates): score ≥ "
            f"{EXTRAPOLATES}" + (f"; cells: best of {seeds} seeds" if seeds > 1 else "")
        )
        table = Table(
            title=f"{task}: accuracy (scaled accuracy), trained on lengths {low}–{high}, scored at "
            f"{', '.join(map(str, scored_train))} (train) and at test lengths",
            caption=notes,
            box=box.SIMPLE_HEAD,
        )
        table.add_column("model", no_wrap=True)
        train_column = f"train {min(scored_train)}–{max(scored_train)}"
        for name in ("params", "state", "steps", "time s", train_column, *map(str, lengths)):
            table.add_column(name, justify="right", no_wrap=True)
        table.add_column("score", justify="right", no_wrap=True)
        if seeds > 1:
            table.add_column("mean score", justify="right")
        table.add_column("solved", justify="center")
        table.add_column("extrap.", justify="center")
        for r in task_rows:
            cells = [
                r["model"], f"{r['params']:,}", "-" if r.get("state_size") is None else f"{r['state_size']:,}",
                str(r["steps"]), f"{r['train_seconds']:.1f}",
                _cell(r["accuracy"]["train"], r["scaled"]["train"]),
                *(_cell(r["accuracy"][n], r["scaled"][n]) if n in r["accuracy"] else "-" for n in map(str, lengths)),
            ]  # fmt: skip
            cells.append(f"{r['score']:.2f}")
            if seeds > 1:
                cells.append(f"{r['mean_score']:.2f}")
            cells += [_mark(r["solved"], len(r["seeds"])), _mark(r["extrapolates"], len(r["seeds"]))]
            table.add_row(*cells)
        console.print(table)
    if caption:
        console.print(caption, justify="center", style="dim", highlight=False)


def write_results(path: str | Path, results: Sequence[dict], header: dict, notes: Sequence[str] = ()) -> None:
    """``{"header", "notes", "summary", "runs"}`` as JSON, atomically; ``runs`` are the full per-run records."""
    data = {"header": header, "notes": list(notes), "summary": summarize(results), "runs": list(results)}
    write_json_atomic(path, data)


def load_results(path: str | Path) -> tuple[list[dict], dict, list[str]]:
    """``(runs, header, notes)`` from a ``results.json``; a ``ValueError`` if it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ValueError(f"{path} is not an `rnnzoo bench` results.json (no list of runs)")
    for i, run in enumerate(data["runs"]):
        problem = _record_problem(run)
        if problem:
            raise ValueError(f"{path}: run {i} is not a result record: {problem}")
    header, notes = data.get("header", {}), data.get("notes", [])
    if not isinstance(header, dict) or not isinstance(notes, list):
        raise ValueError(f"{path}: `header` must be an object and `notes` a list")
    return data["runs"], header, [str(n) for n in notes]


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _record_problem(run) -> str | None:
    """What keeps ``run`` from being a result record the tables and plot can read, or None."""
    if not isinstance(run, dict):
        return f"expected an object, got {type(run).__name__}"
    kinds = {"task": str, "model": str, "seed": int, "params": int, "steps": int, "config": dict}
    for field, kind in kinds.items():
        if not isinstance(run.get(field), kind) or isinstance(run.get(field), bool):
            return f"`{field}` must be {kind.__name__}, got {run.get(field)!r}"
    for field in ("train_seconds", "chance"):
        if not _is_number(run.get(field)):
            return f"`{field}` must be a number, got {run.get(field)!r}"
    lengths = run.get("train_lengths")
    if not (isinstance(lengths, list) and len(lengths) == 2 and all(isinstance(n, int) for n in lengths)):
        return f"`train_lengths` must be [low, high], got {lengths!r}"
    accuracy, scaled = run.get("accuracy"), run.get("scaled")
    for name, table in (("accuracy", accuracy), ("scaled", scaled)):
        if not isinstance(table, dict) or "train" not in table or not all(map(_is_number, table.values())):
            return f"`{name}` must map 'train' and test lengths to numbers, got {table!r}"
        if not all(n == "train" or n.isdigit() for n in table) or len(table) < 2:
            return f"`{name}` must have 'train' and at least one test length, got keys {sorted(table)}"
    if set(accuracy) != set(scaled):
        return "`accuracy` and `scaled` must have the same lengths"
    config = run["config"]
    if not isinstance(config.get("budget"), dict) or not isinstance(config.get("task"), dict):
        return "`config` must hold the run's `budget` and `task`"
    if not isinstance(config["task"].get("config", {}), dict):
        return "`config.task.config` must be an object"
    if not _is_number((config.get("train") or {}).get("solved_accuracy")):
        return "`config.train.solved_accuracy` must be a number"
    return None


def plot(rows: Sequence[dict], path: str | Path, title: str = "") -> None:
    """Accuracy (best seed) against test length, one panel per task, one line per model; the training range
    shaded, chance dashed. Each model keeps its colour and marker in every panel; one legend for the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_task: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_task[row["task"]].append(row)
    models = list(dict.fromkeys(r["model"] for r in rows))
    colours = plt.get_cmap("tab10").colors
    style = {  # colour and marker cycle at different periods, so 10 x 10 models stay distinct
        m: dict(color=colours[i % 10], marker=MARKERS[(i + i // 10) % len(MARKERS)], ms=max(3, 8 - i % 6))
        for i, m in enumerate(models)
    }  # fmt: skip
    columns = min(3, len(by_task))
    lines = -(-len(by_task) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(5.2 * columns, 3.6 * lines), squeeze=False)
    handles: dict[str, object] = {}
    for ax, (task, task_rows) in zip(axes.flat, by_task.items()):
        low, high = task_rows[0]["train_lengths"]
        for r in task_rows:
            lengths = sorted(int(n) for n in r["accuracy"] if n != "train")
            (line,) = ax.plot(lengths, [r["accuracy"][str(n)] for n in lengths], **style[r["model"]])
            handles.setdefault(r["model"], line)
        handles.setdefault("training lengths", ax.axvspan(low, high, color="0.9", zorder=0))
        handles.setdefault("chance", ax.axhline(task_rows[0]["chance"], color="0.5", ls="--", lw=1))
        ax.set_xscale("log", base=2)
        ticks = sorted({int(n) for r in task_rows for n in r["accuracy"] if n != "train"} | {low})
        ax.set_xticks(ticks, [str(n) for n in ticks])
        ax.minorticks_off()
        ax.set_ylim(0, 1.02)
        ax.set_title(task)
        ax.set_xlabel("sequence length")
        ax.set_ylabel("accuracy")
    for ax in list(axes.flat)[len(by_task):]:
        ax.axis("off")
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, 60 * columns)), fontsize=8)
    fig.tight_layout()
    ncol = -(-len(handles) // 28)  # at most 28 entries a column
    fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, ncol=ncol)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
