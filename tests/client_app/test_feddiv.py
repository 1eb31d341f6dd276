"""Tests for FedDiv (client_app/feddiv.py, strategies/feddiv.py) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from client_app.feddiv import (
    NoiseFilter,
    debiased,
    fit_local_filter,
    normalised,
    select_samples,
    updated_prior,
)
from common.config import ConfigError, config_with
from strategies.feddiv import aggregate_filters
from strategies.registry import check_strategy_settings


def test_the_filter_posterior_by_hand():
    f = NoiseFilter.sorted([0.8, 0.2], [0.04, 0.01], [0.3, 0.7])  # given high-mean first
    assert f.means.tolist() == [0.2, 0.8] and f.weights.tolist() == [0.7, 0.3]

    def density(x, mean, variance):
        return math.exp(-((x - mean) ** 2) / (2 * variance)) / math.sqrt(2 * math.pi * variance)

    x = 0.45
    low, high = 0.7 * density(x, 0.2, 0.01), 0.3 * density(x, 0.8, 0.04)
    assert f.clean_probability(np.array([x]))[0] == pytest.approx(low / (low + high))
    assert f.clean_probability(np.array([0.0, 1.0])).round(3).tolist() == [0.999, 0.0]


def test_normalised_losses():
    assert normalised(np.array([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert normalised(np.array([0.3, 0.3])).tolist() == [0.0, 0.0]


def test_a_local_filter_finds_the_two_groups():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.1, 0.02, 80), rng.normal(0.8, 0.05, 20)])
    fresh = fit_local_filter(values, None, seed=0)
    assert fresh.means == pytest.approx([0.1, 0.8], abs=0.02)
    assert fresh.weights == pytest.approx([0.8, 0.2], abs=0.01)
    start = NoiseFilter.sorted([0.3, 0.6], [0.01, 0.01], [0.5, 0.5])
    warm = fit_local_filter(values, start, seed=0)  # 3 EM iterations from `start`
    assert warm.means[0] < warm.means[1] and warm.means[0] < 0.3 < 0.6 < warm.means[1]


def test_debiasing_by_hand():
    logits = np.array([[1.0, 0.0]])
    prior = np.array([0.8, 0.2])
    # logits - 0.5 log prior = (1 - 0.5 log 0.8, -0.5 log 0.2)
    a, b = 1 - 0.5 * math.log(0.8), -0.5 * math.log(0.2)
    expected = math.exp(a) / (math.exp(a) + math.exp(b))
    assert debiased(logits, prior, 0.5)[0, 0] == pytest.approx(expected)


def test_the_prior_follows_the_confident_samples():
    logits = np.array([[5.0, 0.0], [0.0, 0.1]])  # only the first is confident (> 0.85)
    labels, prior = updated_prior(logits, np.array([0.5, 0.5]), xi=0.2, momentum=0.5)
    assert labels.tolist() == [0, 1]
    p = 1 / (1 + math.exp(-5.0))
    assert prior == pytest.approx([0.5 * 0.5 + 0.5 * p, 0.5 * 0.5 + 0.5 * (1 - p)])
    _, same = updated_prior(np.zeros((2, 2)), np.array([0.5, 0.5]), 0.2, 0.5)
    assert same.tolist() == [0.5, 0.5]  # no confident sample: unchanged


def selection_case(rounds_done, clean_probability, clean_threshold=0.1):
    given = np.array([0, 1, 2, 0, 1])
    # the global model predicts 0, 1, 2, 1, 2; the de-biased labels are 0, 1, 0, 1, 0
    global_probabilities = np.eye(3)[[0, 1, 2, 1, 2]] * 0.9 + 0.1 / 3
    debiased_labels = np.array([0, 1, 0, 1, 0])
    return select_samples(
        np.asarray(clean_probability), global_probabilities, given, debiased_labels,
        rounds_done, p_threshold=0.5, clean_threshold=clean_threshold,
    )  # fmt: skip


def test_selection_trains_on_the_filter_s_choice_for_the_first_rounds():
    s = selection_case(0, [0.9, 0.9, 0.9, 0.1, 0.1])
    assert s.rows.tolist() == [0, 1, 2] and s.noise_level == pytest.approx(0.4)
    assert s.labels.tolist() == [0, 1, 2, 1, 1]  # sample 3 relabelled (not trained on yet)


def test_selection_adds_consistency_and_relabelled_samples_later():
    s = selection_case(5, [0.9, 0.9, 0.9, 0.1, 0.1])
    # clean and consistent: 0, 1 (2 is not); noisy and consistent: 3 -> relabelled to 1
    assert s.rows.tolist() == [0, 1, 3] and s.labels.tolist() == [0, 1, 2, 1, 1]
    low_noise = selection_case(5, [0.9, 0.9, 0.9, 0.9, 0.1])  # 0.2: no relabelled sample
    assert low_noise.rows.tolist() == [0, 1, 3]  # 3 is clean here and consistent
    clean = selection_case(5, [0.9, 0.9, 0.9, 0.9, 0.1], clean_threshold=0.2)
    assert clean.rows.tolist() == [0, 1, 2, 3, 4] and clean.labels.tolist() == [0, 1, 2, 0, 1]


def test_the_global_filter_by_hand():
    a = (np.array([0.1, 0.7]), np.array([0.01, 0.04]), np.array([0.6, 0.4]))
    b = (np.array([0.3, 0.9]), np.array([0.02, 0.02]), np.array([0.8, 0.2]))
    means, variances, weights = aggregate_filters([a, b], [100, 300])
    assert means == pytest.approx([0.25 * 0.1 + 0.75 * 0.3, 0.25 * 0.7 + 0.75 * 0.9])
    assert variances == pytest.approx(
        [0.0625 * 0.01 + 0.5625 * 0.02, 0.0625 * 0.04 + 0.5625 * 0.02]
    )
    assert weights == pytest.approx([0.25 * 0.6 + 0.75 * 0.8, 0.25 * 0.4 + 0.75 * 0.2])
    with pytest.raises(ValueError, match="0 filters"):
        aggregate_filters([], [])


@pytest.mark.parametrize(
    ("key", "value"),
    [("feddiv_clean_threshold", 1.0), ("feddiv_momentum", 1.0), ("feddiv_xi", -0.1)],
)
def test_bad_settings_are_refused_before_the_run(key, value):
    with pytest.raises(ConfigError, match=key.replace("_", "-")):
        check_strategy_settings(config_with(strategy="feddiv", **{key: value}), 10)


def test_clients_fitting_filters_in_threads_at_once_show_no_convergence_warning():
    """In process, clients train in threads; three EM iterations never converge, and the
    warning must not reach the user. warnings.catch_warnings in each thread let it through
    (this test caught that in about half of its runs: a race)."""
    import sys
    import threading
    import warnings

    start = NoiseFilter.sorted([0.1, 0.8], [0.01, 0.05], [0.7, 0.3])
    values = np.random.default_rng(0).random(500)

    def fit_many():
        for _ in range(100):
            fit_local_filter(values, start, 0)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often, as under load: the race shows
    try:
        with warnings.catch_warnings(record=True) as shown:
            threads = [threading.Thread(target=fit_many) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert [w.category.__name__ for w in shown] == []
