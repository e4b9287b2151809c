"""What the machine is doing: its load average, recorded beside every measurement."""

from __future__ import annotations

import os

__all__ = ["loadavg_1min"]


def loadavg_1min() -> float | None:
    """The machine's 1-minute load average (None where the platform has none), to two decimals."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
