"""``rnnzoo speed``: time forward and forward+backward of layers, the engines and PyTorch baselines.

Targets, each in one or more modes, at a shape ``(B, T, d)``:

* every registered layer by name: its parallel forms (e.g. ``scan``) and ``recurrent`` (the reference loop);
* ``linear_scan``: engine 2 on a real gated recurrence (``a = sigmoid(logits)``, ``b`` random, both leaves
  requiring grad), in its parallel form ``scan`` and its reference loop ``recurrent``;
* ``gated_linear_attention``: engine 3 on GLA's workload, ``H = 4`` heads of ``d_k = d_v = d / 4``: q, k, v
  ``(B, H, T, d / 4)`` random, per-key ``log_alpha = logsigmoid(randn) / 16`` (GLA's gate), all leaves requiring
  grad; in its chunkwise form ``chunk`` and its reference loop ``recurrent``;
* baselines, mode ``torch``: ``cumsum`` (``torch.cumsum`` along time over ``(B, T, d)``), ``nn.GRU`` /
  ``nn.LSTM`` (batch_first, hidden size ``d``) and ``matmul`` (``x @ w``, ``x`` ``(B·T, d)``, ``w`` ``(d, d)``,
  timed forward only: at ``(1, 2048, 2048)`` a 2048² matmul, whose rate is the machine's).

Forward-only runs under ``torch.no_grad()``; forward+backward calls ``y.backward(g)`` with a fixed random ``g``.
Where a FLOP count applies (``gated_linear_attention chunk``: :func:`~rnnzoo.ops.gated_linear_attention.chunk_flops`,
three times that forward+backward; ``matmul``: ``2 B T d²``) a row reports its achieved GFLOP/s.

Step rows (mode ``step``, :func:`step_specs`) time a layer's ``step`` after a context of ``T`` tokens: the
parallel forward builds the state, then single-token steps feed it back (median ms per token); they report the
state's bytes after the context and after the timed steps.

The rows of one shape and dtype are timed together, round-robin, so that the machine's drift hits them alike.
Each row is compared with one other row timed in the same run (:func:`comparison`): a ``recurrent`` row with its
target's parallel form at the same shape (the speed-up), ``linear_scan scan`` with ``cumsum`` at the same shape,
the parallel form of a layer with a PyTorch counterpart (:data:`BASELINE_OF`: ``lstm``, ``gru``, ``slstm``,
``paragru``) with that ``nn.LSTM`` / ``nn.GRU`` at the same shape, ``nn.GRU`` / ``nn.LSTM`` with the first other
layer's parallel form at the same shape, ``gated_linear_attention chunk`` / ``delta_rule chunk`` with ``matmul``
(any shape: ratio of GFLOP/s), and a step row with the same layer's step row at the shortest
shorter context. ``ratio = time of the row / time of the vs row`` (GFLOP/s over GFLOP/s against ``matmul``).
:data:`HEADLINES` are the comparisons the benchmark documentation reports (its required values live there,
not here); a row that is one of them gets a line with its figures.

>>> from rnnzoo.bench import speed
>>> records = speed.run(speed.make_specs(["mingru", "cumsum"], (2, 64, 8)), budget_s=0)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import __version__
from ..ops import gated_linear_attention, gated_linear_attention_reference, linear_scan, linear_scan_reference
from ..layers.base import RecurrentState
from ..ops.delta_rule import delta_rule, delta_rule_flops, delta_rule_reference
from ..ops.gated_linear_attention import chunk_flops
from ..registry import create, list_models, model_info
from .files import write_json_atomic
from .machine import loadavg_1min

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "HEADLINES", "DTYPES", "Headline", "Record", "Spec", "compare", "comparison", "flop_count", "header", "make_specs",
    "measure", "measure_steps", "quick_specs", "report", "run", "state_bytes", "step_specs", "target_modes",
    "target_names", "time_fns", "write_json",
]  # fmt: skip

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
ENGINE = "linear_scan"
GLA = "gated_linear_attention"  # engine 3
CONSTANT_STATE_ENGINES = (GLA, "mlstm", "softmax_scan")  # a state of fixed size whatever the context
DELTA = "delta_rule"  # engine 4
HEAD_ENGINES = (GLA, DELTA)  # engines timed on (B, H, T, d / H) heads
GLA_HEADS = 4  # these engines' (B, T, d) workload runs H = 4 heads of d_k = d_v = d / 4
MATMUL = "matmul"
BASELINES = ("cumsum", "nn.GRU", "nn.LSTM", MATMUL)
BASELINE_MODE = "torch"
STEP = "step"  # the mode of step rows
COMPILED = "compiled"  # a layer under torch.compile(fullgraph=True) in its "auto" form: timed only when asked for
ANY = "*"  # a headline's target or vs target matching any
QUICK_LAYER_SHAPE = (8, 512, 64)  # (B, T, d) at which --quick times every registered layer (keeps --quick < 2 min)
STEP_CONTEXTS = (1024, 65536)  # the step headline's contexts (batch 1, d_model 64)
STEP_WARMUP = 10  # untimed steps before a step row's timed ones


@dataclass(frozen=True)
class Spec:
    """One row to time: a target in one mode at shape ``(batch, length, d_model)`` and a dtype (for a step row,
    ``length`` is the context)."""

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
    """A timed row (times in milliseconds: median and min over ``*_repeats`` runs; for a step row ``fwd_*`` is
    one ``step`` call, i.e. per token) and its comparison."""

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
    vs_shape: tuple[int, int, int] | None = None
    ratio_fwd: float | None = None  # fwd_ms / the vs row's fwd_ms
    ratio_fwd_bwd: float | None = None  # fwd_bwd_ms / the vs row's fwd_bwd_ms
    gflops: float | None = None  # achieved GFLOP/s of fwd+bwd (of fwd if not timed), where a FLOP count applies
    ratio_gflops: float | None = None  # gflops / the vs row's gflops (vs matmul)
    state_bytes: int | None = None  # step rows: the state's bytes after the context
    state_bytes_after_steps: int | None = None  # step rows: ... and after the timed steps
    headline: str | None = None  # what the ratio shows, if the row is one of the HEADLINES

    @property
    def spec(self) -> Spec:
        return Spec(self.target, self.mode, self.batch, self.length, self.d_model, self.dtype)

    @property
    def vs_spec(self) -> Spec | None:
        """The spec of the row compared with (None if none)."""
        return None if self.vs_target is None else Spec(self.vs_target, self.vs_mode, *self.vs_shape, self.dtype)


@dataclass(frozen=True)
class Headline:
    """A comparison the benchmark documentation reports: the ratio ``target mode / vs_target vs_mode`` at one
    shape (``vs_shape`` for the vs row, default the same) and setting, of forward+backward times, of
    forward+backward GFLOP/s (``rate``), or for step rows of the time per token (with the state's bytes).
    ``ANY`` as a target matches every target."""

    target: str
    mode: str
    vs_target: str
    vs_mode: str
    shape: tuple[int, int, int]
    about: str  # what the ratio shows
    vs_shape: tuple[int, int, int] | None = None
    rate: bool = False
    dtype: str = "float32"
    threads: int = 2
    device: str = "cpu"

    def applies(self, record: Record, vs: Spec) -> bool:
        """Whether ``record``, compared with ``vs``, is the measurement this headline is about."""
        wanted = (self.target, self.mode, self.vs_target, self.vs_mode)
        names = (record.target, record.mode, vs.target, vs.mode)
        setting = (*self.shape, self.dtype, self.threads, self.device)
        return (
            all(want in (ANY, got) for want, got in zip(wanted, names))
            and (*record.spec.config, record.threads, record.device) == setting
            and vs.config == (*(self.vs_shape or self.shape), self.dtype)
        )

    def ratio(self, record: Record) -> float | None:
        """The record's ratio this headline is about (None if it was not measured, e.g. with ``--forward-only``)."""
        if record.mode == STEP:
            return record.ratio_fwd
        if record.fwd_bwd_ms is None:
            return None
        return record.ratio_gflops if self.rate else record.ratio_fwd_bwd


HEADLINES = (
    Headline(ENGINE, "scan", "cumsum", BASELINE_MODE, (8, 4096, 256), "engine 2's scan vs torch.cumsum"),
    Headline(ENGINE, "scan", "cumsum", BASELINE_MODE, (1, 65536, 64), "engine 2's scan vs torch.cumsum"),
    Headline("nn.GRU", BASELINE_MODE, "mingru", "scan", (8, 512, 256), "nn.GRU vs minGRU's scan"),
    Headline(
        GLA, "chunk", MATMUL, BASELINE_MODE, (4, 2048, GLA_HEADS * 64), "engine 3's FLOP rate vs a 2048² matmul's",
        vs_shape=(1, 2048, 2048), rate=True,
    ),
    Headline(
        DELTA, "chunk", MATMUL, BASELINE_MODE, (4, 1024, GLA_HEADS * 64), "engine 4's FLOP rate vs a 2048² matmul's",
        vs_shape=(1, 2048, 2048), rate=True,
    ),
    Headline(
        ANY, STEP, ANY, STEP, (1, STEP_CONTEXTS[1], 64), "a step after 64k tokens of context vs after 1k",
        vs_shape=(1, STEP_CONTEXTS[0], 64),
    ),
    Headline("lstm", "fused", "nn.LSTM", BASELINE_MODE, (8, 512, 256), "the lstm layer vs bare nn.LSTM"),
    Headline("gru", "fused", "nn.GRU", BASELINE_MODE, (8, 512, 256), "the gru layer vs bare nn.GRU"),
    Headline("slstm", "fused", "nn.LSTM", BASELINE_MODE, (8, 512, 256), "the sLSTM loop vs nn.LSTM"),
    Headline("paragru", "recurrent", "paragru", "newton", (8, 4096, 256), "ParaGRU's loop vs its Newton solve"),
)  # fmt: skip
BASELINE_OF = {"lstm": "nn.LSTM", "gru": "nn.GRU", "slstm": "nn.LSTM", "paragru": "nn.GRU"}  # layer vs PyTorch
ATTENTION_STEP_CONTEXTS = (1024, 8192)  # softmax attention's step (KV cache) after these contexts, beside GLA's


# ----------------------------------------------------------------------------
# targets and specs


def target_names() -> list[str]:
    """Every timeable target: the registered layers, the engines, the baselines."""
    return [*(m.name for m in list_models()), ENGINE, *HEAD_ENGINES, *BASELINES]


def target_modes(target: str) -> tuple[str, ...]:
    """A target's timeable modes, parallel forms first (``auto`` is left out: it is one of them; ``step`` is
    timed by :func:`step_specs`); a layer's last, :data:`COMPILED`, runs only when named."""
    if target == ENGINE:
        return ("scan", "recurrent")
    if target in HEAD_ENGINES:
        return ("chunk", "recurrent")
    if target in BASELINES:
        return (BASELINE_MODE,)
    if target not in {m.name for m in list_models()}:
        raise ValueError(f"unknown model {target!r}; valid names: {', '.join(target_names())}")
    return (*model_info(target).cls.parallel_modes, "recurrent", COMPILED)


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
    for engine in HEAD_ENGINES:
        if engine in offered and shape[2] % GLA_HEADS:
            raise ValueError(f"{engine} splits d over {GLA_HEADS} heads: d must be a multiple of {GLA_HEADS}, got {shape[2]}")
    _check_builds(offered, shape[2])
    for mode in modes or ():
        if not any(mode in offers for offers in offered.values()):
            valid = sorted({m for offers in offered.values() for m in offers})
            raise ValueError(f"unknown mode {mode!r} for {', '.join(offered)}; valid modes: {', '.join(valid)}")
    specs = []
    for target, offers in offered.items():
        chosen = [m for m in offers if (m in modes if modes else m != COMPILED) or len(offers) == 1]
        if not chosen:
            raise ValueError(f"{target} has none of the modes {', '.join(modes)}; its modes: {', '.join(offers)}")
        specs += [Spec(target, mode, *shape, dtype) for mode in chosen]
    return specs


def step_specs(targets: Iterable[str], shape: tuple[int, int, int], dtype: str = "float32") -> list[Spec]:
    """Step rows: each layer's ``step`` after a context of ``shape[1]`` tokens. A ``ValueError`` naming the
    registered layers is raised for a target that is not one."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid dtypes: {', '.join(DTYPES)}")
    targets = list(targets)
    layers = [m.name for m in list_models()]
    for target in targets:
        if target not in layers:
            raise ValueError(f"step timing needs a registered layer, got {target!r}; valid names: {', '.join(layers)}")
    _check_builds(targets, shape[2])
    return [Spec(target, STEP, *shape, dtype) for target in targets]


def _check_builds(targets: Iterable[str], d_model: int) -> None:
    """A ``ValueError`` now, naming the layer and why, for a registered layer that cannot be built at ``d_model``
    (e.g. heads that do not divide it), instead of a traceback after the rows before it were timed."""
    layers = {m.name for m in list_models()}
    for target in targets:
        if target in layers:
            try:
                create(target, d_model=d_model)
            except (ValueError, TypeError) as e:
                raise ValueError(f"{target} cannot be built with --d-model {d_model}: {e}") from None


def quick_specs() -> list[Spec]:
    """The ``--quick`` suite: every headline's targets at its shapes (those of unregistered layers skipped), each
    layer of :data:`BASELINE_OF` beside its PyTorch baseline, every registered layer at a modest size, then the
    step headline for every layer with a state of fixed size (:data:`CONSTANT_STATE_ENGINES`), and softmax
    attention's step (its KV cache grows, so no headline) beside GLA's at 1k and 8k tokens of context."""
    known = set(target_names())
    specs: list[Spec] = []

    def add(new: Iterable[Spec]) -> None:
        specs.extend(s for s in new if s not in specs)

    for headline in HEADLINES:
        if headline.mode != STEP and {headline.target, headline.vs_target} <= known:
            add(make_specs([headline.target], headline.shape))
            add(make_specs([headline.vs_target], headline.vs_shape or headline.shape))
    add(make_specs([m.name for m in list_models()], QUICK_LAYER_SHAPE))
    add([Spec(BASELINE_OF[s.target], BASELINE_MODE, *s.config) for s in specs if s.target in BASELINE_OF])
    constant_state = [m.name for m in list_models() if m.engine in CONSTANT_STATE_ENGINES]
    add(s for name in constant_state for length in STEP_CONTEXTS for s in step_specs([name], (1, length, 64)))
    if "attention" in known:
        add(s for name in ("attention", "gla") for n in ATTENTION_STEP_CONTEXTS for s in step_specs([name], (1, n, 64)))
    return specs


def comparison(spec: Spec, specs: Sequence[Spec]) -> Spec | None:
    """The row ``spec`` is compared with, first match in ``specs`` (None if none); see the module docstring."""
    others = [s for s in specs if s != spec]
    same = [s for s in others if s.config == spec.config]
    if spec.mode == STEP:  # the same layer after the shortest shorter context
        candidates = sorted(
            (s for s in others if s.mode == STEP and s.target == spec.target and s.length < spec.length
             and (s.batch, s.d_model, s.dtype) == (spec.batch, spec.d_model, spec.dtype)),
            key=lambda s: s.length,
        )  # fmt: skip
    elif spec.mode == "recurrent":  # the target's own parallel form
        candidates = [s for s in same if s.target == spec.target and s.mode != STEP]
    elif spec.target == ENGINE:
        candidates = [s for s in same if s.target == "cumsum"]
    elif spec.target in HEAD_ENGINES:  # the machine's matmul rate, at any shape
        candidates = [s for s in others if s.target == MATMUL and s.dtype == spec.dtype]
    elif spec.target in BASELINE_OF:  # the layer's parallel form vs its PyTorch counterpart
        candidates = [s for s in same if s.target == BASELINE_OF[spec.target]]
    elif spec.target in ("nn.GRU", "nn.LSTM"):  # vs a layer that is not a counterpart (minGRU's headline)
        layers = {m.name for m in list_models()} - set(BASELINE_OF)
        candidates = [s for s in same if s.target in layers and s.mode not in ("recurrent", STEP)]
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
    if spec.mode == COMPILED:  # compiled by the first (untimed) calls
        # every layer class shares SequenceLayer.forward, whose compiled versions dynamo caps (8 by default)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        compiled = torch.compile(layer, fullgraph=True)
        return (lambda: compiled(x)[0]), [x, *layer.parameters()]
    return (lambda: layer(x, mode=spec.mode)[0]), [x, *layer.parameters()]


def _engine_workload(spec: Spec, device: torch.device) -> Workload:
    logits = _leaf(spec, device).detach()
    a, b = torch.sigmoid(logits).requires_grad_(), _leaf(spec, device)
    scan = linear_scan if spec.mode == "scan" else linear_scan_reference
    return (lambda: scan(a, b)[0]), [a, b]


def _gla_workload(spec: Spec, device: torch.device) -> Workload:
    shape = (spec.batch, GLA_HEADS, spec.length, spec.d_model // GLA_HEADS)
    dtype = DTYPES[spec.dtype]
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    log_alpha = (F.logsigmoid(torch.randn(shape, device=device, dtype=dtype)) / 16).requires_grad_()
    attend = gated_linear_attention if spec.mode == "chunk" else gated_linear_attention_reference
    return (lambda: attend(q, k, v, log_alpha)[0]), [q, k, v, log_alpha]


def _delta_workload(spec: Spec, device: torch.device) -> Workload:
    """Gated DeltaNet's workload: q, v random, k L2-normalised, β = σ(randn), log α = -softplus(randn) / 16."""
    shape = (spec.batch, GLA_HEADS, spec.length, spec.d_model // GLA_HEADS)
    dtype = DTYPES[spec.dtype]
    q, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    k = F.normalize(torch.randn(shape, device=device, dtype=dtype), dim=-1).requires_grad_()
    gates = torch.randn(2, *shape[:3], device=device, dtype=dtype)
    beta, log_alpha = torch.sigmoid(gates[0]).requires_grad_(), (-F.softplus(gates[1]) / 16).requires_grad_()
    rule = delta_rule if spec.mode == "chunk" else delta_rule_reference
    return (lambda: rule(q, k, v, beta, log_alpha)[0]), [q, k, v, beta, log_alpha]


def _matmul_workload(spec: Spec, device: torch.device) -> Workload:
    dtype = DTYPES[spec.dtype]
    x = torch.randn(spec.batch * spec.length, spec.d_model, device=device, dtype=dtype)
    w = torch.randn(spec.d_model, spec.d_model, device=device, dtype=dtype)
    return (lambda: x @ w), []


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
    if spec.target == GLA:
        return _gla_workload(spec, device)
    if spec.target == DELTA:
        return _delta_workload(spec, device)
    if spec.target == MATMUL:
        return _matmul_workload(spec, device)
    if spec.target == "cumsum":
        return _cumsum_workload(spec, device)
    if spec.target in BASELINES:
        return _torch_rnn_workload(spec, device)
    return _layer_workload(spec, device)


# ----------------------------------------------------------------------------
# timing


def time_fns(
    fns: Sequence[Callable[[], object]],
    *,
    repeats: int = 3,
    budget_s: float = 0.3,
    warmup: int = 1,
    device: torch.device,
) -> list[tuple[float, float, int]]:
    """Time each of ``fns`` in turn, round-robin, so that drift in the machine's speed hits them alike:
    untimed rounds (at least ``warmup``, and for ``budget_s`` seconds per function), then rounds until each
    has at least ``repeats`` calls and ``budget_s`` seconds per function have passed.

    The timed warm-up matters on CPU: the first calls that allocate large tensors pay page faults until the
    C allocator's dynamic mmap threshold has grown past their size (measured: GLA's first ~15 forwards take
    1.5x the steady-state time). Slow functions get ``repeats`` calls and fast ones many.
    Returns (median ms, min ms, calls) per function.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start, rounds = time.perf_counter(), 0
    while rounds < warmup or time.perf_counter() - start < budget_s * len(fns):
        for fn in fns:
            fn()
        rounds += 1
    sync()
    times: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < repeats or time.perf_counter() - start < budget_s * len(fns):
        for fn, samples in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            sync()
            samples.append(time.perf_counter() - t0)
    return [(statistics.median(t) * 1e3, min(t) * 1e3, len(t)) for t in times]


def flop_count(spec: Spec, backward: bool) -> int | None:
    """FLOPs of one forward (``backward=False``) or forward+backward call of ``spec``, None where no count applies."""
    if spec.target == MATMUL:
        return 2 * spec.batch * spec.length * spec.d_model**2
    if spec.target in HEAD_ENGINES and spec.mode == "chunk":
        d_head = spec.d_model // GLA_HEADS
        count = chunk_flops if spec.target == GLA else delta_rule_flops
        return (3 if backward else 1) * count(spec.batch, GLA_HEADS, spec.length, d_head, d_head)
    return None


def measure(
    specs: Sequence[Spec],
    *,
    threads: int,
    device: torch.device,
    repeats: int = 3,
    budget_s: float = 0.3,
    forward_only: bool = False,
) -> list[Record]:
    """Time specs forward-only and (unless ``forward_only``, or for ``matmul``) forward+backward, on the current
    thread count, round-robin (:func:`time_fns`): rows timed together see the machine's drift alike, so their
    ratios hold on a machine whose speed wanders by 2x over minutes. :func:`run` passes the rows of one shape."""
    workloads = []
    for spec in specs:
        torch.manual_seed(0)
        forward, leaves = _workload(spec, device)
        with torch.no_grad():
            workloads.append((forward, leaves, torch.randn_like(forward())))

    def forward_no_grad(forward: Callable[[], Tensor]) -> None:
        with torch.no_grad():
            forward()

    def forward_backward(forward: Callable[[], Tensor], leaves: Sequence[Tensor], grad: Tensor) -> None:
        for leaf in leaves:
            leaf.grad = None
        forward().backward(grad)

    timing = dict(repeats=repeats, budget_s=budget_s, device=device)
    fwd = time_fns([functools.partial(forward_no_grad, forward) for forward, _, _ in workloads], **timing)
    backward = [not forward_only and spec.target != MATMUL for spec in specs]
    with_backward = [functools.partial(forward_backward, *w) for w, b in zip(workloads, backward) if b]
    bwd = iter(time_fns(with_backward, **timing) if with_backward else ())
    records = []
    for spec, fwd_timing, timed_backward in zip(specs, fwd, backward):
        bwd_timing = next(bwd) if timed_backward else (None, None, None)
        flops = flop_count(spec, timed_backward)
        gflops = None if flops is None else flops / (bwd_timing[0] if timed_backward else fwd_timing[0]) / 1e6
        records.append(Record(
            spec.target, spec.mode, spec.batch, spec.length, spec.d_model, spec.dtype, threads, str(device),
            *fwd_timing, *bwd_timing, gflops=gflops,
        ))  # fmt: skip
    return records


def state_bytes(state: RecurrentState) -> int:
    """Bytes held by a layer's recurrent state (the sum over its ``tensors()``)."""
    return sum(t.numel() * t.element_size() for t in state.tensors().values())


def _step_group(spec: Spec) -> tuple:
    """What step specs timed together share (all but the context)."""
    return spec.target, spec.mode, spec.batch, spec.d_model, spec.dtype


def measure_steps(
    specs: Sequence[Spec], *, threads: int, device: torch.device, repeats: int = 3, budget_s: float = 0.3
) -> list[Record]:
    """Time ``layer.step`` after the context of each step spec (one layer, batch, d_model and dtype; the
    contexts ``spec.length`` differ), all under ``torch.no_grad()``.

    One layer serves every context. For each spec, the layer's parallel forward over random input builds a
    state; then the states take single-token steps in turn, each fed the state it returned last
    (:func:`time_fns`: ``STEP_WARMUP`` untimed rounds, then at least ``repeats`` timed steps each; interleaving
    makes the contexts' times comparable on a machine whose speed drifts). ``fwd_*``: ms per token, median and
    min. Records the state's bytes after the context and after the timed steps.
    """
    first = specs[0]
    if first.mode != STEP or any(_step_group(s) != _step_group(first) for s in specs):
        raise ValueError(f"measure_steps: step specs of one layer, batch, d_model and dtype expected, got {specs}")
    torch.manual_seed(0)
    dtype = DTYPES[first.dtype]
    layer = create(first.target, first.d_model).to(device, dtype)
    with torch.no_grad():
        states = [layer(torch.randn(s.batch, s.length, s.d_model, device=device, dtype=dtype))[1] for s in specs]
        context_bytes = [state_bytes(state) for state in states]
        x_t = torch.randn(first.batch, first.d_model, device=device, dtype=dtype)

        def step(i: int) -> None:
            states[i] = layer.step(x_t, states[i])[1]

        steps = [functools.partial(step, i) for i in range(len(specs))]
        timings = time_fns(steps, repeats=repeats, budget_s=budget_s, warmup=STEP_WARMUP, device=device)
    return [
        Record(
            s.target, s.mode, s.batch, s.length, s.d_model, s.dtype, threads, str(device), *timing,
            state_bytes=before, state_bytes_after_steps=state_bytes(state),
        )  # fmt: skip
        for s, timing, before, state in zip(specs, timings, context_bytes, states)
    ]


def _compared(record: Record, vs: Record) -> Record:
    """``record`` with its ratios to ``vs`` (of GFLOP/s against ``matmul``, else of times), and what they show if
    the row is one of the :data:`HEADLINES`."""
    if vs.target == MATMUL:
        ratios = dict(ratio_gflops=None if record.gflops is None else record.gflops / vs.gflops)
    else:
        timed = record.fwd_bwd_ms is not None and vs.fwd_bwd_ms is not None
        ratio_fwd_bwd = record.fwd_bwd_ms / vs.fwd_bwd_ms if timed else None
        ratios = dict(ratio_fwd=record.fwd_ms / vs.fwd_ms, ratio_fwd_bwd=ratio_fwd_bwd)
    vs_shape = (vs.batch, vs.length, vs.d_model)
    record = dataclasses.replace(record, vs_target=vs.target, vs_mode=vs.mode, vs_shape=vs_shape, **ratios)
    headline = next((h for h in HEADLINES if h.applies(record, vs.spec) and h.ratio(record) is not None), None)
    return record if headline is None else dataclasses.replace(record, headline=headline.about)


def compare(records: Sequence[Record]) -> list[Record]:
    """The records with their ratios to the row :func:`comparison` picks, headlines marked."""
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

    :func:`measure` times the specs of one shape and dtype together, round-robin, and :func:`measure_steps` the
    step specs of one layer, batch, d_model and dtype. ``on_spec`` is called before each spec is timed (progress
    display).
    """
    settings = dict(threads=threads, device=torch.device(device), repeats=repeats, budget_s=budget_s)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        records: dict[Spec, Record] = {}
        for spec in specs:
            if spec in records:
                continue
            if spec.mode == STEP:
                group = list(dict.fromkeys(s for s in specs if _step_group(s) == _step_group(spec)))
            else:
                group = list(dict.fromkeys(s for s in specs if s.mode != STEP and s.config == spec.config))
            for s in group:
                if on_spec is not None:
                    on_spec(s)
            if spec.mode == STEP:
                records.update(zip(group, measure_steps(group, **settings)))
            else:
                records.update(zip(group, measure(group, forward_only=forward_only, **settings)))
    finally:
        torch.set_num_threads(previous)
    return compare([records[s] for s in specs])


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
        "loadavg_1min": loadavg_1min(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "rnnzoo": __version__,
        "threads": threads,
        "torch": torch.__version__,
    }


def write_json(path: str | Path, records: Sequence[Record], head: dict) -> None:
    """Write ``{"header": head, "records": [...]}`` with sorted keys, atomically."""
    write_json_atomic(path, {"header": head, "records": [dataclasses.asdict(r) for r in records]}, indent=2)


def _label(target: str, mode: str) -> str:
    return target if mode == BASELINE_MODE else f"{target} {mode}"


def _shape(shape: Sequence[int]) -> str:
    return f"({', '.join(map(str, shape))})"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.3f}" if value < 1 else f"{value:,.2f}"


def _headline_line(r: Record, by_spec: dict[Spec, Record]) -> str:
    """The line about a headline row, with the figures behind its ratio."""
    vs = by_spec[r.vs_spec]
    if r.mode == STEP:
        sizes = {r.state_bytes, r.state_bytes_after_steps, vs.state_bytes, vs.state_bytes_after_steps}
        state = (
            f"state {r.state_bytes:,} bytes throughout" if len(sizes) == 1 else
            f"state bytes {vs.state_bytes:,} -> {vs.state_bytes_after_steps:,} after {vs.length:,}, "
            f"{r.state_bytes:,} -> {r.state_bytes_after_steps:,} after {r.length:,}"
        )  # fmt: skip
        return (
            f"{r.headline}: {r.target}, ms per token after {r.length:,} / {vs.length:,} tokens of context: "
            f"{r.fwd_ms:.4f} / {vs.fwd_ms:.4f} = {r.ratio_fwd:.3f}, {state}"
        )
    if r.ratio_gflops is not None:
        loop, vs_loop = by_spec.get(dataclasses.replace(r.spec, mode="recurrent")), ""
        if loop is not None and loop.fwd_bwd_ms is not None:
            vs_loop = f"; recurrent {loop.fwd_bwd_ms / r.fwd_bwd_ms:.1f}x slower"
        return (
            f"{r.headline}: {_label(r.target, r.mode)} / {vs.target} GFLOP/s fwd+bwd at {_shape(r.spec.config[:3])} / "
            f"{_shape(r.vs_shape)}: {r.gflops:.1f} / {vs.gflops:.1f} = {r.ratio_gflops:.2f}{vs_loop}"
        )
    return (
        f"{r.headline}: {_label(r.target, r.mode)} / {_label(r.vs_target, r.vs_mode)} fwd+bwd at "
        f"{_shape(r.spec.config[:3])}: {r.ratio_fwd_bwd:.2f}"
    )


def report(records: Sequence[Record], console: Console, head: dict) -> None:
    """Print the records as tables (timings, then step rows; captioned with the run's ``head``), then one line
    per headline row."""
    from rich.table import Table

    machine = (
        f"torch {head['torch']} on {head['gpu'] or head['cpu']} ({head['cpu_count']} CPUs, "
        f"load average {head['loadavg_1min']} at start)"
    )
    timed = [r for r in records if r.mode != STEP]
    if timed:
        table = Table(
            title="rnnzoo speed (median ms)",
            caption=(
                "ratio = this row's time / the vs row's (fwd+bwd; fwd if --forward-only); vs matmul: "
                f"this row's GFLOP/s / matmul's\nGFLOP/s: of fwd+bwd (fwd if not timed)\n{machine}"
            ),
        )
        numeric = ("threads", "fwd ms", "fwd+bwd ms", "GFLOP/s", "ratio")
        for name in ("target", "mode", "(B, T, d)", "dtype", *numeric[:4], "vs", "ratio"):
            table.add_column(name, justify="right" if name in numeric else "left")
        for r in timed:
            ratio = next((x for x in (r.ratio_gflops, r.ratio_fwd_bwd, r.ratio_fwd) if x is not None), None)
            vs = "" if r.vs_target is None else _label(r.vs_target, r.vs_mode)
            if r.vs_target is not None and r.vs_spec.config != r.spec.config:
                vs += f" {_shape(r.vs_shape)}"
            table.add_row(
                r.target,
                r.mode,
                _shape(r.spec.config[:3]),
                r.dtype,
                str(r.threads),
                _ms(r.fwd_ms),
                _ms(r.fwd_bwd_ms),
                "" if r.gflops is None else f"{r.gflops:,.1f}",
                vs,
                "" if ratio is None else f"{ratio:.2f}x",
            )
        console.print(table)
    steps = [r for r in records if r.mode == STEP]
    if steps:
        table = Table(
            title="rnnzoo speed: layer.step after T tokens of context (no_grad)",
            caption=(
                f"ratio = this row's ms per token / the vs row's (the same layer after a shorter context)\n{machine}"
            ),
        )
        numeric = ("context T", "threads", "ms / token", "min ms", "steps", "state bytes", "after steps", "ratio")
        for name in ("target", "context T", "(B, d)", "dtype", *numeric[1:7], "vs context", "ratio"):
            table.add_column(name, justify="right" if name in numeric else "left")
        for r in steps:
            table.add_row(
                r.target,
                f"{r.length:,}",
                _shape((r.batch, r.d_model)),
                r.dtype,
                str(r.threads),
                _ms(r.fwd_ms),
                _ms(r.fwd_min_ms),
                f"{r.fwd_repeats:,}",
                f"{r.state_bytes:,}",
                f"{r.state_bytes_after_steps:,}",
                "" if r.vs_target is None else f"{r.vs_shape[1]:,}",
                "" if r.ratio_fwd is None else f"{r.ratio_fwd:.3f}x",
            )
        console.print(table)
    by_spec = {r.spec: r for r in records}
    for r in records:
        if r.headline is not None:
            console.print(_headline_line(r, by_spec))
