"""Tests for data/partition.py (pure numpy, fast)."""

import numpy as np
import pytest

from data.partition import (
    PARTITION_NAMES,
    make_partition,
    partition_dirichlet,
    partition_iid,
    partition_shard,
)


def balanced_labels(num_classes=10, per_class=500, seed=0):
    labels = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(seed).permutation(labels)


def assert_disjoint_int64(parts, n):
    for p in parts:
        assert p.dtype == np.int64
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx)
    assert allidx.min() >= 0 and allidx.max() < n


def classes_per_client(parts, labels):
    return np.mean([len(np.unique(labels[p])) for p in parts])


def test_iid_sizes_and_disjoint():
    parts = partition_iid(1003, 10, np.random.default_rng(0))
    assert len(parts) == 10
    assert all(len(p) == 100 for p in parts)
    assert_disjoint_int64(parts, 1003)
    assert len(np.concatenate(parts)) == 10 * int(1003 / 10)


def test_iid_seeded():
    a = partition_iid(500, 5, np.random.default_rng(1))
    b = partition_iid(500, 5, np.random.default_rng(1))
    c = partition_iid(500, 5, np.random.default_rng(2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_iid_too_few_samples():
    with pytest.raises(ValueError, match="num_samples=3"):
        partition_iid(3, 5, np.random.default_rng(0))


def test_dirichlet_covers_all_and_min_size():
    labels = balanced_labels()
    parts = partition_dirichlet(labels, 20, 1.0, np.random.default_rng(0), min_size=50)
    assert len(parts) == 20
    assert_disjoint_int64(parts, len(labels))
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    assert min(len(p) for p in parts) >= 50


def test_dirichlet_seed_dependence():
    labels = balanced_labels()
    a = partition_dirichlet(labels, 20, 1.0, np.random.default_rng(7), min_size=20)
    b = partition_dirichlet(labels, 20, 1.0, np.random.default_rng(7), min_size=20)
    c = partition_dirichlet(labels, 20, 1.0, np.random.default_rng(8), min_size=20)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert [len(x) for x in a] != [len(x) for x in c]


def test_dirichlet_smaller_alpha_more_skewed():
    labels = balanced_labels()
    rng = np.random.default_rng(0)
    skewed = partition_dirichlet(labels, 20, 0.1, rng, min_size=10)
    flat = partition_dirichlet(labels, 20, 100.0, rng, min_size=10)
    assert classes_per_client(skewed, labels) < classes_per_client(flat, labels) - 3
    assert classes_per_client(flat, labels) == 10


def test_dirichlet_too_few_samples():
    labels = balanced_labels(per_class=10)  # 100 samples
    with pytest.raises(ValueError, match=r"min_size=20.*num_clients=10"):
        partition_dirichlet(labels, 10, 1.0, np.random.default_rng(0), min_size=20)


def test_dirichlet_gives_up_with_clear_error():
    labels = balanced_labels()  # 5000 samples, 20 clients -> 250 each only if perfectly even
    with pytest.raises(ValueError) as err:
        partition_dirichlet(
            labels, 20, 0.01, np.random.default_rng(0), min_size=250, max_attempts=5
        )
    msg = str(err.value)
    for part in ("5 attempts", "alpha=0.01", "min_size=250", "num_clients=20", "smallest"):
        assert part in msg
    assert "smaller min_size or a larger alpha" in msg


def test_shard_few_classes_per_client():
    labels = balanced_labels(per_class=100)  # 1000 samples
    parts = partition_shard(labels, 20, 2, np.random.default_rng(0))  # 40 shards of 25
    assert_disjoint_int64(parts, len(labels))
    assert all(len(p) == 50 for p in parts)
    for p in parts:
        # each shard of 25 lies inside one class (classes have 100 samples, a multiple of 25)
        assert len(np.unique(labels[p])) <= 2
        for shard in (p[:25], p[25:]):
            assert len(np.unique(labels[shard])) == 1


def test_shard_too_many_shards():
    with pytest.raises(ValueError, match="shards_per_client=5"):
        partition_shard(np.arange(10) % 2, 5, 5, np.random.default_rng(0))


def test_make_partition_dispatch_and_errors():
    labels = balanced_labels(per_class=100)
    rng = np.random.default_rng(0)
    for name in PARTITION_NAMES:
        parts = make_partition(name, labels, 10, rng, alpha=1.0, min_size=10, shards_per_client=2)
        assert len(parts) == 10
        assert_disjoint_int64(parts, len(labels))
    with pytest.raises(ValueError, match="'bogus'.*iid"):
        make_partition("bogus", labels, 10, rng)
    with pytest.raises(ValueError, match="num_clients"):
        make_partition("iid", labels, 0, rng)
    with pytest.raises(ValueError, match="alpha"):
        make_partition("dirichlet", labels, 10, rng, alpha=0.0)
    with pytest.raises(ValueError, match="shards_per_client"):
        make_partition("shard", labels, 10, rng, shards_per_client=0)
