"""Engines: pure tensor functions, each a reference loop and a fast parallel form.

Engines know nothing of layers; layers feed them gates and read their states.
"""

from .block_scan import block_linear_scan, block_linear_scan_reference
from .delta_rule import delta_rule, delta_rule_reference
from .gated_linear_attention import gated_linear_attention, gated_linear_attention_reference
from .linear_scan import linear_scan, linear_scan_operator, linear_scan_reference
from .mlstm import mlstm_chunkwise, mlstm_operator, mlstm_reference
from .newton import nonlinear_recurrence, nonlinear_recurrence_reference
from .selective_scan import selective_scan, selective_scan_reference, selective_transition
from .slstm import slstm, slstm_reference
from .softmax_scan import softmax_scan, softmax_scan_operator, softmax_scan_reference

__all__ = [
    "block_linear_scan", "block_linear_scan_reference", "delta_rule", "delta_rule_reference",
    "gated_linear_attention", "gated_linear_attention_reference", "linear_scan", "linear_scan_operator",
    "linear_scan_reference", "mlstm_chunkwise", "mlstm_operator", "mlstm_reference", "nonlinear_recurrence",
    "nonlinear_recurrence_reference", "selective_scan", "selective_scan_reference", "selective_transition", "slstm",
    "slstm_reference", "softmax_scan", "softmax_scan_operator", "softmax_scan_reference",
]  # fmt: skip
