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
from .base import DiagonalState, EngineLayer, state_dtype
from .engines import DiagonalEngine, DiagonalInputs

__all__ = ["MinGRU", "MinLSTM"]


class _MinRNN(EngineLayer):
    """Shared shell: one input projection to (gates, candidate), the scan, an optional output projection.

    With ``expand != 1`` the hidden size is ``round(expand * d_model)`` and
    a linear layer maps it back to ``d_model`` (as in the paper's stacked models).
    With ``negative_eigenvalues=True`` the transition ``a_t ∈ (0, 1)`` becomes
    ``2 a_t - 1 ∈ (-1, 1)`` (Grazzi et al. 2024), which lets it count mod 2.
    """

    engine = DiagonalEngine()
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

    def engine_inputs(self, x: Tensor, state: DiagonalState | None = None) -> tuple[DiagonalInputs, None]:
        """``h_t = a_t ⊙ h_{t-1} + w_t ⊙ v_t``: ``a_t`` the transition (``1 - z_t`` or ``f'_t``, or ``2 a_t - 1``),
        ``w_t`` the candidate's weight (``z_t`` or ``i'_t``), ``v_t = h~_t`` the candidate."""
        *gates, candidate = self.in_proj(x).split(self.d_hidden, dim=-1)
        a, weight = self._transition(*gates)
        return DiagonalInputs(2 * a - 1 if self.negative_eigenvalues else a, candidate, weight), None

    def read_output(self, x: Tensor, h: Tensor, h_last: Tensor, carry: None) -> tuple[Tensor, DiagonalState]:
        return self.out_proj(h), DiagonalState(h_last)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_hidden={self.d_hidden}, negative_eigenvalues={self.negative_eigenvalues}"


@register(
    "mingru",
    family="minimal RNN",
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
