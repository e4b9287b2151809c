"""``rnnzoo train``: configuration checks, checkpoints, exact resume (also after SIGKILL), hybrids."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from rnnzoo.cli import main
from rnnzoo.train import ConfigError, TrainConfig, checkpoints, load_checkpoint, load_config, train


def small(corpus, **changes) -> TrainConfig:
    fields = dict(data=str(corpus), params=20_000, n_layers=2, context=32, batch_size=4, steps=12, warmup=2,
                  eval_every=6, eval_batches=2, log_every=1, checkpoint_every=4, keep_checkpoints=2, threads=1)  # fmt: skip
    return TrainConfig(**{**fields, **changes})


def losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


class Stop(Exception):
    pass


def stop_at(step: int):
    def on_step(s: int) -> None:
        if s == step:
            raise Stop

    return on_step


@pytest.mark.parametrize("stateful", [False, True])
def test_resume_gives_the_same_loss_at_every_later_step(corpus, tmp_path, stateful):
    config = small(corpus, stateful=stateful, mixer="gla" if stateful else "mamba")
    whole = train(config, tmp_path / "whole")
    with pytest.raises(Stop):
        train(config, tmp_path / "cut", on_step=stop_at(6))  # dies between the checkpoints of steps 4 and 8
    assert [p.name for p in checkpoints(tmp_path / "cut")] == ["step_00000004"]
    resumed = train(config, tmp_path / "cut", resume=True)
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole") and len(losses(tmp_path / "whole")) == 12
    assert resumed.val_loss == whole.val_loss and resumed.step == 12
    assert [p.name for p in checkpoints(tmp_path / "cut")] == ["step_00000008", "step_00000012"]  # the last 2 kept


def test_a_run_killed_by_sigkill_resumes_exactly(corpus, tmp_path):
    config = small(corpus, steps=40, checkpoint_every=10, eval_every=20)
    overrides = [f"{k}={v}" for k, v in config.to_dict().items() if k != "mixer_kwargs"]
    script = f"import sys; from rnnzoo.cli import main; sys.exit(main({['train', '--out', str(tmp_path / 'cut'), *overrides]!r}))"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not checkpoints(tmp_path / "cut") and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    kept = checkpoints(tmp_path / "cut")
    assert kept and all(load_checkpoint(p) for p in kept)  # only whole checkpoints left behind
    assert main(["train", "--out", str(tmp_path / "cut"), "--resume"]) == 0  # the run's own settings
    train(config, tmp_path / "whole")
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")


def test_hybrid_pattern_and_sliding_window_train(corpus, tmp_path):
    config = small(corpus, mixer="hawk,attention", n_layers=4, steps=4, mixer_kwargs={"attention": {"window": 16}})
    result = train(config, tmp_path / "hybrid")
    _, trainer, saved, _ = load_checkpoint(checkpoints(tmp_path / "hybrid")[-1])
    assert saved["mixer"] == "hawk,attention" and trainer["step"] == 4 and result.val_bpb > 0
    assert (tmp_path / "hybrid" / "loss.png").stat().st_size > 0


def test_config_layers_and_overrides(tmp_path):
    (tmp_path / "run.toml").write_text('mixer = "mamba"\nsteps = 50\n[mixer_kwargs]\nexpand = 1\n')
    config = load_config(tmp_path / "run.toml", "tiny", ["steps=70", "lr=1e-3", "stateful=true"])
    assert (config.mixer, config.steps, config.lr, config.stateful, config.mixer_kwargs) == ("mamba", 70, 1e-3, True, {"expand": 1})
    assert config.context == 128  # from the preset


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["mixr=gla"], "unknown field(s) 'mixr'"),
        (["steps=0"], "`steps` must be >= 1"),
        (["lr=fast"], "`lr` must be float"),
        (["mixer_kwargs={'window': 512}", "mixer=attention", "context=256"], "window=512 is larger than `context`=256"),
        (["mixer=no_such_layer"], "unknown model 'no_such_layer'"),
        (["mixer=gla,attention", "stateful=true", "params=30000"], "`stateful`: the Attention layer's state"),
        (["data=/no/such/corpus.txt"], "`data`: data '/no/such/corpus.txt': no such file"),
    ],
)
def test_a_bad_config_is_one_line_and_exit_2_before_training(corpus, tmp_path, capsys, overrides, message):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(tmp_path / "run"), "steps=3", f"data={corpus}", *overrides])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_refuses_another_configuration(corpus, tmp_path, capsys):
    config = small(corpus, steps=4)
    train(config, tmp_path / "run")
    with pytest.raises(ConfigError, match="`tokenizer` is 'bpe:300' but the checkpoint was trained with 'byte'"):
        train(small(corpus, steps=8, tokenizer="bpe:300"), tmp_path / "run", resume=True)
    with pytest.raises(ConfigError, match="holds checkpoints already: pass --resume"):
        train(config, tmp_path / "run")
    longer = train(small(corpus, steps=8), tmp_path / "run", resume=True)  # more steps may be asked for
    assert longer.step == 8


def test_bits_per_byte_follow_the_tokenizer(corpus, tmp_path):
    pytest.importorskip("tokenizers")
    result = train(small(corpus, steps=2, tokenizer="bpe:300"), tmp_path / "bpe")
    loss, bpb = result.val_loss, result.val_bpb
    assert bpb < loss / 0.6931  # BPE tokens carry more than one byte each
    _, _, _, tokenizer = load_checkpoint(checkpoints(tmp_path / "bpe")[-1])
    assert json.loads(tokenizer)["kind"] == "bpe"
    assert torch.get_num_threads() >= 1


def test_train_eval_generate_end_to_end(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), f"data={corpus}", "params=20000", "n_layers=2", "context=16",
                 "batch_size=4", "steps=6", "eval_every=3", "eval_batches=1", "checkpoint_every=3", "threads=1"]) == 0
    assert "validation" in capsys.readouterr().out
    plot = tmp_path / "lbp.png"
    assert main(["eval", "--checkpoint", str(out), "--checkpoint", str(checkpoints(out)[0]), "--factor", "3",
                 "--sequences", "2", "--batches", "1", "--plot", str(plot)]) == 0
    table = capsys.readouterr().out
    assert "pos 32-47" in table and "step_00000003" in table and plot.stat().st_size > 0
    assert main(["generate", "--checkpoint", str(out), "--prompt", "def f", "--max-new-tokens", "12", "--temperature", "0"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("def f") and "12 tokens in" in captured.err
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--checkpoint", str(tmp_path / "nothing")])
    assert exc.value.code == 2 and "no checkpoint there" in capsys.readouterr().err


def test_greedy_stream_matches_generate_and_top_p_keeps_the_nucleus():
    torch.manual_seed(0)
    from rnnzoo.models import SequenceModel

    lm = SequenceModel(32, mixer="mamba", d_model=16)
    prompt = torch.randint(32, (2, 5))
    streamed = torch.stack(list(lm.stream(prompt, 7, temperature=0)), 1)
    assert torch.equal(lm.generate(prompt, 7, temperature=0)[:, 5:], streamed)
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0]])
    from rnnzoo.models.sequence_model import _sample

    drawn = {int(_sample(logits, 1.0, None, torch.Generator().manual_seed(i), top_p=0.5)) for i in range(50)}
    assert drawn == {0}  # the first token alone holds more than half the mass
    drawn = {int(_sample(logits, 1.0, None, torch.Generator().manual_seed(i), top_p=0.9)) for i in range(200)}
    assert drawn == {0, 1}
    with pytest.raises(ValueError, match="`top_p` must be a number in"):
        list(lm.stream(prompt, 2, top_p=1.5))


def test_lm_bench_trains_measures_and_resumes(corpus, tmp_path, capsys):
    out = tmp_path / "lm"
    args = ["bench", "--suite", "lm", "--out", str(out), "--jobs", "1", "--model", "gla", "--model", "gla,attention",
            "--set", f"data={corpus}", "--set", "params=20000", "--set", "context=16", "--set", "batch_size=2",
            "--set", "steps=4", "--set", "eval_every=2", "--set", "eval_batches=1", "--set", "checkpoint_every=2"]  # fmt: skip
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "gla,attention" in table and (out / "lm.png").stat().st_size > 0
    rows = {r["model"]: r for r in json.loads((out / "lm.json").read_text())["rows"]}
    assert set(rows) == {"gla", "gla,attention"} and all(r["generate_tokens_per_s"] > 0 for r in rows.values())
    assert rows["gla,attention"]["state_floats"] > rows["gla"]["state_floats"]  # the KV cache after the context
    stamp = (out / "gla" / "metrics.jsonl").stat().st_mtime_ns
    assert main(args) == 0  # finished runs are not trained again
    assert (out / "gla" / "metrics.jsonl").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--model", "gla"])
    assert exc.value.code == 2


def test_gradient_accumulation_matches_one_big_batch(corpus, tmp_path):
    one = train(small(corpus, steps=3, batch_size=4, eval_every=3, eval_batches=1), tmp_path / "one")
    two = train(small(corpus, steps=3, batch_size=2, grad_accum=2, eval_every=3, eval_batches=2), tmp_path / "two")
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)  # the same windows, summed in two
    assert abs(one.val_loss - two.val_loss) < 1e-5  # the same validation windows, the same model


def test_bf16_autocast_trains(corpus, tmp_path):
    result = train(small(corpus, steps=3, bf16=True, eval_every=3), tmp_path / "bf16")
    assert all(math.isfinite(v) for v in losses(tmp_path / "bf16").values()) and math.isfinite(result.val_bpb)


def test_a_pretokenised_uint16_corpus_trains_and_generates_ids(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RNNZOO_CACHE", str(tmp_path / "cache"))
    np.random.default_rng(0).integers(0, 300, 20_000).astype(np.uint16).tofile(tmp_path / "owt.bin")
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), f"data={tmp_path / 'owt.bin'}", "params=20000", "n_layers=2", "context=16",
                 "batch_size=2", "steps=2", "eval_every=2", "eval_batches=1", "threads=1"]) == 0
    _, _, _, tokenizer = load_checkpoint(checkpoints(out)[-1])
    assert json.loads(tokenizer) == {"kind": "ids", "vocab_size": 300}
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(out), "--prompt", "15 27 299", "--max-new-tokens", "4"]) == 0
    words = capsys.readouterr().out.split()
    assert len(words) == 7 and all(0 <= int(w) < 300 for w in words)
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--checkpoint", str(out), "--prompt", "hello"])
    assert exc.value.code == 2 and "token ids separated by spaces" in capsys.readouterr().err


def test_resume_from_the_command_line_takes_the_runs_settings(corpus, tmp_path, capsys):
    out = str(tmp_path / "run")
    common = [f"data={corpus}", "params=20000", "n_layers=2", "context=16", "batch_size=2", "eval_every=2",
              "eval_batches=1", "checkpoint_every=2", "threads=1"]  # fmt: skip
    assert main(["train", "--out", out, "mixer=mamba", "steps=2", *common]) == 0
    assert main(["train", "--out", out, "--resume", "steps=4"]) == 0  # mamba, the corpus, ... from the checkpoint
    assert load_checkpoint(checkpoints(tmp_path / "run")[-1])[1]["step"] == 4
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", out, "--resume", "mixer=gla", "steps=6"])
    assert exc.value.code == 2 and "`mixer` is 'gla' but the checkpoint was trained with 'mamba'" in capsys.readouterr().err
