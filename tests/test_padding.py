"""Batches of different lengths, in every registered layer's parallel form: right- and left-padded (an attention
mask) and packed (``cu_seqlens``) batches give each sequence what it gets alone: its outputs, and a final state
that continues it as its own state does, whatever the padding holds (NaN here)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import rnnzoo
from rnnzoo.models import SequenceModel

MODELS = [m.name for m in rnnzoo.list_models()]
D_MODEL = 8
LENGTHS = [7, 3, 0, 7, 5]  # repeated and empty rows
TOLERANCE = dict(rtol=1e-4, atol=1e-5)


def _row(state, i: int):
    return dataclasses.replace(state, **{k: v[i : i + 1] for k, v in state.tensors().items()})


def _padded(seqs: list[torch.Tensor], time: int, side: str) -> tuple[torch.Tensor, torch.Tensor, list[slice]]:
    x = torch.full((len(seqs), time, D_MODEL), float("nan"), device=seqs[0].device)
    mask = torch.zeros(len(seqs), time, dtype=torch.long)
    spans = [slice(0, len(s)) if side == "right" else slice(time - len(s), time) for s in seqs]
    for i, (s, span) in enumerate(zip(seqs, spans)):
        x[i, span], mask[i, span] = s, 1
    return x, mask, spans


def _check_each_alone(layer, seqs, y_rows, state, initial=None) -> None:
    """Row i's outputs and its final state (compared directly, and by continuing with the same tokens) are
    those of sequence i run alone from row i of ``initial``."""
    follow = torch.randn(1, 3, D_MODEL, device=next(iter(state.tensors().values())).device)
    for i, (s, y) in enumerate(zip(seqs, y_rows)):
        start = None if initial is None else _row(initial, i)
        if len(s):
            y_alone, alone = layer(s[None], start)
            torch.testing.assert_close(y, y_alone[0], **TOLERANCE)
        else:
            alone = layer.init_state(1, device=follow.device) if start is None else start
        if all(v.shape == state.tensors()[k][i : i + 1].shape for k, v in alone.tensors().items()):
            for k, v in alone.tensors().items():
                torch.testing.assert_close(state.tensors()[k][i : i + 1], v, **TOLERANCE, msg=f"row {i}, state {k}")
        torch.testing.assert_close(layer(follow, _row(state, i))[0], layer(follow, alone)[0], **TOLERANCE)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("name", MODELS)
def test_padded_batch_runs_each_sequence_alone(name, side, device):
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=D_MODEL, device=device)
    seqs = [torch.randn(n, D_MODEL, device=device) for n in LENGTHS]
    x, mask, spans = _padded(seqs, max(LENGTHS), side)
    y, state = layer(x, attention_mask=mask.to(device))
    assert not y.isnan().any(), "padding (NaN here) reaches no output"
    for i, span in enumerate(spans):
        assert (y[i][~mask[i].bool()] == 0).all(), "padding gets zero outputs"
    _check_each_alone(layer, seqs, [y[i, span] for i, span in enumerate(spans)], state)


@pytest.mark.parametrize("name", MODELS)
def test_packed_batch_from_a_state_runs_each_sequence_alone(name):
    torch.manual_seed(1)
    layer = rnnzoo.create(name, d_model=D_MODEL)
    seqs = [torch.randn(n, D_MODEL) for n in LENGTHS]
    with torch.no_grad():
        _, initial = layer(torch.randn(len(seqs), 4, D_MODEL))
    bounds = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()])
    y, state = layer(torch.cat(seqs)[None], initial, cu_seqlens=bounds)
    assert y.shape == (1, sum(LENGTHS), D_MODEL)
    rows = [y[0, a:b] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]
    _check_each_alone(layer, seqs, rows, state, initial)


def test_gradients_flow_to_the_tokens_only():
    layer = rnnzoo.create("gla", d_model=D_MODEL)
    x = torch.randn(2, 6, D_MODEL, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]])
    y, state = layer(x, attention_mask=mask)
    (y.square().sum() + state.S.sum()).backward()
    assert (x.grad[~mask.bool()] == 0).all() and (x.grad[mask.bool()] != 0).any()


def test_sliding_window_attention_with_padding():
    torch.manual_seed(2)
    layer = rnnzoo.create("attention", d_model=D_MODEL, window=3)
    seqs = [torch.randn(n, D_MODEL) for n in LENGTHS]
    x, mask, spans = _padded(seqs, max(LENGTHS), "right")
    y, state = layer(x, attention_mask=mask)
    _check_each_alone(layer, seqs, [y[i, span] for i, span in enumerate(spans)], state)


def test_all_ones_mask_is_no_mask():
    layer = rnnzoo.create("mamba", d_model=D_MODEL)
    x = torch.randn(2, 5, D_MODEL)
    y, _ = layer(x, attention_mask=torch.ones(2, 5, dtype=torch.bool))
    torch.testing.assert_close(y, layer(x)[0], rtol=0, atol=0)


def test_sequence_model_takes_masks_and_packs():
    torch.manual_seed(3)
    model = SequenceModel(vocab_size=11, mixer="hawk,attention", d_model=16, n_layers=2)
    prompts = [torch.randint(11, (n,)) for n in (5, 2, 4)]
    tokens = torch.zeros(3, 5, dtype=torch.long)
    mask = torch.zeros(3, 5, dtype=torch.long)
    for i, p in enumerate(prompts):
        tokens[i, 5 - len(p) :], mask[i, 5 - len(p) :] = p, 1
    logits, state = model(tokens, attention_mask=mask)
    packed, packed_state = model(torch.cat(prompts)[None], cu_seqlens=torch.tensor([0, 5, 7, 11]))
    start = 0
    for i, p in enumerate(prompts):
        alone, alone_state = model(p[None])
        torch.testing.assert_close(logits[i, 5 - len(p) :], alone[0], **TOLERANCE)
        torch.testing.assert_close(packed[0, start : start + len(p)], alone[0], **TOLERANCE)
        start += len(p)
        nxt = torch.tensor([3])
        want = model.step(nxt, alone_state)[0]
        for s in (state, packed_state):
            got = model.step(nxt, [_row(layer_state, i) for layer_state in s])[0]
            torch.testing.assert_close(got, want, **TOLERANCE)


@pytest.mark.parametrize(
    "time, mask, match",
    [
        (3, torch.ones(2, 4), "must have shape"),
        (4, torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]]), "row 0"),
        (4, torch.tensor([[1, 1, 1, 1], [0, 1, 1, 0]]), "row 1"),
        (4, torch.tensor([[2, 1, 1, 1], [1, 1, 1, 1]]), "0 .padding. and 1"),
    ],
)
def test_bad_attention_mask_is_named(time, mask, match):
    layer = rnnzoo.create("gla", d_model=D_MODEL)
    with pytest.raises(ValueError, match=f"attention_mask.*{match}|{match}.*attention_mask"):
        layer(torch.randn(2, time, D_MODEL), attention_mask=mask)


@pytest.mark.parametrize(
    "bounds, batch, match",
    [
        (torch.tensor([0, 3, 2, 6]), 1, "rise"),
        (torch.tensor([0, 3, 5]), 1, "rise"),
        (torch.tensor([0, 3, 6]), 2, "batch of 1"),
        (torch.tensor([0.0, 6.0]), 1, "integer"),
    ],
)
def test_bad_cu_seqlens_is_named(bounds, batch, match):
    layer = rnnzoo.create("gla", d_model=D_MODEL)
    with pytest.raises((ValueError, TypeError), match=match):
        layer(torch.randn(batch, 6, D_MODEL), cu_seqlens=bounds)


def test_mask_and_cu_seqlens_together_is_refused():
    layer = rnnzoo.create("gla", d_model=D_MODEL)
    with pytest.raises(ValueError, match="not both"):
        layer(torch.randn(1, 4, D_MODEL), attention_mask=torch.ones(1, 4), cu_seqlens=torch.tensor([0, 4]))
