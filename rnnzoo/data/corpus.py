"""Corpora: the built-in ``stdlib`` and any corpus a user has on disk, split into train / validation / test.

``open_corpus(source)`` takes

* ``"stdlib"``: the ``.py`` files of the running Python's standard library (about 12 MB, without its tests and
  site-packages; nothing is copied or downloaded);
* a text file, a directory (every file in it, recursively) or a glob pattern of text files;
* a JSONL file (one JSON object per line, its ``"text"`` field a document);
* a pre-tokenised flat binary ``*.bin`` of uint8 or uint16 tokens (nanoGPT's convention; uint16 unless the name
  ends in ``.u8.bin``), memory-mapped.

Documents go to a split by a hash of their name (a file's path relative to the corpus root, a JSONL file's line
number): 90% train, 5% validation, 5% test, the same on every machine and run. A corpus too small for that
(a single text file, a pre-tokenised binary, or any split left empty) is split by position instead: the first
90% of its text or tokens for training, then 5% and 5%.
"""

from __future__ import annotations

import glob as globbing
import hashlib
import json
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SPLITS", "Corpus", "open_corpus", "split_of", "stdlib_files"]

SPLITS = ("train", "validation", "test")
FRACTIONS = (0.90, 0.05, 0.05)
STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def split_of(name: str) -> str:
    """The split of a document named ``name``: a hash of the name, uniform in [0, 1), against :data:`FRACTIONS`."""
    u = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64
    return SPLITS[0] if u < FRACTIONS[0] else SPLITS[1] if u < FRACTIONS[0] + FRACTIONS[1] else SPLITS[2]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}")


def _by_position(n: int, split: str) -> slice:
    """The positions of ``split`` in a sequence of ``n``: 90% / 5% / 5% in order."""
    ends = np.cumsum(FRACTIONS) * n
    start = 0 if split == SPLITS[0] else int(ends[SPLITS.index(split) - 1])
    return slice(start, int(ends[SPLITS.index(split)]) if split != SPLITS[-1] else n)


def stdlib_files() -> tuple[Path, list[Path]]:
    """The standard library's root and its ``.py`` files outside tests and installed packages, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if not STDLIB_SKIP & set(p.relative_to(root).parts)]
    return root, sorted(files)


@dataclass(frozen=True)
class Corpus:
    """A corpus of named documents (``texts``) or of pre-tokenised ids (``tokens``), by split."""

    source: str
    documents: tuple[tuple[str, Path, int | None], ...] = ()  # (name, file, JSONL line or None)
    token_file: Path | None = None
    token_dtype: str | None = None

    @property
    def pretokenised(self) -> bool:
        return self.token_file is not None

    def fingerprint(self) -> str:
        """A hash of the source's files (paths, sizes, modification times): changes when any of them does."""
        files = sorted({f for _, f, _ in self.documents} | ({self.token_file} if self.token_file else set()))
        digest = hashlib.sha256(self.source.encode())
        for f in files:
            stat = f.stat()
            digest.update(f"{f.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:24]

    def _read(self, f: Path, line: int | None, lines: dict) -> str:
        if line is None:
            return f.read_text(encoding="utf-8", errors="replace")
        if f not in lines:
            lines[f] = f.read_text(encoding="utf-8").splitlines()
        try:
            return json.loads(lines[f][line])["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{f}:{line + 1}: expected a JSON object with a \"text\" field") from None

    def _hash_split_usable(self) -> bool:
        return len(self.documents) > 1 and {split_of(name) for name, _, _ in self.documents} == set(SPLITS)

    def texts(self, split: str) -> Iterator[str]:
        """The documents of ``split``, in a fixed order (a single text by position when the corpus is split so)."""
        _check_split(split)
        if self.pretokenised:
            raise ValueError(f"{self.source} is pre-tokenised: it has tokens, not texts")
        lines: dict = {}
        if self._hash_split_usable():
            for name, f, line in self.documents:
                if split_of(name) == split:
                    yield self._read(f, line, lines)
            return
        whole = "\n".join(self._read(f, line, lines) for _, f, line in self.documents)
        yield whole[_by_position(len(whole), split)]

    def tokens(self, split: str) -> np.ndarray:
        """A pre-tokenised corpus's ids of ``split`` (a memory-mapped slice, by position)."""
        _check_split(split)
        if not self.pretokenised:
            raise ValueError(f"{self.source} holds texts; tokenise them (rnnzoo.data.token_split)")
        ids = np.memmap(self.token_file, dtype=self.token_dtype, mode="r")
        return ids[_by_position(len(ids), split)]


def _documents_of_files(files: list[Path], root: Path) -> tuple[tuple[str, Path, None], ...]:
    return tuple((f.relative_to(root).as_posix(), f, None) for f in files)


def open_corpus(source: str | Path) -> Corpus:
    """The corpus ``source`` names (see the module docstring); a ``ValueError`` naming it if there is none."""
    source = str(source)
    if source == "stdlib":
        root, files = stdlib_files()
        return Corpus("stdlib", _documents_of_files(files, root))
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix == ".bin":
            dtype = "uint8" if path.name.endswith(".u8.bin") else "uint16"
            if path.stat().st_size % np.dtype(dtype).itemsize:
                raise ValueError(f"data {source!r}: size is not a whole number of {dtype} tokens")
            return Corpus(source, token_file=path, token_dtype=dtype)
        if path.suffix == ".jsonl":
            lines = [i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()) if line.strip()]
            return Corpus(source, tuple((f"{path.name}:{i}", path, i) for i in lines))
        return Corpus(source, ((path.name, path, None),))
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError(f"data {source!r}: the directory holds no files")
        return Corpus(source, _documents_of_files(files, path))
    matches = sorted(Path(p) for p in globbing.glob(str(path), recursive=True) if Path(p).is_file())
    if matches:
        root = Path(os.path.commonpath([m.parent for m in matches]))
        return Corpus(source, _documents_of_files(matches, root))
    raise ValueError(
        f"data {source!r}: no such file, directory or glob match; expected 'stdlib', a text file, a directory, "
        "a glob, a .jsonl file or a .bin of tokens"
    )
