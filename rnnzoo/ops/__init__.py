"""Engines: pure tensor functions, each a reference loop and a fast parallel form.

Engines know nothing of layers; layers feed them gates and read their states.
"""

from .delta_rule import delta_rule, delta_rule_reference
from .gated_linear_attention import gated_linear_attention, gated_linear_attention_reference
from .linear_scan import linear_scan, linear_scan_operator, linear_scan_reference
from .mlstm import mlstm_chunkwise, mlstm_operator, mlstm_reference

__all__ = [
    "delta_rule", "delta_rule_reference", "gated_linear_attention", "gated_linear_attention_reference", "linear_scan", "linear_scan_operator",
    "linear_scan_reference", "mlstm_chunkwise", "mlstm_operator", "mlstm_reference",
]  # fmt: skip
