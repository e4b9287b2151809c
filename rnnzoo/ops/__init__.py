"""Engines: pure tensor functions, each a reference loop and a fast parallel form.

Engines know nothing of layers; layers feed them gates and read their states.
"""

from .block_scan import block_linear_scan, block_linear_scan_reference
from .delta_rule import delta_rule, delta_rule_reference
from .dplr_delta_rule import dplr_delta_rule, dplr_delta_rule_reference, dplr_operator
from .fixed_point import fixed_point_scan, fixed_point_scan_reference
from .gated_linear_attention import gated_linear_attention, gated_linear_attention_reference
from .linear_scan import linear_scan, linear_scan_operator, linear_scan_reference
from .mlstm import mlstm_chunkwise, mlstm_operator, mlstm_reference
from .newton import nonlinear_recurrence, nonlinear_recurrence_reference
from .normalized_block_scan import normalized_block_scan, normalized_block_scan_reference
from .s4_kernel import dplr_bilinear, dplr_ssm_convolution, dplr_ssm_kernel, dplr_ssm_reference, hippo_legs, nplr_legs
from .selective_scan import selective_scan, selective_scan_reference, selective_transition
from .slstm import slstm, slstm_reference
from .softmax_scan import softmax_scan, softmax_scan_operator, softmax_scan_reference
from .test_time_memory import test_time_memory, test_time_memory_reference

__all__ = [
    "block_linear_scan", "block_linear_scan_reference", "delta_rule", "delta_rule_reference", "dplr_bilinear",
    "dplr_delta_rule", "dplr_delta_rule_reference", "dplr_operator", "dplr_ssm_convolution", "dplr_ssm_kernel",
    "dplr_ssm_reference", "fixed_point_scan", "fixed_point_scan_reference", "gated_linear_attention",
    "gated_linear_attention_reference", "hippo_legs", "linear_scan", "linear_scan_operator", "linear_scan_reference",
    "mlstm_chunkwise", "mlstm_operator", "mlstm_reference", "nonlinear_recurrence", "nonlinear_recurrence_reference",
    "normalized_block_scan", "normalized_block_scan_reference", "nplr_legs", "selective_scan",
    "selective_scan_reference", "selective_transition", "slstm", "slstm_reference", "softmax_scan",
    "softmax_scan_operator", "softmax_scan_reference", "test_time_memory", "test_time_memory_reference",
]  # fmt: skip
