"""A claim as data: the paper, the claim in one sentence, the runs that test it, and the rule that decides.

A :class:`Claim` holds **arms**, each a model on a task (with its own training or budget settings where the
claim compares those, e.g. initial states), one budget for the full run and one for ``--quick``, and a
:mod:`~rnnzoo.claims.rules` rule over the arms' measurements. :func:`measure` turns a run's result record
(from :func:`rnnzoo.bench.capability.train_run`) into the metrics the rules read; :func:`verdict` decides:

* **INCONCLUSIVE** when a run of the comparison is missing, or when the budget ran out before any of the
  claim's ``learners`` (default: every arm) reached ``learned_at`` scaled accuracy at training lengths: a
  comparison in which nothing learned says nothing about the claim;
* otherwise **REPRODUCED** if the rule holds, **NOT REPRODUCED** if not.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field

from ..bench.report import score, score_lengths
from ..bench.suites import Budget, ModelSpec, RunConfig, TaskSpec, TrainSettings
from .rules import Rule

__all__ = ["Arm", "Claim", "REPRODUCED", "NOT_REPRODUCED", "INCONCLUSIVE", "measure", "best_of_seeds", "verdict"]

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "REPRODUCED", "NOT REPRODUCED", "INCONCLUSIVE"


@dataclass(frozen=True)
class Arm:
    """One compared configuration: ``id`` (what the rule calls it), a task, a model, and overrides of the claim's
    :class:`TrainSettings` (``train``) and :class:`Budget` (``budget``) fields for this arm only."""

    id: str
    task: TaskSpec
    model: ModelSpec
    train: dict = field(default_factory=dict)
    budget: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """A paper's claim about what a family of models can do, and how rnnzoo tests it."""

    name: str
    paper: str
    statement: str
    expected: str  # the rule in words, as the table shows it
    arms: tuple[Arm, ...]
    rule: Rule
    budget: Budget
    quick_budget: Budget
    train: TrainSettings = TrainSettings()
    learners: tuple[str, ...] | None = None  # arms whose learning makes the comparison conclusive (None: all)
    learned_at: float = 0.9  # scaled accuracy at training lengths that counts as "learned"
    tier: int = 1  # the tier of the models it tests (MODELS.md): tier-2 claims run when named or with --all

    def __post_init__(self):
        ids = [a.id for a in self.arms]
        if len(set(ids)) != len(ids):
            raise ValueError(f"claim {self.name!r}: arm ids must be unique, got {ids}")
        unknown = sorted(set(self.rule.arms()) - set(ids) | set(self.learners or ()) - set(ids))
        if unknown:
            raise ValueError(f"claim {self.name!r}: its rule or learners name unknown arm(s) {unknown}; arms: {ids}")

    def runs(self, quick: bool = False, seeds: tuple[int, ...] = (0,), threads: int | None = None) -> list[tuple[Arm, RunConfig]]:
        """Every (arm, run) of the claim: each arm at each seed, at the quick or the full budget."""
        budget = self.quick_budget if quick else self.budget
        out = []
        for arm in self.arms:
            train = dataclasses.replace(self.train, **arm.train)
            if threads is not None:
                train = dataclasses.replace(train, threads=threads)
            for seed in seeds:
                out.append((arm, RunConfig(arm.task, arm.model, dataclasses.replace(budget, **arm.budget), seed, train)))
        return out


def measure(result: dict) -> dict[str, float]:
    """The metrics of :data:`~rnnzoo.claims.rules.METRICS` from one run's result record."""
    sequence = result.get("sequence_accuracy", {})
    beyond = [str(n) for n in score_lengths(result)]
    return {
        "train": result["scaled"]["train"],
        "score": score(result),
        "sequence_train": sequence.get("train", float("nan")),
        "sequence_test": statistics.fmean(sequence[n] for n in beyond) if sequence else float("nan"),
    }


def best_of_seeds(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's best value over seeds, as the papers report best of seeds."""
    return {k: max(m[k] for m in per_seed) for k in per_seed[0]}


def verdict(claim: Claim, measured: dict[str, dict[str, float]]) -> tuple[str, str]:
    """``(verdict, reason)`` for a claim from its arms' measurements (see the module docstring)."""
    missing = [a.id for a in claim.arms if a.id not in measured]
    if missing:
        return INCONCLUSIVE, f"no result for {', '.join(missing)}"
    learners = claim.learners or tuple(a.id for a in claim.arms)
    best = max(learners, key=lambda a: measured[a]["train"])
    if measured[best]["train"] < claim.learned_at:
        return INCONCLUSIVE, (
            f"budget ran out before any model learned the training lengths (best: {best} at "
            f"{measured[best]['train']:.2f} < {claim.learned_at:g} scaled)"
        )
    holds, text = claim.rule.check(measured)
    return (REPRODUCED if holds else NOT_REPRODUCED), text
