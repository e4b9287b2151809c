"""Real text for language modelling: corpora, tokenizers, a token cache and batches. Nothing is downloaded.

>>> from rnnzoo.data import ByteTokenizer, open_corpus, token_split
>>> train = token_split(open_corpus("stdlib"), ByteTokenizer(), "train")  # doctest: +SKIP
"""

from .batches import StatefulStreams, random_windows
from .cache import TokenSplit, cache_root, token_split
from .corpus import SPLITS, Corpus, open_corpus, split_of, stdlib_files
from .tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    IdTokenizer,
    Tokenizer,
    bits_per_byte,
    token_dtype,
    tokenizer_from_json,
    tokenizer_from_spec,
)  # fmt: skip

__all__ = [
    "SPLITS", "BPETokenizer", "ByteTokenizer", "Corpus", "IdTokenizer", "StatefulStreams", "TokenSplit", "Tokenizer",
    "bits_per_byte", "cache_root", "open_corpus", "random_windows", "split_of", "stdlib_files", "token_dtype",
    "token_split", "tokenizer_from_json", "tokenizer_from_spec",
]  # fmt: skip
