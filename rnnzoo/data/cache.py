"""Token cache: each (corpus, tokenizer, split) tokenised once into a flat memory-mapped file.

The file lives under ``$RNNZOO_CACHE`` (default ``~/.cache/rnnzoo``) in ``tokens/<key>.bin`` with a JSON
sidecar (token count, dtype, bytes of text), keyed by a hash of the corpus's fingerprint (its files' paths,
sizes and modification times), the tokenizer's identity and the split: editing a source file gives a new key,
so the cache is rebuilt. Both files are written to a temporary name and renamed, so an interrupted run leaves
no half-written cache behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .corpus import Corpus
from .tokenizer import Tokenizer, token_dtype

__all__ = ["TokenSplit", "cache_root", "token_split"]

CACHE_VERSION = 1


@dataclass(frozen=True)
class TokenSplit:
    """A split's token ids (1-D, memory-mapped) and the bytes of text they encode (``None`` for a pre-tokenised
    corpus of uint16 ids, whose text is unknown: "bits per byte" are then bits per token)."""

    tokens: np.ndarray
    text_bytes: int | None

    def __len__(self) -> int:
        return len(self.tokens)


def cache_root() -> Path:
    return Path(os.environ.get("RNNZOO_CACHE", Path.home() / ".cache" / "rnnzoo"))


def _replace_atomically(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def token_split(corpus: Corpus, tokenizer: Tokenizer, split: str, cache: Path | None = None) -> TokenSplit:
    """The token ids of ``split`` of ``corpus`` under ``tokenizer``, from the cache (tokenised on first use)."""
    if corpus.pretokenised:
        tokens = corpus.tokens(split)
        return TokenSplit(tokens, len(tokens) if tokens.dtype == np.uint8 else None)
    key = f"v{CACHE_VERSION}|{corpus.fingerprint()}|{tokenizer.identity}|{split}"
    name = hashlib.sha256(key.encode()).hexdigest()[:24]
    folder = (cache or cache_root()) / "tokens"
    data, meta = folder / f"{name}.bin", folder / f"{name}.json"
    dtype = token_dtype(tokenizer.vocab_size)
    if not (data.exists() and meta.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        counts = {"tokens": 0, "text_bytes": 0}

        def write_tokens(tmp: Path) -> None:
            with open(tmp, "wb") as out:
                for text in corpus.texts(split):
                    ids = np.asarray(tokenizer.encode(text + "\n"), dtype=dtype)
                    out.write(ids.tobytes())
                    counts["tokens"] += len(ids)
                    counts["text_bytes"] += len(text.encode("utf-8")) + 1

        _replace_atomically(data, write_tokens)
        record = {**counts, "dtype": dtype.name, "source": corpus.source, "tokenizer": tokenizer.name, "split": split}
        _replace_atomically(meta, lambda tmp: tmp.write_text(json.dumps(record)))
    record = json.loads(meta.read_text())
    if record["tokens"] == 0:
        raise ValueError(f"data {corpus.source!r}: the {split} split is empty")
    tokens = np.memmap(data, dtype=record["dtype"], mode="r", shape=(record["tokens"],))
    return TokenSplit(tokens, record["text_bytes"])
