"""Claims: every verdict rule on hand-made measurements, the verdict logic, the catalogue, and a tiny
`rnnzoo claims run` end to end (cache, JSON, PNG), `--jobs 2` equal to `--jobs 1`."""

from __future__ import annotations

import json

import pytest

from rnnzoo import claims
from rnnzoo.bench import capability, suites
from rnnzoo.claims import catalogue
from rnnzoo.claims.claim import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Arm, Claim, measure, verdict
from rnnzoo.claims.rules import AllOf, AnyOf, At, Beats, Ranking, Transition
from rnnzoo.claims.run import evaluate_claim
from rnnzoo.cli import main


def m(**metrics) -> dict:
    return {"train": 1.0, "score": 0.0, "sequence_train": 0.0, "sequence_test": 0.0, **metrics}


@pytest.mark.parametrize(
    "rule, measured, holds",
    [
        (At("a", "score", ">=", 0.9), {"a": m(score=0.9)}, True),
        (At("a", "score", ">=", 0.9), {"a": m(score=0.89)}, False),
        (At("a", "score", "<=", 0.5), {"a": m(score=0.5)}, True),
        (At("a", "score", "<", 0.9), {"a": m(score=0.9)}, False),
        (Beats("a", "b", "sequence_test", 0.1), {"a": m(sequence_test=0.6), "b": m(sequence_test=0.5)}, True),
        (Beats("a", "b", "sequence_test", 0.1), {"a": m(sequence_test=0.59), "b": m(sequence_test=0.5)}, False),
        (Ranking((("a",), ("b", "c"), ("d",)), "train"),
         {"a": m(train=1.0), "b": m(train=0.7), "c": m(train=0.6), "d": m(train=0.2)}, True),
        (Ranking((("a",), ("b", "c"), ("d",)), "train"),  # c below d: the order breaks
         {"a": m(train=1.0), "b": m(train=0.7), "c": m(train=0.1), "d": m(train=0.2)}, False),
        (Transition(("l2", "l4", "l8"), "score", 0.5, 0.9), {"l2": m(), "l4": m(score=0.4), "l8": m(score=1.0)}, True),
        (Transition(("l2", "l4", "l8"), "score", 0.5, 0.9),  # all succeed: no jump
         {"l2": m(score=1.0), "l4": m(score=1.0), "l8": m(score=1.0)}, False),
        (Transition(("l2", "l4", "l8"), "score", 0.5, 0.9),  # back down after the jump
         {"l2": m(), "l4": m(score=1.0), "l8": m(score=0.3)}, False),
        (Transition(("l2", "l4", "l8"), "score", 0.5, 0.9),  # a middling arm before the jump: a drift
         {"l2": m(), "l4": m(score=0.7), "l8": m(score=1.0)}, False),
        (AllOf((At("a", "score", ">=", 0.9), At("b", "score", "<=", 0.5))), {"a": m(score=1.0), "b": m(score=0.6)}, False),
        (AnyOf((At("a", "score", ">=", 0.9), At("b", "score", ">=", 0.9))), {"a": m(score=0.1), "b": m(score=0.95)}, True),
    ],
)  # fmt: skip
def test_rules(rule, measured, holds):
    got, text = rule.check(measured)
    assert got is holds
    assert all(arm in text for arm in rule.arms())


def test_rules_reject_bad_arguments():
    with pytest.raises(ValueError, match="metric"):
        At("a", "accuracy", ">=", 0.9)
    with pytest.raises(ValueError, match="`op`"):
        At("a", "score", "=>", 0.9)
    with pytest.raises(ValueError, match="tiers"):
        Ranking((("a",),), "train")
    with pytest.raises(ValueError, match="low"):
        Transition(("a", "b"), "score", 0.9, 0.5)


TASK = suites.TaskSpec("parity", {"train_lengths": [3, 8], "test_lengths": [8, 16]})


def toy_claim(**kwargs) -> Claim:
    arms = (Arm("good", TASK, suites.ModelSpec("mingru")), Arm("bad", TASK, suites.ModelSpec("mingru", label="x")))
    settings = dict(
        name="toy", paper="p", statement="s", expected="e", arms=arms,
        rule=AllOf((At("good", "score", ">=", 0.9), At("bad", "score", "<=", 0.5))),
        budget=suites.Budget(params=2000, steps=6), quick_budget=suites.Budget(params=2000, steps=3),
        train=suites.TrainSettings(batch_size=8, eval_every=3, eval_batch_size=8, train_eval_lengths=2),
    )  # fmt: skip
    return Claim(**{**settings, **kwargs})


def test_verdicts():
    claim = toy_claim()
    assert verdict(claim, {"good": m(score=1.0), "bad": m(score=0.1)})[0] == REPRODUCED
    outcome, reason = verdict(claim, {"good": m(score=0.7), "bad": m(score=0.1)})
    assert outcome == NOT_REPRODUCED and "good score 0.70 < 0.9" in reason
    # nothing learned the training lengths: the budget, not the claim, decided
    outcome, reason = verdict(claim, {"good": m(train=0.3, score=0.0), "bad": m(train=0.2)})
    assert outcome == INCONCLUSIVE and "budget ran out" in reason
    outcome, reason = verdict(claim, {"good": m(score=1.0)})
    assert outcome == INCONCLUSIVE and "no result for bad" in reason
    # learners restrict who must have learned; learned_at sets the level
    strict = toy_claim(learners=("bad",), learned_at=0.95)
    assert verdict(strict, {"good": m(score=1.0), "bad": m(train=0.9, score=0.1)})[0] == INCONCLUSIVE


def test_claim_checks_its_arms():
    with pytest.raises(ValueError, match="unknown arm"):
        toy_claim(rule=At("nobody", "score", ">=", 0.9))
    with pytest.raises(ValueError, match="unique"):
        toy_claim(arms=(Arm("a", TASK, suites.ModelSpec("mingru")),) * 2, rule=At("a", "score", ">=", 0.9))


def record(seed: int, train: float, at16: float, sequence16: float = 0.0) -> dict:
    return {
        "key": f"k{seed}{train}{at16}", "seed": seed, "train_lengths": [3, 8],
        "accuracy": {"train": (1 + train) / 2, "8": 1.0, "16": (1 + at16) / 2},
        "scaled": {"train": train, "8": 1.0, "16": at16},
        "sequence_accuracy": {"train": 0.5, "8": 0.5, "16": sequence16},
    }  # fmt: skip


def test_measure_and_best_of_seeds_with_agreement():
    got = measure(record(0, 0.8, 0.6, 0.25))
    assert got == {"train": 0.8, "score": 0.6, "sequence_train": 0.5, "sequence_test": 0.25}  # 16: beyond 8
    # best of seeds per metric; seed 1 alone would not reproduce
    by_arm = {
        "good": {0: record(0, 1.0, 0.95), 1: record(1, 1.0, 0.7)},
        "bad": {0: record(0, 1.0, 0.1), 1: record(1, 1.0, 0.2)},
    }
    outcome = evaluate_claim(toy_claim(), by_arm)
    assert outcome.verdict == REPRODUCED and outcome.measured["good"]["score"] == 0.95
    assert outcome.seed_verdicts == {0: REPRODUCED, 1: NOT_REPRODUCED} and outcome.seeds_agreeing == 1


def test_catalogue_claims_build():
    names = claims.claim_names()
    assert len(names) >= 7 and len(set(names)) == len(names)
    assert {c.tier for c in claims.get_claims()} == {1}  # with no names: tier 1 only
    assert [c.name for c in claims.get_claims(every_tier=True)] == names
    for claim in claims.get_claims(every_tier=True):
        assert claim.paper and claim.statement and claim.expected
        for quick in (True, False):
            for arm, run in claim.runs(quick):
                run.task.make()  # the task variant exists with these fields
        assert {a.id for a in claim.arms} >= set(claim.rule.arms())
    with pytest.raises(ValueError, match="valid claims"):
        claims.get_claims(["no-such-claim"])
    tier2 = [c.name for c in claims.get_claims(every_tier=True) if c.tier == 2]
    assert "block-diagonal-regular" in tier2 and claims.get_claims(tier2)[0].tier == 2  # a named claim runs


def test_claims_cli_end_to_end_and_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(catalogue, "CLAIMS", {"toy": toy_claim()})
    trained = []
    train_run = capability.train_run
    monkeypatch.setattr(capability, "train_run", lambda run, *a, **k: trained.append(run) or train_run(run, *a, **k))
    out = tmp_path / "claims"
    assert main(["claims", "run", "toy", "--quick", "--jobs", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "toy" in text and any(v in text for v in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE))
    data = json.loads((out / "claims.json").read_text())
    [entry] = data["claims"]
    assert entry["name"] == "toy" and entry["verdict"] in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
    assert set(entry["measured"]) == {"good", "bad"} and len(data["runs"]) == 2
    assert all(r["steps"] == 3 for r in data["runs"])  # the quick budget
    assert (out / "claims.png").read_bytes()[:4] == b"\x89PNG"
    assert len(trained) == 2
    assert main(["claims", "run", "toy", "--quick", "--jobs", "1", "--out", str(out)]) == 0
    assert len(trained) == 2  # resumed from the cache: nothing trained again
    assert main(["claims"]) == 0 and "toy" in capsys.readouterr().out


def test_claims_cli_bad_name_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["claims", "run", "nope"])
    assert e.value.code == 2 and "valid claims" in capsys.readouterr().err


TIMING = {"train_seconds", "train_cpu_seconds", "eval_seconds", "eval_cpu_seconds", "date", "loadavg_1min",
          "loadavg_mean", "loadavg_max"}  # fmt: skip


def test_jobs_2_gives_the_results_of_jobs_1(tmp_path):
    settings = suites.TrainSettings(batch_size=8, eval_every=3, eval_batch_size=8, train_eval_lengths=2)
    runs = [
        suites.RunConfig(TASK, suites.ModelSpec(name), suites.Budget(params=2000, steps=6), 0, settings)
        for name in ("mingru", "lstm", "gla")
    ]
    one = capability.run_suite(runs, tmp_path / "one", jobs=1)
    two = capability.run_suite(runs, tmp_path / "two", jobs=2)
    strip = lambda r: {k: v for k, v in r.items() if k not in TIMING}  # noqa: E731
    assert [strip(r) for r in one] == [strip(r) for r in two]
    assert [r["model"] for r in two] == ["mingru", "lstm", "gla"]  # suite order, whatever finished first


def test_initial_states_train_and_differ():
    settings = suites.TrainSettings(batch_size=8, eval_every=3, eval_batch_size=8, train_eval_lengths=2)
    results = {}
    for how in ("zero", "noise", "carried"):
        run = suites.RunConfig(TASK, suites.ModelSpec("gla"), suites.Budget(params=2000, steps=4), 0,
                               suites.TrainSettings(**{**settings.__dict__, "initial_state": how}))  # fmt: skip
        results[how] = capability.train_run(run)
    losses = {how: r["history"][0][1] for how, r in results.items()}
    assert len(set(losses.values())) == 3  # each start state changes the training
    assert len({r["key"] for r in results.values()}) == 3
    with pytest.raises(suites.SuiteError, match="initial_state"):
        suites.suite_from_dict({"tasks": [{"name": "parity"}], "models": [{"name": "gla"}],
                                "train": {"initial_state": "random"}})  # fmt: skip
