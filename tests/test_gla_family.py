"""Linear attention, RetNet and GLA beyond the generic layer tests: agreement with independent
per-step reimplementations, RetNet's decays and positions, the linear-attention normaliser,
GLA's negative eigenvalues, and the materialised operators."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnzoo.layers import GLA, LinearAttention, RetNet

B, T = 2, 100


def make(cls, d_model=16, **kw):
    torch.manual_seed(0)
    return cls(d_model, **kw).double()


def inputs(d_model=16, length=T):
    return torch.randn(B, length, d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def rms_norm(o, eps, weight=None):
    o = o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + eps)
    return o if weight is None else o * weight


# -- per-step reimplementations, written from the papers' equations and the layers' weights ----------------


def linear_attention_reference(layer: LinearAttention, x):
    H, d = layer.num_heads, layer.head_dim
    phi = lambda u: F.elu(u) + 1  # noqa: E731
    S, z, ys = x.new_zeros(B, H, d, d), x.new_zeros(B, H, d), []
    for x_t in x.unbind(1):
        q = phi(x_t @ layer.q_proj.weight.T + layer.q_proj.bias).view(B, H, d)
        k = phi(x_t @ layer.k_proj.weight.T + layer.k_proj.bias).view(B, H, d)
        v = (x_t @ layer.v_proj.weight.T + layer.v_proj.bias).view(B, H, d)
        S = S + k[..., :, None] * v[..., None, :]
        z = z + k
        o = torch.einsum("bhk,bhkv->bhv", q, S)
        if layer.normalize:
            o = o / ((q * z).sum(-1, keepdim=True) + 1e-6)
        ys.append(o.reshape(B, H * d) @ layer.out_proj.weight.T + layer.out_proj.bias)
    return torch.stack(ys, 1), S, z


def retnet_reference(layer: RetNet, x, start=0):
    H, dk, dv = layer.num_heads, layer.head_k, layer.head_v
    theta = torch.tensor([10000.0 ** (-i / max(dk // 2 - 1, 1)) for i in range(dk // 2)], dtype=x.dtype)
    gamma = torch.tensor([1 - 2.0 ** (-5 - h) for h in range(H)], dtype=x.dtype)

    def rotate(u, n):  # u_{2i} + i u_{2i+1} times e^{i n θ_i}
        rotated = torch.view_as_complex(u.unflatten(-1, (-1, 2))) * torch.polar(torch.ones_like(theta), n * theta)
        return torch.view_as_real(rotated).flatten(-2)

    S, ys = x.new_zeros(B, H, dk, dv), []
    for n, x_t in enumerate(x.unbind(1), start):
        q = rotate((x_t @ layer.q_proj.weight.T).view(B, H, dk), n)
        k = rotate((x_t @ layer.k_proj.weight.T).view(B, H, dk), n) / dk**0.5
        v = (x_t @ layer.v_proj.weight.T).view(B, H, dv)
        S = gamma[:, None, None] * S + k[..., :, None] * v[..., None, :]
        o = rms_norm(torch.einsum("bhk,bhkv->bhv", q, S), layer.norm.eps)
        ys.append((F.silu(x_t @ layer.g_proj.weight.T) * o.reshape(B, H * dv)) @ layer.out_proj.weight.T)
    return torch.stack(ys, 1), S


def gla_reference(layer: GLA, x):
    H, dk, dv = layer.num_heads, layer.head_k, layer.head_v
    W1, W2, b = layer.gk_proj[0].weight, layer.gk_proj[1].weight, layer.gk_proj[1].bias
    S, ys = x.new_zeros(B, H, dk, dv), []
    for x_t in x.unbind(1):
        q = (x_t @ layer.q_proj.weight.T).view(B, H, dk) / dk**0.5
        k = (x_t @ layer.k_proj.weight.T).view(B, H, dk)
        v = (x_t @ layer.v_proj.weight.T).view(B, H, dv)
        alpha = torch.sigmoid(x_t @ W1.T @ W2.T + b).pow(1 / 16).view(B, H, dk)
        if layer.negative_eigenvalues:
            alpha = 2 * alpha - 1
        S = alpha[..., None] * S + k[..., :, None] * v[..., None, :]
        o = rms_norm(torch.einsum("bhk,bhkv->bhv", q, S), layer.norm.eps, layer.norm.weight)
        ys.append((o.reshape(B, H * dv) * F.silu(x_t @ layer.g_proj.weight.T)) @ layer.out_proj.weight.T)
    return torch.stack(ys, 1), S


@pytest.mark.parametrize("normalize", [True, False])
def test_linear_attention_matches_per_step_reference(normalize):
    layer, x = make(LinearAttention, normalize=normalize), inputs()
    y, state = layer(x, mode="chunk")
    y_ref, S_ref, z_ref = linear_attention_reference(layer, x)
    torch.testing.assert_close(y, y_ref)
    if normalize:  # the state carries z as its last column
        torch.testing.assert_close(state.S[..., -1], z_ref)
        torch.testing.assert_close(state.S[..., :-1], S_ref)
    else:
        torch.testing.assert_close(state.S, S_ref)


def test_retnet_matches_per_step_reference():
    layer, x = make(RetNet), inputs()  # d_k = 4: two rotary frequencies
    y, state = layer(x, mode="chunk")
    y_ref, S_ref = retnet_reference(layer, x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(state.S, S_ref)
    torch.testing.assert_close(state.position, torch.full((B,), T))  # an integer count


@pytest.mark.parametrize("negative", [False, True])
def test_gla_matches_per_step_reference(negative):
    layer, x = make(GLA, negative_eigenvalues=negative), inputs()
    with torch.no_grad():  # gates from strong (α^16 ~ e^-25) to weak, and a non-trivial norm weight
        layer.gk_proj[1].bias.copy_(torch.linspace(-25, 3, layer.gk_proj[1].bias.numel()))
        layer.norm.weight.uniform_(0.5, 1.5)
    y, state = layer(x, mode="chunk")
    y_ref, S_ref = gla_reference(layer, x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(state.S, S_ref)


# -- RetNet: decays and positions -----------------------------------------------------------------


def test_retnet_decays_are_one_minus_two_to_minus_five_minus_h():
    layer = make(RetNet, num_heads=4)
    with torch.no_grad():
        layer.k_proj.weight.zero_()  # no input: S_1 = γ_h S_0
    state = layer.init_state(B)
    state.S.fill_(1.0)
    _, state = layer.step(torch.randn(B, 16, dtype=torch.float64), state)
    gamma = state.S.flatten(2)
    assert torch.all(gamma == gamma[..., :1])
    expected = torch.tensor([1 - 2**-5, 1 - 2**-6, 1 - 2**-7, 1 - 2**-8], dtype=torch.float64)
    torch.testing.assert_close(gamma[0, :, 0], expected)


def test_retnet_uneven_splits_agree_and_position_matters():
    layer, x = make(RetNet), inputs()
    y, state = layer(x)
    for cuts in ([37], [1, 64], [13, 14, 99]):
        ys, s = [], None
        for piece in torch.tensor_split(x, cuts, dim=1):
            y_piece, s = layer(piece, s)
            ys.append(y_piece)
        torch.testing.assert_close(torch.cat(ys, 1), y)
        torch.testing.assert_close(s.S, state.S)
        torch.testing.assert_close(s.position, state.position)
    # the second half continued from a state whose position is reset is not the same sequence
    y1, s = layer(x[:, :50])
    y2, _ = layer(x[:, 50:], s)
    torch.testing.assert_close(y2, retnet_reference(layer, x)[0][:, 50:])
    s.position.zero_()
    y2_reset, _ = layer(x[:, 50:], s)
    assert (y2_reset - y2).abs().max() > 1e-3


def test_retnet_position_is_an_exact_integer_count():
    layer = make(RetNet).float()
    state = layer.init_state(B)
    state.position.fill_(2**24)  # float32 stops counting here: 2^24 + 1 rounds back to 2^24
    _, state = layer.step(torch.randn(B, layer.d_model), state)
    _, state = layer(torch.randn(B, 3, layer.d_model), state)
    assert state.position.dtype == torch.long and state.position.tolist() == [2**24 + 4] * B


# -- linear attention: the normaliser ---------------------------------------------------------------


def test_linear_attention_normaliser_matches_direct_formula():
    layer, x = make(LinearAttention), inputs()
    H, d = layer.num_heads, layer.head_dim
    heads = lambda u: u.view(B, T, H, d).transpose(1, 2)  # noqa: E731
    phi_q, phi_k = (heads(F.elu(proj(x)) + 1) for proj in (layer.q_proj, layer.k_proj))
    v = heads(layer.v_proj(x))
    A = (phi_q @ phi_k.transpose(-1, -2)).tril()  # φ(q_t)·φ(k_s), s <= t
    o = A @ v / (A.sum(-1, keepdim=True) + 1e-6)  # Σ_s φ(q_t)·φ(k_s) v_s / Σ_s φ(q_t)·φ(k_s)
    y, _ = layer(x)
    torch.testing.assert_close(y, layer.out_proj(o.transpose(1, 2).reshape(B, T, H * d)))
    torch.testing.assert_close(layer.mixer_io(x)[1], o)


# -- GLA: negative eigenvalues ----------------------------------------------------------------------


@pytest.mark.parametrize("negative", [False, True])
def test_gla_negative_alpha_only_with_negative_eigenvalues(negative):
    layer = make(GLA, negative_eigenvalues=negative)
    with torch.no_grad():
        layer.k_proj.weight.zero_()  # no input: S_1 = Diag(α_1) S_0
        layer.gk_proj[1].bias.fill_(-30.0)  # σ(·)^{1/16} ≈ e^{-30/16} < 1/2
    state = layer.init_state(B)
    state.S.fill_(1.0)
    x_t = torch.randn(B, 16, dtype=torch.float64)
    _, state = layer.step(x_t, state)
    alpha = torch.sigmoid(layer.gk_proj(x_t)).pow(1 / 16).view(B, layer.num_heads, layer.head_k, 1)
    torch.testing.assert_close(state.S, (2 * alpha - 1 if negative else alpha).expand_as(state.S))
    assert bool((state.S < 0).any()) == negative


# -- materialised operators ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls,kw",
    [
        (LinearAttention, {}),
        (LinearAttention, {"normalize": False}),
        (RetNet, {}),
        (GLA, {}),
        (GLA, {"negative_eigenvalues": True}),
    ],
)
def test_materialize_times_values_is_the_output(cls, kw):
    layer, x = make(cls, **kw), inputs(length=70)
    with torch.no_grad():
        M = layer.materialize(x)
        V, Y = layer.mixer_io(x)
    assert M.shape == (B, layer.num_heads, 70, 70)
    assert torch.all(M.triu(1) == 0)
    torch.testing.assert_close(M @ V, Y)


@pytest.mark.parametrize("cls", [LinearAttention, RetNet, GLA])
def test_num_heads_must_divide(cls):
    with pytest.raises(ValueError, match="`num_heads`=3 must divide"):
        cls(16, num_heads=3)
    with pytest.raises(ValueError, match="`num_heads` must be a positive int"):
        cls(16, num_heads=0)


def test_retnet_head_key_size_must_be_even():
    with pytest.raises(ValueError, match="must be even"):
        RetNet(12, num_heads=4)
