"""``rnnzoo speed``: time forward and forward+backward of layers, the engine and PyTorch baselines.

Targets, each in one or more modes:

* every registered layer by name: its parallel forms (e.g. ``scan``) and ``recurrent`` (the reference loop);
* ``linear_scan``: engine 2 on a real gated recurrence (``a = sigmoid(logits)``, ``b`` random, both leaves
  requiring grad), in its parallel form ``scan`` and its reference loop ``recurrent``;
* baselines, mode ``torch``: ``cumsum`` (``torch.cumsum`` along time over ``(B, T, d)``), and ``nn.GRU`` /
  ``nn.LSTM`` (batch_first, hidden size ``d``).

Forward-only runs under ``torch.no_grad()``; forward+backward calls ``y.backward(g)`` with a fixed random ``g``.
Each row is compared with one other row of the same shape and dtype timed in the same run (:func:`comparison`):
a ``recurrent`` row with its target's parallel form (the speed-up), ``linear_scan scan`` with ``cumsum``, and
``nn.GRU`` / ``nn.LSTM`` with the first layer's parallel form. ``ratio = time of the row / time of the vs row``.
:data:`BARS` are the issue's required ratios; a row matching one gets a pass/fail mark.

>>> from rnnzoo.bench import speed
>>> records = speed.run(speed.make_specs(["mingru", "cumsum"], (2, 64, 8)), budget_s=0)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from .. import __version__
from ..ops import linear_scan, linear_scan_reference
from ..registry import create, list_models, model_info

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "BARS", "DTYPES", "Bar", "Record", "Spec", "compare", "comparison", "header", "make_specs", "measure",
    "quick_specs", "report", "run", "target_modes", "target_names", "time_fn", "write_json",
]  # fmt: skip

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
ENGINE = "linear_scan"
BASELINES = ("cumsum", "nn.GRU", "nn.LSTM")
BASELINE_MODE = "torch"
QUICK_LAYER_SHAPE = (8, 1024, 64)  # (B, T, d) at which --quick times every registered layer


@dataclass(frozen=True)
class Spec:
    """One row to time: a target in one mode at shape ``(batch, length, d_model)`` and a dtype."""

    target: str
    mode: str
    batch: int
    length: int
    d_model: int
    dtype: str = "float32"

    @property
    def config(self) -> tuple[int, int, int, str]:
        """What two rows must share to be compared."""
        return self.batch, self.length, self.d_model, self.dtype


@dataclass(frozen=True)
class Record:
    """A timed row (times in milliseconds: median and min over ``*_repeats`` runs) and its comparison."""

    target: str
    mode: str
    batch: int
    length: int
    d_model: int
    dtype: str
    threads: int
    device: str
    fwd_ms: float
    fwd_min_ms: float
    fwd_repeats: int
    fwd_bwd_ms: float | None = None  # None with forward_only
    fwd_bwd_min_ms: float | None = None
    fwd_bwd_repeats: int | None = None
    vs_target: str | None = None  # the row compared with
    vs_mode: str | None = None
    ratio_fwd: float | None = None  # fwd_ms / the vs row's fwd_ms
    ratio_fwd_bwd: float | None = None  # fwd_bwd_ms / the vs row's fwd_bwd_ms
    bar: str | None = None  # the required ratio, e.g. "<= 2", if a bar applies
    bar_pass: bool | None = None

    @property
    def spec(self) -> Spec:
        return Spec(self.target, self.mode, self.batch, self.length, self.d_model, self.dtype)


@dataclass(frozen=True)
class Bar:
    """A required forward+backward ratio ``target mode / vs_target vs_mode`` at one shape and setting."""

    target: str
    mode: str
    vs_target: str
    vs_mode: str
    shape: tuple[int, int, int]
    op: str  # "<=" or ">="
    value: float
    dtype: str = "float32"
    threads: int = 2
    device: str = "cpu"

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"

    def applies(self, record: Record, vs: Spec) -> bool:
        """Whether ``record``, compared with ``vs``, is the measurement this bar is about."""
        setting = (*self.shape, self.dtype, self.threads, self.device)
        return (
            (record.target, record.mode, vs.target, vs.mode) == (self.target, self.mode, self.vs_target, self.vs_mode)
            and (*record.spec.config, record.threads, record.device) == setting
        )

    def passes(self, ratio: float) -> bool:
        return ratio <= self.value if self.op == "<=" else ratio >= self.value


BARS = (
    # the engine's parallel form within 2x of torch.cumsum, forward+backward
    Bar(ENGINE, "scan", "cumsum", BASELINE_MODE, (8, 4096, 256), "<=", 2),
    Bar(ENGINE, "scan", "cumsum", BASELINE_MODE, (1, 65536, 64), "<=", 2),
    # minGRU at least 4x faster than nn.GRU, forward+backward
    Bar("nn.GRU", BASELINE_MODE, "mingru", "scan", (8, 512, 256), ">=", 4),
)


# ----------------------------------------------------------------------------
# targets and specs


def target_names() -> list[str]:
    """Every timeable target: the registered layers, the engine, the baselines."""
    return [*(m.name for m in list_models()), ENGINE, *BASELINES]


def target_modes(target: str) -> tuple[str, ...]:
    """A target's timeable modes, parallel forms first (``auto`` is left out: it is one of them)."""
    if target == ENGINE:
        return ("scan", "recurrent")
    if target in BASELINES:
        return (BASELINE_MODE,)
    if target not in {m.name for m in list_models()}:
        raise ValueError(f"unknown model {target!r}; valid names: {', '.join(target_names())}")
    return (*model_info(target).cls.parallel_modes, "recurrent")


def make_specs(
    targets: Iterable[str], shape: tuple[int, int, int], dtype: str = "float32", modes: Sequence[str] | None = None
) -> list[Spec]:
    """Specs for each target in each of ``modes`` it offers (every mode if ``modes`` is empty or None).

    Single-mode baselines always run. A ``ValueError`` naming the valid choices is raised for an unknown
    target, dtype or mode, or a target offering none of ``modes``.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid dtypes: {', '.join(DTYPES)}")
    offered = {target: target_modes(target) for target in targets}
    for mode in modes or ():
        if not any(mode in offers for offers in offered.values()):
            valid = sorted({m for offers in offered.values() for m in offers})
            raise ValueError(f"unknown mode {mode!r} for {', '.join(offered)}; valid modes: {', '.join(valid)}")
    specs = []
    for target, offers in offered.items():
        chosen = [m for m in offers if not modes or len(offers) == 1 or m in modes]
        if not chosen:
            raise ValueError(f"{target} has none of the modes {', '.join(modes)}; its modes: {', '.join(offers)}")
        specs += [Spec(target, mode, *shape, dtype) for mode in chosen]
    return specs


def quick_specs() -> list[Spec]:
    """The ``--quick`` suite: every bar's two targets at its shape, then every registered layer at a modest size."""
    specs = []
    for bar in BARS:
        specs += [s for s in make_specs([bar.target, bar.vs_target], bar.shape) if s not in specs]
    return specs + make_specs([m.name for m in list_models()], QUICK_LAYER_SHAPE)


def comparison(spec: Spec, specs: Sequence[Spec]) -> Spec | None:
    """The row ``spec`` is compared with: same shape and dtype, first match in ``specs`` (None if none)."""
    same = [s for s in specs if s.config == spec.config and s != spec]
    if spec.mode == "recurrent":  # the target's own parallel form
        candidates = [s for s in same if s.target == spec.target]
    elif spec.target == ENGINE:
        candidates = [s for s in same if s.target == "cumsum"]
    elif spec.target in ("nn.GRU", "nn.LSTM"):
        candidates = [s for s in same if s.target not in (ENGINE, *BASELINES) and s.mode != "recurrent"]
    else:
        candidates = []
    return candidates[0] if candidates else None


# ----------------------------------------------------------------------------
# workloads: a forward closure and the leaf tensors that receive gradients, one function per kind of target

Workload = tuple[Callable[[], Tensor], list[Tensor]]


def _leaf(spec: Spec, device: torch.device) -> Tensor:
    shape = (spec.batch, spec.length, spec.d_model)
    return torch.randn(shape, device=device, dtype=DTYPES[spec.dtype], requires_grad=True)


def _layer_workload(spec: Spec, device: torch.device) -> Workload:
    layer = create(spec.target, spec.d_model).to(device, DTYPES[spec.dtype])
    x = _leaf(spec, device)
    return (lambda: layer(x, mode=spec.mode)[0]), [x, *layer.parameters()]


def _engine_workload(spec: Spec, device: torch.device) -> Workload:
    logits = _leaf(spec, device).detach()
    a, b = torch.sigmoid(logits).requires_grad_(), _leaf(spec, device)
    scan = linear_scan if spec.mode == "scan" else linear_scan_reference
    return (lambda: scan(a, b)[0]), [a, b]


def _cumsum_workload(spec: Spec, device: torch.device) -> Workload:
    x = _leaf(spec, device)
    return (lambda: torch.cumsum(x, dim=1)), [x]


def _torch_rnn_workload(spec: Spec, device: torch.device) -> Workload:
    rnn_cls = {"nn.GRU": nn.GRU, "nn.LSTM": nn.LSTM}[spec.target]
    rnn = rnn_cls(spec.d_model, spec.d_model, batch_first=True).to(device, DTYPES[spec.dtype])
    x = _leaf(spec, device)
    return (lambda: rnn(x)[0]), [x, *rnn.parameters()]


def _workload(spec: Spec, device: torch.device) -> Workload:
    if spec.target == ENGINE:
        return _engine_workload(spec, device)
    if spec.target == "cumsum":
        return _cumsum_workload(spec, device)
    if spec.target in BASELINES:
        return _torch_rnn_workload(spec, device)
    return _layer_workload(spec, device)


# ----------------------------------------------------------------------------
# timing


def time_fn(
    fn: Callable[[], object], *, repeats: int = 3, budget_s: float = 0.3, warmup: int = 1, device: torch.device
) -> tuple[float, float, int]:
    """Time ``fn()``: ``warmup`` untimed calls, then calls until at least ``repeats`` and ``budget_s`` seconds.

    Slow functions thus get ``repeats`` calls and fast ones many. Returns (median ms, min ms, calls).
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, min(times) * 1e3, len(times)


def measure(
    spec: Spec,
    *,
    threads: int,
    device: torch.device,
    repeats: int = 3,
    budget_s: float = 0.3,
    forward_only: bool = False,
) -> Record:
    """Time one spec forward-only and (unless ``forward_only``) forward+backward, on the current thread count."""
    torch.manual_seed(0)
    forward, leaves = _workload(spec, device)
    with torch.no_grad():
        grad = torch.randn_like(forward())

    def forward_no_grad() -> None:
        with torch.no_grad():
            forward()

    def forward_backward() -> None:
        for leaf in leaves:
            leaf.grad = None
        forward().backward(grad)

    timing = dict(repeats=repeats, budget_s=budget_s, device=device)
    fwd = time_fn(forward_no_grad, **timing)
    bwd = (None, None, None) if forward_only else time_fn(forward_backward, **timing)
    return Record(
        spec.target, spec.mode, spec.batch, spec.length, spec.d_model, spec.dtype, threads, str(device), *fwd, *bwd
    )


def _compared(record: Record, vs: Record) -> Record:
    """``record`` with its ratios to ``vs`` and the status of the bar about them, if any."""
    ratio_fwd_bwd = None if record.fwd_bwd_ms is None else record.fwd_bwd_ms / vs.fwd_bwd_ms
    bar = next((b for b in BARS if b.applies(record, vs.spec)), None) if ratio_fwd_bwd is not None else None
    return dataclasses.replace(
        record,
        vs_target=vs.target,
        vs_mode=vs.mode,
        ratio_fwd=record.fwd_ms / vs.fwd_ms,
        ratio_fwd_bwd=ratio_fwd_bwd,
        bar=None if bar is None else str(bar),
        bar_pass=None if bar is None else bar.passes(ratio_fwd_bwd),
    )


def compare(records: Sequence[Record]) -> list[Record]:
    """The records with their ratios to the row :func:`comparison` picks, and the status of any bar about them."""
    by_spec = {r.spec: r for r in records}
    compared = [(r, comparison(r.spec, list(by_spec))) for r in records]
    return [r if vs is None else _compared(r, by_spec[vs]) for r, vs in compared]


def run(
    specs: Sequence[Spec],
    *,
    threads: int = 2,
    device: torch.device | str = "cpu",
    repeats: int = 3,
    budget_s: float = 0.3,
    forward_only: bool = False,
    on_spec: Callable[[Spec], None] | None = None,
) -> list[Record]:
    """Time every spec with ``threads`` threads (restored afterwards), then compare rows side by side.

    ``on_spec`` is called before each spec is timed (progress display).
    """
    settings = dict(threads=threads, device=torch.device(device), repeats=repeats, budget_s=budget_s)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        records = []
        for spec in specs:
            if on_spec is not None:
                on_spec(spec)
            records.append(measure(spec, forward_only=forward_only, **settings))
    finally:
        torch.set_num_threads(previous)
    return compare(records)


# ----------------------------------------------------------------------------
# output


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(threads: int, device: torch.device | str, argv: Sequence[str] = ()) -> dict:
    """What the JSON says about the run: versions, machine, settings, date, and the load average when called
    (other processes competing for the cores make multi-threaded timings unreliable)."""
    device = torch.device(device)
    return {
        "argv": list(argv),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "loadavg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "rnnzoo": __version__,
        "threads": threads,
        "torch": torch.__version__,
    }


def write_json(path: str | Path, records: Sequence[Record], head: dict) -> None:
    """Write ``{"header": head, "records": [...]}`` with sorted keys."""
    data = {"header": head, "records": [dataclasses.asdict(r) for r in records]}
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _label(target: str, mode: str) -> str:
    return target if mode == BASELINE_MODE else f"{target} {mode}"


def report(records: Sequence[Record], console: Console, head: dict) -> None:
    """Print the records as a table (captioned with the run's ``head``), then one line per bar."""
    from rich.table import Table

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.2f}"

    table = Table(
        title="rnnzoo speed (median ms)",
        caption=(
            "ratio = this row's time / the vs row's (fwd+bwd; fwd if --forward-only)\n"
            f"torch {head['torch']} on {head['gpu'] or head['cpu']} ({head['cpu_count']} CPUs, "
            f"load average {head['loadavg_1min']} at start)"
        ),
    )
    for name in ("target", "mode", "(B, T, d)", "dtype", "threads", "fwd ms", "fwd+bwd ms", "vs", "ratio", "bar"):
        table.add_column(name, justify="right" if name in ("threads", "fwd ms", "fwd+bwd ms", "ratio") else "left")
    for r in records:
        ratio = r.ratio_fwd if r.ratio_fwd_bwd is None else r.ratio_fwd_bwd
        bar = "" if r.bar is None else f"{r.bar} " + ("[green]pass[/]" if r.bar_pass else "[red]FAIL[/]")
        table.add_row(
            r.target,
            r.mode,
            f"({r.batch}, {r.length}, {r.d_model})",
            r.dtype,
            str(r.threads),
            ms(r.fwd_ms),
            ms(r.fwd_bwd_ms),
            "" if r.vs_target is None else _label(r.vs_target, r.vs_mode),
            "" if ratio is None else f"{ratio:.2f}x",
            bar,
        )
    console.print(table)
    for r in records:
        if r.bar is not None:
            mark = "[green]pass[/]" if r.bar_pass else "[red]FAIL[/]"
            console.print(
                f"bar: {_label(r.target, r.mode)} / {_label(r.vs_target, r.vs_mode)} fwd+bwd at "
                f"({r.batch}, {r.length}, {r.d_model}): {r.ratio_fwd_bwd:.2f} (need {r.bar}) {mark}"
            )
