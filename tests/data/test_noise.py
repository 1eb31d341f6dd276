"""Tests for data/noise.py (pure numpy, fast)."""

import math

import numpy as np
import pytest

from data.noise import (
    NoiseGroup,
    client_noise_plan,
    corrupt_labels,
    parse_noise_groups,
    parse_rate_range,
    ramp_rates,
    realised_noise_rate,
)


def test_parse_rate_range_ok():
    assert parse_rate_range("0.0,0.4") == (0.0, 0.4)
    assert parse_rate_range("0.2") == (0.2, 0.2)
    assert parse_rate_range(" 0.1 , 0.3 ") == (0.1, 0.3)
    assert parse_rate_range("0 1") == (0.0, 1.0)


@pytest.mark.parametrize("bad", ["1.5", "-0.1", "0.4,0.1", "abc", "", "0.1,0.2,0.3", "0,nan"])
def test_parse_rate_range_rejects(bad):
    with pytest.raises(ValueError) as err:
        parse_rate_range(bad)
    assert repr(bad) in str(err.value)


def test_ramp_rates():
    r = ramp_rates(100, 0.0, 0.4)
    assert r[0] == 0.0
    assert r[1] == pytest.approx(0.004)
    assert r[-1] == pytest.approx(0.396)
    assert r.mean() == pytest.approx(0.198)
    assert np.all(r < 0.4)
    assert np.allclose(ramp_rates(3, 0.2, 0.2), 0.2)
    assert len(ramp_rates(0, 0.0, 0.4)) == 0


def test_realised_rates_equal_floor_for_ramp():
    n, num_classes = 1000, 10
    clean = np.arange(n) % num_classes
    plan = client_noise_plan("symmetric", (0.0, 0.4), 100)
    for k, (kind, rate) in enumerate(plan):
        assert kind == "symmetric"
        assert rate == pytest.approx(0.004 * k)
        noisy = corrupt_labels(clean, rate, kind, num_classes, np.random.default_rng(k))
        assert realised_noise_rate(noisy, clean) == int(n * rate) / n
        assert abs(realised_noise_rate(noisy, clean) - 0.004 * k) <= 1 / n


def test_symmetric_always_wrong_and_spread():
    num_classes = 10
    clean = np.zeros(20000, dtype=np.int64)
    noisy = corrupt_labels(clean, 0.5, "symmetric", num_classes, np.random.default_rng(0))
    changed = noisy != clean
    assert changed.sum() == 10000
    counts = np.bincount(noisy[changed], minlength=num_classes)
    assert counts[0] == 0
    assert np.all(counts[1:] > 1000)  # about 1111 each over the 9 other classes


def test_pairflip_exact():
    num_classes = 4
    clean = np.arange(1000) % num_classes
    noisy = corrupt_labels(clean, 0.3, "pairflip", num_classes, np.random.default_rng(0))
    changed = noisy != clean
    assert changed.sum() == 300
    assert np.array_equal(noisy[changed], (clean[changed] - 1) % num_classes)


def test_clean_kind_and_new_array():
    clean = np.arange(50) % 5
    out = corrupt_labels(clean, 0.5, "clean", 5, np.random.default_rng(0))
    assert out is not clean and out.dtype == np.int64
    assert np.array_equal(out, clean)
    noisy = corrupt_labels(clean, 1.0, "symmetric", 5, np.random.default_rng(0))
    assert np.array_equal(clean, np.arange(50) % 5)  # input untouched
    assert noisy.dtype == np.int64 and np.all(noisy != clean)


def test_same_seed_same_labels():
    clean = np.arange(500) % 10
    a = corrupt_labels(clean, 0.3, "symmetric", 10, np.random.default_rng(3))
    b = corrupt_labels(clean, 0.3, "symmetric", 10, np.random.default_rng(3))
    c = corrupt_labels(clean, 0.3, "symmetric", 10, np.random.default_rng(4))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_corrupt_labels_rejects_bad_input():
    with pytest.raises(ValueError, match="kind"):
        corrupt_labels(np.zeros(5), 0.1, "human", 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rate"):
        corrupt_labels(np.zeros(5), 1.2, "symmetric", 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="labels must lie"):
        corrupt_labels(np.array([0, 10]), 0.5, "symmetric", 10, np.random.default_rng(0))


def test_mixed_groups_per_client():
    plan = client_noise_plan("mixed", (0.0, 0.4), 100, "symmetric:50:0.0,0.4;pairflip:50:0.0,0.4")
    assert len(plan) == 100
    assert [k for k, _ in plan] == ["symmetric"] * 50 + ["pairflip"] * 50
    assert plan[1][1] == pytest.approx(0.008)
    assert plan[49][1] == pytest.approx(0.392)
    assert plan[50][1] == 0.0
    assert plan[99][1] == pytest.approx(0.392)


def test_mixed_default_and_optional_range():
    groups = parse_noise_groups("", 5, (0.0, 0.4))
    assert groups == [NoiseGroup("symmetric", 3, 0.0, 0.4), NoiseGroup("pairflip", 2, 0.0, 0.4)]
    plan = client_noise_plan("mixed", (0.1, 0.1), 4, "clean:2;pairflip:2:0.2,0.6")
    assert plan == [("clean", 0.1), ("clean", 0.1), ("pairflip", 0.2), ("pairflip", 0.4)]


def test_mixed_rejects_bad_groups():
    with pytest.raises(ValueError, match=r"cover 90 clients.*100 clients"):
        parse_noise_groups("symmetric:50;pairflip:40", 100, (0.0, 0.4))
    with pytest.raises(ValueError, match="'gaussian'"):
        parse_noise_groups("gaussian:100", 100, (0.0, 0.4))
    with pytest.raises(ValueError, match="'x'"):
        parse_noise_groups("symmetric:x", 100, (0.0, 0.4))
    with pytest.raises(ValueError, match="'0.5,0.1'"):
        parse_noise_groups("symmetric:100:0.5,0.1", 100, (0.0, 0.4))


def test_plan_other_types():
    assert client_noise_plan("none", (0.0, 0.4), 3) == [("clean", 0.0)] * 3
    assert client_noise_plan("human", (0.0, 0.4), 2) == [("human", 0.0)] * 2
    plan = client_noise_plan("pairflip", (0.2, 0.2), 3)
    assert plan == [("pairflip", 0.2)] * 3
    with pytest.raises(ValueError, match="'foo'.*symmetric"):
        client_noise_plan("foo", (0.0, 0.4), 3)


def test_realised_noise_rate_unknown():
    assert realised_noise_rate(np.array([1, 2, 3]), np.array([1, -1, 0])) == 0.5
    assert math.isnan(realised_noise_rate(np.array([1, 2]), np.array([-1, -1])))
