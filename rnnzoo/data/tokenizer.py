"""Tokenizers: bytes (the default, vocabulary 256, nothing to train or fetch) or BPE trained locally.

``tokenizer_from_spec("byte")`` or ``"bpe:4096"`` (trained on the texts given, with the optional
``tokenizers`` package); :meth:`Tokenizer.to_json` / :func:`tokenizer_from_json` save and restore one with a
checkpoint. Bits per byte (:func:`bits_per_byte`) make losses of different tokenizers comparable.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from typing import Protocol

import numpy as np

__all__ = [
    "BPETokenizer", "ByteTokenizer", "IdTokenizer", "Tokenizer", "bits_per_byte", "tokenizer_from_json", "tokenizer_from_spec",
]  # fmt: skip


class Tokenizer(Protocol):
    name: str  # "byte" or "bpe:<vocab>"
    vocab_size: int

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def to_json(self) -> str: ...

    @property
    def identity(self) -> str:
        """A hash of everything that decides the token ids (for cache keys)."""
        ...


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id (nanoGPT's ``.bin`` convention: uint16 up to 65,536)."""
    return np.dtype(np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.uint32)


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, one token per byte."""

    name, vocab_size = "byte", 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def to_json(self) -> str:
        return json.dumps({"kind": "byte"})

    @property
    def identity(self) -> str:
        return "byte"


class IdTokenizer:
    """The ids of a pre-tokenised corpus (``.bin`` of uint16) whose tokenizer is not at hand: text is the ids
    written as decimal numbers separated by spaces (``"15 496 11"``), both ways."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.name = f"ids:{vocab_size}"

    def encode(self, text: str) -> np.ndarray:
        try:
            ids = [int(word) for word in text.split()]
        except ValueError:
            raise ValueError(f"a pre-tokenised model reads token ids separated by spaces, got {text!r}") from None
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got {text!r}")
        return np.asarray(ids, dtype=token_dtype(self.vocab_size))

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(f" {int(i)}" for i in ids)

    def to_json(self) -> str:
        return json.dumps({"kind": "ids", "vocab_size": self.vocab_size})

    @property
    def identity(self) -> str:
        return self.name


class BPETokenizer:
    """Byte-level BPE from the ``tokenizers`` package (``pip install rnnzoo[bpe]``), trained locally."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.vocab_size = backend.get_vocab_size()
        self.name = f"bpe:{self.vocab_size}"

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Train on ``texts`` (an iterable of documents) to ``vocab_size`` tokens (at least 256 + merges)."""
        tokenizers = _tokenizers()
        backend = tokenizers.Tokenizer(tokenizers.models.BPE())
        backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = tokenizers.decoders.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.backend.encode(text).ids, dtype=token_dtype(self.vocab_size))

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode([int(i) for i in ids])

    def to_json(self) -> str:
        return json.dumps({"kind": "bpe", "tokenizer": json.loads(self.backend.to_str())})

    @property
    def identity(self) -> str:
        return "bpe-" + hashlib.sha256(self.backend.to_str().encode()).hexdigest()[:16]


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ImportError("BPE needs the `tokenizers` package: pip install 'rnnzoo[bpe]' (or tokenizers)") from None
    return tokenizers


def tokenizer_from_spec(spec: str, texts: Iterable[str] | None = None) -> Tokenizer:
    """``"byte"``, or ``"bpe:<vocab>"`` trained on ``texts`` (required then)."""
    if spec == "byte":
        return ByteTokenizer()
    kind, _, size = spec.partition(":")
    if kind == "bpe" and size.isdigit() and 256 < int(size) <= 65536:
        if texts is None:
            raise ValueError(f"tokenizer {spec!r}: BPE is trained on the training split; pass its texts")
        return BPETokenizer.train(texts, int(size))
    raise ValueError(f"`tokenizer` must be 'byte' or 'bpe:<vocab size in 257..65536>', got {spec!r}")


def tokenizer_from_json(text: str) -> Tokenizer:
    """The tokenizer :meth:`Tokenizer.to_json` saved."""
    record = json.loads(text)
    if record.get("kind") == "byte":
        return ByteTokenizer()
    if record.get("kind") == "ids":
        return IdTokenizer(int(record["vocab_size"]))
    if record.get("kind") == "bpe":
        return BPETokenizer(_tokenizers().Tokenizer.from_str(json.dumps(record["tokenizer"])))
    raise ValueError(f"not a saved rnnzoo tokenizer: kind {record.get('kind')!r}")


def bits_per_byte(loss_nats_per_token: float, tokens: int, text_bytes: int) -> float:
    """Cross-entropy in bits per byte of text: ``loss · tokens / (bytes · ln 2)``, comparable across tokenizers."""
    return loss_nats_per_token * tokens / (text_bytes * math.log(2))
