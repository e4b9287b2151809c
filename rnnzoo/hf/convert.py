"""``rnnzoo hf export`` and ``rnnzoo hf import``: an ``rnnzoo train`` run as a Hugging Face directory, and back,
the weights bit for bit.

An exported directory holds what ``save_pretrained`` writes (``config.json``: an :class:`RnnzooConfig` that also
records the run's configuration and step; ``model.safetensors``; ``generation_config.json``) and the run's
tokenizer as ``rnnzoo_tokenizer.json`` (:func:`rnnzoo.data.tokenizer_from_json` reads it). A BPE tokenizer is also
written as ``tokenizer.json`` and ``tokenizer_config.json``, so ``AutoTokenizer.from_pretrained`` loads it as a
``PreTrainedTokenizerFast``; a byte-level run's tokens are the text's UTF-8 bytes.

Importing writes a run directory with one checkpoint (weights, configuration, tokenizer and step; no optimizer
state, so it is for ``rnnzoo eval`` / ``rnnzoo generate`` / :func:`~rnnzoo.train.evaluate.load_run`, not
``--resume``).
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from ..data import BPETokenizer, IdTokenizer, tokenizer_from_json
from ..models import SequenceModel
from ..train import ConfigError, TrainConfig, build_model
from ..train.checkpoint import save_checkpoint
from ..train.evaluate import load_run
from .config import RnnzooConfig
from .model import RnnzooForCausalLM

__all__ = ["TOKENIZER_FILE", "export_run", "import_run"]

TOKENIZER_FILE = "rnnzoo_tokenizer.json"


def export_run(source: str | Path, out: str | Path) -> Path:
    """Write the run directory ``source`` (its last checkpoint) or the checkpoint directory ``source`` as the
    Hugging Face directory ``out`` (new or empty); returns ``out``. A :class:`~rnnzoo.train.ConfigError`
    names the argument when ``source`` holds no checkpoint or ``out`` is taken."""
    out = Path(out)
    _check_free(out, "OUT_DIR")
    try:
        run = load_run(source)
    except ConfigError as e:
        raise ConfigError(f"RUN_OR_CHECKPOINT {str(e).removeprefix('--checkpoint ')}") from None
    config = RnnzooConfig.from_model(run.model, rnnzoo_run={"config": run.config.to_dict(), "step": run.step})
    model = RnnzooForCausalLM(config)
    model.model.load_state_dict(run.model.state_dict())
    model.save_pretrained(out)
    (out / TOKENIZER_FILE).write_text(run.tokenizer.to_json())
    if isinstance(run.tokenizer, BPETokenizer):
        PreTrainedTokenizerFast(tokenizer_object=run.tokenizer.backend).save_pretrained(out)
    return out


def import_run(source: str | Path, out: str | Path) -> Path:
    """Write the Hugging Face directory ``source`` (an :class:`RnnzooForCausalLM`) as a run directory ``out``
    (new or empty) with one checkpoint; returns ``out``.

    The run's configuration is the exported run's own when ``config.json`` records it, else the defaults with
    the model's mixer, layers and ``d_model``; a :class:`~rnnzoo.train.ConfigError` says so when neither builds
    this architecture (an MLP that ``rnnzoo train`` does not make). Without ``rnnzoo_tokenizer.json`` the run
    reads and writes token ids as numbers (:class:`~rnnzoo.data.IdTokenizer`)."""
    source, out = Path(source), Path(out)
    config_file = source / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"HF_DIR {source}: no config.json there (a directory written by save_pretrained)")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != RnnzooConfig.model_type:
        raise ConfigError(f"HF_DIR {source}: model_type {model_type!r} is not an rnnzoo model ('rnnzoo')")
    _check_free(out, "OUT_RUN")
    try:
        model = RnnzooForCausalLM.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError(f"HF_DIR {source}: {str(e).strip().splitlines()[0]}") from None
    train_config = _train_config(model.config, model.model)
    tokenizer_file = source / TOKENIZER_FILE
    tokenizer = (
        tokenizer_from_json(tokenizer_file.read_text())
        if tokenizer_file.is_file()
        else IdTokenizer(model.model.vocab_size)
    )
    step = (model.config.rnnzoo_run or {}).get("step", 0)
    save_checkpoint(out, step, model.model, {"step": step}, train_config.to_dict(), tokenizer.to_json(), keep=1)
    return out


def _train_config(config: RnnzooConfig, model: SequenceModel) -> TrainConfig:
    """The first run configuration whose :func:`~rnnzoo.train.build_model` gives ``model``'s architecture: the
    exported run's own, then the defaults with ``model``'s mixer, layers and ``d_model``."""
    wanted = RnnzooConfig.from_model(model).model_kwargs()
    candidates = [] if config.rnnzoo_run is None else [config.rnnzoo_run["config"]]
    defaults = {"mixer": config.mixer, "n_layers": config.n_layers, "mixer_kwargs": config.mixer_kwargs}
    candidates.append({**defaults, "d_model": config.d_model, "params": None})
    reasons = []
    for fields in candidates:
        try:
            train_config = TrainConfig(**fields)
            built = RnnzooConfig.from_model(build_model(train_config, model.vocab_size)).model_kwargs()
        except (TypeError, ConfigError) as e:
            reasons.append(str(e))
            continue
        if built == wanted:
            return train_config
        reasons.append(
            ", ".join(f"{k}={wanted[k]!r} (rnnzoo train: {built[k]!r})" for k in wanted if wanted[k] != built[k])
        )
    raise ConfigError(f"HF_DIR: no `rnnzoo train` configuration builds this model: {'; '.join(reasons)}")


def _check_free(path: Path, name: str) -> None:
    """A ``ConfigError`` naming ``name`` unless ``path`` is a new or empty directory."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(f"{name} {path}: exists and is not an empty directory; choose a new one")
