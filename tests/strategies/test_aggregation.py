"""Tests for strategies/aggregation.py: the authors' Weiszfeld geometric median and a mean."""

from __future__ import annotations

import numpy as np
import pytest

from strategies import aggregation
from strategies.aggregation import (
    geometric_median,
    geometric_median_per_tensor,
    geometric_median_whole_model,
    weighted_mean,
)

PRECISE = {"max_iter": 500, "eps": 1e-12}


def _points(seed: int, n: int = 9, shape: tuple[int, ...] = (3, 4)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape) for _ in range(n)]


def _reference_rfa(points: list[np.ndarray], max_iter: int = 10, eps: float = 1e-5) -> np.ndarray:
    """Literal transcription of the authors' loop (fidelity §5.1), unweighted."""
    xs = [p.astype(np.float64) for p in points]
    z = sum(xs) / len(xs)
    for _ in range(max_iter):
        a = [1.0 / max(np.linalg.norm(x - z), eps) for x in xs]
        a = [ai / sum(a) for ai in a]
        z_new = sum(ai * x for ai, x in zip(a, xs, strict=True))
        if np.linalg.norm(z_new - z) < eps:
            break
        z = z_new
    return z


def test_matches_literal_transcription_of_authors_loop():
    points = _points(0)
    np.testing.assert_allclose(geometric_median(points), _reference_rfa(points), rtol=1e-12)


def test_returns_float64_of_points_shape():
    points = [p.astype(np.float32) for p in _points(1)]
    median = geometric_median(points)
    assert median.dtype == np.float64
    assert median.shape == (3, 4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_dimensional_odd_n_is_the_coordinate_median(seed):
    values = np.random.default_rng(seed).normal(size=7) * 3
    points = [np.array([v]) for v in values]
    assert geometric_median(points, **PRECISE)[0] == pytest.approx(np.median(values), abs=1e-6)
    # the authors' 10 iterations already land close (well inside the spread of the data)
    assert abs(geometric_median(points)[0] - np.median(values)) < 0.1 * np.std(values)


def test_permutation_invariant():
    points = _points(3)
    shuffled = [points[i] for i in np.random.default_rng(0).permutation(len(points))]
    np.testing.assert_allclose(geometric_median(shuffled), geometric_median(points), atol=1e-12)


def test_translation_equivariant():
    points = _points(4)
    shift = np.random.default_rng(1).normal(size=(3, 4)) * 10
    shifted = geometric_median([p + shift for p in points], **PRECISE)
    np.testing.assert_allclose(shifted, geometric_median(points, **PRECISE) + shift, atol=1e-8)


def test_bounded_under_a_minority_of_arbitrary_outliers():
    inliers = _points(5, n=5, shape=(6,))
    outliers = [np.full(6, 1e6) + i for i in range(4)]  # 4 of 9 points far away
    median = geometric_median(inliers + outliers, **PRECISE)
    inlier_scale = max(np.linalg.norm(p) for p in inliers)
    assert np.linalg.norm(median) < 10 * inlier_scale
    # the mean, by contrast, is dragged away
    assert np.linalg.norm(np.mean(inliers + outliers, axis=0)) > 1e5
    # The authors' 10 iterations start at the mean and, with 4 of 9 points this far out, shrink
    # the distance to the inliers by at most ~4/5 per step: better than the mean, not yet there.
    sizes = [np.linalg.norm(geometric_median(inliers + outliers, max_iter=k)) for k in (0, 10, 100)]
    assert sizes[0] > sizes[1] > sizes[2]
    assert sizes[1] < 0.25 * sizes[0]
    assert sizes[2] < 10 * inlier_scale
    # one far outlier of 9 is dealt with within the default 10 iterations
    one_outlier = geometric_median(inliers + [np.full(6, 1e6)] + inliers[:3])
    assert np.linalg.norm(one_outlier) < 10 * inlier_scale


def test_max_iter_bounds_the_iterations():
    points = _points(6, shape=(5,))
    mean = np.mean(points, axis=0)
    np.testing.assert_allclose(geometric_median(points, max_iter=0), mean, atol=1e-15)
    one, two = geometric_median(points, max_iter=1), geometric_median(points, max_iter=2)
    assert not np.allclose(one, mean)
    assert not np.allclose(one, two)
    stacked = np.stack(points)
    weights = np.full(len(points), 1 / len(points))
    for max_iter in (0, 1, 3, 10):
        _, accepted = aggregation._weiszfeld(stacked, weights, max_iter, 1e-12)
        assert accepted == max_iter


def test_stops_early_when_converged_and_keeps_the_previous_iterate():
    points = _points(7, shape=(4,))
    stacked = np.stack(points)
    weights = np.full(len(points), 1 / len(points))
    eps = 1e-3
    z, accepted = aggregation._weiszfeld(stacked, weights, 1000, eps)
    assert accepted < 1000
    # replay: z is the iterate after `accepted` updates; the next step (rejected) is shorter than
    # eps and is not applied
    replay = aggregation._weiszfeld(stacked, weights, accepted, eps)[0]
    np.testing.assert_array_equal(z, replay)
    d = np.linalg.norm(stacked - z, axis=1)
    a = weights / np.maximum(d, eps)
    z_next = (a / a.sum()) @ stacked
    assert 0 < np.linalg.norm(z_next - z) < eps
    np.testing.assert_array_equal(geometric_median(points, max_iter=1000, eps=eps), z)
    assert not np.array_equal(geometric_median(points, max_iter=1000, eps=eps), z_next)


def test_none_weights_are_uniform():
    points = _points(8)
    np.testing.assert_allclose(
        geometric_median(points, [2.0] * len(points)), geometric_median(points), atol=1e-14
    )


def test_weights_pull_the_median_toward_heavy_points():
    points = [np.array([0.0]), np.array([1.0]), np.array([2.0]), np.array([10.0])]
    plain = geometric_median(points, **PRECISE)[0]
    heavy_last = geometric_median(points, [1, 1, 1, 5], **PRECISE)[0]
    assert heavy_last > plain + 1
    assert heavy_last == pytest.approx(10.0, abs=1e-3)  # weight 5 > 3: the weighted median
    zero_weight = geometric_median(points, [1, 1, 1, 0], **PRECISE)[0]
    assert zero_weight == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    "weights, message",
    [([1.0, -1.0, 1.0], "non-negative"), ([0.0, 0.0, 0.0], "positive sum"), ([1.0], "3 weights")],
)
def test_invalid_weights_are_rejected(weights, message):
    with pytest.raises(ValueError, match=message):
        geometric_median(_points(0, n=3), weights)


def test_invalid_points_are_rejected():
    with pytest.raises(ValueError, match="at least one"):
        geometric_median([])
    with pytest.raises(ValueError, match="shape"):
        geometric_median([np.zeros(3), np.zeros(4)])
    with pytest.raises(ValueError, match="shape"):
        geometric_median_per_tensor([[np.zeros(3)], [np.zeros(4)]])
    with pytest.raises(ValueError, match="tensors"):
        geometric_median_per_tensor([[np.zeros(3)], [np.zeros(3), np.zeros(1)]])


def test_single_client_is_returned_exactly():
    model = [np.arange(6, dtype=np.float32).reshape(2, 3) / 7, np.array(5, dtype=np.int64)]
    for aggregate in (geometric_median_per_tensor, geometric_median_whole_model, weighted_mean):
        out = aggregate([model])
        for got, want in zip(out, model, strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


def _crafted_models() -> list[list[np.ndarray]]:
    # tensor 0 ties the clients along one direction, tensor 1 along another: the per-tensor medians
    # differ from the median of the joined vectors
    rng = np.random.default_rng(11)
    return [[rng.normal(size=3), rng.normal(size=2) * 5] for _ in range(5)]


def test_per_tensor_and_whole_model_differ_in_general():
    models = _crafted_models()
    per_tensor = geometric_median_per_tensor(models, **PRECISE)
    whole = geometric_median_whole_model(models, **PRECISE)
    assert not np.allclose(per_tensor[0], whole[0])
    for j in range(2):
        np.testing.assert_allclose(
            per_tensor[j], geometric_median([m[j] for m in models], **PRECISE), atol=1e-12
        )
    joined = geometric_median([np.concatenate(m) for m in models], **PRECISE)
    np.testing.assert_allclose(np.concatenate(whole), joined, atol=1e-12)


def test_per_tensor_and_whole_model_agree_for_a_single_tensor():
    models = [[p] for p in _points(12)]
    np.testing.assert_allclose(
        geometric_median_per_tensor(models)[0], geometric_median_whole_model(models)[0], atol=0
    )


def test_output_dtypes_and_integer_truncation():
    # num_batches_tracked-like int64 scalars: median 10.6.. -> 10 (truncated, not rounded)
    models = [
        [np.ones((2, 2), dtype=np.float32) * k, np.array(v, dtype=np.int64)]
        for k, v in zip([1, 2, 3], [10, 11, 12], strict=True)
    ]
    models[2][1] = np.array(11, dtype=np.int64)
    models.append([np.ones((2, 2), dtype=np.float32) * 4, np.array(11, dtype=np.int64)])
    for aggregate in (geometric_median_per_tensor, geometric_median_whole_model, weighted_mean):
        weights = [1.0, 1.0, 1.0, 1.0]
        out = aggregate(models, weights) if aggregate is weighted_mean else aggregate(models)
        assert out[0].dtype == np.float32
        assert out[1].dtype == np.int64
        assert out[1].shape == ()
    # weighted mean of 10, 11, 11, 11 = 10.75 -> 10
    assert int(weighted_mean(models)[1]) == 10
    median = geometric_median([m[1] for m in models])
    assert int(geometric_median_per_tensor(models)[1]) == int(np.trunc(median))
    negative = [[np.array(-3, dtype=np.int64)], [np.array(-2, dtype=np.int64)]]
    assert int(weighted_mean(negative)[0]) == -2  # -2.5 truncated toward zero


def test_weighted_mean_matches_numpy_average():
    rng = np.random.default_rng(13)
    models = [[rng.normal(size=(2, 3)).astype(np.float32), rng.normal(size=4)] for _ in range(6)]
    counts = [10, 20, 5, 40, 1, 7]
    out = weighted_mean(models, counts)
    for j in range(2):
        stacked = np.stack([m[j].astype(np.float64) for m in models])
        expected = np.average(stacked, axis=0, weights=counts)
        np.testing.assert_allclose(out[j], expected.astype(models[0][j].dtype), rtol=1e-6)
        assert out[j].dtype == models[0][j].dtype
    uniform = weighted_mean(models)
    np.testing.assert_allclose(uniform[1], np.mean([m[1] for m in models], axis=0), atol=1e-12)


# --- the authors' baselines (FNBench variants, fidelity §5.2) -------------------------------


def _models(seed: int, m: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        [rng.normal(size=(3, 4)).astype(np.float32), np.array(rng.integers(0, 50), np.int64)]
        for _ in range(m)
    ]


@pytest.mark.parametrize("m", [4, 5, 10])
def test_lower_median_matches_torch_median_the_authors_call(m):
    import torch

    models = _models(m, m)
    ours = aggregation.coordinate_lower_median(models)
    for j in range(2):
        stacked = torch.stack([torch.as_tensor(model[j]) for model in models])
        expected = torch.median(stacked, dim=0).values.numpy()
        np.testing.assert_array_equal(ours[j], expected)
        assert ours[j].dtype == models[0][j].dtype


def test_lower_median_equals_flowers_median_for_odd_counts_only():
    odd, even = _models(1, 5), _models(2, 4)
    np.testing.assert_array_equal(
        aggregation.coordinate_lower_median(odd)[0], np.median([m[0] for m in odd], axis=0)
    )
    assert not np.allclose(
        aggregation.coordinate_lower_median(even)[0], np.median([m[0] for m in even], axis=0)
    )


def test_summed_squared_distances_by_hand():
    models = [[np.array([x], np.float64)] for x in (0.0, 1.0, 2.0, 3.0, 100.0)]
    expected = [10014.0, 9807.0, 9610.0, 9423.0, 38814.0]
    np.testing.assert_allclose(aggregation.summed_squared_distances(models), expected)


def test_krum_fnbench_returns_the_model_nearest_the_mean_and_never_an_outlier():
    models = _models(3, 9)
    models.append([np.full((3, 4), 1e3, np.float32), np.array(7, np.int64)])  # one far outlier
    chosen_model, chosen = aggregation.krum_fnbench(models)
    flat = np.stack([np.concatenate([t.reshape(-1).astype(np.float64) for t in m]) for m in models])
    assert chosen == int(np.argmin(np.linalg.norm(flat - flat.mean(axis=0), axis=1)))
    assert chosen != 9
    for ours, original in zip(chosen_model, models[chosen], strict=True):
        np.testing.assert_array_equal(ours, original)
        assert ours is not original  # a copy: the caller may not alias a client's upload


def test_trimmed_mean_fnbench_keeps_the_most_typical_scores():
    models = [[np.array([x], np.float32)] for x in (0.0, 1.0, 2.0, 3.0, 100.0)]
    # scores 10014, 9807, 9610, 9423, 38814; lower median 9807; nearest three: 1, 2, 0
    mean, kept = aggregation.trimmed_mean_fnbench(models, num_trimmed=1)
    assert kept == [0, 1, 2]
    np.testing.assert_allclose(mean[0], [1.0])
    assert mean[0].dtype == np.float32
    everything, kept_all = aggregation.trimmed_mean_fnbench(models, num_trimmed=0)
    assert kept_all == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(everything[0], [21.2], rtol=1e-6)


def test_trimmed_mean_fnbench_with_the_paper_rate_keeps_four_of_ten():
    _, kept = aggregation.trimmed_mean_fnbench(_models(4, 10), num_trimmed=int(10 * 0.3))
    assert len(kept) == 4


@pytest.mark.parametrize("trimmed", [-1, 3])
def test_trimmed_mean_fnbench_rejects_impossible_trims(trimmed):
    with pytest.raises(ValueError, match="m - 2f >= 1"):
        aggregation.trimmed_mean_fnbench(_models(5, 5), num_trimmed=trimmed)


def test_fedexp_is_fedavg_when_all_clients_agree():
    start = [np.zeros((2, 2), np.float32)]
    models = [[np.ones((2, 2), np.float32)] for _ in range(3)]
    new, eta = aggregation.fedexp(start, models, [1, 2, 3])
    assert eta == 1.0
    np.testing.assert_allclose(new[0], np.ones((2, 2)))


def test_fedexp_extrapolates_orthogonal_updates():
    # d_k = 2 e_k for 4 clients: sum p||d||^2 = 4, ||mean d||^2 = 4 * (2/4)^2 = 1,
    # eta = 4 / (2 * (1 + 1e-3)); the step goes eta times the mean update.
    start = [np.zeros(4, np.float64), np.array(10, np.int64)]
    models = [[2.0 * np.eye(4)[k], np.array(10 + 4 * k, np.int64)] for k in range(4)]
    new, eta = aggregation.fedexp(start, models)
    assert eta == pytest.approx(4 / (2 * (1 + 1e-3)))
    np.testing.assert_allclose(new[0], eta * np.full(4, 0.5))
    assert new[1] == 16 and new[1].dtype == np.int64  # counters: the plain mean, no step


def test_fedexp_weights_are_the_sample_counts():
    start = [np.zeros(3)]
    models = [[np.eye(3)[k]] for k in range(3)]
    _, uniform = aggregation.fedexp(start, models, [1, 1, 1])
    _, skewed = aggregation.fedexp(start, models, [8, 1, 1])
    # sum p||d||^2 = 1 either way; ||mean d||^2 = 1/3 (uniform) vs 0.66 (skewed)
    assert uniform == pytest.approx(1 / (2 * (1 / 3 + 1e-3)))
    assert skewed == 1.0  # 1 / (2 * 0.661) < 1: no extrapolation


# --- FedNoRo's distance-aware aggregation (FedNoRo, FedELC) -------------------------------------


def test_summed_tensor_distance_sums_per_tensor_norms_and_skips_integers():
    a = [np.zeros(2), np.zeros(3), np.array(5, np.int64)]
    b = [np.array([3.0, 4.0]), np.array([0.0, 0.0, 2.0]), np.array(100, np.int64)]
    assert aggregation.summed_tensor_distance(a, b) == pytest.approx(5.0 + 2.0)


def test_distance_aware_weights_by_hand():
    models = [[np.zeros(2)], [np.array([1.0, 0.0])], [np.array([0.0, 2.0])], [np.array([4.0, 0])]]
    noisy = [False, False, True, True]
    # noisy 2: nearest clean distance min(2, sqrt 5) = 2; noisy 3: min(4, 3) = 3; divided by 3.
    expected = np.array([1.0, 1.0, np.exp(-2 / 3), np.exp(-1.0)]) * np.array([1, 1, 2, 2])
    got = aggregation.distance_aware_weights(models, [1, 1, 2, 2], noisy)
    np.testing.assert_allclose(got, expected / expected.sum())


@pytest.mark.parametrize("noisy", [[False, False, False], [True, True, True]])
def test_distance_aware_weights_fall_back_to_fedavg_with_one_group(noisy):
    models = _models(7, 3)
    got = aggregation.distance_aware_weights(models, [10, 20, 30], noisy)
    np.testing.assert_allclose(got, [1 / 6, 2 / 6, 3 / 6])


# --- non-finite uploads (property tests over random models) ------------------------------------

RULES = {
    "geometric_median_per_tensor": lambda models: aggregation.geometric_median_per_tensor(models),
    "geometric_median_whole_model": lambda models: aggregation.geometric_median_whole_model(models),
    "weighted_mean": lambda models: aggregation.weighted_mean(models, range(1, len(models) + 1)),
    "coordinate_lower_median": aggregation.coordinate_lower_median,
    "krum_fnbench": lambda models: aggregation.krum_fnbench(models)[0],
    "trimmed_mean_fnbench": lambda models: aggregation.trimmed_mean_fnbench(models, 1)[0],
    "fedexp": lambda models: aggregation.fedexp(models[0], models)[0],
    "distance_aware_weights": lambda models: [
        aggregation.distance_aware_weights(
            models, [10] * len(models), [k % 2 for k in range(len(models))]
        )
    ],
}


def random_models(rng: np.random.Generator, count: int) -> list[list[np.ndarray]]:
    """`count` models of a float32 matrix, a float64 vector and a 0-d int64 buffer."""
    return [
        [
            rng.normal(size=(3, 4)).astype(np.float32),
            rng.normal(size=5),
            np.array(rng.integers(0, 9), dtype=np.int64),
        ]
        for _ in range(count)
    ]


def poison(models, rng: np.random.Generator, how_many: int) -> list[int]:
    """Put NaN, inf or -inf at a random place of a random floating tensor of `how_many`
    random models; returns their indices."""
    chosen = sorted(rng.choice(len(models), size=how_many, replace=False).tolist())
    for k in chosen:
        tensor = models[k][int(rng.integers(0, 2))]
        tensor.reshape(-1)[int(rng.integers(0, tensor.size))] = rng.choice(
            [np.nan, np.inf, -np.inf]
        )
    return chosen


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("trial", range(10))
def test_every_rule_refuses_non_finite_uploads_and_is_finite_without_them(rule, trial):
    rng = np.random.default_rng(trial)
    models = random_models(rng, count=int(rng.integers(5, 9)))
    bad = poison(models, rng, how_many=int(rng.integers(1, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        RULES[rule](models)
    kept = [m for m in models if aggregation.is_finite_model(m)]
    assert len(kept) == len(models) - len(bad)
    for tensor in RULES[rule](kept):
        assert np.isfinite(tensor).all()


def test_the_geometric_median_of_points_refuses_a_nan_point():
    points = [np.zeros(3), np.ones(3), np.array([0.0, np.nan, 1.0])]
    with pytest.raises(ValueError, match="point 2 holds non-finite values"):
        aggregation.geometric_median(points)


@pytest.mark.parametrize("size", [1, 7, 8, 9, 127, 128, 129, 4097, 100_003])
def test_row_distances_equal_numpys_norm_to_the_bit(size):
    rng = np.random.default_rng(size)
    stacked = rng.standard_normal((5, size)) * 3.0
    z = rng.standard_normal(size)
    got = aggregation._row_distances(stacked, z, np.empty(size))
    np.testing.assert_array_equal(got, np.linalg.norm(stacked - z, axis=1))
