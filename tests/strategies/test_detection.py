"""Tests for strategies/detection.py: loss-matrix normalisation, GMM split, vote, diagnostics."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from strategies import detection
from strategies.detection import (
    NOTE_ALL_EQUAL,
    NOTE_FEW_CLIENTS,
    NOTE_ONE_COMPONENT,
    agreement_of_votes,
    detection_quality,
    majority_vote,
    normalise_loss_matrix,
    robust_client_score,
    split_by_score,
    split_noisy_clients,
)


def _losses(
    num_clean: int, num_noisy: int, seed: int = 0, classes: int = 10
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Clean rows near 0.2, noisy rows near 1.5, rows interleaved; returns (matrix, noisy rows)."""
    rng = np.random.default_rng(seed)
    n = num_clean + num_noisy
    noisy_rows = np.sort(rng.choice(n, size=num_noisy, replace=False))
    matrix = 0.2 + 0.05 * rng.standard_normal((n, classes))
    matrix[noisy_rows] = 1.5 + 0.2 * rng.standard_normal((num_noisy, classes))
    return matrix, tuple(int(i) for i in noisy_rows)


@pytest.mark.parametrize("seed", [0, 1])
def test_well_separated_noisy_rows_are_found(seed):
    matrix, noisy_rows = _losses(20, 10, seed)
    split = split_noisy_clients(matrix)
    assert split.noisy == noisy_rows
    assert split.clean == tuple(i for i in range(30) if i not in noisy_rows)
    assert len(split.votes) == 9
    assert split.note == ""


def test_noisy_is_the_higher_loss_component_even_when_it_is_the_larger_one():
    matrix, noisy_rows = _losses(8, 22, seed=3)
    split = split_noisy_clients(matrix)
    assert split.noisy == noisy_rows  # 22 of 30: the larger group, still the noisy one
    matrix, noisy_rows = _losses(25, 5, seed=4)
    assert split_noisy_clients(matrix).noisy == noisy_rows


def test_missing_classes_are_filled_with_the_column_minimum():
    losses = np.array(
        [
            [1.0, np.nan, np.nan],
            [3.0, 2.0, np.nan],
            [np.nan, 4.0, np.nan],
            [5.0, 6.0, np.nan],
        ]
    )
    out = normalise_loss_matrix(losses)
    # column 0: nan -> 1 (min of 1, 3, 5), then (v - 1) / 4
    np.testing.assert_allclose(out[:, 0], [0.0, 0.5, 0.0, 1.0])
    # column 1: nan -> 2, then (v - 2) / 4
    np.testing.assert_allclose(out[:, 1], [0.0, 0.0, 0.5, 1.0])
    # column 2: no value at all -> 0
    np.testing.assert_array_equal(out[:, 2], 0.0)
    assert np.isnan(losses[0, 1])  # the input is not modified


def test_constant_column_becomes_zero_without_crashing():
    matrix, noisy_rows = _losses(20, 10, seed=5)
    matrix[:, 3] = 0.7
    out = normalise_loss_matrix(matrix)
    np.testing.assert_array_equal(out[:, 3], 0.0)
    assert np.all(np.isfinite(out))
    assert out.min() == 0.0 and out.max() == 1.0
    assert split_noisy_clients(matrix).noisy == noisy_rows


def test_all_equal_rows_flag_nobody():
    split = split_noisy_clients(np.full((6, 4), 0.3))
    assert split.noisy == ()
    assert split.clean == tuple(range(6))
    assert split.votes == ()
    assert split.note == NOTE_ALL_EQUAL


@pytest.mark.parametrize("losses", [np.array([[0.5, 1.0, np.nan]]), np.zeros((0, 3))])
def test_fewer_than_two_clients_flag_nobody(losses):
    split = split_noisy_clients(losses)
    assert split.noisy == ()
    assert split.clean == tuple(range(losses.shape[0]))
    assert split.note == NOTE_FEW_CLIENTS


def test_two_and_three_clients_do_not_crash():
    for losses in (np.array([[0.1, 0.2], [1.0, 1.5]]), np.array([[0.1], [0.2], [3.0]])):
        split = split_noisy_clients(losses)
        assert set(split.noisy) | set(split.clean) == set(range(losses.shape[0]))
        assert not set(split.noisy) & set(split.clean)
    assert split_noisy_clients(np.array([[0.1, 0.2], [1.0, 1.5]])).noisy == (1,)


def test_invalid_loss_matrix_is_rejected():
    with pytest.raises(ValueError, match="2-D"):
        normalise_loss_matrix(np.zeros(3))
    with pytest.raises(ValueError, match="infinite"):
        normalise_loss_matrix(np.array([[0.1], [np.inf]]))


def test_no_convergence_warning_escapes():
    matrix, _ = _losses(20, 10, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split_noisy_clients(matrix)


def test_majority_vote_most_frequent_then_earliest():
    assert majority_vote([(1, 2), (3,), (3,), (1, 2), (3,)]) == (3,)
    assert majority_vote([(1, 2), (3,), (3,), (1, 2)]) == (1, 2)  # tie: the earliest
    assert majority_vote([(3,), (2, 1), (1, 2)]) == (1, 2)  # sets, not sequences
    assert majority_vote([(), (4,), ()]) == ()
    assert majority_vote([]) == ()


def test_split_uses_the_vote_over_the_fits(monkeypatch):
    fits = {0: (0,), 1: (1, 2), 2: (2, 1), 3: (0,), 4: (3,)}
    monkeypatch.setattr(detection, "_fit_noisy_set", lambda matrix, seed: fits[seed])
    losses = np.arange(8, dtype=float).reshape(4, 2)
    split = split_noisy_clients(losses, num_fits=5)
    assert split.votes == ((0,), (1, 2), (2, 1), (0,), (3,))
    assert split.noisy == (0,)  # (0,) and {1, 2} both twice: the earlier one
    assert split.clean == (1, 2, 3)


def test_one_component_result_is_kept_with_a_note(monkeypatch):
    monkeypatch.setattr(detection, "_fit_noisy_set", lambda matrix, seed: (0, 1, 2))
    split = split_noisy_clients(np.arange(6, dtype=float).reshape(3, 2))
    assert split.noisy == (0, 1, 2)
    assert split.clean == ()
    assert split.note == NOTE_ONE_COMPONENT
    monkeypatch.setattr(detection, "_fit_noisy_set", lambda matrix, seed: ())
    split = split_noisy_clients(np.arange(6, dtype=float).reshape(3, 2))
    assert split.noisy == ()
    assert split.note == NOTE_ONE_COMPONENT


def test_failed_fits_do_not_vote(monkeypatch):
    def fit(matrix, seed):
        if seed % 2:
            raise ValueError("ill-defined empirical covariance")
        return (1,)

    monkeypatch.setattr(detection, "_fit_noisy_set", fit)
    split = split_noisy_clients(np.arange(6, dtype=float).reshape(3, 2))
    assert split.noisy == (1,)
    assert len(split.votes) == 5
    assert "4 of 9 GMM fits failed" in split.note


def test_detection_quality_hand_computed():
    rates = {0: 0.0, 1: 0.4, 2: 0.6, 3: 0.05, 4: math.nan, 5: 0.3}
    # truly noisy (> 0.1, known): {1, 2, 5}; flagged {1, 3, 4}: 4 has an unknown rate
    q = detection_quality([1, 3, 4], rates)
    assert q["flagged"] == 3
    assert q["truly_noisy"] == 3
    assert q["precision"] == pytest.approx(1 / 2)  # 1 hit among the 2 flagged with a known rate
    assert q["recall"] == pytest.approx(1 / 3)
    assert q["mean_true_rate_flagged"] == pytest.approx((0.4 + 0.05) / 2)
    assert q["mean_true_rate_clean"] == pytest.approx((0.0 + 0.6 + 0.3) / 3)


def test_detection_quality_empty_groups_are_nan():
    nobody = detection_quality([], {0: 0.0, 1: 0.05})
    assert nobody["flagged"] == 0 and nobody["truly_noisy"] == 0
    assert math.isnan(nobody["precision"]) and math.isnan(nobody["recall"])
    assert math.isnan(nobody["mean_true_rate_flagged"])
    assert nobody["mean_true_rate_clean"] == pytest.approx(0.025)
    everyone = detection_quality([0, 1], {0: 0.5, 1: 0.2}, threshold=0.3)
    assert everyone["precision"] == pytest.approx(0.5) and everyone["recall"] == 1.0
    assert math.isnan(everyone["mean_true_rate_clean"])
    unknown = detection_quality([0], {0: math.nan, 1: math.nan})
    assert math.isnan(unknown["precision"]) and math.isnan(unknown["recall"])
    assert math.isnan(unknown["mean_true_rate_flagged"])
    assert math.isnan(unknown["mean_true_rate_clean"])


def test_robust_client_score_standardises_each_class_and_weighs_by_samples():
    # class 0: 1, 0.5, 2, 1 -> median 1, deviations 0, .5, 1, 0 -> MAD 0.25; class 1: 2, 2, 4 ->
    # median 2, MAD 0
    losses = np.array([[1.0, 2.0], [0.5, np.nan], [2.0, 2.0], [1.0, 4.0]])
    counts = np.array([[3, 1], [2, 0], [1, 1], [1, 3]])
    scores = robust_client_score(losses, counts)
    spread = 1.4826 * 0.25
    assert scores[0] == pytest.approx((3 * 0.0 + 1 * 0.0) / 4)
    assert scores[1] == pytest.approx(-0.5 / spread)  # the missing class is left out
    assert scores[2] == pytest.approx((1.0 / spread + 0.0) / 2)
    assert scores[3] == pytest.approx((0.0 + 3 * 2.0) / 4)  # MAD 0: divided by 1
    assert robust_client_score(np.full((2, 2), np.nan), np.zeros((2, 2))).tolist() == [0.0, 0.0]


def test_split_by_score_flags_the_high_component_and_votes():
    scores = np.array([0.0, 0.1, -0.1, 0.05, 3.0, 3.2, 2.9])
    split = split_by_score(scores)
    assert split.noisy == (4, 5, 6) and split.clean == (0, 1, 2, 3)
    assert len(split.votes) == 9 and split.note == ""
    assert split_by_score(np.ones(4)).noisy == ()


def test_split_by_score_with_more_components_keeps_only_the_lowest_clean():
    # three groups: clean near 0, mildly noisy near 1, very noisy near 3
    scores = np.array([0.0, 0.05, -0.05, 0.02, 1.0, 1.05, 0.95, 3.0, 3.05, 2.95])
    three = split_by_score(scores, components=3)
    assert three.noisy == (4, 5, 6, 7, 8, 9) and three.clean == (0, 1, 2, 3)
    assert split_by_score(scores[:2], components=3).noisy == (1,)  # at most N components
    with pytest.raises(ValueError, match="components must be >= 2"):
        split_by_score(scores, components=1)


def test_agreement_of_votes_is_the_mean_pairwise_jaccard():
    assert agreement_of_votes([(1, 2), (1, 2)]) == 1.0
    # pairs: {1,2}-{2,3}: 1/3; {1,2}-{}: 0; {2,3}-{}: 0
    assert agreement_of_votes([(1, 2), (2, 3), ()]) == pytest.approx(1 / 9)
    assert agreement_of_votes([(5,)]) == 1.0 and agreement_of_votes([(), ()]) == 1.0
