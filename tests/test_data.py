"""rnnzoo.data: corpora and their splits, tokenizers, the token cache, random windows and stateful streams."""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pytest
import torch

from rnnzoo.data import (
    SPLITS,
    ByteTokenizer,
    StatefulStreams,
    open_corpus,
    random_windows,
    split_of,
    stdlib_files,
    token_split,
    tokenizer_from_json,
    tokenizer_from_spec,
)  # fmt: skip
from rnnzoo.models import SequenceModel


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNZOO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_files(root, count: int = 60) -> list:
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        f = root / f"doc{i:03d}.txt"
        f.write_text(f"document {i}: " + "lorem ipsum é " * (i % 7 + 1) + "\n")
        files.append(f)
    return files


# -- corpora and splits ------------------------------------------------------------------------------


def test_stdlib_split_is_deterministic_disjoint_and_whole():
    corpus = open_corpus("stdlib")
    names = [name for name, _, _ in corpus.documents]
    assert len(names) > 300 and len(set(names)) == len(names)
    assert not any(part in {"test", "tests", "site-packages"} for name in names for part in name.split("/"))
    splits = Counter(split_of(name) for name in names)
    assert set(splits) == set(SPLITS) and sum(splits.values()) == len(names)  # each document in exactly one
    assert 0.85 < splits["train"] / len(names) < 0.95
    assert [split_of(n) for n in names] == [split_of(n) for n in names]
    root, files = stdlib_files()
    assert files == sorted(files) and all(f.suffix == ".py" and root in f.parents for f in files)


def test_split_of_is_a_hash_of_the_name_alone():
    assert split_of("json/decoder.py") == split_of("json/decoder.py")
    shares = Counter(split_of(f"file{i}.py") for i in range(4000))
    assert abs(shares["validation"] / 4000 - 0.05) < 0.015 and abs(shares["test"] / 4000 - 0.05) < 0.015


def test_directory_and_glob_corpora_split_their_files(tmp_path):
    files = write_files(tmp_path / "docs", count=200)
    for source in (tmp_path / "docs", str(tmp_path / "docs" / "*.txt")):
        corpus = open_corpus(source)
        assert sorted(f for _, f, _ in corpus.documents) == files
        texts = {split: list(corpus.texts(split)) for split in SPLITS}
        assert sum(len(t) for t in texts.values()) == len(files) and all(texts.values())  # split by file
        assert sorted(sum(texts.values(), [])) == sorted(f.read_text() for f in files)


def test_a_single_text_file_splits_by_position(tmp_path):
    text = "".join(f"line {i}\n" for i in range(1000))
    (tmp_path / "book.txt").write_text(text)
    corpus = open_corpus(tmp_path / "book.txt")
    parts = [next(corpus.texts(split)) for split in SPLITS]
    assert "".join(parts) == text and len(parts[0]) == int(0.9 * len(text))


def test_jsonl_corpus_reads_the_text_field_and_names_a_bad_line(tmp_path):
    records = [{"text": f"record {i} " * 3, "id": i} for i in range(80)]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    corpus = open_corpus(path)
    got = sorted(sum((list(corpus.texts(s)) for s in SPLITS), []))
    assert got == sorted(r["text"] for r in records)
    path.write_text(json.dumps({"body": "no text"}) + "\n" + json.dumps({"text": "ok"}) + "\n")
    with pytest.raises(ValueError, match=r"data.jsonl:1: expected a JSON object with a \"text\" field"):
        list(open_corpus(path).texts("train"))


@pytest.mark.parametrize("name, dtype", [("tokens.bin", np.uint16), ("tokens.u8.bin", np.uint8)])
def test_pretokenised_binary_is_memory_mapped_and_split_by_position(tmp_path, name, dtype, cache):
    ids = (np.arange(10_000) % 251).astype(dtype)
    ids.tofile(tmp_path / name)
    corpus = open_corpus(tmp_path / name)
    parts = [token_split(corpus, ByteTokenizer(), split).tokens for split in SPLITS]
    assert isinstance(parts[0], np.memmap) and parts[0].dtype == dtype
    assert np.array_equal(np.concatenate(parts), ids) and len(parts[0]) == 9000
    assert not cache.exists()  # nothing to tokenise


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(ValueError, match="no such file, directory or glob match"):
        open_corpus(tmp_path / "missing.txt")
    (tmp_path / "odd.bin").write_bytes(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="not a whole number of uint16 tokens"):
        open_corpus(tmp_path / "odd.bin")
    with pytest.raises(ValueError, match="`split` must be one of"):
        list(open_corpus("stdlib").texts("dev"))


# -- tokenizers --------------------------------------------------------------------------------------


def test_byte_tokenizer_round_trips_any_text():
    tok = ByteTokenizer()
    text = "def f(x):\n    return x ≤ 2  # é, 漢字\n"
    ids = tok.encode(text)
    assert ids.dtype == np.uint8 and len(ids) == len(text.encode()) and tok.decode(ids) == text
    assert tokenizer_from_json(tok.to_json()).identity == tok.identity


def test_bpe_trains_locally_and_round_trips():
    pytest.importorskip("tokenizers")
    texts = [f"def function_{i}(value):\n    return value * {i}\n" for i in range(200)]
    tok = tokenizer_from_spec("bpe:300", texts)
    assert 256 < tok.vocab_size <= 300
    ids = tok.encode(texts[3])
    assert len(ids) < len(texts[3].encode()) and tok.decode(ids) == texts[3]
    again = tokenizer_from_json(tok.to_json())
    assert again.identity == tok.identity and list(again.encode(texts[5])) == list(tok.encode(texts[5]))


def test_tokenizer_spec_is_checked():
    for spec in ("bpe", "bpe:100", "wordpiece:1000"):
        with pytest.raises(ValueError, match="`tokenizer` must be"):
            tokenizer_from_spec(spec, ["x"])


# -- the token cache -----------------------------------------------------------------------------------


def test_cache_is_built_once_and_rebuilt_when_the_source_changes(tmp_path, cache):
    files = write_files(tmp_path / "docs", count=200)
    corpus = open_corpus(tmp_path / "docs")
    first = token_split(corpus, ByteTokenizer(), "train")
    expected = "".join(t + "\n" for t in corpus.texts("train")).encode()
    assert bytes(first.tokens) == expected and first.text_bytes == len(expected)
    (cached,) = (cache / "tokens").glob("*.bin")
    stamp = cached.stat().st_mtime_ns
    again = token_split(open_corpus(tmp_path / "docs"), ByteTokenizer(), "train")
    assert cached.stat().st_mtime_ns == stamp and np.array_equal(again.tokens, first.tokens)  # reused
    train_file = next(f for f in files if split_of(f.name) == "train")
    train_file.write_text("changed\n")
    os.utime(train_file, ns=(stamp + 10**9, stamp + 10**9))
    rebuilt = token_split(open_corpus(tmp_path / "docs"), ByteTokenizer(), "train")
    assert b"changed\n" in bytes(rebuilt.tokens) and len(list((cache / "tokens").glob("*.bin"))) == 2


# -- batches ---------------------------------------------------------------------------------------------


def test_random_windows_shift_targets_and_follow_the_generator():
    tokens = np.arange(500, dtype=np.uint16)
    x, y = random_windows(tokens, 8, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.int64 and torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y - x, torch.ones_like(x))
    x2, _ = random_windows(tokens, 8, 16, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)
    with pytest.raises(ValueError, match="cannot fill a window"):
        random_windows(tokens[:10], 2, 16, torch.Generator())


def test_stateful_streams_continue_each_row_and_resume():
    tokens = np.arange(1000, dtype=np.uint16)
    streams = StatefulStreams(tokens, batch_size=4, context=30)
    first = [next(streams) for _ in range(streams.windows_per_pass + 1)]
    assert first[0][2] and not any(fresh for _, _, fresh in first[1:-1]) and first[-1][2]  # a new pass resets
    for (x0, y0, _), (x1, _, _) in zip(first[:-2], first[1:-1]):
        assert torch.equal(x1[:, 0], y0[:, -1])  # each row goes on where it stopped
    assert torch.equal(first[0][0][:, 0], torch.arange(4) * 250)  # row i in its own stretch
    resumed = StatefulStreams(tokens, 4, 30)
    resumed.load_state_dict({"position": 3})
    assert torch.equal(next(resumed)[0], first[3][0])


def test_stateful_streams_give_the_loss_of_one_long_sequence():
    torch.manual_seed(0)
    lm = SequenceModel(256, mixer="gla", d_model=16, n_layers=2).double()
    tokens = np.random.default_rng(0).integers(0, 256, 2 * 121).astype(np.uint8)
    streams = StatefulStreams(tokens, batch_size=2, context=20)
    state, losses = None, []
    with torch.no_grad():
        for _ in range(streams.windows_per_pass):
            x, y, fresh = next(streams)
            logits, state = lm(x, None if fresh else state)
            losses.append(torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none"))
        whole = torch.from_numpy(tokens.astype(np.int64)).view(2, 121)
        logits, _ = lm(whole[:, :-1][:, : 20 * streams.windows_per_pass])
        target = whole[:, 1:][:, : 20 * streams.windows_per_pass]
        reference = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
    carried = torch.cat([l.view(2, -1) for l in losses], 1).flatten()
    torch.testing.assert_close(carried, reference, rtol=1e-10, atol=1e-10)
