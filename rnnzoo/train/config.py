"""``rnnzoo train``'s configuration: one dataclass, read from a TOML file or a preset, with ``key=value``
overrides, every field checked (name, type, range) before anything is built or trained."""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from ..models.sequence_model import mixer_pattern

__all__ = ["DEVICES", "PRESETS", "ConfigError", "TrainConfig", "load_config"]

DEVICES = ("cpu", "cuda", "auto")  # "auto": CUDA where there is a GPU, else the CPU


class ConfigError(ValueError):
    """A bad configuration, naming the field."""


@dataclass
class TrainConfig:
    """Everything a language-model training run depends on (the run directory holds a copy)."""

    # data
    data: str = "stdlib"  # "stdlib", a text file, directory, glob, .jsonl or a .bin of tokens
    tokenizer: str = "byte"  # "byte" or "bpe:<vocab>" (trained on the training split)
    context: int = 256  # tokens per training window
    batch_size: int = 16  # windows per optimizer step (before gradient accumulation)
    stateful: bool = False  # each batch row a stream, the state carried across windows (truncated BPTT)
    # model: SequenceModel as a causal LM
    mixer: str = "gla"  # a registered layer, or a comma-separated pattern ("hawk,hawk,attention")
    n_layers: int = 4
    params: int | None = 1_000_000  # parameter budget (size_model); ignored when d_model is set
    d_model: int | None = None
    mixer_kwargs: dict = field(default_factory=dict)  # for a pattern: {layer name: {keyword: value}}
    # optimisation
    steps: int = 1000  # optimizer steps
    lr: float = 3e-3  # peak learning rate, after `warmup` linear steps, then cosine down to min_lr
    min_lr: float = 3e-4
    warmup: int = 100
    weight_decay: float = 0.1  # on matrices (embedding, projections), not on norms and biases
    grad_clip: float = 1.0  # global norm; 0 for none
    grad_accum: int = 1  # micro-batches per optimizer step
    bf16: bool = False  # autocast to bfloat16 (states and accumulation stay float32)
    seed: int = 0
    threads: int = 0  # torch threads (0: torch's default)
    device: str = "cpu"  # "cpu", "cuda" (under torchrun: each process the GPU of its LOCAL_RANK) or "auto"
    # evaluation, logging, checkpoints
    eval_every: int = 200  # steps between validation passes
    eval_batches: int = 16  # validation windows per pass: eval_batches × batch_size, fixed per run
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 2  # the last K checkpoints are kept

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """A :class:`ConfigError` naming the first bad field."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), f.type
            if kind in ("int", "int | None"):
                ok = (value is None and "None" in kind) or (isinstance(value, int) and not isinstance(value, bool))
            elif kind == "float":
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            elif kind == "bool":
                ok = isinstance(value, bool)
            elif kind == "str":
                ok = isinstance(value, str) and bool(value)
            else:
                ok = isinstance(value, dict)
            if not ok:
                raise ConfigError(f"`{f.name}` must be {kind.replace(' | None', ' or none')}, got {value!r}")
        positive = ("context", "batch_size", "n_layers", "steps", "grad_accum", "eval_every", "eval_batches",
                    "log_every", "checkpoint_every", "keep_checkpoints")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        for name in ("params", "d_model"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if self.params is None and self.d_model is None:
            raise ConfigError("give `params` (a parameter budget) or `d_model`")
        if not 0 < self.min_lr <= self.lr:
            raise ConfigError(f"need 0 < `min_lr` <= `lr`, got min_lr={self.min_lr}, lr={self.lr}")
        for name in ("warmup", "threads", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"`{name}` must be >= 0, got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"`{name}` must be >= 0, got {getattr(self, name)}")
        if self.device not in DEVICES:
            raise ConfigError(f"`device` must be one of {', '.join(DEVICES)}, got {self.device!r}")
        try:
            mixer_pattern(self.mixer)
        except ValueError as e:
            raise ConfigError(f"`mixer`: {e}") from None
        windows = [kw.get("window") for kw in (self.mixer_kwargs, *self.mixer_kwargs.values()) if isinstance(kw, dict)]
        for window in windows:
            if isinstance(window, int) and window > self.context:
                raise ConfigError(f"`mixer_kwargs` window={window} is larger than `context`={self.context}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# A first LM run: a ~1M-parameter GLA on the standard library's source, bytes as tokens
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(mixer="gla", params=1_000_000, n_layers=4, context=128, batch_size=16, steps=1500, lr=3e-3,
                 min_lr=3e-4, warmup=100, eval_every=250, eval_batches=16, checkpoint_every=250),
    # rnnzoo bench --suite lm: every mixer at ~1M parameters on the same tokens of stdlib
    "lm": dict(params=1_000_000, n_layers=4, context=256, batch_size=16, steps=600, lr=3e-3, min_lr=3e-4,
               warmup=60, eval_every=100, eval_batches=8, checkpoint_every=100, keep_checkpoints=1),
}  # fmt: skip


def _parse_value(text: str) -> Any:
    """A ``key=value`` override's value: a Python literal (number, bool, None, dict, list) or else a string."""
    for candidate in (text, text.capitalize()):
        try:
            return ast.literal_eval(candidate)
        except (ValueError, SyntaxError):
            continue
    return text


def load_config(
    path: str | Path | None = None, preset: str | None = None, overrides: list[str] = (), base: dict | None = None
) -> TrainConfig:
    """The defaults (or ``base``, a saved run's configuration), then the preset, then the TOML file's fields,
    then ``key=value`` overrides."""
    values: dict[str, Any] = dict(base or {})
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"`preset` must be one of {sorted(PRESETS)}, got {preset!r}")
        values.update(PRESETS[preset])
    if path is not None:
        try:
            values.update(tomllib.loads(Path(path).read_text()))
        except OSError as e:
            raise ConfigError(f"config {path}: cannot read it ({e.strerror or e})") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config {path}: not valid TOML ({e})") from None
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"an override must be key=value, got {item!r}")
        values[key.strip()] = _parse_value(text.strip())
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(map(repr, unknown))}; fields: {', '.join(sorted(known))}")
    ints = {"params", "d_model"}
    for key in ints & set(values):  # 1e6 in TOML or on the command line
        if isinstance(values[key], float) and values[key].is_integer():
            values[key] = int(values[key])
    return TrainConfig(**values)
