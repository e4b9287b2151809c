"""Engines: pure tensor functions, each a reference loop and a fast parallel form.

Engines know nothing of layers; layers feed them gates and read their states.
"""

from .linear_scan import linear_scan, linear_scan_reference

__all__ = ["linear_scan", "linear_scan_reference"]
