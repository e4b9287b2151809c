"""Writing results so that nothing is lost: a JSON file is written to a temporary file beside it, then renamed
into place, so a reader (or a resumed run) never sees half a file."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["write_json_atomic"]


def write_json_atomic(path: str | Path, data, indent: int = 1) -> None:
    """``data`` as JSON (sorted keys, a final newline) at ``path``, via ``path.partial`` and a rename."""
    path = Path(path)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data, indent=indent, sort_keys=True) + "\n")
    partial.replace(path)
