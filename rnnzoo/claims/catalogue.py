"""The shipped claims, from the papers in the project's seed list and their published task definitions.

Thresholds are fixed from each paper's own figures before anything is run, never fitted to what rnnzoo
measures: a model **succeeds** on a length-generalisation claim when its extrapolation score (mean scaled
accuracy beyond the training lengths) is at least 0.9, the bench's "extrapolates" mark; it **fails** below the
level the paper reports for the failing models (each claim says which). ``quick_budget`` is what
``rnnzoo claims run --quick`` trains (one seed in about half an hour on 2 cores); ``budget`` is longer, closer
to the papers' regimes, for a machine with time to spare.
"""

from __future__ import annotations

from ..bench.suites import Budget, ModelSpec, TaskSpec, TrainSettings
from .claim import Arm, Claim
from .rules import AllOf, AnyOf, At, Beats, Ranking, Transition

__all__ = ["CLAIMS", "claim_names", "get_claims"]

SUCCESS = 0.9  # extrapolation score of a model that solves and extrapolates (the bench's "extrapolates" mark)
# A run stops early only after 8 checks (200 steps) at >= 0.999 accuracy: a model that has just fit the
# training lengths trains on a little, as the papers' fixed long schedules do.
CLAIM_TRAIN = TrainSettings(solved_evals=8)


def _neg(name: str, label: str, **kwargs) -> ModelSpec:
    return ModelSpec(name, {"negative_eigenvalues": True, **kwargs}, label=f"{label} [-1,1]")


def _pos(name: str, label: str, **kwargs) -> ModelSpec:
    return ModelSpec(name, dict(kwargs), label=f"{label} [0,1]")


def _arms(task: TaskSpec, models: list[ModelSpec]) -> tuple[Arm, ...]:
    return tuple(Arm(m.label, task, m) for m in models)


PARITY = TaskSpec("parity")  # train 3–40, test 40, 64, 128, 256 (Grazzi et al.)


def negative_eigenvalues_parity() -> Claim:
    models = [_pos("mamba", "mamba"), _neg("mamba", "mamba"), _pos("deltanet", "deltanet"), _neg("deltanet", "deltanet")]
    return Claim(
        name="neg-eig-parity",
        paper="Grazzi et al. 2025 (ICLR), Unlocking State-Tracking in Linear RNNs Through Negative Eigenvalues",
        statement="Linear RNNs with transition eigenvalues in [0, 1] cannot solve parity; with [-1, 1], Mamba and "
        "DeltaNet solve it and extrapolate.",
        expected="[-1,1] score ≥ 0.9 for mamba and deltanet; [0,1] score ≤ 0.5 (paper: 0.00 and 0.02)",
        arms=_arms(PARITY, models),
        rule=AllOf((
            At("mamba [-1,1]", "score", ">=", SUCCESS), At("deltanet [-1,1]", "score", ">=", SUCCESS),
            At("mamba [0,1]", "score", "<=", 0.5), At("deltanet [0,1]", "score", "<=", 0.5),
        )),  # fmt: skip
        budget=Budget(params=40_000, steps=3000),
        quick_budget=Budget(params=30_000, steps=800),
        train=CLAIM_TRAIN,
    )


def negative_eigenvalues_modular() -> Claim:
    task = TaskSpec("modular_arithmetic", {"precedence": False})
    models = [_pos("deltanet", "deltanet"), _neg("deltanet", "deltanet"), _pos("mamba", "mamba"), _neg("mamba", "mamba")]
    return Claim(
        name="neg-eig-modular",
        paper="Grazzi et al. 2025 (ICLR), Unlocking State-Tracking in Linear RNNs Through Negative Eigenvalues",
        statement="On modular arithmetic without precedence (+ and − mod 5), DeltaNet with eigenvalues in [-1, 1] "
        "solves and extrapolates, DeltaNet with [0, 1] does not, and diagonal Mamba does not with either range.",
        expected="deltanet [-1,1] score ≥ 0.9; deltanet [0,1] and both mamba ≤ 0.5 (paper: 0.97; 0.31, 0.10, 0.24)",
        arms=_arms(task, models),
        rule=AllOf((
            At("deltanet [-1,1]", "score", ">=", SUCCESS), At("deltanet [0,1]", "score", "<=", 0.5),
            At("mamba [0,1]", "score", "<=", 0.5), At("mamba [-1,1]", "score", "<=", 0.5),
        )),  # fmt: skip
        budget=Budget(params=40_000, steps=10_000),
        quick_budget=Budget(params=30_000, steps=6000),
        train=CLAIM_TRAIN,
    )


def deltaproduct_s3() -> Claim:
    task = TaskSpec("s3")  # train 4–32, test 32, 64, 128
    models = [
        ModelSpec("deltanet", {"negative_eigenvalues": True}, label="deltanet [-1,1]", n_layers=1),
        ModelSpec("deltaproduct", {"negative_eigenvalues": True, "num_householder": 2}, label="deltaproduct n_h=2 [-1,1]",
                  n_layers=1),
    ]  # fmt: skip
    return Claim(
        name="deltaproduct-s3",
        paper="Siems et al. 2025, DeltaProduct: Improving State-Tracking in Linear RNNs via Householder Products",
        statement="With one layer, DeltaProduct with n_h = 2 Householder steps per token and negative eigenvalues "
        "beats DeltaNet (n_h = 1) on S3 in sequence accuracy, at the training lengths and beyond.",
        expected="deltaproduct n_h=2 sequence accuracy ≥ deltanet's + 0.1, at training and test lengths",
        arms=_arms(task, models),
        rule=AllOf((
            Beats("deltaproduct n_h=2 [-1,1]", "deltanet [-1,1]", "sequence_train", 0.1),
            Beats("deltaproduct n_h=2 [-1,1]", "deltanet [-1,1]", "sequence_test", 0.1),
        )),  # fmt: skip
        budget=Budget(params=40_000, steps=10_000),
        quick_budget=Budget(params=30_000, steps=3000),
        train=CLAIM_TRAIN,
    )


MQAR_STATE = 2048  # floats of recurrent state every recurrent arm of the recall claims is sized to
# Mamba-2's 64-wide state per channel would leave it a d_model of 5 at this state size: 16, as Mamba's
RECALL_MODELS = {
    "deltanet": ModelSpec("deltanet"), "gla": ModelSpec("gla"),
    "mamba2": ModelSpec("mamba2", {"d_state": 16}, label="mamba2"), "mamba": ModelSpec("mamba"),
}  # fmt: skip
STATE_MATCHED = {"match": "state", "state": MQAR_STATE}  # an arm's Budget overrides


def zoology_mqar() -> Claim:
    task = TaskSpec("mqar")
    arms = (
        Arm("attention", task, ModelSpec("attention")),  # its KV cache grows with T: sized by parameters
        *(Arm(name, task, spec, budget=STATE_MATCHED) for name, spec in RECALL_MODELS.items()),
    )
    return Claim(
        name="zoology-mqar",
        paper="Arora et al. 2024 (ICLR), Zoology: Measuring and Improving Recall in Efficient Language Models",
        statement="On multi-query associative recall at equal recurrent state size, attention > the delta rule > "
        "gated linear attention (GLA, Mamba-2) > diagonal recurrences (Mamba).",
        expected=f"MQAR accuracy (scaled) ordered attention > deltanet > {{gla, mamba2}} > mamba, the recurrent "
        f"models at {MQAR_STATE} floats of state",
        arms=arms,
        rule=Ranking((("attention",), ("deltanet",), ("gla", "mamba2"), ("mamba",)), "train"),
        budget=Budget(params=40_000, steps=8000),
        quick_budget=Budget(params=40_000, steps=2500),
        train=CLAIM_TRAIN,
    )


def chomsky_attention() -> Claim:
    tasks = {"parity": PARITY, "cycle": TaskSpec("cycle_navigation")}
    arms = tuple(Arm(f"{m} / {t}", task, ModelSpec(m)) for t, task in tasks.items() for m in ("lstm", "attention"))
    return Claim(
        name="chomsky-attention",
        paper="Delétang et al. 2023 (ICLR), Neural Networks and the Chomsky Hierarchy",
        statement="Softmax attention fails to extrapolate on parity and cycle navigation, where an LSTM succeeds.",
        expected="lstm score ≥ 0.9 on both; attention < 0.9 on both (paper: 0.04 and 0.52 scaled)",
        arms=arms,
        rule=AllOf((
            At("lstm / parity", "score", ">=", SUCCESS), At("lstm / cycle", "score", ">=", SUCCESS),
            At("attention / parity", "score", "<", SUCCESS), At("attention / cycle", "score", "<", SUCCESS),
        )),  # fmt: skip
        budget=Budget(params=40_000, steps=3000),
        quick_budget=Budget(params=30_000, steps=1000),
        train=CLAIM_TRAIN,
    )


def just_read_twice() -> Claim:
    # the same 48-token query stretch after the pairs in both: 64 tokens once, 80 with the block repeated
    once = TaskSpec("mqar")
    twice = TaskSpec("mqar", {"read_twice": True, "train_lengths": [80, 80], "test_lengths": [80, 144, 272]})
    arms = tuple(
        Arm(f"{name} {label}", task, RECALL_MODELS[name], budget=STATE_MATCHED)
        for name in ("gla", "mamba2") for label, task in (("once", once), ("twice", twice))
    )  # fmt: skip
    return Claim(
        name="just-read-twice",
        paper="Arora et al. 2024, Just read twice: closing the recall gap for recurrent language models",
        statement="Repeating the key-value block before the queries raises a recurrent model's MQAR accuracy at a "
        "fixed state size.",
        expected=f"read twice ≥ read once + 0.05 (scaled MQAR accuracy) for gla and mamba2 at {MQAR_STATE} floats",
        arms=arms,
        rule=AllOf((Beats("gla twice", "gla once", "train", 0.05), Beats("mamba2 twice", "mamba2 once", "train", 0.05))),
        budget=Budget(params=40_000, steps=8000),
        quick_budget=Budget(params=40_000, steps=2500),
        train=CLAIM_TRAIN,
        # the claim lives where the state is too small for every pair: "learned" is half-way above chance
        learned_at=0.5,
    )


def state_passing() -> Claim:
    # The claim's premise is a model that fails beyond its training lengths from zero states: Hawk on window
    # parity trained on short sequences is one (its label needs the last 4 bits only, so a state carried from
    # another sequence changes no label).
    task = TaskSpec("window_parity", {"window": 4, "train_lengths": [4, 10], "test_lengths": [10, 128, 1024]})
    model = ModelSpec("hawk")
    arms = (
        Arm("zero", task, model),
        Arm("noise", task, model, train={"initial_state": "noise"}),
        Arm("carried", task, model, train={"initial_state": "carried"}),
    )
    return Claim(
        name="state-passing",
        paper="Buitrago Ruiz & Gu 2025 (ICML), Understanding and Improving Length Generalization in Recurrent Models",
        statement="A recurrent model trained from zero states that fails beyond its training lengths extrapolates "
        "when trained from carried (state passing) or noisy initial states.",
        expected="hawk on window parity (trained on 4–10): zero states score < 0.9; noisy or carried ≥ 0.9",
        arms=arms,
        rule=AllOf((At("zero", "score", "<", SUCCESS),
                    AnyOf((At("carried", "score", ">=", SUCCESS), At("noise", "score", ">=", SUCCESS))))),
        budget=Budget(params=40_000, steps=3000),
        quick_budget=Budget(params=30_000, steps=800),
        train=CLAIM_TRAIN,
    )


REGULAR_TASKS = {"sum": TaskSpec("cycle_navigation"), "even pairs": TaskSpec("even_pairs"),
                 "arithmetic": TaskSpec("modular_arithmetic")}  # fmt: skip


def block_diagonal_regular() -> Claim:
    # the reference's setting scaled down: 8×8 blocks, p = 1.2; the diagonal input-dependent baseline is Mamba
    # with negative eigenvalues, the strongest diagonal model here on these tasks
    models = {"block_lrnn": ModelSpec("block_lrnn", {"block_size": 8}), "mamba": ModelSpec("mamba", {"negative_eigenvalues": True})}
    arms = tuple(Arm(f"{m} / {t}", task, spec) for t, task in REGULAR_TASKS.items() for m, spec in models.items())
    return Claim(
        name="block-diagonal-regular",
        paper="Fan et al. 2024 (NAACL), Advancing Regular Language Reasoning in Linear Recurrent Neural Networks",
        statement="A linear RNN with block-diagonal, input-dependent, column-normalised transitions extrapolates on "
        "Sum (cycle navigation), Even Pairs and modular arithmetic; a diagonal linear RNN does not on Sum and "
        "modular arithmetic.",
        expected="block_lrnn score ≥ 0.9 on all three; mamba [-1,1] < 0.9 on sum and arithmetic (paper: 1.00, 1.00, "
        "0.96 for the block model; ≤ 0.5 for the diagonal ones)",
        arms=arms,
        rule=AllOf((
            *(At(f"block_lrnn / {t}", "score", ">=", SUCCESS) for t in REGULAR_TASKS),
            At("mamba / sum", "score", "<", SUCCESS), At("mamba / arithmetic", "score", "<", SUCCESS),
        )),  # fmt: skip
        budget=Budget(params=40_000, steps=10_000),
        quick_budget=Budget(params=30_000, steps=1500),
        train=CLAIM_TRAIN,
        tier=2,
    )


GROUP_TASKS = {"a5": TaskSpec("a5"), "s5": TaskSpec("s5")}  # train 4–32, test 32, 64, 128


def fixed_point_groups() -> Claim:
    # both with eigenvalues in [-1, 1]: the diagonal baseline at its strongest on state tracking
    models = {"fixed_point_rnn": _neg("fixed_point_rnn", "fixed_point_rnn"), "mamba": _neg("mamba", "mamba")}
    arms = tuple(Arm(f"{m} / {t}", task, models[m]) for t, task in GROUP_TASKS.items() for m in models)
    return Claim(
        name="fixed-point-groups",
        paper="Movahedi et al. 2025, Fixed-Point RNNs: Interpolating from Diagonal to Dense",
        statement="A dense linear RNN computed as the fixed point of a diagonal one tracks state on A5 and S5 "
        "better than a diagonal linear RNN at the same number of parameters.",
        expected="fixed_point_rnn scaled accuracy at training lengths ≥ mamba's + 0.1 on A5 and on S5 (both with "
        "eigenvalues in [-1,1])",
        arms=arms,
        rule=AllOf(tuple(Beats(f"fixed_point_rnn / {t}", f"mamba / {t}", "train", 0.1) for t in GROUP_TASKS)),
        budget=Budget(params=40_000, steps=10_000),
        quick_budget=Budget(params=30_000, steps=2000),
        train=CLAIM_TRAIN,
        tier=2,
    )


# Modular counting as a per-token running sum mod 5 (the paper's modular addition): cycle navigation, a pointer
# moved −1, 0 or +1 by each token. (Modular arithmetic's separate +/− tokens would need the previous token's
# sign at each digit, which no rotation can carry.)
COUNTING = TaskSpec("cycle_navigation")


def bilinear_counting() -> Claim:
    arms = (
        Arm("block / parity", PARITY, ModelSpec("bilinear", {"structure": "block"})),
        *(Arm(f"{s} / counting", COUNTING, ModelSpec("bilinear", {"structure": s}))
          for s in ("block", "rotation", "diagonal")),
    )  # fmt: skip
    return Claim(
        name="bilinear-counting",
        paper="Ebrahimi & Memisevic 2025, Revisiting Bi-Linear State Transitions in Recurrent Neural Networks",
        statement="Bilinear state transitions with real, non-diagonal blocks solve parity and counting mod 5 and "
        "extrapolate; 2×2 rotations suffice for counting; real diagonal transitions do not count mod 5.",
        expected="bilinear block score ≥ 0.9 on parity and on counting mod 5 (cycle navigation), rotation ≥ 0.9 on "
        "counting, diagonal < 0.9 on counting",
        arms=arms,
        rule=AllOf((
            At("block / parity", "score", ">=", SUCCESS), At("block / counting", "score", ">=", SUCCESS),
            At("rotation / counting", "score", ">=", SUCCESS), At("diagonal / counting", "score", "<", SUCCESS),
        )),  # fmt: skip
        budget=Budget(params=40_000, steps=10_000),
        quick_budget=Budget(params=30_000, steps=3000),
        train=CLAIM_TRAIN,
        tier=2,
    )


MQAR = TaskSpec("mqar")
RECALL_MARGIN = 0.02  # "better" in scaled MQAR accuracy: a small margin, fixed before any run


def log_linear_mqar() -> Claim:
    bases = ("mamba2", "gated_deltanet")
    arms = tuple(Arm(m, MQAR, ModelSpec(m)) for b in bases for m in (b, f"log_linear_{b}"))
    return Claim(
        name="log-linear-mqar",
        paper="Guo et al. 2025, Log-Linear Attention",
        statement="Log-linear Mamba-2 and log-linear Gated DeltaNet (O(log T) states in Fenwick-tree buckets) "
        "recall better on MQAR than the linear-time models they extend, at equal parameters.",
        expected=f"log-linear scaled MQAR accuracy ≥ its base's + {RECALL_MARGIN:g}, for Mamba-2 and Gated DeltaNet",
        arms=arms,
        rule=AllOf(tuple(Beats(f"log_linear_{b}", b, "train", RECALL_MARGIN) for b in bases)),
        budget=Budget(params=40_000, steps=8000),
        quick_budget=Budget(params=40_000, steps=2500),
        train=CLAIM_TRAIN,
        tier=2,
    )


def mom_mqar() -> Claim:
    return Claim(
        name="mom-mqar",
        paper="Du et al. 2025, MoM: Linear Sequence Modeling with Mixture-of-Memories",
        statement="A mixture of Gated DeltaNet memories with a top-k router recalls better on MQAR than one Gated "
        "DeltaNet memory, at equal parameters.",
        expected=f"mom scaled MQAR accuracy ≥ gated_deltanet's + {RECALL_MARGIN:g}",
        arms=(Arm("mom", MQAR, ModelSpec("mom")), Arm("gated_deltanet", MQAR, ModelSpec("gated_deltanet"))),
        rule=Beats("mom", "gated_deltanet", "train", RECALL_MARGIN),
        budget=Budget(params=40_000, steps=8000),
        quick_budget=Budget(params=40_000, steps=2500),
        train=CLAIM_TRAIN,
        tier=2,
    )


STREAMING_LENGTHS = (2, 3, 4, 6, 8, 12, 16)
# The paper's subject is one recurrent network, h_t = tanh(W h_{t-1} + U x_t), read out at every step: one
# Elman block without an MLP, not the benchmark's two blocks with MLPs, whose extra depth can fit the
# short training sequences by other means than a two-state machine.
STREAMING_RNN = ModelSpec("elman", n_layers=1, mlp="none", label="elman (1 layer, no MLP)")


def streaming_parity() -> Claim:
    arms = tuple(
        Arm(f"train ≤ {n}", TaskSpec("parity", {"train_lengths": [1, n], "test_lengths": [64, 128, 256]}),
            STREAMING_RNN)
        for n in STREAMING_LENGTHS
    )  # fmt: skip
    return Claim(
        name="streaming-parity",
        paper="Algorithm Development in Neural Networks: Insights from the Streaming Parity Task",
        statement="An RNN trained on streaming parity jumps to perfect accuracy at all lengths once its training "
        "sequences pass a threshold length.",
        expected="score ≤ 0.5 below some training length, ≥ 0.9 at it and every longer one",
        arms=arms,
        rule=Transition(tuple(a.id for a in arms), "score", 0.5, SUCCESS),
        budget=Budget(params=30_000, steps=3000),
        quick_budget=Budget(params=20_000, steps=1000),
        train=TrainSettings(solved_evals=10**6),  # fixed steps: stopping when the short lengths fit would end early
    )


CLAIMS = {
    c.name: c
    for c in (
        negative_eigenvalues_parity(), negative_eigenvalues_modular(), deltaproduct_s3(), zoology_mqar(),
        chomsky_attention(), just_read_twice(), state_passing(), streaming_parity(), block_diagonal_regular(),
        fixed_point_groups(), bilinear_counting(), log_linear_mqar(), mom_mqar(),
    )
}  # fmt: skip


def claim_names() -> list[str]:
    return list(CLAIMS)


def get_claims(names: list[str] | None = None, *, every_tier: bool = False) -> list[Claim]:
    """The named claims, in catalogue order; with no names, the tier-1 claims (every claim with
    ``every_tier``). A ValueError lists the valid names."""
    if not names:
        return [c for c in CLAIMS.values() if every_tier or c.tier == 1]
    unknown = [n for n in names if n not in CLAIMS]
    if unknown:
        raise ValueError(f"unknown claim(s) {', '.join(unknown)}; valid claims: {', '.join(CLAIMS)}")
    return [CLAIMS[n] for n in dict.fromkeys(names)]
