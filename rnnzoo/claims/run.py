"""``rnnzoo claims run``: train every arm of the chosen claims, decide each verdict, print, write JSON and a figure.

Runs go through :func:`rnnzoo.bench.capability.run_suite`, so they share its cache (``OUT/runs``, keyed by
everything a run depends on): an interrupted ``claims run`` resumes, a run two claims share trains once, and
``--jobs`` trains runs in parallel processes. With several seeds each arm's metrics are its best over the
seeds (as the papers report), and each claim says how many seeds, judged alone, give the same verdict.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from ..bench import capability
from ..bench.files import write_json_atomic
from .claim import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Claim, best_of_seeds, measure, verdict
from .rules import rule_metrics

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["ClaimResult", "evaluate_claim", "run_claims", "print_table", "write_json", "plot"]

COLOURS = {REPRODUCED: "green", NOT_REPRODUCED: "red", INCONCLUSIVE: "yellow"}  # rich markup
PLOT_COLOURS = {REPRODUCED: "green", NOT_REPRODUCED: "red", INCONCLUSIVE: "darkgoldenrod"}


@dataclass
class ClaimResult:
    """A claim's outcome: the verdict on the best-of-seeds measurements, why, and the per-seed verdicts."""

    claim: Claim
    verdict: str
    reason: str
    measured: dict[str, dict[str, float]]  # arm -> metric -> best over seeds
    seed_verdicts: dict[int, str]
    runs: list[dict]

    @property
    def seeds_agreeing(self) -> int:
        return sum(v == self.verdict for v in self.seed_verdicts.values())

    def to_json(self) -> dict:
        c = self.claim
        return {
            "name": c.name, "paper": c.paper, "statement": c.statement, "expected": c.expected,
            "verdict": self.verdict, "reason": self.reason, "measured": self.measured,
            "seed_verdicts": {str(s): v for s, v in self.seed_verdicts.items()},
            "seeds_agreeing": self.seeds_agreeing,
            "arms": {a.id: {"task": a.task.name, "task_config": a.task.config, "model": a.model.display,
                            "train": a.train, "budget": a.budget} for a in c.arms},
            "run_keys": [r["key"] for r in self.runs],
        }  # fmt: skip


def evaluate_claim(claim: Claim, by_arm: dict[str, dict[int, dict]]) -> ClaimResult:
    """The verdict of ``claim`` from its results, ``by_arm[arm id][seed]`` a run's result record."""
    seeds = sorted({s for runs in by_arm.values() for s in runs})
    measured = {arm: best_of_seeds([measure(r) for r in runs.values()]) for arm, runs in by_arm.items() if runs}
    outcome, reason = verdict(claim, measured)
    per_seed = {}
    for s in seeds:
        one = {arm: measure(runs[s]) for arm, runs in by_arm.items() if s in runs}
        per_seed[s] = verdict(claim, one)[0]
    runs = [r for runs in by_arm.values() for r in runs.values()]
    return ClaimResult(claim, outcome, reason, measured, per_seed, runs)


def run_claims(
    claims: Sequence[Claim],
    out: str | Path,
    *,
    quick: bool = False,
    seeds: tuple[int, ...] = (0,),
    jobs: int = 1,
    threads: int | None = None,
    force: bool = False,
    console=None,
    quiet: bool = False,
    on_run: Callable[[capability.RunDone], None] | None = None,
) -> list[ClaimResult]:
    """Train what is not cached under ``out`` for every arm × seed of ``claims`` and decide each claim."""
    planned = [(claim, arm, run) for claim in claims for arm, run in claim.runs(quick, seeds, threads)]
    unique = list({run.key(): run for _, _, run in planned}.values())
    results = capability.run_suite(unique, out, force=force, jobs=jobs, console=console, quiet=quiet, on_run=on_run)
    by_key = {r["key"]: r for r in results}
    outcomes = []
    for claim in claims:
        by_arm: dict[str, dict[int, dict]] = {arm.id: {} for arm in claim.arms}
        for c, arm, run in planned:
            if c is claim and run.key() in by_key:
                by_arm[arm.id][run.seed] = by_key[run.key()]
        outcomes.append(evaluate_claim(claim, by_arm))
    return outcomes


def print_table(outcomes: Sequence[ClaimResult], console: Console, caption: str = "") -> None:
    """One row per claim: name, paper, expected, measured, verdict (and how many seeds agree)."""
    from rich import box
    from rich.table import Table

    seeds = max((len(o.seed_verdicts) for o in outcomes), default=1)
    table = Table(title="rnnzoo claims", box=box.SIMPLE_HEAD, caption=caption or None, show_lines=True)
    for name, width in (("claim", 18), ("paper", 22), ("expected", 40), ("measured", 52)):
        table.add_column(name, max_width=width, overflow="fold")
    table.add_column("verdict", no_wrap=True)
    if seeds > 1:
        table.add_column("seeds agree", justify="center")
    for o in outcomes:
        cells = [o.claim.name, o.claim.paper, o.claim.expected, o.reason, f"[{COLOURS[o.verdict]}]{o.verdict}[/]"]
        if seeds > 1:
            cells.append(f"{o.seeds_agreeing}/{len(o.seed_verdicts)}")
        table.add_row(*cells)
    console.print(table)
    counts = {v: sum(o.verdict == v for o in outcomes) for v in COLOURS}
    console.print(", ".join(f"{n} {v}" for v, n in counts.items()), highlight=False)


def write_json(path: str | Path, outcomes: Sequence[ClaimResult], header: dict) -> None:
    """``{"header", "claims", "runs"}``, written atomically (a temporary file renamed into place)."""
    runs = {r["key"]: r for o in outcomes for r in o.runs}
    write_json_atomic(path, {"header": header, "claims": [o.to_json() for o in outcomes], "runs": list(runs.values())})


def plot(outcomes: Sequence[ClaimResult], path: str | Path, title: str = "") -> None:
    """One panel per claim: each arm's value of the metrics its rule reads and of ``train`` (which decides
    INCONCLUSIVE) as bars, the verdict in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(2, len(outcomes))
    lines = -(-len(outcomes) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(7 * columns, 0.5 + 2.9 * lines), squeeze=False)
    for ax, o in zip(axes.flat, outcomes):
        metrics = list(dict.fromkeys([*rule_metrics(o.claim.rule), "train"]))
        arms = [a.id for a in o.claim.arms if a.id in o.measured]
        height = 0.8 / len(metrics)
        for j, metric in enumerate(metrics):
            ys = [i + j * height for i in range(len(arms))]
            ax.barh(ys, [o.measured[a][metric] for a in arms], height=height, label=metric)
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(arms))], arms, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(min(0, *(o.measured[a][m] for a in arms for m in metrics)) if arms else 0, 1.02)
        ax.axvline(0, color="0.5", lw=0.8)
        ax.legend(fontsize=6, loc="lower right")
        ax.set_title(
            "\n".join(textwrap.wrap(f"{o.claim.name}: {o.verdict}", 60)), fontsize=9, color=PLOT_COLOURS[o.verdict]
        )
    for ax in list(axes.flat)[len(outcomes):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
