"""The synthetic tasks: each generator against a brute-force label computation in plain Python, determinism,
shapes and ranges at every length, exact chance (and empirically uniform labels), and clear errors."""

import functools
import itertools
import re

import pytest
import torch

from rnnzoo.tasks import Batch, list_tasks, make_task
from rnnzoo.tasks.base import compose_prefix

NAMES = [
    "parity", "modular_arithmetic", "cycle_navigation", "even_pairs", "s3", "a5", "s5",
    "mqar", "copying", "selective_copying", "induction_heads", "window_parity",
]


def sample(name: str, length: int, batch_size: int = 64, seed: int = 0, **config) -> tuple[Batch, list, list, list]:
    batch = make_task(name, **config).sample(batch_size, length, torch.Generator().manual_seed(seed))
    return batch, batch.inputs.tolist(), batch.targets.tolist(), batch.mask.tolist()


def test_registry_lists_every_task_in_catalogue_order():
    assert list_tasks() == NAMES


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("length", [1, 2, 7, 16])
def test_parity_counts_ones(length, dense):
    _, xs, ys, ms = sample("parity", length, dense=dense)
    for x, y, m in zip(xs, ys, ms):
        assert m == [dense or t == length - 1 for t in range(length)]
        assert all(y[t] == sum(x[: t + 1]) % 2 for t in range(length) if m[t])


@pytest.mark.parametrize("modulus", [5, 7])
@pytest.mark.parametrize("length", [1, 2, 3, 4, 9, 16])
def test_modular_arithmetic_matches_python_eval_with_precedence(length, modulus):
    _, xs, ys, ms = sample("modular_arithmetic", length, modulus=modulus)
    symbol = [str(d) for d in range(modulus)] + ["+", "-", "*"]
    times_seen = False
    for x, y, m in zip(xs, ys, ms):
        assert all(v < modulus for v in x[0::2]) and all(v >= modulus for v in x[1::2])
        assert length < 2 or x[1] in (modulus, modulus + 1)  # the first operator is + or −
        times_seen |= modulus + 2 in x
        assert m == [t % 2 == 0 for t in range(length)]
        for t in range(0, length, 2):
            assert y[t] == eval("".join(symbol[v] for v in x[: t + 1])) % modulus
    assert times_seen or length < 5


def test_modular_arithmetic_sparse_scores_the_last_number_only():
    for length in (5, 6):
        _, _, _, ms = sample("modular_arithmetic", length, dense=False)
        assert all(m == [t == 4 for t in range(length)] for m in ms)


@pytest.mark.parametrize("length", [1, 2, 9, 16])
def test_cycle_navigation_walks_the_pointer(length):
    _, xs, ys, ms = sample("cycle_navigation", length)
    for x, y, m in zip(xs, ys, ms):
        assert all(m) and x[0] < 5 and all(5 <= v < 8 for v in x[1:])
        place = x[0]
        for t in range(length):
            if t:
                place = (place + {5: -1, 6: 0, 7: 1}[x[t]]) % 5
            assert y[t] == place


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("length", [2, 3, 16])
def test_even_pairs_counts_unequal_adjacent_pairs(length, dense):
    _, xs, ys, ms = sample("even_pairs", length, dense=dense)
    for x, y, m in zip(xs, ys, ms):
        assert m == [t > 0 and (dense or t == length - 1) for t in range(length)]
        for t in range(1, length):
            unequal = sum(x[s] != x[s + 1] for s in range(t))
            assert not m[t] or y[t] == int(unequal % 2 == 0)


def then(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """``a · b``: ``a`` then ``b``."""
    return tuple(b[a[i]] for i in range(len(a)))


@pytest.mark.parametrize("name, degree, order", [("s3", 3, 6), ("a5", 5, 60), ("s5", 5, 120)])
def test_group_elements(name, degree, order):
    elements = make_task(name).elements
    assert len(set(elements)) == order and elements[0] == tuple(range(degree))
    assert all(then(a, b) in elements for a in elements[:10] for b in elements)  # closed under the product
    if name == "a5":
        inversions = lambda p: sum(p[i] > p[j] for i, j in itertools.combinations(range(degree), 2))
        assert all(inversions(p) % 2 == 0 for p in elements)


@pytest.mark.parametrize("name", ["s3", "a5", "s5"])
@pytest.mark.parametrize("length", [1, 2, 5, 16])
def test_group_labels_are_prefix_products_in_reading_order(name, length):
    task = make_task(name)
    _, xs, ys, ms = sample(name, length)
    els = task.elements
    for x, y, m in zip(xs, ys, ms):
        assert all(m)
        assert y == [els.index(functools.reduce(then, [els[g] for g in x[: t + 1]])) for t in range(length)]


def test_s3_composition_order_matters():
    """The reverse convention (``b`` then ``a``) disagrees on S3, so the test above pins the order down."""
    els = make_task("s3").elements
    _, xs, ys, _ = sample("s3", 8)
    before = lambda a, b: then(b, a)  # noqa: E731
    reverse = [[els.index(functools.reduce(before, [els[g] for g in x[: t + 1]])) for t in range(8)] for x in xs]
    assert reverse != ys


@pytest.mark.parametrize("length, pairs", [(32, 8), (33, 8), (64, 8), (20, 5)])
def test_mqar_queries_recall_their_values(length, pairs):
    _, xs, ys, ms = sample("mqar", length, num_pairs=pairs, num_keys=16, num_values=12)
    for x, y, m in zip(xs, ys, ms):
        keys, values = x[0 : 2 * pairs : 2], x[1 : 2 * pairs : 2]
        assert len(set(keys)) == pairs and all(12 <= k < 28 for k in keys)
        assert len(set(values)) == pairs and all(0 <= v < 12 for v in values)
        queries = [t for t in range(length) if m[t]]
        assert len(queries) == pairs and all(t >= 2 * pairs and (t - 2 * pairs) % 2 == 0 for t in queries)
        assert sorted(x[t] for t in queries) == sorted(keys)
        assert all(y[t] == dict(zip(keys, values))[x[t]] for t in queries)


def test_mqar_queries_follow_a_power_law():
    """Zoology's gaps favour early queries: far more in the first half of the query stretch than the second."""
    batch, *_ = sample("mqar", 256, batch_size=256)
    offsets = batch.mask[:, 16:].nonzero()[:, 1].float()
    assert (offsets < 120).float().mean() > 0.75


@pytest.mark.parametrize("name", ["copying", "selective_copying"])
@pytest.mark.parametrize("length", [8, 9, 40])
def test_copying_emits_the_symbols_in_order_at_the_markers(name, length):
    _, xs, ys, ms = sample(name, length)
    spread = False
    for x, y, m in zip(xs, ys, ms):
        head = [t for t in range(length - 4) if x[t] != 10]
        assert len(head) == 4 and all(x[t] < 10 for t in head) and x[-4:] == [11] * 4
        if name == "copying":
            assert head == [0, 1, 2, 3]
        spread |= head != [0, 1, 2, 3]
        assert m == [t >= length - 4 for t in range(length)]
        assert y[-4:] == [x[t] for t in head]
    assert spread == (name == "selective_copying" and length > 8)


@pytest.mark.parametrize("length", [3, 4, 64])
def test_induction_heads_recalls_the_value_after_the_trigger(length):
    _, xs, ys, ms = sample("induction_heads", length)
    for x, y, m in zip(xs, ys, ms):
        triggers = [t for t in range(length) if x[t] == 16]
        assert len(triggers) == 2 and triggers[1] == length - 1
        assert m == [t == length - 1 for t in range(length)] and y[-1] == x[triggers[0] + 1]


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_batch_other_seed_other_batch(name):
    length = make_task(name).train_lengths[1]
    a, b, c = (sample(name, length, seed=s)[0] for s in (1, 1, 2))
    for field in ("inputs", "targets", "mask"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.inputs, c.inputs)


@pytest.mark.parametrize("name", NAMES)
def test_every_length_samples_in_range(name, device):
    task = make_task(name)
    generator = torch.Generator(device).manual_seed(0)
    for length in sorted({*task.train_lengths, *task.test_lengths, task.min_length}):
        batch = task.sample(3, length, generator)
        assert batch.inputs.shape == batch.targets.shape == batch.mask.shape == (3, length)
        assert batch.inputs.device.type == device.type
        assert batch.inputs.min() >= 0 and batch.inputs.max() < task.vocab_size
        assert batch.mask.any(1).all() and batch.targets.min() >= 0 and batch.targets.max() < task.num_classes


CHANCE = {
    "parity": 1 / 2, "modular_arithmetic": 1 / 5, "cycle_navigation": 1 / 5, "even_pairs": 1 / 2, "s3": 1 / 6,
    "a5": 1 / 60, "s5": 1 / 120, "mqar": 1 / 64, "copying": 1 / 10, "selective_copying": 1 / 10,
    "induction_heads": 1 / 16, "window_parity": 1 / 2,
}


@pytest.mark.parametrize("name", NAMES)
def test_chance_is_exact_and_labels_uniform_on_short_sequences(name):
    """Short sequences are where a biased label would show (a product of digits, a walk from place 0, a first
    position that has no pair); every class's frequency is within 5 standard errors of ``chance``."""
    task = make_task(name)
    assert task.chance == pytest.approx(CHANCE[name], rel=1e-12)
    length = max(task.min_length, 3)
    batches = [task.sample(4096, length, torch.Generator().manual_seed(s)) for s in range(4)]
    labels = torch.cat([b.targets[b.mask] for b in batches])
    freq = torch.bincount(labels, minlength=task.num_classes).double() / len(labels)
    stderr = (task.chance * (1 - task.chance) / len(labels)) ** 0.5
    assert (freq - task.chance).abs().max() < 5 * stderr


def test_compose_prefix_matches_a_loop():
    generator = torch.Generator().manual_seed(0)
    for length in (1, 2, 3, 5, 17):
        maps = torch.randint(0, 4, (2, length, 4), generator=generator)  # any maps, not only permutations
        out = compose_prefix(maps)
        for b, t in itertools.product(range(2), range(length)):
            image = list(range(4))
            for s in range(t + 1):
                image = [maps[b, s, i].item() for i in image]
            assert out[b, t].tolist() == image


def test_config_lists_become_tuples_and_tasks_are_frozen():
    task = make_task("parity", train_lengths=[3, 10], test_lengths=[10, 20])
    assert task.train_lengths == (3, 10) and task.test_lengths == (10, 20)
    with pytest.raises(AttributeError):
        task.dense = False


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: make_task("parityy"), "unknown task 'parityy'; valid tasks: parity, modular_arithmetic"),
        (lambda: make_task("parity", modulus=3), "no config field 'modulus'; valid fields: train_lengths, test_"),
        (lambda: make_task("mqar").sample(2, 31, torch.Generator()), "`length` must be an int >= 32 (4 * num_pairs"),
        (lambda: make_task("even_pairs").sample(2, 1, torch.Generator()), "`length` must be an int >= 2"),
        (lambda: make_task("parity").sample(2, 0, torch.Generator()), "parity: `length` must be an int >= 1, got 0"),
        (lambda: make_task("parity").sample(2, 4.0, torch.Generator()), "`length` must be an int >= 1, got 4.0"),
        (lambda: make_task("copying").sample(2, 7, torch.Generator()), "`length` must be an int >= 8"),
        (lambda: make_task("parity").sample(0, 4, torch.Generator()), "`batch_size` must be a positive int"),
        (lambda: make_task("parity", train_lengths=(10, 3)), "`train_lengths` must be (min, max) with min <= max"),
        (lambda: make_task("parity", train_lengths=(3, None)), "`train_lengths[1]` must be an int >= 1, got None"),
        (lambda: make_task("parity", train_lengths=40), "`train_lengths` must be (min, max)"),
        (lambda: make_task("parity", test_lengths=()), "`test_lengths` must be a non-empty sequence"),
        (lambda: make_task("mqar", num_pairs=17), "`train_lengths[0]` must be an int >= 68 (4 * num_pairs"),
        (lambda: make_task("mqar", test_lengths=(64, 16)), "`test_lengths[1]` must be an int >= 32"),
        (lambda: make_task("mqar", num_pairs=8, num_keys=4), "`num_keys` must be an int >= 8"),
        (lambda: make_task("modular_arithmetic", modulus=1), "`modulus` must be an int >= 2"),
        (lambda: make_task("s3", dense="yes"), "`dense` must be a bool"),
        (lambda: Batch(torch.zeros(2, 3).long(), torch.zeros(2, 4).long(), torch.ones(2, 3).bool()), "share one"),
    ],
)
def test_bad_input_gives_a_clear_error(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_generator_must_be_a_generator():
    with pytest.raises(TypeError, match="`generator` must be a torch.Generator"):
        make_task("parity").sample(2, 4, 0)
