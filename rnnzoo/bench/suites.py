"""What ``rnnzoo bench`` runs: suites of tasks × models × seeds × budgets, built in or read from a file.

A :class:`Suite` expands to :class:`RunConfig` s, one per (task, model, budget, seed); a run's
:meth:`RunConfig.key` hashes everything that affects its result, so finished runs are found again.

Built-in suites (:data:`SUITES`):

* ``quick`` (the default): parity, train lengths 3–40, tested up to 256, with ``lstm``, ``mamba``, ``mamba``
  with ``negative_eigenvalues=True`` and ``attention`` at equal parameter count: which models extrapolate
  (Grazzi et al. 2024, "Unlocking State-Tracking in Linear RNNs Through Negative Eigenvalues").
* ``full``: every task × every registered tier-1 model, at a smaller size, each run the same number of steps.

A suite file (TOML, or YAML if PyYAML is installed) has the same fields::

    name = "my suite"
    seeds = 3                    # or a list, e.g. [0, 7]

    [train]                      # optional: TrainSettings fields
    batch_size = 64
    lr = 1e-3

    [[budgets]]                  # optional, repeatable: each budget runs the whole grid
    params = 50_000              # parameter count every model is sized to, within 3% (see size_model)
    # match = "state"            # or: every model sized to a recurrent state of `state` floats
    steps = 2000                 # and/or
    seconds = 60

    [[tasks]]
    name = "parity"              # any of rnnzoo.tasks.list_tasks()
    test_lengths = [40, 128]     # any config field of that task

    [[models]]
    name = "mamba"               # a registered layer (rnnzoo list)
    label = "mamba (neg)"        # optional; default: name and kwargs
    kwargs = { negative_eigenvalues = true }
    n_layers = 2                 # optional: n_layers, mlp, mlp_ratio, d_model (fixed size instead of params)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..models import SequenceModel, size_model
from ..models.sequence_model import MATCHES, MLP_KINDS
from ..registry import list_models, model_info
from ..tasks import list_tasks, make_task
from .provenance import code_hash

__all__ = [
    "Budget", "ModelSpec", "RunConfig", "Suite", "SuiteError", "TaskSpec", "TrainSettings", "SUITES", "tier_models",
    "full_suite", "load_suite", "quick_suite", "resolve_suite", "suite_from_dict",
]  # fmt: skip

# the engines in the order of MODELS.md's tables (engine 1 to engine 5)
ENGINE_ORDER = (
    "nonlinear", "newton", "linear_scan", "ssm_convolution", "selective_scan", "gated_linear_attention", "mlstm",
    "delta_rule", "attention", "softmax_scan",
)  # fmt: skip


def tier_models(tier: int = 1) -> tuple[str, ...]:
    """The registered models of a tier (MODELS.md; ``register(..., tier=)``), grouped by engine as its tables."""
    rank = {engine: i for i, engine in enumerate(ENGINE_ORDER)}
    models = sorted((m for m in list_models() if m.tier == tier), key=lambda m: rank.get(m.engine, len(rank)))
    return tuple(m.name for m in models)


class SuiteError(ValueError):
    """A suite that cannot run: a bad file, field, task or model name; the message lists the valid choices."""


INITIAL_STATES = ("zero", "noise", "carried")  # TrainSettings.initial_state


@dataclass(frozen=True)
class TrainSettings:
    """How every run of a suite trains and is evaluated.

    AdamW (``lr``, ``weight_decay``, betas (0.9, 0.999)), gradients clipped to norm ``grad_clip``, a linear
    warm-up over ``warmup_steps`` then a constant rate, one batch of ``batch_size`` sequences per step at a
    length drawn uniformly from the task's training range. Every ``eval_every`` steps the mean accuracy of the
    last ``eval_every`` training batches (fresh samples, so an unbiased estimate at training lengths) is
    checked: ``solved_evals`` checks in a row at or above ``solved_accuracy`` stop the run early. After
    training, ``eval_batch_size`` sequences (from ``eval_seed``) are scored at each test length, and at each of
    ``train_eval_lengths`` lengths where the task is not trivial (the task's ``train_score_lengths``). Models
    have ``n_layers`` blocks with ``mlp`` MLPs of ``mlp_ratio`` (a :class:`ModelSpec` may set its own).

    ``threads``: torch threads per run (part of the cache key: results on other thread counts differ in the
    last bits). ``initial_state``: the state each training batch starts from: ``"zero"``; ``"noise"``, every
    floating tensor of the zero state plus N(0, ``state_noise``²); or ``"carried"``, the previous batch's final
    state, detached (state passing; Buitrago Ruiz & Gu 2025, "Understanding and Improving Length
    Generalization in Recurrent Models"). Evaluation always starts from zero.
    """

    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0
    eval_every: int = 25
    solved_accuracy: float = 0.999
    solved_evals: int = 3
    eval_batch_size: int = 128
    train_eval_lengths: int = 4
    eval_seed: int = 1234
    n_layers: int = 2
    mlp: str = "swiglu"
    mlp_ratio: float = 4.0
    threads: int = 1
    initial_state: str = "zero"
    state_noise: float = 1.0

    def __post_init__(self):
        if self.initial_state not in INITIAL_STATES:
            raise SuiteError(f"`initial_state` must be one of {', '.join(INITIAL_STATES)}, got {self.initial_state!r}")


@dataclass(frozen=True)
class Budget:
    """A run's size and length: a step limit (and optionally a time limit in seconds, a safety cap), and how
    models are sized: ``match="params"``, every model to ``params`` parameters (within 3%, by ``size_model``), or
    ``match="state"``, every model to a recurrent state of ``state`` floats (its parameters then follow; the
    control of Zoology, Arora et al. 2024)."""

    params: int = 40_000
    steps: int | None = 1000
    seconds: float | None = None
    match: str = "params"
    state: int | None = None

    def __post_init__(self):
        if self.match not in MATCHES:
            raise SuiteError(f"budget: `match` must be one of {', '.join(MATCHES)}, got {self.match!r}")
        if self.match == "state" and (not isinstance(self.state, int) or isinstance(self.state, bool) or self.state < 1):
            raise SuiteError(f"budget: match = \"state\" needs `state`, a number of floats >= 1, got {self.state!r}")


@dataclass(frozen=True)
class TaskSpec:
    """A task by name with config fields (``{}``: its defaults)."""

    name: str
    config: dict = field(default_factory=dict)

    def make(self):
        return make_task(self.name, **self.config)


@dataclass(frozen=True)
class ModelSpec:
    """A registered layer by name with its keywords, and the model around it (``None``: the suite's
    :class:`TrainSettings` default; ``d_model`` fixes the size instead of the budget's ``params``)."""

    name: str
    kwargs: dict = field(default_factory=dict)
    label: str | None = None
    n_layers: int | None = None
    mlp: str | None = None
    mlp_ratio: float | None = None
    d_model: int | None = None

    @property
    def display(self) -> str:
        """The label, or the name with its kwargs and model settings (``mamba negative_eigenvalues=True``)."""
        if self.label:
            return self.label
        settings = {k: getattr(self, k) for k in ("n_layers", "mlp", "mlp_ratio", "d_model") if getattr(self, k)}
        return " ".join([self.name, *(f"{k}={v}" for k, v in [*sorted(self.kwargs.items()), *settings.items()])])


@dataclass(frozen=True)
class RunConfig:
    """One training run: a task, a model, a budget, a seed and the suite's settings."""

    task: TaskSpec
    model: ModelSpec
    budget: Budget
    seed: int
    train: TrainSettings

    def model_config(self, task) -> dict:
        """``SequenceModel`` keywords for ``task``, sized to the budget (``d_model`` and the MLP width, or
        ``d_model`` alone to match a state size; attention's state counted at the longest training length)
        unless the model fixes ``d_model``."""
        config = dict(
            vocab_size=task.vocab_size,
            num_classes=task.num_classes,
            mixer=self.model.name,
            mixer_kwargs=dict(self.model.kwargs),
            n_layers=self.model.n_layers or self.train.n_layers,
            mlp=self.model.mlp or self.train.mlp,
            mlp_ratio=self.model.mlp_ratio or self.train.mlp_ratio,
        )
        if self.model.d_model:
            return {**config, "d_model": self.model.d_model}
        if self.budget.match == "state":
            return {**config, **size_model(self.budget.state, match="state", length=task.train_lengths[1], **config)}
        return {**config, **size_model(self.budget.params, **config)}

    def describe(self) -> dict:
        """Everything the result depends on, as JSON-able data: the task's full config (defaults included),
        the model, budget, seed, settings, the rnnzoo version and a hash of the source of every rnnzoo module
        the run uses (:func:`~rnnzoo.bench.provenance.code_hash`), so that an edited layer or engine is
        trained again instead of answered from the cache."""
        task = self.task.make()
        task_config = dataclasses.asdict(task) if dataclasses.is_dataclass(task) else dict(self.task.config)
        return {
            "task": {"name": self.task.name, "config": task_config},
            "model": dataclasses.asdict(self.model),
            "budget": dataclasses.asdict(self.budget),
            "seed": self.seed,
            "train": dataclasses.asdict(self.train),
            "rnnzoo": __version__,
            "code": code_hash(model_info(self.model.name).cls.__module__, type(task).__module__),
        }

    def key(self) -> str:
        """A short hash of :meth:`describe`: equal keys, equal results (up to time budgets and machine)."""
        text = json.dumps(self.describe(), sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Suite:
    """Tasks × models × budgets × seeds, with one :class:`TrainSettings`; ``notes`` says what was skipped."""

    name: str
    tasks: tuple[TaskSpec, ...]
    models: tuple[ModelSpec, ...]
    seeds: tuple[int, ...] = (0,)
    budgets: tuple[Budget, ...] = (Budget(),)
    train: TrainSettings = TrainSettings()
    notes: tuple[str, ...] = ()

    def runs(self) -> list[RunConfig]:
        """Every run, task by task, then model, budget and seed."""
        return [
            RunConfig(task, model, budget, seed, self.train)
            for task in self.tasks for model in self.models for budget in self.budgets for seed in self.seeds
        ]  # fmt: skip

    def with_seeds(self, n: int) -> Suite:
        """The suite with seeds ``0 .. n-1``."""
        return dataclasses.replace(self, seeds=tuple(range(n)))

    def with_threads(self, n: int) -> Suite:
        """The suite with ``n`` torch threads per run."""
        return dataclasses.replace(self, train=dataclasses.replace(self.train, threads=n))


# ----------------------------------------------------------------------------
# built-in suites


def _registered(specs: list[ModelSpec]) -> tuple[tuple[ModelSpec, ...], tuple[str, ...]]:
    """The specs whose layer is registered, and a note naming the others."""
    names = {m.name for m in list_models()}
    missing = sorted({s.name for s in specs if s.name not in names})
    notes = (f"skipped (not registered): {', '.join(missing)}",) if missing else ()
    return tuple(s for s in specs if s.name in names), notes


QUICK_MODELS = (
    ModelSpec("lstm"),
    ModelSpec("mamba"),
    ModelSpec("mamba", {"negative_eigenvalues": True}, label="mamba (neg. eig.)"),
    ModelSpec("attention"),
)


def quick_suite() -> Suite:
    """Parity (dense labels, train lengths 3–40, test up to 256) with LSTM, Mamba, Mamba with negative
    eigenvalues and softmax attention at ~40k parameters; whichever are registered. Expected, as published:
    LSTM and Mamba with negative eigenvalues solve it and extrapolate, Mamba does not learn it, attention
    fits the training lengths but does not extrapolate."""
    models, notes = _registered(list(QUICK_MODELS))
    return Suite(
        name="quick",
        tasks=(TaskSpec("parity"),),
        models=models,
        budgets=(Budget(params=40_000, steps=1000),),
        train=TrainSettings(),
        notes=notes,
    )


FULL_STEPS = 1000
FULL_SAFETY_SECONDS = 300


def full_suite() -> Suite:
    """Every task (defaults) × every registered tier-1 model (defaults) at ~30k parameters, each run
    ``FULL_STEPS`` training steps (or until solved), 64 evaluation sequences per length. The budget is in steps,
    so every model gets the same training whatever the machine's load; ``FULL_SAFETY_SECONDS`` only caps a run
    that is far slower than the rest (its result then says ``stopped: time``)."""
    models, notes = _registered([ModelSpec(name) for name in tier_models(1)])
    return Suite(
        name="full",
        tasks=tuple(TaskSpec(name) for name in list_tasks()),
        models=models,
        budgets=(Budget(params=30_000, steps=FULL_STEPS, seconds=FULL_SAFETY_SECONDS),),
        train=TrainSettings(eval_batch_size=64),
        notes=notes,
    )


SUITES: dict[str, Callable[[], Suite]] = {"quick": quick_suite, "full": full_suite}


# ----------------------------------------------------------------------------
# suite files


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _check_keys(where: str, data: Any, valid: list[str], required: tuple[str, ...] = ()) -> dict:
    if not isinstance(data, dict):
        raise SuiteError(f"{where} must be a table of {', '.join(valid)}, got {type(data).__name__}")
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise SuiteError(f"{where}: unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(valid)}")
    missing = [k for k in required if k not in data]
    if missing:
        raise SuiteError(f"{where}: missing field(s) {', '.join(missing)}")
    return data


def _typed(where: str, name: str, value: Any, kind: type | tuple[type, ...], positive: bool = True) -> Any:
    """``value`` if it is a ``kind`` (and > 0 unless ``positive=False``, >= 0 then), else a SuiteError."""
    numeric = kind in (int, float, (int, float))
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok and numeric:
        ok = value > 0 if positive else value >= 0
    if not ok:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        what = " or ".join(k.__name__ for k in kinds) + (" > 0" if positive and numeric else " >= 0" if numeric else "")
        raise SuiteError(f"{where}: `{name}` must be {what}, got {value!r}")
    return value


_TRAIN_TYPES = {
    "batch_size": int, "lr": (int, float), "weight_decay": (int, float), "warmup_steps": int,
    "grad_clip": (int, float), "eval_every": int, "solved_accuracy": (int, float), "solved_evals": int,
    "eval_batch_size": int, "train_eval_lengths": int, "eval_seed": int, "n_layers": int, "mlp": str,
    "mlp_ratio": (int, float), "threads": int, "initial_state": str, "state_noise": (int, float),
}  # fmt: skip
_NON_NEGATIVE = {"weight_decay", "warmup_steps", "eval_seed"}


def _train(data: Any) -> TrainSettings:
    data = _check_keys("[train]", data, _fields(TrainSettings))
    for k, v in data.items():
        _typed("[train]", k, v, _TRAIN_TYPES[k], positive=k not in _NON_NEGATIVE)
    if "mlp" in data and data["mlp"] not in MLP_KINDS:
        raise SuiteError(f"[train]: `mlp` must be one of {', '.join(MLP_KINDS)}, got {data['mlp']!r}")
    if not 0 < data.get("solved_accuracy", 0.5) <= 1:
        raise SuiteError(f"[train]: `solved_accuracy` must lie in (0, 1], got {data['solved_accuracy']!r}")
    try:
        return TrainSettings(**data)
    except SuiteError as e:
        raise SuiteError(f"[train]: {e}") from None


def _budget(i: int, data: Any, default: Budget) -> Budget:
    where = f"budgets[{i}]"
    data = _check_keys(where, data, _fields(Budget))
    if "params" in data:
        _typed(where, "params", data["params"], int)
    if data.get("state") is not None:
        _typed(where, "state", data["state"], int)
    for k in ("steps", "seconds"):
        if data.get(k) is not None:
            _typed(where, k, data[k], int if k == "steps" else (int, float))
    try:
        budget = dataclasses.replace(default, **data)
    except SuiteError as e:
        raise SuiteError(f"{where}: {str(e).removeprefix('budget: ')}") from None
    if budget.steps is None and budget.seconds is None:
        raise SuiteError(f"{where}: give `steps` or `seconds` (or both): a run needs a limit")
    return budget


def _task(i: int, data: Any) -> TaskSpec:
    where = f"tasks[{i}]"
    if not isinstance(data, dict) or "name" not in data:
        raise SuiteError(f"{where} must be a table with `name` (one of {', '.join(list_tasks())}), got {data!r}")
    name, config = data["name"], {k: v for k, v in data.items() if k != "name"}
    if name not in list_tasks():
        raise SuiteError(f"{where}: unknown task {name!r}; valid tasks: {', '.join(list_tasks())}")
    spec = TaskSpec(name, config)
    try:
        spec.make()
    except (TypeError, ValueError) as e:
        raise SuiteError(f"{where} ({name}): {e}") from None
    return spec


def _model(i: int, data: Any) -> ModelSpec:
    where = f"models[{i}]"
    valid = [m.name for m in list_models()]
    data = _check_keys(where, data, _fields(ModelSpec), required=("name",))
    if data["name"] not in valid:
        raise SuiteError(f"{where}: unknown model {data['name']!r}; registered models: {', '.join(valid)}")
    if not isinstance(data.get("kwargs", {}), dict):
        raise SuiteError(f"{where}: `kwargs` must be a table of the layer's keywords, got {data['kwargs']!r}")
    for k, kind in (("label", str), ("n_layers", int), ("mlp", str), ("mlp_ratio", (int, float)), ("d_model", int)):
        if data.get(k) is not None:
            _typed(where, k, data[k], kind)
    return ModelSpec(**data)


def _check_builds(suite: Suite) -> None:
    """Each model builds for each task at the first budget (bad kwargs fail here, not an hour into a run)."""
    for model in suite.models:
        run = RunConfig(suite.tasks[0], model, suite.budgets[0], suite.seeds[0], suite.train)
        try:
            config = run.model_config(run.task.make())
            if model.d_model:
                SequenceModel(**config)
        except (TypeError, ValueError) as e:
            raise SuiteError(f"model {model.display!r} does not build: {e}") from None


def suite_from_dict(data: Any, name: str = "custom") -> Suite:
    """A validated :class:`Suite` from parsed suite-file data (see the module docstring)."""
    data = _check_keys("suite", data, ["name", "seeds", "train", "budgets", "tasks", "models"], ("tasks", "models"))
    for key in ("tasks", "models"):
        if not isinstance(data[key], list) or not data[key]:
            raise SuiteError(f"suite: `{key}` must be a non-empty list of tables ([[{key}]] in TOML)")
    seeds = data.get("seeds", 1)
    if isinstance(seeds, list):
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
            raise SuiteError(f"suite: `seeds` must be a count or a non-empty list of ints >= 0, got {seeds!r}")
        seeds = tuple(seeds)
    else:
        seeds = tuple(range(_typed("suite", "seeds", seeds, int)))
    train = _train(data.get("train", {}))
    budgets = data.get("budgets", [{}])
    if not isinstance(budgets, list) or not budgets:
        raise SuiteError("suite: `budgets` must be a non-empty list of tables ([[budgets]] in TOML)")
    suite = Suite(
        name=str(data.get("name", name)),
        tasks=tuple(_task(i, t) for i, t in enumerate(data["tasks"])),
        models=tuple(_model(i, m) for i, m in enumerate(data["models"])),
        seeds=seeds,
        budgets=tuple(_budget(i, b, Budget()) for i, b in enumerate(budgets)),
        train=train,
    )
    _check_builds(suite)
    return suite


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file: ``.toml`` (stdlib ``tomllib``) or ``.yaml`` / ``.yml`` (needs PyYAML)."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file {str(path)!r} not found (built-in suites: {', '.join(SUITES)})")
    text = path.read_text()
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise SuiteError(f"{path}: not valid TOML: {e}") from None
    elif path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise SuiteError(f"{path}: YAML suites need PyYAML (pip install pyyaml); or write it as TOML") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SuiteError(f"{path}: not valid YAML: {e}") from None
    else:
        raise SuiteError(f"{path}: a suite file must end in .toml, .yaml or .yml")
    return suite_from_dict(data, name=path.stem)


def resolve_suite(name_or_path: str) -> Suite:
    """A built-in suite by name (``quick``, ``full``) or a suite file."""
    if name_or_path in SUITES:
        return SUITES[name_or_path]()
    if not name_or_path.endswith((".toml", ".yaml", ".yml")):
        raise SuiteError(
            f"unknown suite {name_or_path!r}: give a built-in suite ({', '.join(SUITES)}) or a .toml/.yaml file"
        )
    return load_suite(name_or_path)
