"""Branches the library takes on accelerators by default, reached and checked on CPU, so that a CPU-only run
covers every path a GPU run takes."""

from __future__ import annotations

import importlib

import torch

import rnnzoo
from rnnzoo.ops.newton import default_chunk_size, nonlinear_recurrence, nonlinear_recurrence_reference
from rnnzoo.layers.pararnn import para_gru_cell

gla_ops = importlib.import_module("rnnzoo.ops.gated_linear_attention")  # the module, not its function


def test_accelerators_take_deer_newton_and_it_matches_the_loop():
    """On an accelerator Newton runs with chunks of one step (DEER, no chunked shooting); on CPU the same solve
    is reached with ``chunk_size=1``."""
    assert default_chunk_size(512, 64, torch.device("cuda")) == 1
    torch.manual_seed(0)
    heads, k = 2, 4
    pre = torch.randn(3, 50, heads, 3, k, dtype=torch.float64)
    A = torch.randn(heads, 3, k, dtype=torch.float64) * 0.5
    h0 = torch.zeros(3, heads, k, dtype=torch.float64)
    h, last, info = nonlinear_recurrence(para_gru_cell, (pre,), h0, (A,), chunk_size=1)
    h_ref, last_ref = nonlinear_recurrence_reference(para_gru_cell, (pre,), h0, (A,))
    assert info.converged
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(last, last_ref)


def test_accelerators_run_gla_chunks_in_one_group(monkeypatch):
    """Off CPU the per-key chunkwise form takes all chunks as one group; forced on CPU it gives the same."""
    torch.manual_seed(0)
    q, k = torch.randn(2, 2, 70, 8), torch.randn(2, 2, 70, 8)
    v, log_alpha = torch.randn(2, 2, 70, 8), -torch.rand(2, 2, 70, 8) * 0.1
    want = gla_ops.gated_linear_attention_reference(q, k, v, log_alpha)
    monkeypatch.setattr(gla_ops, "GROUP_BYTES", 1 << 40)  # every chunk in one group, as on a GPU
    assert len(gla_ops._groups(torch.empty(9, 16, 8), 16, 16)) == 1
    got = gla_ops.gated_linear_attention(q, k, v, log_alpha, chunk_size=16)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_pararnn_layers_pick_newton_off_cpu():
    """The ParaRNN layers' automatic mode: the loop on CPU for mid-length inputs, Newton elsewhere."""
    layer = rnnzoo.create("paralstm", d_model=8)
    length = next(t for t in range(1, 4096) if layer._auto_mode(torch.empty(1, t, 8)) == "recurrent")
    assert layer._auto_mode(torch.empty(1, length, 8, device="meta")) == "newton"
