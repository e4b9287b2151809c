"""minGRU, minLSTM, HGRN: each equals a direct per-step implementation of its paper's equations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rnnzoo


def direct_loop(step, x, h):
    ys = []
    for x_t in x.unbind(1):
        h = step(x_t, h)
        ys.append(h)
    return torch.stack(ys, 1), h


def mingru_step(layer, negative):
    w, b = layer.in_proj.weight, layer.in_proj.bias
    n = layer.d_hidden

    def step(x_t, h):
        z = torch.sigmoid(x_t @ w[:n].T + b[:n])
        cand = x_t @ w[n:].T + b[n:]
        a = 1 - z
        return (2 * a - 1 if negative else a) * h + z * cand

    return step


def minlstm_step(layer, negative):
    w, b = layer.in_proj.weight, layer.in_proj.bias
    n = layer.d_hidden

    def step(x_t, h):
        f = torch.sigmoid(x_t @ w[:n].T + b[:n])
        i = torch.sigmoid(x_t @ w[n : 2 * n].T + b[n : 2 * n])
        cand = x_t @ w[2 * n :].T + b[2 * n :]
        f_norm, i_norm = f / (f + i), i / (f + i)
        return (2 * f_norm - 1 if negative else f_norm) * h + i_norm * cand

    return step


@pytest.mark.parametrize("name,step_fn", [("mingru", mingru_step), ("minlstm", minlstm_step)])
@pytest.mark.parametrize("negative", [False, True])
def test_min_rnns_match_paper_equations(name, step_fn, negative):
    torch.manual_seed(0)
    layer = rnnzoo.create(name, d_model=6, expand=2, negative_eigenvalues=negative).double()
    x = torch.randn(2, 90, 6, dtype=torch.float64)
    h0 = torch.randn(2, 12, dtype=torch.float64)
    y, state = layer(x, layer.init_state(2).__class__(h0))
    h, h_last = direct_loop(step_fn(layer, negative), x, h0)
    torch.testing.assert_close(y, layer.out_proj(h))
    torch.testing.assert_close(state.h, h_last)


@pytest.mark.parametrize("negative", [False, True])
def test_hgrn_matches_paper_equations(negative):
    torch.manual_seed(0)
    bound = torch.linspace(0.0, 0.9, 8)
    layer = rnnzoo.create("hgrn", d_model=8, lower_bound=bound, negative_eigenvalues=negative).double()
    x = torch.randn(2, 90, 8, dtype=torch.float64)
    w = layer.in_proj.weight

    def step(x_t, h):
        c, f, _ = (x_t @ w.T).split(8, -1)
        f = bound.double() + (1 - bound.double()) * torch.sigmoid(f)
        return (2 * f - 1 if negative else f) * h + (1 - f) * F.silu(c)

    h, h_last = direct_loop(step, x, torch.zeros(2, 8, dtype=torch.float64))
    g = (x @ w.T).split(8, -1)[2]
    want = layer.out_proj(layer.norm(h) * F.silu(g))
    y, state = layer(x)
    torch.testing.assert_close(y, want)
    torch.testing.assert_close(state.h, h_last)


# (gate row offset in in_proj, logit that drives a_t to 0) per model
SATURATE = {"mingru": (0, 30.0), "minlstm": (0, -30.0), "hgrn": (1, -30.0)}


@pytest.mark.parametrize("name", sorted(SATURATE))
def test_negative_eigenvalues_flip_the_state(name):
    """Gates saturated to 'forget everything': a_t -> 0 normally, 2 a_t - 1 -> -1 with the flag."""
    row, logit = SATURATE[name]
    for negative in (False, True):
        layer = rnnzoo.create(name, d_model=4, negative_eigenvalues=negative).double()
        n = layer.d_hidden
        with torch.no_grad():
            for p in layer.in_proj.parameters():
                p.zero_()  # candidate and other gates: zero input term
            layer.in_proj.weight[row * n : (row + 1) * n, 0] = logit
        x = torch.zeros(1, 1, 4, dtype=torch.float64)
        x[..., 0] = 1.0
        h0 = torch.ones(1, n, dtype=torch.float64)
        _, state = layer(x, layer.init_state(1).__class__(h0))
        expected = -h0 if negative else torch.zeros_like(h0)
        torch.testing.assert_close(state.h, expected, atol=1e-9, rtol=0)


def test_hgrn_lower_bound_validation():
    with pytest.raises(ValueError, match="`lower_bound` must lie in"):
        rnnzoo.create("hgrn", d_model=4, lower_bound=1.0)
    with pytest.raises(ValueError, match=r"`lower_bound` must be a float or a \(4,\) tensor"):
        rnnzoo.create("hgrn", d_model=4, lower_bound=torch.zeros(3))
