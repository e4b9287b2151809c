"""DeltaNet, Gated DeltaNet, DeltaProduct: against a per-token loop written from the papers' equations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rnnzoo.layers import DeltaNet, DeltaProduct, GatedDeltaNet
from rnnzoo.ops.delta_rule import delta_rule_reference, loop_is_faster

D_MODEL = 8


def short_conv(proj, conv, x):
    """``SiLU(Σ_i w_i u_{t-K+1+i})``, ``u = W x``, zeros before the start."""
    u = x @ proj.weight.T
    K, T = conv.weight.shape[-1], x.shape[1]
    padded = F.pad(u, (0, 0, K - 1, 0))
    return F.silu(sum(padded[:, i : i + T] * conv.weight[:, 0, i] for i in range(K)))


def per_token(layer, x):
    """``(y, S)``: each token applies ``α_t`` then ``n`` transitions ``(I - β k k^T) S + β k v^T`` as matrices."""
    B, T, _ = x.shape
    H, n, dk, dv = layer.num_heads, layer.num_householder, layer.head_k, layer.head_v
    unit = lambda u: u / torch.sqrt((u * u).sum(-1, keepdim=True) + 1e-6)  # noqa: E731
    q = unit(short_conv(layer.q_proj, layer.q_conv, x).view(B, T, H, dk))
    k = unit(short_conv(layer.k_proj, layer.k_conv, x).view(B, T, n, H, dk))
    v = short_conv(layer.v_proj, layer.v_conv, x).view(B, T, n, H, dv)
    beta = torch.sigmoid(x @ layer.b_proj.weight.T).view(B, T, n, H) * (2 if layer.negative_eigenvalues else 1)
    eye = torch.eye(dk, dtype=x.dtype)
    S, outs = x.new_zeros(B, H, dk, dv), []
    for t in range(T):
        if layer.decay:
            dt = F.softplus(x[:, t] @ layer.a_proj.weight.T + layer.dt_bias)
            S = torch.exp(-dt * layer.A_log.exp())[..., None, None] * S
        for j in range(n):
            b, kk = beta[:, t, j, :, None, None], k[:, t, j, :, :, None]
            S = (eye - b * kk @ kk.transpose(-1, -2)) @ S + b * kk @ v[:, t, j, :, None, :]
        outs.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t]))
    o = torch.stack(outs, 1)  # (B, T, H, dv)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + layer.norm.eps) * layer.norm.weight
    o = o.flatten(2)
    if layer.gate:
        o = o * F.silu(x @ layer.g_proj.weight.T)
    return o @ layer.out_proj.weight.T, S


def make(cls, seed=0, **kw):
    torch.manual_seed(seed)
    layer = cls(D_MODEL, **kw).double()
    with torch.no_grad():  # move every parameter off its init so a swapped or missing one shows
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


LAYERS = [
    (DeltaNet, {}),
    (GatedDeltaNet, {}),
    (DeltaProduct, {}),
    (DeltaProduct, {"num_householder": 3, "use_forget_gate": False}),
]


@pytest.mark.parametrize("negative", [False, True])
@pytest.mark.parametrize("cls,kw", LAYERS)
def test_matches_per_token_loop(cls, kw, negative):
    layer = make(cls, negative_eigenvalues=negative, **kw)
    x = torch.randn(2, 60, D_MODEL, dtype=torch.float64)
    y_ref, S_ref = per_token(layer, x)
    for mode in ("chunk", "recurrent"):
        y, state = layer(x, mode=mode)
        torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-10, msg=lambda m: f"{mode}: {m}")
        torch.testing.assert_close(state.S, S_ref, rtol=1e-9, atol=1e-10, msg=lambda m: f"{mode}: {m}")


@pytest.mark.parametrize("cls,kw", LAYERS)
def test_fused_loop_in_the_layer(cls, kw):
    """With many sequences (where the engine runs its fused loop) the chunk mode, from a carried state,
    gives the per-token loop's outputs, state and input gradients."""
    layer = make(cls, **kw)
    assert loop_is_faster(64 * layer.num_heads, layer.head_k, layer.head_v)
    x = torch.randn(64, 9, D_MODEL, dtype=torch.float64, requires_grad=True)
    prefix = torch.randn(64, 3, D_MODEL, dtype=torch.float64)
    state = layer(prefix, mode="recurrent")[1]
    got = layer(x, state, mode="chunk")
    want = layer(x, state, mode="recurrent")
    torch.testing.assert_close(got[0], want[0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(got[1].S, want[1].S, rtol=1e-9, atol=1e-10)
    weights = torch.randn_like(got[0])
    (grad_got,) = torch.autograd.grad((got[0] * weights).sum(), x)
    (grad_want,) = torch.autograd.grad((want[0] * weights).sum(), x)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-9, atol=1e-10)


def test_one_householder_step_is_gated_deltanet():
    gated = make(GatedDeltaNet)
    product = DeltaProduct(D_MODEL, num_householder=1).double()
    with pytest.raises(ValueError, match="holds a GatedDeltaNet layer, not a DeltaProduct"):
        product.load_state_dict(gated.state_dict())  # the stored configuration names the class
    weights = {k: v for k, v in gated.state_dict().items() if not k.endswith("_extra_state")}
    product.load_state_dict(weights)  # same parameter names and shapes
    x = torch.randn(2, 30, D_MODEL, dtype=torch.float64)
    torch.testing.assert_close(product(x)[0], gated(x)[0], rtol=1e-12, atol=1e-12)


def test_deltaproduct_operator_groups_sum_to_the_output():
    layer = make(DeltaProduct, num_householder=3)
    x = torch.randn(2, 20, D_MODEL, dtype=torch.float64)
    V, Y = layer.mixer_io(x)
    assert V.shape == Y.shape == (2, layer.num_heads * 3, 20, layer.head_v)
    inputs = layer.engine_inputs(x)[0]
    o = delta_rule_reference(inputs.q, inputs.k, inputs.v, inputs.beta, inputs.log_alpha)[0]
    torch.testing.assert_close(Y.unflatten(1, (layer.num_heads, 3)).sum(2), o, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.materialize(x) @ V, Y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", [DeltaNet, GatedDeltaNet, DeltaProduct])
def test_negative_eigenvalues_only_with_the_flag(cls):
    x = 5 * torch.randn(2, 200, D_MODEL, dtype=torch.float64)
    for negative in (False, True):
        layer = make(cls, negative_eigenvalues=negative)
        inputs = layer.engine_inputs(x)[0]
        k, beta = inputs.k, inputs.beta
        transition = torch.eye(layer.head_k, dtype=x.dtype) - beta[..., None, None] * k[..., :, None] * k[..., None, :]
        smallest = torch.linalg.eigvalsh(transition).min()
        if negative:
            assert beta.max() > 1.5 and beta.max() <= 2 and -1 <= smallest < -0.5
        else:
            assert beta.max() <= 1 and smallest >= 0


def test_gated_deltanet_decay_init():
    torch.manual_seed(0)
    layer = GatedDeltaNet(128, num_heads=64)
    A = layer.A_log.exp()
    assert A.min() > 0 and A.max() <= 16 and A.min() < 2 and A.max() > 14  # uniform over (0, 16]
    dt = F.softplus(layer.dt_bias)
    assert dt.min() >= 1e-3 * (1 - 1e-6) and dt.max() <= 0.1 * (1 + 1e-6)  # Δ = softplus(dt_bias) at init
    log_dt = dt.log()
    assert log_dt.min() < math.log(3e-3) and log_dt.max() > math.log(3e-2)  # log-uniform spread
    log_alpha = layer.engine_inputs(torch.randn(1, 5, 128))[0].log_alpha
    assert (log_alpha < 0).all()


@pytest.mark.parametrize("cls", [DeltaNet, GatedDeltaNet, DeltaProduct])
def test_bad_arguments(cls):
    with pytest.raises(ValueError, match="`num_heads`=3 must divide"):
        cls(D_MODEL, num_heads=3)
    with pytest.raises(ValueError, match="`d_conv` must be a positive int"):
        cls(D_MODEL, d_conv=0)
    if cls is DeltaProduct:
        with pytest.raises(ValueError, match="`num_householder` must be a positive int"):
            cls(D_MODEL, num_householder=0)
