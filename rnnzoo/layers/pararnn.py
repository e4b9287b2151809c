"""ParaGRU and ParaLSTM: GRU and LSTM cells with diagonal recurrent weights, trained by Newton's method.

Danieli, Rodriguez, Sarabia, Suau, Zappella (2025), "ParaRNN: Unlocking Parallel Training of Nonlinear RNNs
for Large Language Models" (reference code: apple/ml-pararnn, ``pararnn/rnn_cell/gru_diag_mh.py`` and
``lstm_cifg_diag_mh.py``). Making every recurrent weight diagonal keeps the cells nonlinear but makes the
Jacobian ``∂h_t/∂h_{t-1}`` diagonal (GRU) or 2×2-block-diagonal (LSTM, state (c, h)), so Newton's method solves
the whole sequence with a linear scan per iteration (engine 1, :mod:`rnnzoo.ops.newton`). Each layer also runs
its plain sequential loop (``mode="recurrent"``, used by ``step``).

The input weights are block-diagonal over ``num_heads`` heads, as in the reference ("MH"; its default, 2
heads): head i's ``d / num_heads`` inputs feed only its own ``d / num_heads`` state channels, so the input
projection costs ``1 / num_heads`` of a dense one; ``num_heads=1`` is a dense projection. Departure from the
reference: the Newton solver stops at a tolerance instead of after a fixed 3 iterations. Initialisation follows
the reference: ``A``, ``C`` ~ N(0, 2 / sqrt(5 d)) ("xlstm"), input weights Xavier-uniform with fan-in
``d / num_heads`` and fan-out ``d``, biases 0 except the first gate's, ``-linspace(0, 1, d)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..ops.newton import DEFAULT_MAX_ITERS, SEQUENTIAL_BELOW, Cell, NewtonInfo, nonlinear_recurrence
from ..registry import register
from .base import DiagonalState, RecurrentState, SequenceLayer, state_dtype
from .common import head_size

__all__ = ["ParaGRU", "ParaLSTM", "ParaLSTMState", "para_gru_cell", "para_gru_vjp", "para_lstm_cell", "para_lstm_vjp"]


def _tanh(v: Tensor) -> Tensor:
    """``tanh(v) = 2 σ(2v) - 1``. On CPU PyTorch's vectorised sigmoid is about 4x faster than its tanh, which
    pays for the two extra element-wise operations from about 4k numbers on (Newton's chunk steps, even at
    small shapes); smaller tensors (the sequential loop's steps at small batch) and other devices keep
    ``torch.tanh``, one operation."""
    if v.device.type != "cpu" or v.numel() < 2**12:
        return torch.tanh(v)
    s = torch.sigmoid(v * 2)
    return torch.add(s, s).sub_(1)


def _para_gru_gates(h: Tensor, pre: Tensor, A: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The gates of :func:`para_gru_cell`: ``(z, r, r h, n)`` (z and r by one sigmoid over both)."""
    z, r = torch.sigmoid_(torch.addcmul(pre[..., :2, :], A[..., :2, :], h.unsqueeze(-2))).unbind(-2)
    rh = r * h
    n = _tanh(torch.addcmul(pre[..., 2, :], A[..., 2, :], rh))
    return z, r, rh, n


def para_gru_cell(h: Tensor, pre: Tensor, A: Tensor, *, jacobian: bool = False) -> tuple[Tensor, ...]:
    """One ParaGRU step, element-wise over leading dims: ``h`` ``(..., *channels)``, ``pre`` ``(..., gate,
    channel)`` the input pre-activations ``B x + b`` of (z, r, n), ``A`` the diagonal recurrent weights.

    Channels are ``(d,)``, with ``pre`` ``(..., 3, d)`` and ``A`` ``(3, d)``, or split into heads ``(heads, k)``
    (the layers' layout), with ``pre`` ``(..., heads, 3, k)`` and ``A`` ``(heads, 3, k)``.
    ``J = ∂h_t/∂h_{t-1} = (1 - z) + z(1 - z) a_z (n - h) + z (1 - n²) a_n (r + h r(1 - r) a_r)`` (diagonal).
    Its vector-Jacobian product for the engine's backward is :func:`para_gru_vjp` (``para_gru_cell.vjp``).

    Returns ``(h_t, None)``, or with ``jacobian=True`` ``(h_t, J, (z, r, n))``: the gates are the residuals the
    engine keeps for the vjp (3 numbers per state number and step; recomputing them instead took about a tenth
    of ParaGRU's forward+backward at (8, 4096, 256)).
    """
    z, r, rh, n = _para_gru_gates(h, pre, A)
    n_minus_h = n - h
    h_new = torch.addcmul(h, z, n_minus_h)
    if not jacobian:
        return h_new, None
    a_z, a_r, a_n = A.unbind(-2)
    keep = 1 - z
    d_reset = torch.addcmul(r, torch.addcmul(rh, r, rh, value=-1), a_r)  # ∂(r h)/∂h = r + a_r h r (1 - r)
    d_cand = torch.addcmul(a_n, a_n * n, n, value=-1).mul_(d_reset)  # ∂n/∂h = a_n (1 - n²) ∂(r h)/∂h
    jac = torch.addcmul(keep, z, torch.addcmul(d_cand, keep * a_z, n_minus_h))
    return h_new, jac, (z, r, n)


def para_gru_vjp(
    h: Tensor, pre: Tensor, A: Tensor, lam: Tensor, *, residuals: tuple[Tensor, Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """``λ · para_gru_cell(h, pre, A)`` differentiated by hand: ``(∂/∂pre, ∂/∂A)`` of ``pre``'s and ``A``'s
    shapes, ``∂/∂A`` summed over the leading dims; the gates are the cell's ``residuals`` if given::

        g_n = λ z (1 - n²),   g_z = λ z (1 - z)(n - h),   g_r = g_n a_n h r (1 - r)
        ∂/∂A = Σ (g_z h, g_r h, g_n r h)

    One evaluation of the gates and a dozen element-wise operations (writing into one result of ``pre``'s shape),
    where autograd records about 25. Not differentiable itself (``out=`` writes): the engine calls it inside
    its backward, under no grad.
    """
    if residuals is None:
        z, r, rh, n = _para_gru_gates(h, pre, A)
    else:
        (z, r, n), rh = residuals, residuals[1] * h
    lz = lam * z
    grad_pre = h.new_empty(*h.shape[:-1], 3, h.shape[-1])
    g_z, g_r, g_n = grad_pre.unbind(-2)
    torch.addcmul(lz, lz * n, n, value=-1, out=g_n)
    torch.mul(torch.addcmul(lz, lz, z, value=-1), n - h, out=g_z)
    torch.mul(g_n * A[..., 2, :], torch.addcmul(rh, r, rh, value=-1), out=g_r)
    lead = tuple(range(h.dim() - A.dim() + 1))
    grad_A = torch.cat([(grad_pre[..., :2, :] * h.unsqueeze(-2)).sum(lead), (g_n * rh).sum(lead).unsqueeze(-2)], -2)
    return grad_pre, grad_A


para_gru_cell.vjp = para_gru_vjp  # type: ignore[attr-defined]  # the engine's backward uses it in place of autograd


def _component_dim(A: Tensor) -> int:
    """The dim of (c, h) in a ParaLSTM state ``(..., 2, *channels)``, channels being ``A``'s ``(d,)`` or
    ``(heads, k)``."""
    return -A.dim()


def _para_lstm_gates(state: Tensor, pre: Tensor, A: Tensor, C: Tensor) -> tuple[Tensor, ...]:
    """The gates of :func:`para_lstm_cell`: ``(c', h', f, c~, c, o, tanh c)`` (primes: step t-1)."""
    c_prev, h_prev = state.unbind(_component_dim(A))
    a_f, a_o, a_c = A.unbind(-2)
    w_f, w_o = C.unbind(-2)
    p_f, p_o, p_c = pre.unbind(-2)
    f = torch.sigmoid(torch.addcmul(torch.addcmul(p_f, a_f, h_prev), w_f, c_prev))
    cand = _tanh(torch.addcmul(p_c, a_c, h_prev))
    c = torch.addcmul(cand, f, c_prev - cand)
    o = torch.sigmoid(torch.addcmul(torch.addcmul(p_o, a_o, h_prev), w_o, c))
    return c_prev, h_prev, f, cand, c, o, _tanh(c)


def para_lstm_cell(
    state: Tensor, pre: Tensor, A: Tensor, C: Tensor, *, jacobian: bool = False
) -> tuple[Tensor, Tensor | None]:
    """One ParaLSTM step, element-wise over leading dims: ``state`` ``(..., 2, *channels)`` holds (c, h), ``pre``
    ``(..., gate, channel)`` the input pre-activations of (f, o, c~), ``A`` the diagonal weights of (f, o, c~) on
    ``h_{t-1}``, ``C`` the peepholes of f (on ``c_{t-1}``) and o (on ``c_t``).

    Channels are ``(d,)``, with ``pre`` ``(..., 3, d)``, ``A`` ``(3, d)`` and ``C`` ``(2, d)``, or split into
    heads ``(heads, k)`` (the layers' layout), with ``pre`` ``(..., heads, 3, k)``, ``A`` ``(heads, 3, k)`` and
    ``C`` ``(heads, 2, k)``. ``J`` ``(..., 2, 2, *channels)`` is ``[[∂c/∂c', ∂c/∂h'], [∂h/∂c', ∂h/∂h']]`` per
    channel (primes: step t-1). Its vector-Jacobian product for the engine's backward is :func:`para_lstm_vjp`
    (``para_lstm_cell.vjp``), which recomputes the gates: unlike ParaGRU's three, the five would cost more
    memory as residuals than their recomputation costs time.
    """
    c_prev, h_prev, f, cand, c, o, tanh_c = _para_lstm_gates(state, pre, A, C)
    components = _component_dim(A)
    new = torch.stack([c, o * tanh_c], dim=components)
    if not jacobian:
        return new, None
    a_f, a_o, a_c = A.unbind(-2)
    w_f, w_o = C.unbind(-2)
    gap = c_prev - cand
    d_f = torch.addcmul(f, f, f, value=-1)  # f (1 - f)
    d_o = torch.addcmul(o, o, o, value=-1)
    j_cc = torch.addcmul(f, d_f * w_f, gap)
    d_cand = torch.addcmul(a_c, a_c * cand, cand, value=-1)  # ∂c~/∂h' = a_c (1 - c~²)
    j_ch = torch.addcmul((1 - f) * d_cand, d_f * a_f, gap)
    # through o's peephole and tanh(c): o (1 - tanh² c) + o (1 - o) w_o tanh c
    dh_dc = torch.addcmul(torch.addcmul(o, o * tanh_c, tanh_c, value=-1), d_o * w_o, tanh_c)
    j_hc = dh_dc * j_cc
    j_hh = torch.addcmul(d_o * a_o * tanh_c, dh_dc, j_ch)
    jac = torch.stack([j_cc, j_ch, j_hc, j_hh], dim=components).unflatten(components, (2, 2))
    return new, jac


def para_lstm_vjp(state: Tensor, pre: Tensor, A: Tensor, C: Tensor, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``λ · para_lstm_cell(state, pre, A, C)`` differentiated by hand, ``λ = (λ_c, λ_h)`` of the state's shape:
    ``(∂/∂pre, ∂/∂A, ∂/∂C)`` of their shapes, the weights' summed over the leading dims::

        g_o = λ_h tanh(c) o (1 - o),   δc = λ_c + λ_h o (1 - tanh² c) + g_o w_o
        g_f = δc (c' - c~) f (1 - f),   g_c = δc (1 - f)(1 - c~²)
        ∂/∂A = Σ (g_f h', g_o h', g_c h'),   ∂/∂C = Σ (g_f c', g_o c)

    Like :func:`para_gru_vjp`, not differentiable itself (``out=`` writes).
    """
    c_prev, h_prev, f, cand, c, o, tanh_c = _para_lstm_gates(state, pre, A, C)
    lam_c, lam_h = lam.unbind(_component_dim(A))
    grad_pre = h_prev.new_empty(*h_prev.shape[:-1], 3, h_prev.shape[-1])
    g_f, g_o, g_c = grad_pre.unbind(-2)
    torch.mul(lam_h * tanh_c, torch.addcmul(o, o, o, value=-1), out=g_o)
    lam_o = lam_h * o
    delta_c = torch.addcmul(torch.addcmul(lam_c + lam_o, lam_o, tanh_c * tanh_c, value=-1), g_o, C[..., 1, :])
    torch.mul(delta_c * (c_prev - cand), torch.addcmul(f, f, f, value=-1), out=g_f)
    keep = delta_c - delta_c * f  # δc (1 - f)
    torch.addcmul(keep, keep * cand, cand, value=-1, out=g_c)
    lead = tuple(range(h_prev.dim() - A.dim() + 1))
    grad_A = (grad_pre * h_prev.unsqueeze(-2)).sum(lead)
    grad_C = torch.stack([(g_f * c_prev).sum(lead), (g_o * c).sum(lead)], dim=-2)
    return grad_pre, grad_A, grad_C


para_lstm_cell.vjp = para_lstm_vjp  # type: ignore[attr-defined]


class _HeadProjection(torch.autograd.Function):
    """The gates' pre-activations by block-diagonal input weights, ``(..., d)`` -> ``(..., heads, gates, k)``::

        pre[..., h, g, j] = Σ_i x[..., h·k + i] W[h, i, g, j] + b[g, h·k + j]      (k = d / heads)

    One matrix product per head, ``W[h]`` seen as ``(k, gates·k)``, each writing its ``(rows, gates·k)`` block of
    the head-major output in place; the backward takes two per head. In a gate-major layout ``(..., gates, d)``
    each head's gates are separate blocks: one product per (head, gate), with K = k in the backward's, which
    runs slower.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        heads, k, gates, _ = weight.shape
        rows = x.reshape(-1, heads * k)
        weight = weight.contiguous()
        out = rows.new_empty(rows.shape[0], heads, gates * k)
        head_bias = bias.view(gates, heads, k).transpose(0, 1).reshape(heads, gates * k)
        for h in range(heads):
            torch.addmm(head_bias[h], rows[:, h * k : (h + 1) * k], weight[h].view(k, gates * k), out=out[:, h])
        ctx.save_for_backward(x, weight, bias)  # bias for its version check: the engine rebuilds pre from all three
        return out.view(*x.shape[:-1], heads, gates, k)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight, _ = ctx.saved_tensors
        heads, k, gates, _ = weight.shape
        rows = x.reshape(-1, heads * k)
        grad = grad.reshape(rows.shape[0], heads, gates * k)
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = torch.empty_like(rows) if need_x else None
        grad_w = weight.new_empty(weight.shape) if need_w else None
        for h in range(heads):
            block = slice(h * k, (h + 1) * k)
            if need_x:
                torch.mm(grad[:, h], weight[h].view(k, gates * k).t(), out=grad_x[:, block])
            if need_w:
                torch.mm(rows[:, block].t(), grad[:, h], out=grad_w[h].view(k, gates * k))
        grad_b = grad.sum(0).view(heads, gates, k).transpose(0, 1).reshape(gates, heads * k) if need_b else None
        return None if grad_x is None else grad_x.view_as(x), grad_w, grad_b


@dataclass
class ParaLSTMState(RecurrentState):
    """``h`` and ``c``, each ``(batch, d_model)``."""

    h: Tensor
    c: Tensor



class _ParaRNN(SequenceLayer):
    """Shared shell: a block-diagonal input projection to the gates' pre-activations, diagonal recurrent weights,
    the engine.

    ``num_heads`` (dividing ``d_model``) sets the blocks of the input weights ``in_weight``
    ``(num_heads, d_model / num_heads, n_gates, d_model / num_heads)``; ``in_bias`` is ``(n_gates, d_model)``.
    ``tol``, ``max_iters`` and ``chunk_size`` configure the Newton solve (see :func:`nonlinear_recurrence`);
    :attr:`newton_info` reports the last one (iterations, convergence).
    """

    parallel_modes = ("newton",)
    n_gates = 3
    cell: ClassVar[Cell]  # one step with its Jacobian, for the engine
    recurrent_rows: ClassVar[dict[str, int]]  # the diagonal recurrent weights: name -> rows of d_model entries
    loop_below: ClassVar[int] = 0  # on CPU, "auto" runs the loop from SEQUENTIAL_BELOW steps up to this

    def __init__(
        self,
        d_model: int,
        num_heads: int = 2,
        mode: str = "auto",
        tol: float | None = None,
        max_iters: int = DEFAULT_MAX_ITERS,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(d_model, mode)
        where = type(self).__name__
        if tol is not None and not (isinstance(tol, (int, float)) and tol > 0):
            raise ValueError(f"{where}: `tol` must be a positive float, got {tol!r}")
        self.tol = tol
        self.max_iters = check_int(where, "max_iters", max_iters)
        self.chunk_size = None if chunk_size is None else check_int(where, "chunk_size", chunk_size)
        self.newton_info: NewtonInfo | None = None
        self.num_heads = check_int(where, "num_heads", num_heads)
        head = head_size(where, "d_model", d_model, num_heads)
        self.in_weight = nn.Parameter(torch.empty(num_heads, head, self.n_gates, head))
        self.in_bias = nn.Parameter(torch.empty(self.n_gates, d_model))
        for name, rows in self.recurrent_rows.items():
            setattr(self, name, nn.Parameter(torch.empty(rows, d_model)))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        d = self.d_model
        bound = math.sqrt(6 / (d // self.num_heads + d))
        self.in_weight.uniform_(-bound, bound)
        self.in_bias.zero_()
        self.in_bias[0] = -torch.linspace(0, 1, d)
        for p in self._recurrent_weights():
            p.normal_(0, 2 / math.sqrt(5 * d))

    def _auto_mode(self, x: Tensor) -> str:
        """On CPU the loop (``"recurrent"``) for sequences of ``SEQUENTIAL_BELOW`` (the engine's own sequential
        solve, below) up to :attr:`loop_below` steps, where it is the faster form; else the engine."""
        if x.device.type == "cpu" and SEQUENTIAL_BELOW <= x.shape[1] < self.loop_below:
            return "recurrent"
        return super()._auto_mode(x)

    def _recurrent_weights(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self, name) for name in self.recurrent_rows)

    def _preactivations(self, x: Tensor) -> Tensor:
        """``B x + b`` of every gate, per head: ``(..., num_heads, n_gates, d_model / num_heads)``
        (:class:`_HeadProjection`; traced, as one einsum the compiler and exporters take)."""
        if torch.compiler.is_compiling():
            heads, k, gates, _ = self.in_weight.shape
            bias = self.in_bias.view(gates, heads, k).transpose(0, 1)
            return torch.einsum("...hi,higj->...hgj", x.unflatten(-1, (heads, k)), self.in_weight) + bias
        return _HeadProjection.apply(x, self.in_weight, self.in_bias)

    def _scratch(self, x: Tensor) -> tuple[Tensor]:
        """The engine's ``rebuild_xs``: ``pre`` is the layer's own intermediate, so Newton's backward may write its
        gradient over it (and rebuild it from ``x`` if it runs twice)."""
        return (self._preactivations(x),)

    def _recurrence(self, x: Tensor, h0: Tensor, mode: str) -> tuple[Tensor, Tensor]:
        """All states ``(batch, time, *state, d_model)`` and the final state of the cell over ``x``, from ``h0``
        ``(batch, *state, d_model)``. The engine runs on channels split into heads, ``(heads, d_model / heads)``,
        the layout of the pre-activations (the recurrent weights are viewed the same way)."""
        pre = self._preactivations(x)
        weights = [w.unflatten(-1, (self.num_heads, -1)).transpose(0, 1) for w in self._recurrent_weights()]
        h, h_last, info = nonlinear_recurrence(
            self.cell, (pre,), h0.unflatten(-1, (self.num_heads, -1)), weights, mode=mode, tol=self.tol,
            max_iters=self.max_iters, chunk_size=self.chunk_size, rebuild_xs=functools.partial(self._scratch, x),
        )  # fmt: skip
        if info is not None:
            self.newton_info = info
        return h.flatten(-2), h_last.flatten(-2)

    def extra_repr(self) -> str:
        newton = f"tol={self.tol}, max_iters={self.max_iters}, chunk_size={self.chunk_size}"
        return f"{super().extra_repr()}, num_heads={self.num_heads}, {newton}"


@register(
    "paragru",
    family="nonlinear RNN",
    engine="newton",
    paper="Danieli et al. 2025, ParaRNN: Unlocking Parallel Training of Nonlinear RNNs for Large Language Models",
)
class ParaGRU(_ParaRNN):
    """GRU with diagonal recurrent weights (ParaRNN's ``GRUDiagMH``), per channel::

        z = σ(B_z x + b_z + a_z h_{t-1}),   r = σ(B_r x + b_r + a_r h_{t-1})
        n = tanh(B_n x + b_n + a_n (r h_{t-1}))
        h_t = z n + (1 - z) h_{t-1}

    Note the reference's convention (z weighs the candidate; ``nn.GRU``'s z weighs ``h_{t-1}``) and ``r``
    acting on ``h_{t-1}`` before the recurrent weight. Output ``y_t = h_t``. State: ``DiagonalState(h)``,
    ``h`` ``(batch, d_model)``. Modes: ``"newton"`` (parallel) and ``"recurrent"``.
    """

    cell = staticmethod(para_gru_cell)
    recurrent_rows: ClassVar[dict[str, int]] = {"A": 3}

    def init_state(self, batch_size: int, device=None, dtype=None) -> DiagonalState:
        kw = self._state_kwargs(device, dtype)
        return DiagonalState(torch.zeros(batch_size, self.d_model, device=kw["device"], dtype=state_dtype(kw["dtype"])))

    def _forward(self, x: Tensor, state: DiagonalState | None, mode: str) -> tuple[Tensor, DiagonalState]:
        h0 = (self.init_state(x.shape[0], x.device, x.dtype) if state is None else state).h
        h, h_last = self._recurrence(x, h0, mode)
        return h.to(x.dtype), DiagonalState(h_last)


@register(
    "paralstm",
    family="nonlinear RNN",
    engine="newton",
    paper="Danieli et al. 2025, ParaRNN: Unlocking Parallel Training of Nonlinear RNNs for Large Language Models",
)
class ParaLSTM(_ParaRNN):
    """LSTM with coupled input and forget gates, peepholes and diagonal recurrent weights (ParaRNN's
    ``LSTMCIFGDiagMH``), per channel::

        f   = σ(B_f x + b_f + a_f h_{t-1} + w_f c_{t-1})
        c~  = tanh(B_c x + b_c + a_c h_{t-1})
        c_t = f c_{t-1} + (1 - f) c~
        o   = σ(B_o x + b_o + a_o h_{t-1} + w_o c_t)
        h_t = o tanh(c_t)

    The Newton state is (c, h) per channel, whose Jacobian is 2×2-block-diagonal: each iteration solves a
    block scan (:func:`~rnnzoo.ops.block_scan.block_linear_scan`), as the reference does. Output ``y_t = h_t``.
    State: :class:`ParaLSTMState`. Modes: ``"newton"`` (parallel) and ``"recurrent"``; on CPU ``"auto"`` is
    the loop for sequences of 64 up to :attr:`loop_below` (256) steps, else the engine.
    """

    cell = staticmethod(para_lstm_cell)
    recurrent_rows: ClassVar[dict[str, int]] = {"A": 3, "C": 2}
    # Newton's chunk steps carry 2×2 Jacobian blocks (about 40 operations per step with them, and as many in
    # the backward): with fewer than about 16 chunks they cost more than the loop's single pass, at small and
    # at moderate batch and width. Shorter sequences still go to the engine, whose
    # sequential solve (loop forward, whole-sequence gradients) beats the loop under autograd there.
    loop_below: ClassVar[int] = 256

    def init_state(self, batch_size: int, device=None, dtype=None) -> ParaLSTMState:
        kw = self._state_kwargs(device, dtype)
        zeros = torch.zeros(batch_size, self.d_model, device=kw["device"], dtype=state_dtype(kw["dtype"]))
        return ParaLSTMState(h=zeros, c=zeros.clone())

    def _forward(self, x: Tensor, state: ParaLSTMState | None, mode: str) -> tuple[Tensor, ParaLSTMState]:
        state = self.init_state(x.shape[0], x.device, x.dtype) if state is None else state
        states, last = self._recurrence(x, torch.stack([state.c, state.h], dim=1), mode)
        return states[:, :, 1].to(x.dtype), ParaLSTMState(h=last[:, 1], c=last[:, 0])
