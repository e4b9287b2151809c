"""minGRU and minLSTM: gates that depend on the input only, so the recurrence is linear.

Feng, Tung, Ahmed, Bengio, Hajimirsadeghi (2024), "Were RNNs All We Needed?".
Dropping the hidden state from the gates of GRU and LSTM leaves a diagonal
linear recurrence ``h_t = a_t ⊙ h_{t-1} + b_t`` (engine 2), trained with a scan.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import register
from .base import DiagonalState, SequenceLayer, channel_groups, diagonal_operator, diagonal_recurrence, state_dtype

__all__ = ["MinGRU", "MinLSTM"]


class _MinRNN(SequenceLayer):
    """Shared shell: one input projection to (gates, candidate), the scan, an optional output projection.

    With ``expand != 1`` the hidden size is ``round(expand * d_model)`` and
    a linear layer maps it back to ``d_model`` (as in the paper's stacked models).
    With ``negative_eigenvalues=True`` the transition ``a_t ∈ (0, 1)`` becomes
    ``2 a_t - 1 ∈ (-1, 1)`` (Grazzi et al. 2024), which lets it count mod 2.
    """

    parallel_modes = ("scan",)
    renamed_arguments = {"expansion": "expand"}
    n_gates: int  # projections besides the candidate

    def __init__(self, d_model: int, expand: float = 1.0, negative_eigenvalues: bool = False, mode: str = "auto"):
        super().__init__(d_model, mode)
        if not expand > 0:
            raise ValueError(f"{type(self).__name__}: `expand` must be > 0, got {expand}")
        self.d_hidden = max(1, round(expand * d_model))
        self.negative_eigenvalues = negative_eigenvalues
        self.in_proj = nn.Linear(d_model, (self.n_gates + 1) * self.d_hidden)
        self.out_proj = nn.Linear(self.d_hidden, d_model) if self.d_hidden != d_model else nn.Identity()

    def init_state(self, batch_size: int, device=None, dtype=None) -> DiagonalState:
        kw = self._state_kwargs(device, dtype)
        return DiagonalState(torch.zeros(batch_size, self.d_hidden, device=kw["device"], dtype=state_dtype(kw["dtype"])))

    def _transition(self, gates: Tensor) -> tuple[Tensor, Tensor]:
        """(a_t, weight of the candidate) from the gate pre-activations."""
        raise NotImplementedError

    def _gates(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(a_t, w_t, v_t)`` of ``h_t = a_t ⊙ h_{t-1} + w_t ⊙ v_t``: transition, candidate weight, candidate."""
        *gates, candidate = self.in_proj(x).split(self.d_hidden, dim=-1)
        a, weight = self._transition(*gates)
        return (2 * a - 1 if self.negative_eigenvalues else a), weight, candidate

    def _mix(self, x: Tensor, h0: Tensor | None, mode: str) -> tuple[Tensor, Tensor, Tensor]:
        """``(v, h, h_last)``: the candidates and the states of the recurrence."""
        a, w, v = self._gates(x)
        h, h_last = diagonal_recurrence(a, w * v, h0, mode)
        return v, h, h_last

    def _forward(self, x: Tensor, state: DiagonalState | None, mode: str) -> tuple[Tensor, DiagonalState]:
        _, h, h_last = self._mix(x, None if state is None else state.h, mode)
        return self.out_proj(h), DiagonalState(h_last)

    def _materialize(self, x: Tensor) -> Tensor:
        """``M[b, c, t, s] = w_{s,c} Π_{r=s+1..t} a_{r,c}``, one group per hidden channel ``(batch, d_hidden, T, T)``.

        ``w_t = z_t`` (minGRU) or ``i'_t`` (minLSTM), ``a_t`` the transition (``1 - z_t`` or ``f'_t``).
        """
        a, w, _ = self._gates(x)
        return diagonal_operator(a, w)

    def _transition_eigenvalues(self, x: Tensor) -> Tensor:
        """``a_t`` ``(batch, T, d_hidden)``: ``1 - z_t`` (minGRU) or ``f'_t`` (minLSTM), or ``2 a_t - 1``."""
        return self._gates(x)[0]

    def _mixer_io(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``V = h~_t`` (the candidate), ``Y = h_t`` (the state, before ``out_proj``), ``(batch, d_hidden, T, 1)``."""
        v, h, _ = self._mix(x, None, "scan")
        return channel_groups(v, h)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_hidden={self.d_hidden}, negative_eigenvalues={self.negative_eigenvalues}"


@register(
    "mingru",
    family="minimal RNN",
    engine="linear_scan",
    paper="Feng et al. 2024, Were RNNs All We Needed?",
    negative_eigenvalues=True,
)
class MinGRU(_MinRNN):
    """minGRU: ``z_t = σ(W_z x_t)``, ``h~_t = W_h x_t``, ``h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ h~_t``.

    State: ``DiagonalState(h)`` with ``h`` of shape ``(batch, d_hidden)``.
    """

    n_gates = 1

    def _transition(self, z_logits: Tensor) -> tuple[Tensor, Tensor]:
        return torch.sigmoid(-z_logits), torch.sigmoid(z_logits)  # 1 - z, z


@register(
    "minlstm",
    family="minimal RNN",
    engine="linear_scan",
    paper="Feng et al. 2024, Were RNNs All We Needed?",
    negative_eigenvalues=True,
)
class MinLSTM(_MinRNN):
    """minLSTM: ``f, i = σ(W_f x_t), σ(W_i x_t)``; ``f' = f / (f + i)``, ``i' = i / (f + i)``;
    ``h_t = f' ⊙ h_{t-1} + i' ⊙ W_h x_t``.

    The normalised gates are computed stably as ``f' = σ(log f - log i)``,
    ``i' = 1 - f'``. State: ``DiagonalState(h)`` with ``h`` ``(batch, d_hidden)``.
    """

    n_gates = 2

    def _transition(self, f_logits: Tensor, i_logits: Tensor) -> tuple[Tensor, Tensor]:
        log_ratio = F.logsigmoid(f_logits) - F.logsigmoid(i_logits)
        return torch.sigmoid(log_ratio), torch.sigmoid(-log_ratio)
