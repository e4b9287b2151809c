"""Checkpoints of a training run, written so that nothing is lost and a run resumes exactly.

``<out>/checkpoints/step_00001000/`` holds ``model.safetensors`` (the weights, with each layer's configuration),
``trainer.pt`` (optimizer, schedule, random generators, data position, carried states, step) and
``config.json`` and ``tokenizer.json``. A checkpoint is written into a hidden temporary directory and renamed
into place, so a run killed at any moment leaves only whole checkpoints; the last ``keep`` are kept. The
weights are the bare model's and the carried states the whole global batch's, whatever the number of processes
that wrote them, so any number of processes resumes from it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["checkpoints", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]

PREFIX = "step_"


def checkpoints(out: Path) -> list[Path]:
    """The run's whole checkpoints, oldest first."""
    folder = Path(out) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest_checkpoint(out: Path) -> Path | None:
    found = checkpoints(out)
    return found[-1] if found else None


def save_checkpoint(
    out: Path, step: int, model: torch.nn.Module, trainer: dict, config: dict, tokenizer: str, keep: int
) -> Path:
    """Write the checkpoint of ``step`` atomically, then drop all but the last ``keep``."""
    folder = Path(out) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{step:08d}"
    tmp = folder / f".tmp_{PREFIX}{step:08d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    torch.save(trainer, tmp / "trainer.pt")
    (tmp / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
    (tmp / "tokenizer.json").write_text(tokenizer)
    if final.exists():  # the same step again (a resumed run's last checkpoint): replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> tuple[dict, dict, dict, str]:
    """``(weights, trainer state, config, tokenizer JSON)`` of a checkpoint directory, on the CPU."""
    path = Path(path)
    missing = [
        n for n in ("model.safetensors", "trainer.pt", "config.json", "tokenizer.json") if not (path / n).is_file()
    ]
    if missing:
        raise ValueError(f"checkpoint {path}: not an rnnzoo checkpoint (missing {', '.join(missing)})")
    trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)  # whatever device wrote it
    return (
        load_file(path / "model.safetensors"),
        trainer,
        json.loads((path / "config.json").read_text()),
        (path / "tokenizer.json").read_text(),
    )
