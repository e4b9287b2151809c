"""The `rnnzoo` command in-process: `speed` at tiny sizes (no speed assertions) and `list`."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from rnnzoo import list_models
from rnnzoo.bench import speed
from rnnzoo.cli import main
from rnnzoo.ops.gated_linear_attention import chunk_flops

TINY = ["--batch", "2", "--length", "80", "--d-model", "8", "--threads", "1", "--repeats", "1", "--budget", "0"]


def _speed(tmp_path, *args: str) -> dict:
    path = tmp_path / "speed.json"
    assert main(["speed", *args, *TINY, "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_custom_run_writes_records_with_ratios(tmp_path, capsys):
    data = _speed(tmp_path, "--model", "mingru", "--model", "linear_scan", "--model", "cumsum")
    assert {"torch", "threads", "device", "platform", "cpu", "date"} <= set(data["header"])
    assert data["header"]["threads"] == 1
    records = {(r["target"], r["mode"]): r for r in data["records"]}
    assert list(records) == [
        ("mingru", "scan"), ("mingru", "recurrent"), ("linear_scan", "scan"), ("linear_scan", "recurrent"), ("cumsum", "torch")
    ]  # fmt: skip
    for r in records.values():
        assert (r["batch"], r["length"], r["d_model"], r["dtype"], r["threads"]) == (2, 80, 8, "float32", 1)
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and 0 < r["fwd_min_ms"] <= r["fwd_ms"]
        assert r["fwd_repeats"] >= 1 and r["fwd_bwd_repeats"] >= 1
        assert r["headline"] is None  # no headline at this shape
    expected_vs = {
        ("mingru", "recurrent"): ("mingru", "scan"),
        ("linear_scan", "scan"): ("cumsum", "torch"),
        ("linear_scan", "recurrent"): ("linear_scan", "scan"),
    }
    for key, r in records.items():
        if key not in expected_vs:
            assert r["vs_target"] is r["ratio_fwd"] is r["ratio_fwd_bwd"] is None
            continue
        assert (r["vs_target"], r["vs_mode"]) == expected_vs[key]
        vs = records[expected_vs[key]]
        assert r["ratio_fwd"] == pytest.approx(r["fwd_ms"] / vs["fwd_ms"])
        assert r["ratio_fwd_bwd"] == pytest.approx(r["fwd_bwd_ms"] / vs["fwd_bwd_ms"])
    out = capsys.readouterr().out
    assert "linear_scan" in out and "cumsum" in out


def test_forward_only_and_mode_selection(tmp_path):
    data = _speed(tmp_path, "--model", "mingru", "--model", "nn.GRU", "--mode", "scan", "--forward-only")
    assert [(r["target"], r["mode"]) for r in data["records"]] == [("mingru", "scan"), ("nn.GRU", "torch")]
    mingru, gru = data["records"]
    assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] is None and r["ratio_fwd_bwd"] is None for r in data["records"])
    assert (gru["vs_target"], gru["vs_mode"]) == ("mingru", "scan")
    assert gru["ratio_fwd"] == pytest.approx(gru["fwd_ms"] / mingru["fwd_ms"])


def test_gla_engine_and_matmul_report_gflops(tmp_path):
    data = _speed(tmp_path, "--model", "gated_linear_attention", "--model", "matmul")
    records = {(r["target"], r["mode"]): r for r in data["records"]}
    gla = "gated_linear_attention"
    assert list(records) == [(gla, "chunk"), (gla, "recurrent"), ("matmul", "torch")]
    chunk, loop, matmul = records.values()
    # (B, T, d) = (2, 80, 8): 4 heads of d_k = d_v = 2; fwd+bwd is 3x the chunk forward's FLOPs
    assert chunk["gflops"] == pytest.approx(3 * chunk_flops(2, 4, 80, 2, 2) / chunk["fwd_bwd_ms"] / 1e6)
    assert matmul["fwd_bwd_ms"] is None and matmul["gflops"] == pytest.approx(2 * 160 * 8 * 8 / matmul["fwd_ms"] / 1e6)
    assert (chunk["vs_target"], chunk["vs_shape"]) == ("matmul", [2, 80, 8])
    assert chunk["ratio_gflops"] == pytest.approx(chunk["gflops"] / matmul["gflops"])
    assert chunk["ratio_fwd"] is chunk["ratio_fwd_bwd"] is None  # different work: rates compared, not times
    assert loop["gflops"] is None and (loop["vs_target"], loop["vs_mode"]) == ("gated_linear_attention", "chunk")
    assert loop["ratio_fwd_bwd"] == pytest.approx(loop["fwd_bwd_ms"] / chunk["fwd_bwd_ms"])


def test_step_rows_time_tokens_and_keep_state_bytes():
    names = ["gla", "mingru"]  # a matrix state (engine 3) and a vector one (engine 2)
    specs = [s for length in (16, 40) for s in speed.step_specs(names, (2, length, 8))]
    records = {(r.target, r.length): r for r in speed.run(specs, threads=1, repeats=3, budget_s=0)}
    for name in names:
        short, long = records[name, 16], records[name, 40]
        for r in (short, long):
            assert r.mode == "step" and r.fwd_ms > 0 and r.fwd_min_ms > 0 and r.fwd_repeats >= 3
            assert r.fwd_bwd_ms is None
            assert r.state_bytes == r.state_bytes_after_steps == short.state_bytes > 0
        assert short.vs_target is None
        assert (long.vs_target, long.vs_mode, long.vs_shape) == (name, "step", (2, 16, 8))
        assert long.ratio_fwd == pytest.approx(long.fwd_ms / short.fwd_ms) and long.headline is None


def test_time_fns_interleaves_functions():
    calls: list[str] = []
    fns = [lambda: calls.append("a"), lambda: calls.append("b")]
    timings = speed.time_fns(fns, repeats=3, budget_s=0, warmup=1, device=torch.device("cpu"))
    assert calls == ["a", "b"] * 4 and [n for *_, n in timings] == [3, 3]  # one warmup round, then 3 rounds


def test_rows_of_one_shape_are_timed_together(monkeypatch):
    """Rows of one shape and dtype go round-robin through one time_fns call (forward, then forward+backward);
    another shape is timed apart."""
    groups: list[int] = []
    real = speed.time_fns
    monkeypatch.setattr(speed, "time_fns", lambda fns, **kw: groups.append(len(fns)) or real(fns, **kw))
    specs = speed.make_specs(["mingru", "cumsum"], (2, 16, 8)) + speed.make_specs(["mingru"], (2, 24, 8))
    records = speed.run(specs, threads=1, repeats=1, budget_s=0)
    together = len([s for s in specs if s.length == 16])
    assert together >= 3 and groups == [together, together, len(specs) - together, len(specs) - together]
    assert [(r.target, r.mode, r.length) for r in records] == [(s.target, s.mode, s.length) for s in specs]


def test_step_flag_writes_step_rows(tmp_path, capsys):
    data = _speed(tmp_path, "--step", "--model", "mingru")
    (r,) = data["records"]
    assert (r["target"], r["mode"], r["length"], r["batch"], r["d_model"]) == ("mingru", "step", 80, 2, 8)
    assert r["fwd_ms"] > 0 and r["state_bytes"] == r["state_bytes_after_steps"] == 2 * 8 * 4  # h (2, 8) float32
    assert "layer.step" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, names",
    [
        (["--model", "no_such_model"], ["mingru", "linear_scan", "gated_linear_attention", "nn.GRU", "matmul"]),
        (["--model", "mingru", "--mode", "no_such_mode"], ["recurrent", "scan"]),
        (["--model", "mingru", "--dtype", "int8"], ["float32", "bfloat16"]),
        ([], ["mingru", "--quick"]),
        (["--model", "gated_linear_attention", "--d-model", "10"], ["multiple of 4"]),
        (["--step", "--model", "linear_scan"], ["mingru", "gla"]),
        (["--step", "--quick"], ["--quick", "--step"]),
        (["--step", "--model", "mingru", "--mode", "scan"], ["--step", "--mode"]),
        (["--model", "gla", "--d-model", "3"], ["gla", "--d-model 3", "num_heads"]),
        (["--step", "--model", "gla", "--d-model", "3"], ["gla", "--d-model 3"]),
        (["--model", "mingru", "--budget", "inf"], ["--budget", "finite"]),
        (["--model", "mingru", "--budget", "nan"], ["--budget", "finite"]),
        (["--model", "mingru", "--budget", "-1"], ["--budget", ">= 0"]),
    ],
)
def test_bad_arguments_exit_2_listing_valid_names(tmp_path, capsys, args, names):
    with pytest.raises(SystemExit) as exc:
        main(["speed", *args, "--json", str(tmp_path / "x.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(name in err for name in names)
    assert not (tmp_path / "x.json").exists()


def test_quick_suite_covers_headlines_and_every_layer():
    specs = speed.quick_specs()
    assert len(specs) == len(set(specs))
    gla_layers = [m.name for m in list_models() if m.engine in speed.CONSTANT_STATE_ENGINES]
    assert "gla" in gla_layers and "aaren" in gla_layers
    known = set(speed.target_names())
    for bar in speed.HEADLINES:
        if not {bar.target, bar.vs_target} <= known | {speed.ANY}:
            continue  # a headline on a layer that is not registered
        targets = gla_layers if bar.target == speed.ANY else [bar.target]
        for target in targets:
            vs_target = target if bar.vs_target == speed.ANY else bar.vs_target
            row = speed.Spec(target, bar.mode, *bar.shape)
            assert row in specs and speed.Spec(vs_target, bar.vs_mode, *(bar.vs_shape or bar.shape)) in specs
            if target in (speed.ENGINE, speed.GLA):  # the reference loop beside the parallel form
                assert speed.Spec(target, "recurrent", *bar.shape) in specs
            compared = speed.comparison(row, specs)
            vs_shape = bar.vs_shape or bar.shape
            assert compared == speed.Spec(vs_target, bar.vs_mode, *vs_shape)
    assert any(b.rate and b.shape == (4, 2048, 256) and b.vs_shape == (1, 2048, 2048) for b in speed.HEADLINES)
    assert any(b.mode == "step" and {b.shape[1], b.vs_shape[1]} == {1024, 65536} for b in speed.HEADLINES)
    for spec in specs:  # every layer with a PyTorch counterpart is timed beside it
        if spec.target in speed.BASELINE_OF and spec.mode != "recurrent":
            assert speed.comparison(spec, specs) == speed.Spec(speed.BASELINE_OF[spec.target], "torch", *spec.config)
    for info in list_models():
        shape = speed.QUICK_LAYER_SHAPE
        modes = {s.mode for s in specs if s.target == info.name and (s.batch, s.length, s.d_model) == shape}
        assert modes == {"recurrent", *info.cls.parallel_modes}


def test_list_prints_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(m.name in out for m in list_models())


def _record(target: str, mode: str, shape: tuple[int, int, int], fwd_bwd_ms: float | None, threads: int = 2):
    return speed.Record(target, mode, *shape, "float32", threads, "cpu", 1.0, 1.0, 1, fwd_bwd_ms, fwd_bwd_ms, 1)


@pytest.mark.parametrize("scan_ms", [30.0, 50.0])
def test_headline_ratio_of_times(scan_ms):
    shape = (8, 4096, 256)
    scan, _ = speed.compare([_record("linear_scan", "scan", shape, scan_ms), _record("cumsum", "torch", shape, 20.0)])
    assert (scan.ratio_fwd_bwd, scan.headline) == (pytest.approx(scan_ms / 20.0), "engine 2's scan vs torch.cumsum")
    assert not hasattr(scan, "bar_pass")  # required values live in the documentation, not in the library


@pytest.mark.parametrize("chunk_gflops", [50.0, 30.0])
def test_gla_rate_headline(chunk_gflops):
    chunk = dataclasses.replace(_record("gated_linear_attention", "chunk", (4, 2048, 256), 100.0), gflops=chunk_gflops)
    matmul = dataclasses.replace(_record("matmul", "torch", (1, 2048, 2048), None), gflops=100.0)
    chunk, _ = speed.compare([chunk, matmul])
    assert chunk.ratio_gflops == pytest.approx(chunk_gflops / 100) and "FLOP rate" in chunk.headline


@pytest.mark.parametrize("long_ms, long_bytes", [(1.05, 4096), (1.2, 4096), (1.0, 8192)])
def test_step_headline(long_ms, long_bytes, capsys):
    def step(length: int, ms: float, after: int) -> speed.Record:
        record = _record("gla", "step", (1, length, 64), None)
        return dataclasses.replace(record, fwd_ms=ms, state_bytes=4096, state_bytes_after_steps=after)

    records = speed.compare([step(1024, 1.0, 4096), step(65536, long_ms, long_bytes)])
    assert records[1].ratio_fwd == pytest.approx(long_ms) and "64k tokens" in records[1].headline
    line = speed._headline_line(records[1], {r.spec: r for r in records})
    assert f"= {long_ms:.3f}" in line
    assert ("4,096 bytes throughout" in line) == (long_bytes == 4096)


@pytest.mark.parametrize(
    "shape, threads, fwd_bwd_ms", [((8, 4096, 128), 2, 30.0), ((8, 4096, 256), 1, 30.0), ((8, 4096, 256), 2, None)]
)
def test_headline_only_at_its_setting(shape, threads, fwd_bwd_ms):
    scan, _ = speed.compare(
        [_record("linear_scan", "scan", shape, fwd_bwd_ms, threads), _record("cumsum", "torch", shape, 20.0, threads)]
    )
    assert scan.vs_target == "cumsum" and scan.headline is None


def test_counterpart_headline():
    shape = (8, 512, 256)
    lstm, torch_lstm = speed.compare([_record("lstm", "fused", shape, 105.0), _record("nn.LSTM", "torch", shape, 100.0)])
    assert (lstm.vs_target, lstm.ratio_fwd_bwd, lstm.headline) == (
        "nn.LSTM", pytest.approx(1.05), "the lstm layer vs bare nn.LSTM"
    )
    assert torch_lstm.vs_target is None  # a counterpart is not compared back with its layer


def test_train_step_times_each_model_beside_lstm(tmp_path, capsys):
    out = tmp_path / "steps.json"
    args = ["speed", "--train-step", "--model", "mingru", "--batch", "4", "--length", "6", "--params", "3000",
            "--rounds", "2", "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    data = json.loads(out.read_text())
    rows = {r["model"]: r for r in data["rows"]}
    assert list(rows) == ["lstm", "mingru"] and rows["lstm"]["ratio"] == 1.0
    assert rows["mingru"]["ratio"] == pytest.approx(rows["mingru"]["cpu_ms"] / rows["lstm"]["cpu_ms"])
    assert all(abs(r["params"] / 3000 - 1) <= 0.03 and r["cpu_ms"] > 0 for r in rows.values())
    assert data["header"]["threads"] == 1 and data["header"]["batch"] == 4
    assert "largest ratios to lstm: mingru" in capsys.readouterr().out


def test_train_step_rejects_unknown_models_and_other_modes(capsys):
    for args in (["--model", "no_such"], ["--quick"]):
        with pytest.raises(SystemExit) as e:
            main(["speed", "--train-step", *args])
        assert e.value.code == 2
    assert "unknown: no_such" in capsys.readouterr().err


def test_an_unwritable_json_path_exits_2_before_timing(tmp_path, capsys):
    for extra in ([], ["--train-step"]):
        with pytest.raises(SystemExit) as exc:
            main(["speed", "--model", "mingru", *extra, "--json", str(tmp_path / "missing" / "x.json")])
        assert exc.value.code == 2 and "cannot write there" in capsys.readouterr().err



def test_decode_times_eager_and_compiled_steps(tmp_path):
    out = tmp_path / "decode.json"
    args = ["speed", "--decode", "--model", "mingru", "--length", "16", "--params", "20000", "--rounds", "1",
            "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["model"] == "mingru" and row["same_tokens"]
    assert row["ratio"] == pytest.approx(row["compiled_tokens_per_s"] / row["eager_tokens_per_s"])


def test_compiled_mode_is_timed_only_when_asked_for():
    assert "compiled" not in {s.mode for s in speed.make_specs(["gla"], (2, 16, 8))}
    assert [s.mode for s in speed.make_specs(["gla"], (2, 16, 8), modes=["compiled"])] == ["compiled"]
