"""Titans' test-time memory (rnnzoo/ops/test_time_memory.py, the ``titans`` layer).

The chunkwise engine against its reference loop (float64 tightly, float32 within 1e-5 of the float64 loop) for
every objective, mini-batch sizes that divide none of the lengths, states sitting mid-mini-batch (a different
position per row) and strong decays; its gradients against the loop's; with one token per mini-batch and no
momentum, against rnnzoo's delta rule (an independent engine); the layer against a float64 loop of its
equations written here (not calling the engine); and every form of the layer (parallel, recurrent, split
mid-mini-batch, step), gradients included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rnnzoo
from forms import assert_float32_close, assert_forms_agree, strong_decay_cases
from rnnzoo.layers import engines
from rnnzoo.ops import delta_rule_reference
from rnnzoo.ops import test_time_memory as memory_chunked
from rnnzoo.ops import test_time_memory_reference as memory_loop

LENGTHS = [1, 7, 33]
BATCHES = [1, 4, 5]  # mini-batch sizes: 4 and 5 divide none of the lengths above 1
OBJECTIVES = {"l2": {}, "huber": {"delta": 0.3}, "lp": {"p": 3.0}, "lp_below_2": {"p": 1.5}}
TIGHT = dict(rtol=1e-10, atol=1e-12)
D_MODEL = 8


def objective_kw(case: str) -> dict:
    return {"objective": case.removesuffix("_below_2"), **OBJECTIVES[case]}


def rate(case: str) -> float:
    """The largest θ: ℓ_p's step grows as |e|^{p-1}, and with p = 3 a step of 0.3 overshoots within 33 tokens."""
    return 0.1 if case == "lp" else 0.3


def engine_inputs(length: int, dtype=torch.float64, seed: int = 0, batch: int = 2, heads: int = 3, rate: float = 0.3):
    """``q, k`` (unit rows), ``v``, ``θ`` in ``(0, rate)``, ``log η`` and ``log (1 - α)``."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    q, k = (F.normalize(rand(batch, heads, length, 4), dim=-1) for _ in range(2))
    v = rand(batch, heads, length, 5)
    theta = rate * torch.rand(batch, heads, length, generator=gen, dtype=torch.float64)
    log_eta, log_retain = F.logsigmoid(2 * rand(batch, heads, length)), F.logsigmoid(2 * rand(batch, heads, length) + 2)
    return [t.to(dtype) for t in (q, k, v, theta, log_eta, log_retain)]


def mid_batch_state(memory_batch: int, dtype=torch.float64, seed: int = 1, batch: int = 2, heads: int = 3) -> tuple:
    """A state with ``M_0 ≠ M``, momentum, and rows at positions ``0`` and ``memory_batch - 1``."""
    gen = torch.Generator().manual_seed(seed)
    M0, M, U = (0.5 * torch.randn(batch, heads, 4, 5, generator=gen, dtype=torch.float64).to(dtype) for _ in range(3))
    return M0, M, U, torch.tensor([0, memory_batch - 1])[:batch]


def assert_float32_near(got: torch.Tensor, want: torch.Tensor) -> None:
    """float32 within 1e-5 of the float64 loop relative to its scale; exactly zero where the loop is (``M_0``
    before the first mini-batch ends)."""
    if bool((want == 0).all()):
        assert bool((got == 0).all())
    else:
        assert_float32_close(got, want)


def assert_results_close(got, want, **tol) -> None:
    torch.testing.assert_close(got[0], want[0], **tol, msg=lambda m: f"outputs: {m}")
    for name, a, b in zip(("M_0", "M", "U", "position"), got[1], want[1]):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"state {name}: {m}")


# -- the chunkwise engine is its loop -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(OBJECTIVES))
@pytest.mark.parametrize("memory_batch", BATCHES)
@pytest.mark.parametrize("length", LENGTHS)
def test_chunkwise_engine_is_the_loop(case, memory_batch, length):
    inputs, kw = engine_inputs(length, rate=rate(case)), dict(memory_batch=memory_batch, **objective_kw(case))
    for state in (None, mid_batch_state(memory_batch)):
        want = memory_loop(*inputs, state, **kw)
        assert_results_close(memory_chunked(*inputs, state, **kw), want, **TIGHT)
        assert int(want[1][3][0]) == length % memory_batch  # row 0 started a mini-batch
        inputs32 = [t.float() for t in inputs]
        state32 = None if state is None else (*(t.float() for t in state[:3]), state[3])
        got32 = memory_chunked(*inputs32, state32, **kw)
        assert got32[0].dtype == torch.float32
        for got, ref in zip((got32[0], *got32[1][:3]), (want[0], *want[1][:3])):
            assert_float32_near(got, ref)


@pytest.mark.parametrize("case", ["reset", "alternating"])
@pytest.mark.parametrize("gate", ["log_eta", "log_retain", "both"])
def test_strong_decays_stay_accurate_in_float32(case, gate):
    """Decays near 0 (α → 1, η → 0) and near 1 within a mini-batch: float32 within 1e-5 of the float64 loop."""
    q, k, v, theta, log_eta, log_retain = engine_inputs(33)
    strong = strong_decay_cases(theta.shape)[case]
    log_eta = strong if gate in ("log_eta", "both") else log_eta
    log_retain = strong if gate in ("log_retain", "both") else log_retain
    for memory_batch in (1, 5, 16):
        state = mid_batch_state(memory_batch)
        kw = dict(memory_batch=memory_batch)
        want = memory_loop(q, k, v, theta, log_eta, log_retain, state, **kw)
        got = memory_chunked(q, k, v, theta, log_eta, log_retain, state, **kw)
        assert_results_close(got, want, rtol=1e-9, atol=1e-10)  # a running sum through -1e4 keeps ~1e-12
        got32 = memory_chunked(*(t.float() for t in (q, k, v, theta, log_eta, log_retain)),
                               (*(t.float() for t in state[:3]), state[3]), **kw)  # fmt: skip
        for a, b in zip((got32[0], *got32[1][:3]), (want[0], *want[1][:3])):
            assert torch.isfinite(a).all()
            assert_float32_near(a, b)


@pytest.mark.parametrize("case", sorted(OBJECTIVES))
def test_chunkwise_gradients_are_the_loops(case):
    """Gradients of every input and of the state's ``M_0, M, U``, from a state in mid-mini-batch."""
    kw = dict(memory_batch=5, **objective_kw(case))
    gen = torch.Generator().manual_seed(3)
    grads = []
    for fn in (memory_loop, memory_chunked):
        inputs = [t.requires_grad_() for t in engine_inputs(13, rate=rate(case))]
        M0, M, U, position = mid_batch_state(5)
        state = [t.requires_grad_() for t in (M0, M, U)]
        out, (M0_end, M_end, U_end, _) = fn(*inputs, (*state, position), **kw)
        gen.manual_seed(3)
        loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in (out, M0_end, M_end, U_end))
        grads.append(torch.autograd.grad(loss, [*inputs, *state]))
    names = ["q", "k", "v", "theta", "log_eta", "log_retain", "M_0", "M", "U"]
    for name, got, want in zip(names, grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11, msg=lambda m: f"grad {name}: {m}")


def test_lp_below_two_has_finite_gradients_at_a_zero_residual():
    """``|e|^{p-1}`` has an infinite slope at ``e = 0`` for ``p < 2``: a zero residual (zero values into a zero
    memory) gives zero outputs and finite (zero) gradients, not NaN."""
    q, k, v, theta, log_eta, log_retain = engine_inputs(7)
    v = torch.zeros_like(v).requires_grad_()
    for fn in (memory_loop, memory_chunked):
        out, _ = fn(q, k, v, theta, log_eta, log_retain, memory_batch=4, objective="lp", p=1.5)
        (grad,) = torch.autograd.grad(out.sum(), v)
        assert torch.equal(out, torch.zeros_like(out)) and torch.isfinite(grad).all()


@pytest.mark.parametrize("length", LENGTHS)
def test_one_token_batches_without_momentum_are_the_delta_rule(length):
    """``b = 1``, ``η = 0``, ℓ2: ``M_t = (1 - α_t) M_{t-1} - θ_t k_t (M_{t-1}^T k_t - v_t)^T``, which is the
    gated delta rule ``S_t = a_t (I - β_t k_t k_t^T) S_{t-1} + β_t k_t v'_t^T`` with ``a = 1 - α``,
    ``β = θ / a`` and ``v' = a v`` (rnnzoo.ops.delta_rule_reference), also from a given memory."""
    q, k, v, theta, _, log_retain = engine_inputs(length)
    theta = theta * torch.exp(log_retain)  # so that β = θ / (1 - α) lies in [0, 1], as the delta rule checks
    no_momentum = torch.full_like(theta, float("-inf"))  # η = 0 (clamped to log η = -1e4 inside)
    retain = torch.exp(log_retain)
    S0 = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    zero = torch.zeros_like(S0)
    want, S = delta_rule_reference(q, k, retain[..., None] * v, theta / retain, log_retain, S0)
    for fn in (memory_loop, memory_chunked):
        state = (S0, S0, zero, torch.zeros(2, dtype=torch.long))
        out, (_, M, _, _) = fn(q, k, v, theta, no_momentum, log_retain, state, memory_batch=1)
        torch.testing.assert_close(out, want, **TIGHT)
        torch.testing.assert_close(M, S, **TIGHT)


def test_engine_checks_its_arguments():
    inputs = engine_inputs(3)
    for kw, match in [
        ({"memory_batch": 0}, "`memory_batch` must be a positive int"),
        ({"objective": "l1"}, "`objective` must be one of"),
        ({"objective": "huber", "delta": 0.0}, "`delta` must be > 0"),
        ({"objective": "lp", "p": 0.5}, "`p` must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=match):
            memory_chunked(*inputs, **kw)
    q, k, v, theta, log_eta, log_retain = inputs
    with pytest.raises(ValueError, match="`theta` must be >= 0"):
        memory_loop(q, k, v, -theta, log_eta, log_retain)
    with pytest.raises(ValueError, match="`log_retain` must be <= 0"):
        memory_chunked(q, k, v, theta, log_eta, -log_retain)
    with pytest.raises(ValueError, match="state `position`"):
        memory_chunked(*inputs, (*mid_batch_state(4)[:3], torch.zeros(2)))


# -- the layer ------------------------------------------------------------------------------------------------------


def make(memory_batch: int = 5, case: str = "l2", **kw):
    torch.manual_seed(0)
    layer = rnnzoo.create("titans", d_model=D_MODEL, memory_batch=memory_batch, **objective_kw(case), **kw).double()
    with torch.no_grad():  # away from the initialisation: norms' weights, larger learning rates
        for param in layer.parameters():
            param.add_(0.3 * torch.randn_like(param))
        if case == "lp":  # smaller steps: ℓ_3's gradient grows with the residual (see rate())
            layer.theta_proj.bias.sub_(2.0)
    return layer


def inputs(length: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, length, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def layer_loop(layer, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The layer's equations one token at a time in float64 (its docstring), from a zero state."""
    H, d, b = layer.num_heads, layer.head_dim, layer.memory_batch
    batch, length, _ = x.shape

    def conv(u, weight):  # depthwise causal, zeros before the first token
        K = weight.shape[-1]
        padded = F.pad(u, (0, 0, K - 1, 0))
        return sum(padded[:, j : j + length] * weight[:, 0, j] for j in range(K))

    def branch(proj, conv_layer):
        return F.silu(conv(x @ proj.weight.T, conv_layer.weight)).unflatten(-1, (H, d))  # (B, T, H, d)

    unit = lambda u: u / torch.sqrt(u.square().sum(-1, keepdim=True) + 1e-6)
    q, k = unit(branch(layer.q_proj, layer.q_conv)), unit(branch(layer.k_proj, layer.k_conv))
    v = branch(layer.v_proj, layer.v_conv)
    gate = lambda proj: x @ proj.weight.T + proj.bias  # (B, T, H)
    eta, alpha = torch.sigmoid(gate(layer.eta_proj)), torch.sigmoid(gate(layer.alpha_proj))
    theta = (1 - eta) * torch.sigmoid(gate(layer.theta_proj)) / b
    if layer.objective == "l2":
        psi = lambda e: e
    elif layer.objective == "huber":
        psi = lambda e: torch.clamp(e, -layer.delta, layer.delta)
    else:
        psi = lambda e: layer.p * torch.sign(e) * torch.abs(e) ** (layer.p - 1)
    M = U = torch.zeros(batch, H, d, d, dtype=x.dtype)
    outs = []
    for t in range(length):
        if t % b == 0:
            M0 = M
        g = k[:, t, :, :, None] * psi(torch.einsum("bhkv,bhk->bhv", M0, k[:, t]) - v[:, t])[:, :, None, :]
        U = eta[:, t, :, None, None] * U - theta[:, t, :, None, None] * g
        M = (1 - alpha[:, t, :, None, None]) * M + U
        outs.append(torch.einsum("bhkv,bhk->bhv", M, q[:, t]))
    o = torch.stack(outs, 1)  # (B, T, H, d)
    o = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + layer.norm.eps) * layer.norm.weight
    y = (o.flatten(2) * F.silu(x @ layer.g_proj.weight.T)) @ layer.out_proj.weight.T
    M0 = M if length % b == 0 else M0
    return y, {"M0": M0, "M": M, "U": U, "position": torch.full((batch,), length % b)}


@pytest.mark.parametrize("case", sorted(OBJECTIVES))
@pytest.mark.parametrize("length", LENGTHS)
def test_layer_is_its_equations(case, length):
    x = inputs(length)
    with torch.no_grad():
        for memory_batch in (1, 5):
            layer = make(memory_batch, case)
            want_y, want_state = layer_loop(layer, x)
            for mode in ("chunk", "recurrent"):
                y, state = layer(x, mode=mode)
                torch.testing.assert_close(y, want_y, **TIGHT, msg=lambda m: f"{mode} y: {m}")
                for key, value in want_state.items():
                    got = state.tensors()[key]
                    torch.testing.assert_close(got, value, **TIGHT, msg=lambda m: f"{mode} state.{key}: {m}")


@pytest.mark.parametrize("case", sorted(OBJECTIVES))
@pytest.mark.parametrize("memory_batch", [1, 5])
def test_layer_forms_agree(case, memory_batch):
    """Parallel, recurrent, split through the state in mid-mini-batch (7 = 5 + 2) and step: outputs, final
    state and the gradients of the input and every parameter."""
    layer = make(memory_batch, case)
    assert_forms_agree(layer, inputs(13), ["recurrent", "chunk", "split", "step"], split=7)


def test_rows_at_different_positions_continue_as_alone():
    """A padded batch leaves its rows at different positions of their mini-batches; the next call (parallel
    or step) continues each as if alone."""
    layer = make(5)
    x = inputs(9)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    follow = inputs(8, seed=2)
    with torch.no_grad():
        _, state = layer(x, attention_mask=mask)
        assert state.position.tolist() == [4, 1]
        y, _ = layer(follow, state)
        for row, n in enumerate((9, 6)):
            _, alone = layer(x[row : row + 1, :n])
            torch.testing.assert_close(y[row : row + 1], layer(follow[row : row + 1], alone)[0], **TIGHT)


def test_operator_only_for_l2_and_bad_arguments():
    x = inputs(6)
    M = make(5).materialize(x)  # l2: linear in the values (the registry-wide tests check M @ V == Y)
    assert M.shape == (2, 4, 6, 6)
    with pytest.raises(NotImplementedError, match="'huber' objective is nonlinear"):
        make(5, "huber").materialize(x)
    with pytest.raises(NotImplementedError, match="eigenvalues"):
        make(5).transition_eigenvalues(x)
    for kw, match in [
        ({"memory_batch": 0}, "`memory_batch` must be a positive int"),
        ({"objective": "l1"}, "`objective` must be one of"),
        ({"delta": -1.0}, "`delta` must be > 0"),
        ({"p": 0.0}, "`p` must be >= 1"),
        ({"expand": 0.0}, "`expand` must be > 0"),
        ({"num_heads": 3}, "`num_heads`=3 must divide"),
    ]:
        with pytest.raises(ValueError, match=match):
            rnnzoo.create("titans", d_model=D_MODEL, **kw)
    assert isinstance(make().engine, engines.TestTimeMemoryEngine)
