"""Engine 1: nonlinear recurrences ``h_t = f(h_{t-1}, x_t)``, step by step or all at once by Newton's method.

DEER (Lim, Zhu, Selfridge, Kasim 2024, "Parallelizing non-linear sequential models over the sequence length")
and ParaRNN (Danieli et al. 2025, "ParaRNN: Unlocking Parallel Training of Nonlinear RNNs for Large Language
Models") treat the whole trajectory as the solution of the system ``h_t = f(h_{t-1}, x_t)``, t = 0..T-1 with
``h_{-1} = h0``, and solve it by Newton's method: linearising f around a guess ``h'`` gives the *linear*
recurrence ``h_t = J_t h_{t-1} + (f(h'_{t-1}, x_t) - J_t h'_{t-1})``, ``J_t = ∂f/∂h`` at ``h'_{t-1}``, which a
parallel scan solves: engine 2 (:func:`~rnnzoo.ops.linear_scan.linear_scan`) when ``J_t`` is diagonal, the block
scan (:func:`~rnnzoo.ops.block_scan.block_linear_scan`) when it has k×k blocks per channel.

The cell. ``cell(h_prev, *xs, *params, jacobian) -> (h, J)`` computes one step, element-wise over any leading
dimensions: the engine calls it on whole sequences ``(batch, time, ...)``, on all chunks at one step
``(batch, chunks, ...)`` and on single steps. ``xs`` are the per-step inputs ``(batch, time, ...)`` (sliced in
time by the engine), ``params`` tensors broadcast to every step (e.g. diagonal recurrent weights). With
``jacobian=True`` it also returns ``J = ∂h/∂h_prev``: diagonal, of ``h``'s shape ``(..., *state)``, or block
diagonal for a state ``(..., k, *channels)``, of shape ``(..., k, k, *channels)`` (``J[..., i, j, c]`` is
``∂h_i/∂h_prev_j`` of channel c). Every tensor the cell depends on and that needs a gradient must come in
through ``xs`` or ``params``. A cell with a hand-written ``vjp`` (below) may return a third value with
``jacobian=True``, residuals: what its vjp would otherwise recompute (its gates, say; not the states, which the
vjp is given).

Newton on chunk boundaries (multiple shooting). Cut time into n chunks of C steps. One iteration runs every
chunk at once from a guess ``H_j`` of its start state (C steps of the cell on ``(batch, n, ...)``), giving its
end state ``E_j`` and the product ``P_j`` of its step Jacobians; the Newton update of the starts is the linear
recurrence ``H_{j+1} = E_j + P_j (H_j^new - H_j)``, ``H_0 = h0``, solved by the scan. With ``C = 1`` this is
exactly DEER's iteration (``H`` is the whole trajectory, ``P = J``); larger C trades parallel depth for less
work and faster convergence. After k iterations the first k chunks are exact, so n iterations always
converge; the iteration stops earlier when ``max |H^new - H| <= tol`` (:func:`default_tolerance`: 1e-10 for
float64, 1e-5 for float32). The first guess of ``H_j`` is the state reached from zero over the last
``min(C, 64)`` steps of chunk j - 1 (with C = 1, ParaRNN's ``f(0, x)``): a cell that forgets its start over
that window (a GRU at initialisation does) converges in one iteration. The returned trajectory is the last run
(from the starts whose update was at most ``tol``), whose Jacobians are kept for the backward pass. If
``max_iters`` iterations do not converge (or the update is not finite), a :class:`NewtonConvergenceWarning`
is issued and the sequential loop computes the result.

Why chunks: on a CPU the per-step work of a layer (``batch x d`` numbers) is too small for the per-operation
overhead, which is what makes the sequential loop slow, while DEER's whole-sequence passes need several
iterations, each a full sweep of the cell and its Jacobian plus a scan. A chunk step works on
``batch x n x d`` numbers; one sweep usually suffices. Default C: :func:`default_chunk_size` (1, DEER, on
accelerators). Short sequences on CPU (fewer than ``SEQUENTIAL_BELOW`` = 64 steps, chunk size not given) are
solved by the loop instead, the cell alone at each step, with the same implicit gradients computed for the whole
sequence at once (:class:`_SequentialRecurrence`): with so few chunks Newton's warm-up and Jacobian sweeps cost
more than the loop they replace.

Gradients (implicit function theorem). The solution satisfies ``h_t = f(h_{t-1}, θ_t)``; for a loss with
``g_t = ∂L/∂h_t`` the adjoint ``λ_t = g_t + J_{t+1}^T λ_{t+1}`` is a reverse linear recurrence on the saved
Jacobians, ``∂L/∂θ`` is the sum over steps of the vector-Jacobian products of f at the solution with ``λ_t``,
and ``∂L/∂h0 = J_0^T λ_0``. Nothing is differentiated through the iterations. The backward (:class:`_Adjoint`)
runs on the forward's chunks in reverse: a sweep down every chunk at once gives what each chunk passes back,
engine 2's reverse scan carries it across the chunks, and a second sweep computes ``λ_t`` step by step and the
per-step products with it, on ``(batch, chunks, ...)`` slices that stay in cache (no full-length λ is stored).
A cell may carry a hand-written product, ``cell.vjp(h_prev, *xs_t, *params, lam) -> grads`` (one per ``xs`` and
``params``, the latter summed over the leading dims; ``residuals=`` the step's residuals where the cell returned
some, kept from the final sweep's chunk steps, not from the ragged tail or the sequential fallback); otherwise
autograd differentiates one evaluation of the cell per step. A caller whose ``xs`` are its own intermediates
(the ParaRNN layers' pre-activations) may declare them scratch (``rebuild_xs``): the backward then writes their
gradients over them instead of into a new buffer.
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_int
from .block_scan import BLOCKS
from .dtypes import compute_dtype
from .linear_scan import DIAGONAL, Transitions, scan_adjoint, scan_states
from .opaque import traceable

__all__ = [
    "Cell", "NewtonConvergenceWarning", "NewtonInfo", "default_chunk_size", "default_tolerance",
    "nonlinear_recurrence", "nonlinear_recurrence_reference",
]  # fmt: skip

Cell = Callable[..., tuple[Tensor, "Tensor | None"]]
MODES = ("newton", "recurrent")
DEFAULT_MAX_ITERS = 50
STEP_ELEMENTS = 2**16  # state numbers per chunk step that amortise the per-operation overhead
SEQUENTIAL_BELOW = 64  # on CPU, default solves of shorter sequences run the loop (:class:`_SequentialRecurrence`)
MIN_CHUNK = 16  # the shortest chunk (and so warm-up) chosen by default for sequences of 2 MIN_CHUNK steps or more
WARMUP_STEPS = 64  # steps run from zero to guess each chunk's start (~0.7^64 ≈ 1e-10 of the start left)


class NewtonConvergenceWarning(RuntimeWarning):
    """Newton's method did not converge within ``max_iters``; the sequential loop gave the result."""


@dataclass(frozen=True)
class NewtonInfo:
    """How a Newton solve went: ``iterations`` run, whether they ``converged`` (if not, the sequential loop
    computed the result), the last ``update`` ``max |H^new - H|`` and the ``chunk_size`` used."""

    iterations: int
    converged: bool
    update: float
    chunk_size: int


def default_tolerance(dtype: torch.dtype) -> float:
    """Stopping tolerance on ``max |H^new - H|``: 1e-10 for float64, else 1e-5 (half precision computes in float32).

    Absolute, for states of order 1 (gated cells keep them in [-1, 1]): well above the rounding floor of the
    update (a few ulp) and below the agreement expected from the sequential loop.
    """
    return 1e-10 if dtype == torch.float64 else 1e-5


def default_chunk_size(length: int, step_elements: int, device: torch.device) -> int:
    """Steps per chunk for ``length`` steps of ``step_elements`` state numbers each (batch x state size).

    On CPU, the larger of ``round(sqrt(T))`` (fewest operations when each is small) and the size that gives
    each chunk step about ``STEP_ELEMENTS`` numbers (``n_chunks x step_elements``), enough to amortise the
    per-operation overhead and to be split over threads: at (8, 4096, 256) that is C = 128 (much shorter
    chunks need a second iteration, their warm-up being too short; much longer ones run too many sequential
    steps). Sequences of at least
    ``2 MIN_CHUNK`` steps get chunks of at least ``MIN_CHUNK``: a chunk is also the warm-up that guesses the
    next one's start, and shorter warm-ups cost whole extra iterations. The chunks are then evened out (``T // (T // C)``), so the
    ragged tail, run step by step, is shorter than the number of chunks. On accelerators, 1 (DEER): there a
    step over whole sequences is one kernel per operation, and a few full-length iterations beat many chunk
    steps (not timed here).
    """
    if device.type != "cpu":
        return 1
    chunk = max(round(math.sqrt(length)), math.ceil(length * step_elements / STEP_ELEMENTS))
    if length >= 2 * MIN_CHUNK:
        chunk = max(chunk, MIN_CHUNK)
    chunk = max(1, min(length, chunk))
    return length // (length // chunk)


# ----------------------------------------------------------------------------
# checks


def _check_inputs(
    cell: Cell, xs: Sequence[Tensor], h0: Tensor, params: Sequence[Tensor]
) -> tuple[list[Tensor], Tensor, list[Tensor]]:
    """Validate the arguments; return ``(xs, h0, params)`` in one compute dtype (half precision -> float32)."""
    where = "nonlinear_recurrence"
    if not callable(cell):
        raise TypeError(f"{where}: `cell` must be callable as cell(h_prev, *xs, *params, jacobian=...)")
    if isinstance(xs, Tensor) or len(xs) == 0:
        raise TypeError(f"{where}: `xs` must be a non-empty sequence of (batch, time, ...) tensors")
    for name, group in (("xs", xs), ("params", params)):
        for i, t in enumerate(group):
            if not isinstance(t, Tensor) or not t.is_floating_point():
                raise TypeError(f"{where}: `{name}[{i}]` must be a real floating-point torch.Tensor")
    if not isinstance(h0, Tensor) or not h0.is_floating_point():
        raise TypeError(f"{where}: `h0` must be a real floating-point torch.Tensor of shape (batch, *state)")
    batch_time = tuple(xs[0].shape[:2])
    for i, x in enumerate(xs):
        if x.dim() < 2 or tuple(x.shape[:2]) != batch_time:
            raise ValueError(
                f"{where}: `xs[{i}]` must have shape (batch, time, ...) = {batch_time + ('...',)}, got {tuple(x.shape)}"
            )
    if batch_time[1] == 0:
        raise ValueError(f"{where}: the time dimension (dim 1) of `xs` is empty; need at least one step")
    if h0.dim() < 2 or h0.shape[0] != batch_time[0]:
        raise ValueError(f"{where}: `h0` must have shape (batch={batch_time[0]}, *state), got {tuple(h0.shape)}")
    dtype = compute_dtype(h0.dtype, *(t.dtype for t in (*xs, *params)))
    return [x.to(dtype) for x in xs], h0.to(dtype), [p.to(dtype) for p in params]


def _jacobian_kind(cell: Cell, xs: Sequence[Tensor], h0: Tensor, params: Sequence[Tensor]) -> Transitions:
    """Evaluate the cell on the first step and classify its Jacobian: diagonal (the scan's :data:`DIAGONAL`
    products) or k×k blocks (:data:`~rnnzoo.ops.block_scan.BLOCKS`)."""
    h_prev = h0.unsqueeze(1)
    h, jac, *_ = cell(h_prev, *(x[:, :1] for x in xs), *params, jacobian=True)
    where = "nonlinear_recurrence"
    if not isinstance(h, Tensor) or h.shape != h_prev.shape:
        got = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
        raise ValueError(
            f"{where}: the cell must return a state of the shape it is given, {tuple(h_prev.shape)}; got {got}"
        )
    if isinstance(jac, Tensor) and jac.shape == h.shape:
        return DIAGONAL
    block = (*h.shape[:3], *h.shape[2:])
    if isinstance(jac, Tensor) and h.dim() >= 3 and jac.shape == block:
        return BLOCKS
    got = tuple(jac.shape) if isinstance(jac, Tensor) else type(jac).__name__
    raise ValueError(
        f"{where}: with jacobian=True the cell must return J of the state's shape {tuple(h.shape)} (diagonal) "
        f"or {block} (k×k blocks); got {got}"
    )


# ----------------------------------------------------------------------------
# the sequential loop


def nonlinear_recurrence_reference(
    cell: Cell, xs: Sequence[Tensor], h0: Tensor, params: Sequence[Tensor] = ()
) -> tuple[Tensor, Tensor]:
    """The recurrent form: ``h_t = f(h_{t-1}, x_t)`` one step at a time (differentiated by autograd).

    Arguments as in :func:`nonlinear_recurrence`. Returns ``(h, h_last)``: all states ``(batch, time, *state)``
    and the final state.
    """
    xs, h0, params = _check_inputs(cell, xs, h0, params)
    h, hs = h0, []
    for x_t in zip(*(x.unbind(1) for x in xs)):
        h, _ = cell(h, *x_t, *params, jacobian=False)
        hs.append(h)
    return torch.stack(hs, dim=1), h


# ----------------------------------------------------------------------------
# Newton's method


def _run(
    cell: Cell,
    steps: Iterable[tuple[Tensor, ...]],
    params: Sequence[Tensor],
    start: Tensor,
    out: Iterable[Tensor],
    ops: Transitions,
    jac_out: Iterable[Tensor] | None = None,
) -> tuple[Tensor, Tensor, list[Tensor], list[object]]:
    """Run the cell from ``start`` over ``steps`` (per step, the inputs' views), writing each state to ``out``
    (and each Jacobian to ``jac_out`` if given); return the end state, the product of the Jacobians (last step
    leftmost), and per step the Jacobian and the residuals (None if the cell keeps none) as the cell returned
    them."""
    h, product, jacs, residuals = start, None, [], []
    for x_t, out_t in zip(steps, out):
        h, jac, *kept = cell(h, *x_t, *params, jacobian=True)
        out_t.copy_(h)
        jacs.append(jac)
        residuals.append(kept[0] if kept else None)
        product = jac if product is None else ops.compose(jac, product)
    for jac_t, jac in zip(jac_out or (), jacs):
        jac_t.copy_(jac)
    return h, product, jacs, residuals


@dataclass
class _Jacobians:
    """The step Jacobians kept for the backward pass: ``main``, per step c of the chunks, J of that step in every
    chunk, ``(batch, chunks, ...)``, and the ragged ``tail`` after the last chunk, ``(batch, T - chunks·C, ...)``.

    ``main`` holds the cell's own results, not a copy in one ``(batch, T, ...)`` buffer: on CPU a buffer of 32 MiB
    or more is mapped afresh by every call and pays a page fault per 4 KiB touched, while tensors of one chunk
    step are reused from the heap.
    """

    main: list[Tensor]
    tail: Tensor
    residuals: list[object] | None = None  # the cell's, per step of ``main``, if it keeps any

    def steps(self, begin: int) -> list[Tensor]:
        """Views ``(batch, 1, ...)`` of steps ``begin..T-1``, in time order."""
        chunk, n_chunks = len(self.main), self.main[0].shape[1]
        end = chunk * n_chunks
        views = [self.main[t % chunk][:, t // chunk].unsqueeze(1) for t in range(begin, end)]
        return views + list(self.tail[:, max(begin - end, 0) :].split(1, dim=1))


def _loop(
    cell: Cell,
    xs: Sequence[Tensor],
    params: Sequence[Tensor],
    start: Tensor,
    h: Tensor,
    jac: _Jacobians,
    begin: int,
    ops: Transitions,
) -> None:
    """The sequential loop over steps ``begin..T-1`` from ``start`` ``(batch, 1, *state)``, writing each state and
    Jacobian into ``h`` and ``jac``."""
    steps = zip(*(x[:, begin:].split(1, dim=1) for x in xs))
    _run(cell, steps, params, start, h[:, begin:].split(1, dim=1), ops, jac.steps(begin))  # residuals: dropped


def _chunk_views(t: Tensor, n_chunks: int, chunk: int) -> tuple[Tensor, ...]:
    """The C per-step views ``(batch, n_chunks, ...)`` of the first ``n_chunks x C`` steps of ``t``."""
    return t[:, : n_chunks * chunk].unflatten(1, (n_chunks, chunk)).unbind(2)


@dataclass
class _Solve:
    """Settings of one solve, and where it reports back."""

    n_xs: int
    tol: float
    max_iters: int
    chunk_size: int
    rebuild_xs: Callable[[], Sequence[Tensor]] | None = None  # set: xs are scratch (see nonlinear_recurrence)
    info: NewtonInfo | None = None


def _first_guess(
    cell: Cell, xs: Sequence[Tensor], params: Sequence[Tensor], h0: Tensor, n_chunks: int, chunk: int
) -> Tensor:
    """First guess of the chunk starts ``(batch, n_chunks, *state)``: ``h0``, then for chunk j >= 1 the state
    reached from zero over the last ``W = min(C, WARMUP_STEPS)`` steps of chunk j - 1 (with C = 1, ``f(0, x)``
    as in ParaRNN). A cell that forgets its start over W steps makes this guess exact to rounding, so one
    iteration converges; it costs ``W / C`` of a sweep without Jacobians."""
    warm = min(chunk, WARMUP_STEPS)
    previous = (n_chunks - 1) * chunk
    h = h0.new_zeros(h0.shape[0], n_chunks - 1, *h0.shape[1:])
    windows = [x[:, :previous].unflatten(1, (n_chunks - 1, chunk))[:, :, chunk - warm :] for x in xs]
    for x_t in zip(*(w.unbind(2) for w in windows)):
        h, _ = cell(h, *x_t, *params, jacobian=False)
    return torch.cat([h0.unsqueeze(1), h], dim=1)


def _newton(
    cell: Cell, xs: Sequence[Tensor], params: Sequence[Tensor], h0: Tensor, settings: _Solve
) -> tuple[Tensor, _Jacobians, NewtonInfo]:
    """All states and step Jacobians of the recurrence (no autograd), by Newton on chunk boundaries."""
    ops = _jacobian_kind(cell, xs, h0, params)
    batch, length = xs[0].shape[:2]
    chunk = min(settings.chunk_size, length)
    n_chunks = length // chunk
    main = n_chunks * chunk
    h = h0.new_empty(batch, length, *h0.shape[1:])
    jac_shape = h0.shape[1:] if ops is DIAGONAL else (h0.shape[1], *h0.shape[1:])
    tail = h0.new_empty(batch, length - main, *jac_shape)
    steps = list(zip(*(_chunk_views(x, n_chunks, chunk) for x in xs)))
    h_views = _chunk_views(h, n_chunks, chunk)
    first = h0.unsqueeze(1)

    starts = _first_guess(cell, xs, params, h0, n_chunks, chunk)
    converged, update, iterations = False, math.inf, 0
    for iterations in range(1, settings.max_iters + 1):
        ends, product, jacs, residuals = _run(cell, steps, params, starts, h_views, ops)
        if n_chunks == 1:
            converged, update = True, 0.0
            break
        a = product[:, :-1]
        new = scan_states(a, ends[:, :-1] - ops.apply(a, starts[:, :-1]), h0, ops=ops)
        update = (new - starts[:, 1:]).abs().max().item()
        starts = torch.cat([first, new], dim=1)
        if not math.isfinite(update):
            break
        if iterations >= n_chunks or update <= settings.tol:  # after k iterations the first k chunks are exact
            converged = True
            break
    if converged:
        jac = _Jacobians(jacs, tail, None if residuals[0] is None else residuals)
        if main < length:  # the ragged tail, after the last chunk
            _loop(cell, xs, params, ends[:, -1:], h, jac, main, ops)
    else:
        warnings.warn(
            f"nonlinear_recurrence: Newton's method did not converge in {iterations} iterations (last update "
            f"{update:.3g} > tol {settings.tol:.3g}); computing the result with the sequential loop",
            NewtonConvergenceWarning,
            stacklevel=2,
        )
        jac = _Jacobians([h0.new_empty(batch, n_chunks, *jac_shape) for _ in range(chunk)], tail)
        _loop(cell, xs, params, first, h, jac, 0, ops)
    return h, jac, NewtonInfo(iterations, converged, update, chunk)


def _step_vjp(
    cell: Cell,
    h_prev: Tensor,
    x_t: Sequence[Tensor],
    params: Sequence[Tensor],
    lam: Tensor,
    needs: Sequence[bool],
    residuals: object = None,
) -> list[Tensor | None]:
    """Gradients of ``λ · f(h_prev, x_t, θ)`` w.r.t. ``x_t`` and ``θ`` (summed over the leading dims): the cell's
    own ``vjp`` if it has one (given the step's ``residuals`` if the cell kept any), else autograd on one
    evaluation of the cell."""
    if hasattr(cell, "vjp"):
        kept = {} if residuals is None else {"residuals": residuals}
        return list(cell.vjp(h_prev, *x_t, *params, lam, **kept))
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(need) for t, need in zip((*x_t, *params), needs)]
        out, _ = cell(h_prev, *leaves, jacobian=False)
        wanted = [t for t in leaves if t.requires_grad]
        got = iter(torch.autograd.grad(out, wanted, lam, allow_unused=True))
    return [next(got) if t.requires_grad else None for t in leaves]


class _Adjoint:
    """The backward pass on the forward's chunks: the adjoint ``λ_t = g_t + J_{t+1}^T λ_{t+1}`` (``λ_{T-1} =
    g_{T-1} + ∂L/∂h_last``) and the cell's vector-Jacobian product at every step.

    Multiple shooting in reverse, mirroring the forward: the ragged tail step by step from the end; then a sweep
    down every chunk at once with nothing flowing in, giving each chunk's local adjoint at its first step and
    its Jacobian product ``P_j``; then what flows into the end of each chunk, ``u_{j-1} = J_{s_j}^T λ_{s_j} =
    b_j + P_j^T u_j``, by engine 2's reverse scan over the chunks; finally a second sweep with the true inflow,
    each step's ``λ_t`` feeding its vector-Jacobian product at once, on ``(batch, chunks, ...)`` slices that
    stay in cache. No full-length λ is stored."""

    def __init__(self, cell: Cell, n_xs: int, h: Tensor, jac: _Jacobians, h0: Tensor, inputs: Sequence[Tensor],
                 needs: Sequence[bool], grads_over_xs: bool = False) -> None:  # fmt: skip
        self.cell, self.h, self.jac, self.h0 = cell, h, jac, h0
        self.xs, self.params = inputs[:n_xs], inputs[n_xs:]
        self.needs = needs
        self.ops = DIAGONAL if jac.main[0].dim() == h.dim() else BLOCKS
        # over xs: each step's gradient replaces that step's input once its product has read it
        self.grad_xs = [
            (x if grads_over_xs else torch.empty_like(x)) if need else None for x, need in zip(self.xs, needs)
        ]
        self.grad_params = [torch.zeros_like(p) if need else None for p, need in zip(self.params, needs[n_xs:])]

    def _vjp(
        self, h_prev: Tensor, x_t: Sequence[Tensor], lam: Tensor, grad_x_t: Sequence[Tensor | None],
        residuals: object = None,
    ) -> None:  # fmt: skip
        """Add step ``t``'s vector-Jacobian product to the gradients (``grad_x_t``: views of step t)."""
        if not any(self.needs):
            return
        got = _step_vjp(self.cell, h_prev, x_t, self.params, lam, self.needs, residuals)
        n_xs = len(self.xs)
        for out, grad in zip(grad_x_t, got[:n_xs]):
            if out is None:
                continue
            if grad is None:  # the cell does not use this input
                out.zero_()
            else:
                out.copy_(grad)
        for acc, grad in zip(self.grad_params, got[n_xs:]):
            if acc is not None and grad is not None:
                acc += grad

    def _tail(self, g: Tensor, g_last: Tensor | None) -> Tensor | None:
        """The steps after the last chunk, from the end; returns what flows into the last chunk's last step."""
        h, ops, tail = self.h, self.ops, self.jac.tail
        main = h.shape[1] - tail.shape[1]
        inflow = None if g_last is None else g_last.unsqueeze(1)
        for t in reversed(range(main, h.shape[1])):
            step = slice(t, t + 1)
            lam = g[:, step] if inflow is None else g[:, step] + inflow
            grads = [None if gx is None else gx[:, step] for gx in self.grad_xs]
            self._vjp(h[:, t - 1 : t], [x[:, step] for x in self.xs], lam, grads)
            inflow = ops.apply(ops.transpose(tail[:, t - main : t - main + 1]), lam)
        return inflow

    def _down_chunks(self, gv: Sequence[Tensor], inflow: Tensor | None) -> Iterator[tuple[int, Tensor]]:
        """``(c, λ_c)`` for c = C-1..0 on every chunk at once (``gv``: ``g``'s chunk views): ``λ_{C-1} = g_{C-1} +
        inflow`` (none: 0), ``λ_c = g_c + J_{c+1}^T λ_{c+1}``."""
        jac, ops = self.jac.main, self.ops
        lam = gv[-1] if inflow is None else gv[-1] + inflow
        for c in reversed(range(len(gv))):
            if c < len(gv) - 1:
                lam = ops.affine(gv[c], ops.transpose(jac[c + 1]), lam)
            yield c, lam

    def run(self, g: Tensor, g_last: Tensor | None) -> tuple[list[Tensor | None], Tensor]:
        """Gradients of the inputs and params, and ``∂L/∂h0 = J_0^T λ_0``."""
        h, jac, ops = self.h, self.jac.main, self.ops
        chunk, n_chunks = len(jac), jac[0].shape[1]
        inflow = self._tail(g, g_last)
        gv = _chunk_views(g, n_chunks, chunk)

        for c, local in self._down_chunks(gv, None):  # sweep 1: each chunk alone, nothing flowing in
            product = jac[c] if c == chunk - 1 else ops.compose(product, jac[c])  # P = J_{C-1} ... J_0
        last = torch.zeros_like(local[:, -1:]) if inflow is None else inflow
        if n_chunks > 1:  # u_{j-1} = b_j + P_j^T u_j over the chunks, u_{n-1} = last
            b = ops.apply(ops.transpose(jac[0][:, 1:]), local[:, 1:])
            into_last = ops.apply(ops.transpose(product[:, -1:]), last).squeeze(1)
            last = torch.cat([scan_adjoint(product[:, :-1], b, into_last, ops=ops), last], dim=1)

        hv = _chunk_views(h, n_chunks, chunk)  # sweep 2: the true adjoint and each step's product
        xv = [_chunk_views(x, n_chunks, chunk) for x in self.xs]
        gxv = [None if gx is None else _chunk_views(gx, n_chunks, chunk) for gx in self.grad_xs]
        first_prev = torch.cat([self.h0.unsqueeze(1), hv[-1][:, :-1]], dim=1)  # the state before each chunk
        for c, lam in self._down_chunks(gv, last):
            x_t = [views[c] for views in xv]
            grads = [None if v is None else v[c] for v in gxv]
            kept = None if self.jac.residuals is None else self.jac.residuals[c]
            self._vjp(hv[c - 1] if c else first_prev, x_t, lam, grads, kept)
        grad_h0 = ops.apply(ops.transpose(jac[0][:, :1]), lam[:, :1]).squeeze(1)
        return [*self.grad_xs, *self.grad_params], grad_h0


class _NewtonRecurrence(torch.autograd.Function):
    """Newton solve in the forward, the adjoint recurrence and the cell's vector-Jacobian products in the
    backward (:class:`_Adjoint`). Scratch ``xs`` (``settings.rebuild_xs``) are kept on ``ctx`` rather than saved:
    the backward overwrites them with their gradients, which would trip the saved tensors' version check."""

    @staticmethod
    def forward(ctx, cell: Cell, settings: _Solve, h0: Tensor, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        xs = inputs[: settings.n_xs]
        h, jac, settings.info = _newton(cell, xs, inputs[settings.n_xs :], h0, settings)
        ctx.cell, ctx.settings = cell, settings
        kept = inputs if settings.rebuild_xs is None else inputs[settings.n_xs :]
        ctx.scratch, ctx.n_kept = (None if settings.rebuild_xs is None else list(xs)), len(kept)
        ctx.residuals = jac.residuals  # the cell's own intermediates, not inputs or outputs: kept on ctx
        ctx.save_for_backward(h, h0, *kept, jac.tail, *jac.main)
        return h, h[:, -1].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h: Tensor | None, grad_last: Tensor | None):
        h, h0, *saved = ctx.saved_tensors
        inputs, (jac_tail, *jac_main) = saved[: ctx.n_kept], saved[ctx.n_kept :]
        settings = ctx.settings
        scratch = settings.rebuild_xs is not None
        if grad_h is None and grad_last is None:
            return None, None, None, *([None] * (ctx.n_kept + (settings.n_xs if scratch else 0)))
        if scratch:  # the forward's xs the first time, fresh ones after (their first use holds gradients)
            if ctx.scratch is None:
                with torch.no_grad():
                    ctx.scratch = [x.to(h.dtype) for x in settings.rebuild_xs()]
            xs, ctx.scratch = ctx.scratch, None
            inputs = [*xs, *inputs]
        grad_h = torch.zeros_like(h) if grad_h is None else grad_h
        jac = _Jacobians(jac_main, jac_tail, ctx.residuals)
        adjoint = _Adjoint(ctx.cell, settings.n_xs, h, jac, h0, inputs, ctx.needs_input_grad[3:], grads_over_xs=scratch)
        grads, grad_h0 = adjoint.run(grad_h, grad_last)
        return None, None, grad_h0 if ctx.needs_input_grad[2] else None, *grads


def _loop_states(cell: Cell, xs: Sequence[Tensor], params: Sequence[Tensor], h0: Tensor) -> Tensor:
    """All states ``(batch, time, *state)`` of the sequential loop, without Jacobians (no autograd)."""
    h = h0.new_empty(h0.shape[0], xs[0].shape[1], *h0.shape[1:])
    state = h0
    for x_t, out_t in zip(zip(*(x.unbind(1) for x in xs)), h.unbind(1)):
        state, _ = cell(state, *x_t, *params, jacobian=False)
        out_t.copy_(state)
    return h


class _SequentialRecurrence(torch.autograd.Function):
    """The sequential loop in the forward, and Newton's gradients (the implicit function theorem, as in
    :class:`_Adjoint`) in the backward, each part computed for the whole sequence at once: the cell's
    Jacobians (and residuals) by one evaluation on all ``(batch, time)`` states, ``λ`` by engine 2's reverse scan
    over them, and every step's vector-Jacobian product by one call of the cell's ``vjp`` (or autograd) on the
    whole sequence. Scratch ``xs`` are handled as by :class:`_NewtonRecurrence`.

    For short sequences on CPU, where Newton's chunks would be few and short: the loop's steps are the cell
    alone (no Jacobian), and the backward is a few whole-sequence operations instead of two sweeps of per-step
    ones."""

    @staticmethod
    def forward(ctx, cell: Cell, ops: Transitions, settings: _Solve, h0: Tensor, *inputs: Tensor):
        ctx.set_materialize_grads(False)
        xs = inputs[: settings.n_xs]
        h = _loop_states(cell, xs, inputs[settings.n_xs :], h0)
        ctx.cell, ctx.ops, ctx.settings = cell, ops, settings
        kept = inputs if settings.rebuild_xs is None else inputs[settings.n_xs :]
        ctx.scratch, ctx.n_kept = (None if settings.rebuild_xs is None else list(xs)), len(kept)
        ctx.save_for_backward(h, h0, *kept)
        return h, h[:, -1].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h: Tensor | None, grad_last: Tensor | None):
        h, h0, *inputs = ctx.saved_tensors
        settings, ops = ctx.settings, ctx.ops
        scratch = settings.rebuild_xs is not None
        needs = ctx.needs_input_grad[4:]
        if grad_h is None and grad_last is None:
            return None, None, None, None, *([None] * len(needs))
        if scratch:  # the forward's xs the first time, fresh ones after (their first use holds gradients)
            if ctx.scratch is None:
                with torch.no_grad():
                    ctx.scratch = [x.to(h.dtype) for x in settings.rebuild_xs()]
            inputs, ctx.scratch = [*ctx.scratch, *inputs], None
        xs, params = inputs[: settings.n_xs], inputs[settings.n_xs :]
        h_prev = torch.cat([h0.unsqueeze(1), h[:, :-1]], dim=1)
        _, jac, *kept = ctx.cell(h_prev, *xs, *params, jacobian=True)
        lam = scan_adjoint(jac, torch.zeros_like(h) if grad_h is None else grad_h, grad_last, ops=ops)
        grads = [None] * len(needs)
        if any(needs):
            got = _step_vjp(ctx.cell, h_prev, xs, params, lam, needs, kept[0] if kept else None)
            for i, (grad, need) in enumerate(zip(got, needs)):
                if need and grad is None:  # the cell does not use this input
                    grad = torch.zeros_like(inputs[i])
                if need and scratch and i < settings.n_xs:
                    grad = inputs[i].copy_(grad)  # over the scratch input, as Newton's backward does
                grads[i] = grad if need else None
        grad_h0 = ops.apply(ops.transpose(jac[:, :1]), lam[:, :1]).squeeze(1) if ctx.needs_input_grad[3] else None
        return None, None, None, grad_h0, *grads


class _NamedCellRecurrence(torch.autograd.Function):
    """:class:`_SequentialRecurrence` (``sequential``) or :class:`_NewtonRecurrence`, with the cell named by its
    import path (``module:qualname``, a module-level function) and the settings as numbers: the arguments an
    opaque operator can carry (:func:`~rnnzoo.ops.opaque.traceable`). Compiled graphs only."""

    @staticmethod
    def forward(ctx, sequential: bool, cell_name: str, n_xs: int, tol: float, max_iters: int, chunk_size: int,
                h0: Tensor, *inputs: Tensor) -> tuple[Tensor, Tensor]:  # fmt: skip
        module, name = cell_name.split(":")
        cell = getattr(importlib.import_module(module), name)
        settings = _Solve(n_xs=n_xs, tol=tol, max_iters=max_iters, chunk_size=chunk_size)
        ctx.sequential = sequential
        if sequential:
            ops = _jacobian_kind(cell, inputs[:n_xs], h0, inputs[n_xs:])
            return _SequentialRecurrence.forward(ctx, cell, ops, settings, h0, *inputs)
        return _NewtonRecurrence.forward(ctx, cell, settings, h0, *inputs)

    @staticmethod
    def backward(ctx, grad_h: Tensor | None, grad_last: Tensor | None):
        # the delegate counts its own leading arguments: three (sequential) or two, where this has six
        delegate, extra = (_SequentialRecurrence, 3) if ctx.sequential else (_NewtonRecurrence, 4)
        ctx.needs_input_grad = ctx.needs_input_grad[extra:]
        grads = delegate.backward(ctx, grad_h, grad_last)
        return (None,) * extra + tuple(grads)


def _named_cell_shapes(sequential, cell_name, n_xs, tol, max_iters, chunk_size, h0, *inputs) -> tuple[Tensor, Tensor]:
    h = h0.new_empty(h0.shape[0], inputs[0].shape[1], *h0.shape[1:])
    return h, h0.new_empty(h0.shape)


_named_cell_recurrence = traceable(_NamedCellRecurrence, _named_cell_shapes)


def nonlinear_recurrence(
    cell: Cell,
    xs: Sequence[Tensor],
    h0: Tensor,
    params: Sequence[Tensor] = (),
    *,
    mode: str = "newton",
    tol: float | None = None,
    max_iters: int = DEFAULT_MAX_ITERS,
    chunk_size: int | None = None,
    rebuild_xs: Callable[[], Sequence[Tensor]] | None = None,
) -> tuple[Tensor, Tensor, NewtonInfo | None]:
    """All states of ``h_t = f(h_{t-1}, x_t)``, by Newton's method (``mode="newton"``) or the loop (``"recurrent"``).

    Args:
        cell: ``cell(h_prev, *xs_t, *params, jacobian) -> (h, J)``, element-wise over leading dims (see the
            module docstring).
        xs: per-step inputs, each ``(batch, time, ...)``.
        h0: initial state ``(batch, *state)``.
        params: tensors passed whole to every call (broadcast over steps), e.g. recurrent weights.
        mode: ``"newton"`` (parallel) or ``"recurrent"`` (:func:`nonlinear_recurrence_reference`).
        tol: stop when ``max |H^new - H| <= tol``; default :func:`default_tolerance` of the compute dtype.
        max_iters: Newton iterations before falling back to the sequential loop (with a warning).
        chunk_size: steps per chunk, >= 1 (1 is DEER); default :func:`default_chunk_size`, or on CPU for fewer
            than ``SEQUENTIAL_BELOW`` steps the sequential solve (reported as one iteration of one chunk).
        rebuild_xs: declares ``xs`` scratch, intermediates the caller will not read again (``"newton"`` only):
            the backward then writes their gradients over them, sparing a buffer of their size (the ParaRNN
            layers' pre-activations at (8, 4096, 256): 96 MiB, which on CPU also costs ~25k page faults), and
            calls ``rebuild_xs()`` (under no grad) for fresh ones if it runs again (``retain_graph=True``).

    Returns:
        ``(h, h_last, info)``: all states ``(batch, time, *state)`` in the compute dtype (float32 for half
        precision), the final state, and a :class:`NewtonInfo` (``None`` for ``mode="recurrent"``). Gradients
        flow to ``xs``, ``params`` and ``h0`` (implicit differentiation for ``"newton"``).
    """
    if mode not in MODES:
        raise ValueError(f"nonlinear_recurrence: `mode` must be one of {MODES}, got {mode!r}")
    check_int("nonlinear_recurrence", "max_iters", max_iters)
    if chunk_size is not None:
        check_int("nonlinear_recurrence", "chunk_size", chunk_size)
    if tol is not None and not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"nonlinear_recurrence: `tol` must be a positive float, got {tol!r}")
    if mode == "recurrent":
        return (*nonlinear_recurrence_reference(cell, xs, h0, params), None)
    xs, h0, params = _check_inputs(cell, xs, h0, params)
    length = xs[0].shape[1]
    settings = _Solve(
        n_xs=len(xs),
        tol=default_tolerance(h0.dtype) if tol is None else float(tol),
        max_iters=max_iters,
        chunk_size=chunk_size or default_chunk_size(length, h0.numel(), h0.device),
        rebuild_xs=rebuild_xs,
    )
    sequential = chunk_size is None and h0.device.type == "cpu" and length < SEQUENTIAL_BELOW
    if torch.compiler.is_compiling():  # the cell by name, the settings as numbers; no NewtonInfo comes back
        cell_name = f"{cell.__module__}:{cell.__name__}"
        solve = (settings.n_xs, settings.tol, settings.max_iters, settings.chunk_size)
        h, h_last = _named_cell_recurrence(sequential, cell_name, *solve, h0, *xs, *params)
        return h, h_last, None
    if sequential:
        ops = _jacobian_kind(cell, xs, h0, params)
        h, h_last = _SequentialRecurrence.apply(cell, ops, settings, h0, *xs, *params)
        return h, h_last, NewtonInfo(1, True, 0.0, length)
    h, h_last = _NewtonRecurrence.apply(cell, settings, h0, *xs, *params)
    return h, h_last, settings.info
