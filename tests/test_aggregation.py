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
    """Literal transcription of the authors' loop (spec §5.1), unweighted."""
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
