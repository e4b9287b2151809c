"""``torchrun -m rnnzoo train`` on 2 CPU processes (gloo): the losses of one process on the same global batch,
checkpoints that resume on another number of processes, each process's share of a batch, and the batch check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from rnnzoo.cli import main
from rnnzoo.data import StatefulStreams, random_windows
from rnnzoo.train import checkpoints
from rnnzoo.train.distributed import Processes


def settings(corpus, *changes: str) -> list[str]:
    """A run of 8 steps of a global batch of 4 windows, evaluated and checkpointed every 4 steps."""
    return [f"data={corpus}", "params=20000", "n_layers=2", "context=32", "batch_size=4", "steps=8", "warmup=2",
            "eval_every=4", "eval_batches=2", "log_every=1", "checkpoint_every=4", "threads=1", *changes]  # fmt: skip


def torchrun(*args: str) -> str:
    """``rnnzoo`` in 2 processes started by torchrun (--standalone: a free port on this machine); their stdout."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rnnzoo"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, *args], env=environment, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def curve(out) -> list[tuple[int, str, float]]:
    """Every logged training loss and validation figure of a run, in order."""
    records = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    return [(r["step"], key, r[key]) for r in records for key in ("loss", "val_loss", "val_bpb") if key in r]


def assert_same_curve(got, expected) -> None:
    assert [(step, key) for step, key, _ in got] == [(step, key) for step, key, _ in expected]
    assert [value for *_, value in got] == pytest.approx([value for *_, value in expected], rel=1e-5)


def test_two_processes_compute_the_single_process_run(corpus, tmp_path):
    """Random windows, 2 micro-batches per step: each process takes 1 row of each, the gradients averaged."""
    run = settings(corpus, "mixer=gla", "batch_size=2", "grad_accum=2")
    assert main(["train", "--out", str(tmp_path / "one"), *run]) == 0
    printed = torchrun("train", "--out", str(tmp_path / "two"), *run)
    assert_same_curve(curve(tmp_path / "two"), curve(tmp_path / "one"))
    assert len(curve(tmp_path / "one")) == 8 + 2 * 2
    assert printed.count("step 8/8") == 1 and "2 processes" in printed  # the main process alone prints
    assert [p.name for p in checkpoints(tmp_path / "two")] == ["step_00000004", "step_00000008"]


def test_stateful_streams_resume_from_two_processes_into_one_and_back(corpus, tmp_path):
    """Each process carries the states of its 2 of the 4 streams; a checkpoint holds all 4, so a run resumes
    on any number of processes and continues the single-process run."""
    run = settings(corpus, "mixer=mamba", "stateful=true")
    assert main(["train", "--out", str(tmp_path / "one"), *run]) == 0
    torchrun("train", "--out", str(tmp_path / "two"), *run)
    whole = curve(tmp_path / "one")
    assert_same_curve(curve(tmp_path / "two"), whole)
    carried = torch.load(checkpoints(tmp_path / "two")[0] / "trainer.pt", weights_only=False)["carried"]
    assert all(state.batch_size == 4 for state in carried)  # the whole global batch's states

    for written_by, resume in (("two", lambda out: main(["train", "--out", str(out), "--resume"])),
                               ("one", lambda out: torchrun("train", "--out", str(out), "--resume"))):  # fmt: skip
        cut = tmp_path / f"{written_by}_cut"
        shutil.copytree(tmp_path / written_by, cut)
        shutil.rmtree(checkpoints(cut)[-1])  # as if stopped between the checkpoints of steps 4 and 8
        resume(cut)
        assert_same_curve(curve(cut), whole)


def test_the_shares_of_the_processes_make_the_global_batch():
    tokens = np.arange(10_000) % 251
    shares = [Processes(rank, 4).rows(8) for rank in range(4)]
    windows = [random_windows(tokens, 8, 16, torch.Generator().manual_seed(3), rows) for rows in shares]
    whole = random_windows(tokens, 8, 16, torch.Generator().manual_seed(3))
    assert torch.equal(torch.cat([x for x, _ in windows]), whole[0])
    streams = [StatefulStreams(tokens, 8, 16, rows=rows) for rows in shares]
    one = StatefulStreams(tokens, 8, 16)
    for _ in range(3):
        assert torch.equal(torch.cat([next(s)[1] for s in streams]), next(one)[1])


@pytest.mark.parametrize(
    "environment, overrides, message",
    [
        ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, ["batch_size=3"],
         "`batch_size`=3 is the global batch and must split evenly over the 2 processes"),
        ({}, ["device=tpu"], "`device` must be one of cpu, cuda, auto, got 'tpu'"),
    ],
)  # fmt: skip
def test_a_batch_that_does_not_split_or_an_unknown_device_is_exit_2_before_work(
    corpus, tmp_path, capsys, monkeypatch, environment, overrides, message
):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(tmp_path / "run"), f"data={corpus}", *overrides])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_device_cuda_without_a_gpu_is_a_config_error(corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(tmp_path / "run"), f"data={corpus}", "device=cuda"])
    message = "`device` is 'cuda' but process LOCAL_RANK=0 sees 0 CUDA device(s)"
    assert exc.value.code == 2 and message in capsys.readouterr().err
