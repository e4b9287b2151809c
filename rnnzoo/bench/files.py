"""Writing results so that nothing is lost: a JSON file is written to a temporary file beside it, then renamed
into place, so a reader (or a resumed run) never sees half a file; an output directory is held by one
command at a time (:class:`DirectoryLock`), so two runs never overwrite each other's results."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["DirectoryBusy", "DirectoryLock", "write_json_atomic"]


def write_json_atomic(path: str | Path, data, indent: int = 1) -> None:
    """``data`` as JSON (sorted keys, a final newline) at ``path``, via ``path.partial`` and a rename."""
    path = Path(path)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data, indent=indent, sort_keys=True) + "\n")
    partial.replace(path)


class DirectoryBusy(RuntimeError):
    """Another live process holds the directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class DirectoryLock:
    """``directory/.lock``, holding the owner's process id, created exclusively.

    :meth:`acquire` creates the directory if needed (so an unwritable path fails here, before any work),
    takes over a lock whose process has died, and raises :class:`DirectoryBusy` if a live one holds it;
    :meth:`release` removes the lock if it is still ours. Use as a context manager.
    """

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / ".lock"

    def acquire(self) -> DirectoryLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    owner = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    owner = 0
                if owner and owner != os.getpid() and _alive(owner):
                    raise DirectoryBusy(f"{self.path.parent} is in use by another rnnzoo process (pid {owner})") from None
                self.path.unlink(missing_ok=True)  # left by a process that died: take it over
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise DirectoryBusy(f"{self.path.parent}: could not take {self.path.name}")

    def release(self) -> None:
        try:
            if self.path.read_text().strip() == str(os.getpid()):
                self.path.unlink()
        except OSError:
            pass

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
