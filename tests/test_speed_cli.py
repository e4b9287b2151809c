"""The `rnnzoo` command in-process: `speed` at tiny sizes (no speed assertions) and `list`."""

from __future__ import annotations

import json

import pytest

from rnnzoo import list_models
from rnnzoo.bench import speed
from rnnzoo.cli import main

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
        assert r["bar"] is None and r["bar_pass"] is None  # no bar at this shape
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


@pytest.mark.parametrize(
    "args, names",
    [
        (["--model", "no_such_model"], ["mingru", "linear_scan", "cumsum", "nn.GRU"]),
        (["--model", "mingru", "--mode", "no_such_mode"], ["recurrent", "scan"]),
        (["--model", "mingru", "--dtype", "int8"], ["float32", "bfloat16"]),
        ([], ["mingru", "--quick"]),
    ],
)
def test_bad_arguments_exit_2_listing_valid_names(tmp_path, capsys, args, names):
    with pytest.raises(SystemExit) as exc:
        main(["speed", *args, "--json", str(tmp_path / "x.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(name in err for name in names)
    assert not (tmp_path / "x.json").exists()


def test_quick_suite_covers_bars_and_every_layer():
    specs = speed.quick_specs()
    assert len(specs) == len(set(specs))
    for bar in speed.BARS:
        shaped = {(s.target, s.mode) for s in specs if (s.batch, s.length, s.d_model) == bar.shape}
        assert {(bar.target, bar.mode), (bar.vs_target, bar.vs_mode)} <= shaped
        if bar.target == speed.ENGINE:
            assert (speed.ENGINE, "recurrent") in shaped  # the reference loop beside the scan
        compared = speed.comparison(speed.Spec(bar.target, bar.mode, *bar.shape), specs)
        assert (compared.target, compared.mode) == (bar.vs_target, bar.vs_mode)
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


@pytest.mark.parametrize("scan_ms, passed", [(30.0, True), (50.0, False)])
def test_bar_marks_pass_and_fail(scan_ms, passed):
    shape = (8, 4096, 256)
    scan, _ = speed.compare([_record("linear_scan", "scan", shape, scan_ms), _record("cumsum", "torch", shape, 20.0)])
    assert (scan.ratio_fwd_bwd, scan.bar, scan.bar_pass) == (pytest.approx(scan_ms / 20.0), "<= 2", passed)


@pytest.mark.parametrize(
    "shape, threads, fwd_bwd_ms", [((8, 4096, 128), 2, 30.0), ((8, 4096, 256), 1, 30.0), ((8, 4096, 256), 2, None)]
)
def test_bar_only_at_its_setting(shape, threads, fwd_bwd_ms):
    scan, _ = speed.compare(
        [_record("linear_scan", "scan", shape, fwd_bwd_ms, threads), _record("cumsum", "torch", shape, 20.0, threads)]
    )
    assert scan.vs_target == "cumsum" and scan.bar is None and scan.bar_pass is None
