"""`rnnzoo bench` end to end at tiny sizes: table, JSON, PNG, the run cache, --report, suite validation."""

from __future__ import annotations

import json
import re

import pytest
import torch

from rnnzoo.bench import capability, report, suites
from rnnzoo.cli import main
from rnnzoo.models import SequenceModel, state_size

TINY_HEAD = """
name = "tiny"
seeds = 1
[train]
batch_size = 8
eval_every = 3
eval_batch_size = 8
train_eval_lengths = 2
[[budgets]]
params = 2000
steps = 6
[[tasks]]
name = "parity"
train_lengths = [3, 8]
test_lengths = [8, 16]
"""
MINGRU = """
[[models]]
name = "mingru"
"""
MAMBA_NEG = """
[[models]]
name = "mamba"
label = "mamba (neg)"
kwargs = { negative_eigenvalues = true, d_state = 4 }
"""
TINY_SUITE = TINY_HEAD + MINGRU + MAMBA_NEG


def write(tmp_path, text: str, name: str = "suite.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def bench(tmp_path, *args: str) -> int:
    return main(["bench", "--out", str(tmp_path / "out"), "--threads", "1", "--jobs", "1", *args])


@pytest.fixture
def counted(monkeypatch):
    """Counts the runs actually trained."""
    calls = []
    train_run = capability.train_run

    def counting(run, *args, **kwargs):
        calls.append(run)
        return train_run(run, *args, **kwargs)

    monkeypatch.setattr(capability, "train_run", counting)
    return calls


def test_tiny_bench_writes_table_json_png_and_resumes(tmp_path, capsys, counted):
    suite = write(tmp_path, TINY_SUITE)
    threads = torch.get_num_threads()
    assert bench(tmp_path, "--suite", suite) == 0
    assert torch.get_num_threads() == threads  # restored
    assert len(counted) == 2
    out = capsys.readouterr().out
    assert "parity" in out and "mingru" in out and "mamba (neg)" in out and "extrap." in out

    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {"date", "cpu", "threads", "torch", "loadavg_1min"} <= set(data["header"])
    assert data["header"]["threads"] == 1 and data["header"]["suite"] == "tiny"
    runs = {r["model"]: r for r in data["runs"]}
    assert set(runs) == {"mingru", "mamba (neg)"}
    for r in runs.values():
        assert r["steps"] == 6 and r["stopped"] == "steps" and r["train_lengths"] == [3, 8]
        assert set(r["accuracy"]) == {"train", "8", "16"}
        for n, acc in r["accuracy"].items():
            assert 0 <= acc <= 1
            assert r["scaled"][n] == pytest.approx((acc - 0.5) / 0.5)
        assert 1500 < r["params"] < 2500  # sized to the 2000-parameter budget
    assert runs["mamba (neg)"]["config"]["model"]["kwargs"] == {"negative_eigenvalues": True, "d_state": 4}
    assert [row["model"] for row in data["summary"]] == ["mingru", "mamba (neg)"]
    png = (tmp_path / "out" / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    cached = sorted(p.name for p in (tmp_path / "out" / "runs").iterdir())
    assert len(cached) == 2 and cached[0].startswith("parity_mamba-neg_s0_")

    # a second invocation trains nothing and reports the same results
    assert bench(tmp_path, "--suite", suite) == 0
    assert len(counted) == 2
    assert "cached" in capsys.readouterr().out
    again = json.loads((tmp_path / "out" / "results.json").read_text())
    assert again["runs"] == data["runs"]

    # an interrupted suite resumes: only the missing run trains; --force reruns all
    next((tmp_path / "out" / "runs").glob("parity_mingru_*")).unlink()
    assert bench(tmp_path, "--suite", suite) == 0
    assert [r.model.name for r in counted[2:]] == ["mingru"]
    assert bench(tmp_path, "--suite", suite, "--force") == 0
    assert len(counted) == 5


def test_report_rerenders_without_training(tmp_path, capsys, counted):
    assert bench(tmp_path, "--suite", write(tmp_path, TINY_SUITE)) == 0
    capsys.readouterr()
    results = str(tmp_path / "out" / "results.json")
    plot = tmp_path / "again.png"
    assert main(["bench", "--report", results, "--plot", str(plot)]) == 0
    assert len(counted) == 2
    out = capsys.readouterr().out
    assert "mamba (neg)" in out and f"wrote {plot}" in out.replace("\n", "")
    assert plot.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit) as e:
        main(["bench", "--report", results, "--seeds", "2"])
    assert e.value.code == 2
    (tmp_path / "bad.json").write_text('{"speed": 1}')
    with pytest.raises(SystemExit) as e:
        main(["bench", "--report", str(tmp_path / "bad.json")])
    assert e.value.code == 2
    assert "not an `rnnzoo bench` results.json" in capsys.readouterr().err


def test_report_of_a_hand_edited_results_file_exits_2_naming_the_problem(tmp_path, capsys):
    assert bench(tmp_path, "--suite", write(tmp_path, TINY_HEAD + MINGRU)) == 0
    capsys.readouterr()
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    run = data["runs"][0]
    edits = [
        ("runs", [1]), ("runs", [{}]), ("header", []), ("notes", 3),
        ("runs", [{**run, "accuracy": {"train": "high", "8": 0.5}}]), ("runs", [{**run, "scaled": {"train": 1.0}}]),
        ("runs", [{**run, "train_lengths": [3]}]), ("runs", [{**run, "chance": None}]),
        ("runs", [{**run, "config": {**run["config"], "train": {}}}]), ("runs", [{**run, "seed": "0"}]),
    ]  # fmt: skip
    for field, value in edits:
        path = tmp_path / "edited.json"
        path.write_text(json.dumps({**data, field: value}))
        with pytest.raises(SystemExit) as e:
            main(["bench", "--report", str(path), "--plot", str(tmp_path / "p.png")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "Traceback" not in err and "edited.json" in err, (field, value, err)


def test_seeds_give_best_and_mean(tmp_path, capsys):
    assert bench(tmp_path, "--suite", write(tmp_path, TINY_HEAD + MINGRU), "--seeds", "2", "--quiet") == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted(r["seed"] for r in data["runs"]) == [0, 1]
    (row,) = data["summary"]
    assert row["seeds"] == [0, 1]
    best = next(r for r in data["runs"] if r["seed"] == row["best_seed"])
    assert row["accuracy"] == best["accuracy"]
    for n in row["accuracy"]:
        assert row["mean_accuracy"][n] == pytest.approx(sum(r["accuracy"][n] for r in data["runs"]) / 2)
    scores = [r["scaled"]["16"] for r in data["runs"]]  # 16: the one test length beyond training (3-8)
    assert row["score"] == best["scaled"]["16"] == max(scores)
    assert row["mean_score"] == pytest.approx(sum(scores) / 2)
    assert "mean score" in capsys.readouterr().out


def test_early_stop_and_time_budget():
    task = suites.TaskSpec("parity", {"train_lengths": [1, 1], "test_lengths": [2]})
    settings = suites.TrainSettings(batch_size=32, lr=1e-2, eval_every=5, solved_accuracy=0.95, solved_evals=1,
                                    eval_batch_size=16, warmup_steps=0)  # fmt: skip
    run = suites.RunConfig(task, suites.ModelSpec("mingru"), suites.Budget(params=2000, steps=400), 0, settings)
    result = capability.train_run(run)
    assert result["stopped"] == "solved" and result["steps"] < 400  # length 1: the label is the input bit
    assert result["accuracy"]["train"] == 1.0
    timed = suites.RunConfig(task, suites.ModelSpec("mingru"), suites.Budget(2000, None, 1e-9), 0, settings)
    result = capability.train_run(timed)
    assert result["stopped"] == "time" and result["steps"] == 0


def test_run_key_tracks_the_config():
    run = suites.quick_suite().runs()[0]
    assert run.key() == suites.quick_suite().runs()[0].key()
    changed = [
        suites.RunConfig(run.task, run.model, run.budget, run.seed + 1, run.train),
        suites.RunConfig(suites.TaskSpec("parity", {"dense": False}), run.model, run.budget, run.seed, run.train),
        suites.RunConfig(run.task, suites.ModelSpec(run.model.name, {"negative_eigenvalues": True}), run.budget,
                         run.seed, run.train),  # fmt: skip
        suites.RunConfig(run.task, run.model, suites.Budget(params=1000), run.seed, run.train),
        suites.RunConfig(run.task, run.model, run.budget, run.seed, suites.TrainSettings(lr=1e-4)),
    ]
    assert len({run.key(), *(c.key() for c in changed)}) == 6
    # the task's defaults are part of the key: spelling one out changes nothing
    same = suites.RunConfig(suites.TaskSpec("parity", {"dense": True}), run.model, run.budget, run.seed, run.train)
    assert same.key() == run.key()


def test_run_key_tracks_the_code_the_run_uses(monkeypatch, tmp_path):
    """Editing a module a run imports (here: the delta rule engine) retrains that run, and only runs using it."""
    from rnnzoo.bench import provenance

    def run(name: str) -> suites.RunConfig:
        return suites.RunConfig(suites.TaskSpec("parity"), suites.ModelSpec(name), suites.Budget(), 0, suites.TrainSettings())

    assert "rnnzoo.ops.delta_rule" in provenance.modules_used(("rnnzoo.layers.deltanet",))
    assert "rnnzoo.ops.delta_rule" not in provenance.modules_used(("rnnzoo.layers.classic",))
    before = {name: run(name).key() for name in ("deltanet", "lstm")}
    real_path, edited = provenance._path, tmp_path / "delta_rule.py"
    edited.write_text(real_path("rnnzoo.ops.delta_rule").read_text() + "\n# edited\n")
    monkeypatch.setattr(provenance, "_path", lambda m: edited if m == "rnnzoo.ops.delta_rule" else real_path(m))
    assert run("deltanet").key() != before["deltanet"]
    assert run("lstm").key() == before["lstm"]


def test_cached_files_that_are_not_this_runs_result_are_retrained(tmp_path, capsys, counted):
    suite = write(tmp_path, TINY_HEAD + MINGRU)
    assert bench(tmp_path, "--suite", suite) == 0
    (path,) = (tmp_path / "out" / "runs").iterdir()
    record = json.loads(path.read_text())
    for bad in ({}, {**record, "key": "0123456789abcdef"}, {**record, "accuracy": {}}, [1, 2]):
        path.write_text(json.dumps(bad))  # empty, copied from another run, hand-edited, not a record
        assert bench(tmp_path, "--suite", suite) == 0
        assert json.loads(path.read_text())["key"] == record["key"]
    assert len(counted) == 5


def test_builtin_suites_skip_unregistered_models(monkeypatch):
    monkeypatch.setattr(suites, "QUICK_MODELS", (*suites.QUICK_MODELS, suites.ModelSpec("no_such_layer")))
    quick = suites.quick_suite()
    assert "no_such_layer" in quick.notes[0] and all(m.name != "no_such_layer" for m in quick.models)
    assert [t.name for t in quick.tasks] == ["parity"]
    full = suites.full_suite()
    assert {m.name for m in full.models} <= set(suites.tier_models(1)) and "mingru" in {m.name for m in full.models}
    assert len(full.runs()) == len(full.tasks) * len(full.models)


tiny_with = TINY_SUITE.replace


@pytest.mark.parametrize(
    "text,message",
    [
        (tiny_with('"mingru"', '"gpt5"'), r"unknown model 'gpt5'; registered models: .*mingru"),
        (tiny_with('"parity"', '"sudoku"'), r"unknown task 'sudoku'; valid tasks: .*parity"),
        (tiny_with("seeds = 1", "seeds = 1\nepochs = 3"), r"unknown field\(s\) epochs; valid fields: name, seeds"),
        (tiny_with("\nbatch_size = 8", "\nbatch_size = -8"), r"\[train\]: `batch_size` must be int > 0"),
        (tiny_with("\nbatch_size = 8", "\nbatch = 8"), r"\[train\]: unknown field\(s\) batch; valid fields: batch_size"),
        (tiny_with("steps = 6", "steps = 6\nwallclock = 3"), r"budgets\[0\]: unknown field\(s\) wallclock"),
        (tiny_with('"parity"', '"parity"\nbits = 3'), r"tasks\[0\] \(parity\): .*bits"),
        (tiny_with('"mingru"', '"mingru"\nkwargs = { colour = 1 }'), r"'mingru colour=1' does not build: .*'colour'"),
        (tiny_with('"mingru"', '"mingru"\nhidden = 3'), r"models\[0\]: unknown field\(s\) hidden"),
        ("[[tasks]]\nname = 'parity'", r"suite: missing field\(s\) models"),
        ("tasks = [", r"not valid TOML"),
    ],
)  # fmt: skip
def test_bad_suite_files_exit_2_naming_the_valid_choices(tmp_path, capsys, text, message):
    with pytest.raises(SystemExit) as e:
        bench(tmp_path, "--suite", write(tmp_path, text))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err.replace("\n", " ")), err


def test_bad_suite_names_and_formats(tmp_path, capsys):
    for args, message in [
        (["--suite", "huge"], "unknown suite 'huge'"),
        (["--suite", str(tmp_path / "missing.toml")], "not found"),
        (["--suite", write(tmp_path, "x", "suite.json")], "unknown suite"),
        (["--seeds", "0"], "must be a positive integer"),
    ]:
        with pytest.raises(SystemExit) as e:
            bench(tmp_path, *args)
        assert e.value.code == 2
        assert message in capsys.readouterr().err


def test_yaml_suite(tmp_path):
    text = "tasks:\n  - name: parity\nmodels:\n  - name: mingru\n"
    try:
        import yaml  # noqa: F401
    except ImportError:
        with pytest.raises(suites.SuiteError, match="YAML suites need PyYAML"):
            suites.load_suite(write(tmp_path, text, "suite.yaml"))
    else:
        suite = suites.load_suite(write(tmp_path, text, "suite.yaml"))
        assert [t.name for t in suite.tasks] == ["parity"] and [m.name for m in suite.models] == ["mingru"]


def test_summary_marks():
    def result(seed, train, beyond):
        return {
            "task": "parity", "model": "m", "seed": seed, "params": 10, "chance": 0.5, "train_lengths": [3, 40],
            "steps": 5, "train_seconds": 1.0, "config": {"budget": {"params": 10, "steps": 5, "seconds": None},
                                                           "train": {"solved_accuracy": 0.99},
                                                           "task": {"config": {"dense": True}}},
            "accuracy": {"train": train, "40": train, "256": beyond},
            "scaled": {"train": 2 * train - 1, "40": 2 * train - 1, "256": 2 * beyond - 1},
        }  # fmt: skip

    (row,) = report.summarize([result(0, 1.0, 0.6), result(1, 1.0, 0.99), result(2, 0.9, 0.5)])
    assert row["best_seed"] == 1 and row["solved"] == 2 and row["extrapolates"] == 1
    assert row["mean_accuracy"]["256"] == pytest.approx((0.6 + 0.99 + 0.5) / 3)
    assert row["score"] == pytest.approx(0.98) and row["mean_score"] == pytest.approx((0.2 + 0.98 + 0) / 3)
    # the score averages the lengths beyond training: 0.96 and 0.86 average to 0.91, enough to extrapolate
    two = result(0, 1.0, 0.93)
    two["accuracy"]["128"], two["scaled"]["128"] = 0.98, 0.96
    assert report.score(two) == pytest.approx(0.91) and report.extrapolates(two)
    two["scaled"]["128"] = 0.9
    assert not report.extrapolates(two)
    # without a test length beyond training there is no extrapolation mark; the score covers all lengths
    short = result(0, 1.0, 0.7)
    short["train_lengths"] = [3, 300]
    assert report.extrapolates(short) is None and report.score(short) == pytest.approx((1.0 + 0.4) / 2)
    # one task in two configs: a row (and table) each, labelled by the differing field
    dense, sparse = result(0, 1.0, 0.9), result(0, 0.8, 0.5)
    dense["config"]["task"] = {"config": {"dense": True, "train_lengths": [3, 40]}}
    sparse["config"]["task"] = {"config": {"dense": False, "train_lengths": [3, 40]}}
    assert [r["task"] for r in report.summarize([dense, sparse])] == ["parity (dense=True)", "parity (dense=False)"]


def test_a_failing_run_is_reported_not_cached_and_exits_1(tmp_path, capsys, monkeypatch):
    train_run = capability.train_run

    def broken_for_mingru(run, *args, **kwargs):
        if run.model.name == "mingru":
            raise RuntimeError("shape [1, 2] is wrong")
        return train_run(run, *args, **kwargs)

    monkeypatch.setattr(capability, "train_run", broken_for_mingru)
    assert bench(tmp_path, "--suite", write(tmp_path, TINY_SUITE)) == 1
    out = capsys.readouterr().out
    assert "error RuntimeError: shape [1, 2] is wrong" in out and "1 run(s) failed" in out
    assert [p.name.split("_")[1] for p in (tmp_path / "out" / "runs").iterdir()] == ["mamba-neg"]
    assert [r["model"] for r in json.loads((tmp_path / "out" / "results.json").read_text())["runs"]] == ["mamba (neg)"]


def test_budgets_size_to_params_or_to_state():
    task = suites.TaskSpec("mqar")
    for name in ("attention", "gla", "mamba"):
        run = suites.RunConfig(task, suites.ModelSpec(name), suites.Budget(params=30_000), 0, suites.TrainSettings())
        model = SequenceModel(**run.model_config(task.make()))
        assert abs(model.num_parameters() / 30_000 - 1) <= 0.03
    states = {}
    for name in ("gla", "mamba"):
        budget = suites.Budget(params=30_000, match="state", state=4096)
        run = suites.RunConfig(task, suites.ModelSpec(name), budget, 0, suites.TrainSettings())
        states[name] = state_size(SequenceModel(**run.model_config(task.make())))
    assert all(abs(s / 4096 - 1) < 0.35 for s in states.values()), states  # d_model steps: see test_sizing
    with pytest.raises(suites.SuiteError, match="`state`"):
        suites.Budget(match="state")
    with pytest.raises(suites.SuiteError, match="budgets\\[0\\]: `match`"):
        suites.suite_from_dict({"tasks": [{"name": "parity"}], "models": [{"name": "gla"}],
                                "budgets": [{"steps": 5, "match": "flops"}]})  # fmt: skip


def test_unusable_out_or_plot_exits_2_before_any_training(tmp_path, capsys, counted):
    suite = write(tmp_path, TINY_HEAD + MINGRU)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for args in (["--out", str(a_file / "out")], ["--plot", str(tmp_path / "missing" / "plot.png")]):
        with pytest.raises(SystemExit) as exit_info:
            main(["bench", "--suite", suite, "--jobs", "1", *args])
        assert exit_info.value.code == 2
        assert "cannot write there" in capsys.readouterr().err
    assert counted == []


def test_a_busy_out_dir_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys, counted):
    import os
    import subprocess

    suite = write(tmp_path, TINY_HEAD + MINGRU)
    lock = tmp_path / "out" / ".lock"
    lock.parent.mkdir()
    lock.write_text(str(os.getppid()))  # a live process holds it
    with pytest.raises(SystemExit) as exit_info:
        bench(tmp_path, "--suite", suite)
    assert exit_info.value.code == 2 and "in use by another rnnzoo process" in capsys.readouterr().err
    assert counted == []
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(str(dead.pid))  # its holder died: the next run takes it over, and lets it go
    assert bench(tmp_path, "--suite", suite) == 0
    assert len(counted) == 1 and not lock.exists()
