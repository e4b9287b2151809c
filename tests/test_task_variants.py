"""The task variants for the reproduced claims (issue 13): modular arithmetic without precedence, MQAR read twice,
and the lengths at which the train score is taken; each generator against labels computed in a plain loop."""

import re

import pytest
import torch

from rnnzoo.tasks import Task, list_tasks, make_task


def sample(name: str, length: int, batch_size: int = 64, seed: int = 0, **config):
    batch = make_task(name, **config).sample(batch_size, length, torch.Generator().manual_seed(seed))
    return batch, batch.inputs.tolist(), batch.targets.tolist(), batch.mask.tolist()


def uniform_labels(task: Task, length: int) -> bool:
    """Every class's frequency at the scored positions within 5 standard errors of ``task.chance``."""
    batches = [task.sample(4096, length, torch.Generator().manual_seed(s)) for s in range(4)]
    labels = torch.cat([b.targets[b.mask] for b in batches])
    freq = torch.bincount(labels, minlength=task.num_classes).double() / len(labels)
    stderr = (task.chance * (1 - task.chance) / len(labels)) ** 0.5
    return bool((freq - task.chance).abs().max() < 5 * stderr)


# Modular arithmetic without precedence -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("modulus", [2, 5, 7])
@pytest.mark.parametrize("length", [1, 2, 3, 4, 9, 16])
def test_modular_arithmetic_without_precedence_runs_left_to_right(length, modulus, seed):
    _, xs, ys, ms = sample("modular_arithmetic", length, seed=seed, modulus=modulus, precedence=False)
    plus, minus = modulus, modulus + 1
    for x, y, m in zip(xs, ys, ms):
        assert all(v < modulus for v in x[0::2]) and all(v in (plus, minus) for v in x[1::2])  # no ×
        assert m == [t % 2 == 0 for t in range(length)]
        value = x[0]
        for t in range(0, length, 2):
            if t:
                value = value + x[t] if x[t - 1] == plus else value - x[t]
            assert y[t] == value % modulus


def test_modular_arithmetic_without_precedence_draws_both_operators_uniformly():
    batch, *_ = sample("modular_arithmetic", 41, batch_size=512, precedence=False)
    ops = batch.inputs[:, 1::2]
    assert set(ops.unique().tolist()) == {5, 6}
    assert abs((ops == 5).double().mean().item() - 0.5) < 0.025  # 10,240 draws: 5 standard errors ≈ 0.025


def test_modular_arithmetic_keeps_its_vocabulary_and_default_without_precedence():
    with_, without = make_task("modular_arithmetic"), make_task("modular_arithmetic", precedence=False)
    assert with_.precedence is True
    assert (without.vocab_size, without.num_classes, without.chance) == (8, 5, 1 / 5) == (
        with_.vocab_size, with_.num_classes, with_.chance)


@pytest.mark.parametrize("length", [5, 6])
def test_modular_arithmetic_without_precedence_sparse_scores_the_last_number(length):
    _, xs, ys, ms = sample("modular_arithmetic", length, precedence=False, dense=False)
    for x, y, m in zip(xs, ys, ms):
        assert m == [t == 4 for t in range(length)]
        value = x[0] + (1 if x[1] == 5 else -1) * x[2] + (1 if x[3] == 5 else -1) * x[4]
        assert y[4] == value % 5


@pytest.mark.parametrize("precedence", [True, False])
@pytest.mark.parametrize("length", [3, 5])
def test_modular_arithmetic_chance_is_exact_with_and_without_precedence(precedence, length):
    task = make_task("modular_arithmetic", precedence=precedence)
    assert task.chance == 1 / 5 and uniform_labels(task, length)


# MQAR read twice ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("length, pairs", [(48, 8), (49, 8), (64, 8), (128, 8), (30, 5), (6, 1)])
def test_mqar_read_twice_repeats_the_block_and_queries_recall_their_values(length, pairs, seed):
    _, xs, ys, ms = sample("mqar", length, seed=seed, num_pairs=pairs, num_keys=16, num_values=12, read_twice=True)
    block = 2 * pairs
    for x, y, m in zip(xs, ys, ms):
        first, second = x[:block], x[block : 2 * block]
        assert second == first  # the block read twice
        keys, values = first[0::2], first[1::2]
        assert len(set(keys)) == pairs and all(12 <= k < 28 for k in keys)
        assert len(set(values)) == pairs and all(0 <= v < 12 for v in values)
        queries = [t for t in range(length) if m[t]]
        assert len(queries) == pairs and all(t >= 2 * block and (t - 2 * block) % 2 == 0 for t in queries)
        assert sorted(x[t] for t in queries) == sorted(keys)
        value_of = {}
        for t in range(0, block, 2):
            value_of[x[t]] = x[t + 1]
        assert all(y[t] == value_of[x[t]] for t in queries)


def test_mqar_read_twice_min_length_and_default():
    assert make_task("mqar").read_twice is False and make_task("mqar").min_length == 32
    task = make_task("mqar", read_twice=True)
    assert task.min_length == 48 and task.chance == 1 / 64 and task.vocab_size == 128
    assert uniform_labels(task, task.min_length)
    for length in (*task.test_lengths, task.min_length):
        batch = task.sample(3, length, torch.Generator().manual_seed(0))
        assert batch.mask.sum(1).tolist() == [8, 8, 8] and batch.inputs.max() < task.vocab_size


def test_mqar_read_twice_same_seed_same_batch():
    a, b = (sample("mqar", 64, seed=3, read_twice=True)[0] for _ in range(2))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets) and torch.equal(a.mask, b.mask)


# Train-score lengths -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 5, 100])
@pytest.mark.parametrize("name", list_tasks())
def test_train_score_lengths_lie_in_the_upper_half_of_the_training_range(name, count):
    task = make_task(name)
    low, high = task.train_lengths
    lengths = task.train_score_lengths(count)
    assert lengths == sorted(set(lengths)) and high in lengths and 1 <= len(lengths) <= count
    assert all(isinstance(n, int) and max(low, high // 2) <= n <= high for n in lengths)
    assert len(lengths) == min(count, high - max(low, high // 2) + 1)
    for n in lengths:
        task.sample(2, n, torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "name, config, count, expected",
    [
        ("parity", {}, 3, [20, 30, 40]),
        ("modular_arithmetic", {"precedence": False}, 5, [20, 25, 30, 35, 40]),
        ("s5", {}, 2, [16, 32]),
        ("induction_heads", {}, 3, [32, 48, 64]),
        ("mqar", {"read_twice": True}, 4, [64]),
        ("copying", {}, 3, [40]),
        ("parity", {"train_lengths": (30, 40)}, 3, [30, 35, 40]),  # low above high // 2
        ("parity", {"train_lengths": (1, 3)}, 8, [1, 2, 3]),
        ("parity", {}, 1, [40]),
    ],
)
def test_train_score_lengths_examples(name, config, count, expected):
    assert make_task(name, **config).train_score_lengths(count) == expected


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: make_task("modular_arithmetic", precedence="no"), "modular_arithmetic: `precedence` must be a bool"),
        (lambda: make_task("modular_arithmetic", precedence=1), "`precedence` must be a bool, got 1"),
        (lambda: make_task("mqar", read_twice=None), "mqar: `read_twice` must be a bool, got None"),
        (
            lambda: make_task("mqar", read_twice=True).sample(2, 47, torch.Generator()),
            "mqar: `length` must be an int >= 48 (6 * num_pairs: room for 8 key-value pairs twice",
        ),
        (lambda: make_task("mqar", read_twice=True, num_pairs=11), "`train_lengths[0]` must be an int >= 66 (6 * num"),
        (lambda: make_task("mqar", read_twice=True, test_lengths=(64, 40)), "`test_lengths[1]` must be an int >= 48"),
        (lambda: make_task("parity").train_score_lengths(0), "parity: `count` must be a positive int, got 0"),
        (lambda: make_task("mqar").train_score_lengths(2.0), "mqar: `count` must be a positive int, got 2.0"),
        (lambda: make_task("s3").train_score_lengths(True), "s3: `count` must be a positive int, got True"),
    ],
)
def test_bad_variant_arguments_give_a_clear_error(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


@pytest.mark.parametrize("window, length", [(1, 1), (3, 3), (3, 10), (4, 17)])
@pytest.mark.parametrize("seed", [0, 1])
def test_window_parity_labels_the_parity_of_the_last_window(window, length, seed):
    task = make_task("window_parity", window=window)
    batch = task.sample(5, length, torch.Generator().manual_seed(seed))
    for row in range(5):
        bits = batch.inputs[row].tolist()
        for t in range(length):
            scored = t >= window - 1
            assert bool(batch.mask[row, t]) == scored
            if scored:
                assert batch.targets[row, t] == sum(bits[t - window + 1 : t + 1]) % 2
    sparse = make_task("window_parity", window=window, dense=False).sample(2, length, torch.Generator())
    assert sparse.mask.sum(1).tolist() == [1, 1] and sparse.mask[:, -1].all()


def test_window_parity_bad_arguments():
    with pytest.raises(ValueError, match="`window`"):
        make_task("window_parity", window=0)
    with pytest.raises(ValueError, match="train_lengths\\[0\\].*window"):
        make_task("window_parity", window=5, train_lengths=[3, 8])
