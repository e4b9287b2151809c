"""Verdict rules: what a claim predicts about the measured results, as data that can be checked.

A rule reads **measurements**: for each arm of a claim (a model on a task, see :class:`~rnnzoo.claims.claim.Arm`),
a dict of metrics (:data:`METRICS`). ``rule.check(measured)`` returns ``(holds, text)``: whether the prediction
holds and the figures it compared, in words (``"deltanet [-1,1] score 0.97 >= 0.9"``). Rules never decide
INCONCLUSIVE themselves; :func:`~rnnzoo.claims.claim.verdict` does, before asking the rule.

>>> rule = AllOf((At("lstm", "score", ">=", 0.9), Beats("lstm", "attention", "score", 0.3)))
>>> rule.check({"lstm": {"score": 1.0}, "attention": {"score": 0.1}})
(True, 'lstm score 1.00 ≥ 0.9; lstm score 1.00 ≥ attention 0.10 + 0.3')
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

__all__ = ["METRICS", "Rule", "At", "Beats", "Ranking", "Transition", "AllOf", "AnyOf", "Measured", "rule_metrics"]

METRICS = {
    "train": "scaled accuracy at training lengths (where the task is not trivial)",
    "score": "extrapolation score: mean scaled accuracy at the test lengths beyond training",
    "sequence_train": "sequence accuracy (every scored position right) at the longest scored training length",
    "sequence_test": "mean sequence accuracy at the test lengths beyond training",
}

Measured = Mapping[str, Mapping[str, float]]  # arm id -> metric -> value

_OPS = {">=": (operator.ge, "≥"), "<=": (operator.le, "≤"), ">": (operator.gt, ">"), "<": (operator.lt, "<")}


def _check_metric(rule: str, metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"{rule}: unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")


class Rule(Protocol):
    metric: str

    def check(self, measured: Measured) -> tuple[bool, str]: ...

    def arms(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class At:
    """One arm's metric against a threshold: ``measured[arm][metric] op value``."""

    arm: str
    metric: str
    op: str
    value: float

    def __post_init__(self):
        _check_metric("At", self.metric)
        if self.op not in _OPS:
            raise ValueError(f"At: `op` must be one of {', '.join(_OPS)}, got {self.op!r}")

    def check(self, measured: Measured) -> tuple[bool, str]:
        fn, symbol = _OPS[self.op]
        x = measured[self.arm][self.metric]
        holds = fn(x, self.value)
        shown = symbol if holds else {"≥": "<", "≤": ">", ">": "≤", "<": "≥"}[symbol]
        return holds, f"{self.arm} {self.metric} {x:.2f} {shown} {self.value:g}"

    def arms(self) -> tuple[str, ...]:
        return (self.arm,)


@dataclass(frozen=True)
class Beats:
    """``winner``'s metric at least ``margin`` above ``loser``'s."""

    winner: str
    loser: str
    metric: str
    margin: float = 0.0

    def __post_init__(self):
        _check_metric("Beats", self.metric)

    def check(self, measured: Measured) -> tuple[bool, str]:
        a, b = measured[self.winner][self.metric], measured[self.loser][self.metric]
        holds = a >= b + self.margin
        plus = f" + {self.margin:g}" if self.margin else ""
        return holds, f"{self.winner} {self.metric} {a:.2f} {'≥' if holds else '<'} {self.loser} {b:.2f}{plus}"

    def arms(self) -> tuple[str, ...]:
        return (self.winner, self.loser)


@dataclass(frozen=True)
class Ranking:
    """Tiers of arms in order, best first: every arm of a tier at least ``margin`` above every arm of the next
    (Zoology's ordering of families at equal state size)."""

    tiers: tuple[tuple[str, ...], ...]
    metric: str
    margin: float = 0.0

    def __post_init__(self):
        _check_metric("Ranking", self.metric)
        if len(self.tiers) < 2 or not all(self.tiers):
            raise ValueError("Ranking: `tiers` must hold at least two non-empty tiers")

    def check(self, measured: Measured) -> tuple[bool, str]:
        values = [[measured[a][self.metric] for a in tier] for tier in self.tiers]
        holds = all(min(upper) >= max(lower) + self.margin for upper, lower in zip(values, values[1:]))
        text = " > ".join(
            "{" + ", ".join(f"{a} {v:.2f}" for a, v in zip(tier, vs)) + "}" for tier, vs in zip(self.tiers, values)
        )
        return holds, f"{self.metric}: {text}" + ("" if holds else " (order broken)")

    def arms(self) -> tuple[str, ...]:
        return tuple(a for tier in self.tiers for a in tier)


@dataclass(frozen=True)
class Transition:
    """Arms in order of a swept setting (e.g. the longest training length): the first ones fail (metric
    ``<= low``), then from some arm on every one succeeds (``>= high``), with at least one arm on each side:
    a jump, not a drift (the streaming-parity phase transition)."""

    arms_in_order: tuple[str, ...]
    metric: str
    low: float
    high: float

    def __post_init__(self):
        _check_metric("Transition", self.metric)
        if len(self.arms_in_order) < 2 or not self.low < self.high:
            raise ValueError("Transition: needs at least two arms and `low` < `high`")

    def check(self, measured: Measured) -> tuple[bool, str]:
        values = [measured[a][self.metric] for a in self.arms_in_order]
        first_high = next((i for i, v in enumerate(values) if v >= self.high), None)
        holds = (
            first_high is not None and first_high > 0
            and all(v <= self.low for v in values[:first_high])
            and all(v >= self.high for v in values[first_high:])
        )  # fmt: skip
        text = ", ".join(f"{a} {v:.2f}" for a, v in zip(self.arms_in_order, values))
        where = f"; jump at {self.arms_in_order[first_high]}" if holds else f" (no clean jump ≤ {self.low:g} → ≥ {self.high:g})"
        return holds, f"{self.metric}: {text}{where}"

    def arms(self) -> tuple[str, ...]:
        return self.arms_in_order


@dataclass(frozen=True)
class _Combination:
    """Rules joined into one: their texts, their arms, the first one's metric."""

    rules: tuple[Rule, ...]

    @property
    def metric(self) -> str:
        return self.rules[0].metric

    def arms(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a for r in self.rules for a in r.arms()))


@dataclass(frozen=True)
class AllOf(_Combination):
    """Every rule holds."""

    def check(self, measured: Measured) -> tuple[bool, str]:
        checks = [r.check(measured) for r in self.rules]
        return all(h for h, _ in checks), "; ".join(t for _, t in checks)


@dataclass(frozen=True)
class AnyOf(_Combination):
    """At least one rule holds."""

    def check(self, measured: Measured) -> tuple[bool, str]:
        checks = [r.check(measured) for r in self.rules]
        return any(h for h, _ in checks), " or ".join(f"({t})" for _, t in checks)


def rule_metrics(rule: Rule) -> Sequence[str]:
    """Every metric a rule reads, in order."""
    if isinstance(rule, _Combination):
        return tuple(dict.fromkeys(m for r in rule.rules for m in rule_metrics(r)))
    return (rule.metric,)
