"""Tests for FedRN: client_app/fedrn.py and strategies/fedrn.py, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from client_app.fedrn import (
    clean_probability,
    combined_clean,
    finetune_head,
    probe_input,
    select_clean_samples,
    subset,
)
from common.config import ConfigError, config_with
from common.protocol import LocalTraining
from data.transforms import pipeline_for
from models import build_model
from strategies.fedrn import min_max, reliable_neighbours
from strategies.registry import check_strategy_settings
from tests.client_app.test_training import separable_data, wrong_labels_and_a_clean_model

PIPELINE = pipeline_for("digits")


def test_clean_probability_favours_the_low_loss_group():
    losses = np.array([0.1, 0.12, 0.09, 0.11, 2.0, 2.1, 1.9])
    prob = clean_probability(losses, seed=0)
    assert (prob[:4] > 0.99).all() and (prob[4:] < 0.01).all()
    assert clean_probability(np.full(5, 0.3), seed=0).tolist() == [1.0] * 5


def test_combined_clean_weights_by_normalised_scores():
    own = np.array([0.9, 0.2, 0.6, 0.1])
    neighbour = np.array([0.3, 0.9, 0.6, 0.2])
    # scores 3 and 1 -> weights 0.75, 0.25: 0.75, 0.375, 0.6, 0.125
    assert combined_clean([own, neighbour], [3.0, 1.0], 0.5, 1).tolist() == [0, 2]
    # fewer than a batch: the most probably clean, in position order
    assert combined_clean([own, neighbour], [3.0, 1.0], 0.7, 2).tolist() == [0, 2]
    with pytest.raises(ValueError, match="sum to 0"):
        combined_clean([own], [0.0], 0.5, 1)
    with pytest.raises(ValueError, match="2 probability vectors for 1 scores"):
        combined_clean([own, neighbour], [1.0], 0.5, 1)


def test_min_max_and_its_equal_values():
    assert min_max(np.array([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert min_max(np.array([0.7, 0.7])).tolist() == [1.0, 1.0]


def test_reliable_neighbours_by_hand():
    expertise = {0: 0.5, 1: 0.9, 2: 0.7, 3: 0.6}
    probes = {
        0: np.array([1.0, 0.0]),
        1: np.array([0.0, 1.0]),  # cos with 0: 0
        2: np.array([1.0, 1.0]),  # cos 0.7071
        3: np.array([1.0, 0.0]),  # cos 1
    }
    own, neighbours = reliable_neighbours(0, expertise, probes, alpha=0.6, k=2)
    # expertise over {0,1,2,3} normalised: 0, 1, 0.5, 0.25; similarity: 1, 0, 0.7071, 1
    assert own == pytest.approx(0.6 * 0.0 + 0.4)
    expected = {1: 0.6, 2: 0.6 * 0.5 + 0.4 * (1 / math.sqrt(2)), 3: 0.6 * 0.25 + 0.4}
    # scores: 1 -> 0.6, 2 -> 0.3 + 0.2828 = 0.5828, 3 -> 0.15 + 0.4 = 0.55; the best two
    assert [p for p, _ in neighbours] == [1, 2]
    assert dict(neighbours) == pytest.approx({1: expected[1], 2: expected[2]})
    # without a record of its own: by expertise alone
    own, neighbours = reliable_neighbours(9, expertise, probes, alpha=0.6, k=1)
    assert own is None and neighbours == [(1, pytest.approx(0.6))]


def test_finetune_head_changes_only_the_head():
    torch.manual_seed(0)
    model = build_model("digitsnet", 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = separable_data(n=32)
    settings = LocalTraining(1, 8, 0.1, 0.9, 5e-4)
    finetune_head(model, data, PIPELINE, settings, torch.Generator().manual_seed(0))
    for key, value in model.state_dict().items():
        changed = not torch.equal(value, before[key])
        assert changed == key.startswith("head."), key


def test_the_probe_is_the_same_on_every_client():
    model = build_model("digitsnet", 10)
    a = probe_input(model, separable_data(seed=1), PIPELINE, torch.Generator().manual_seed(5))
    b = probe_input(model, separable_data(seed=2), PIPELINE, torch.Generator().manual_seed(5))
    assert a.shape == (1, 1, 8, 8) and torch.equal(a, b)
    text = build_model("fasttext", 4, vocab_size=30)
    tokens = separable_data(n=4)
    tokens = subset(tokens, np.arange(4))
    tokens = type(tokens)(**{**tokens.__dict__, "inputs": torch.randint(0, 30, (4, 7))})
    probe = probe_input(text, tokens, pipeline_for("agnews"), torch.Generator().manual_seed(5))
    assert probe.shape == (1, 64) and probe.dtype == torch.int64 and int(probe.max()) < 30


def test_selection_leaves_out_the_wrong_labels():
    """8 of the 16 class-1 samples labelled 3; a model trained on the clean labels (the
    previous one) and a copy (the neighbour) leave all 8 out and keep the 56 others."""
    noisy, wrong, previous = wrong_labels_and_a_clean_model()
    neighbour = build_model("digitsnet", 10)
    neighbour.load_state_dict(previous.state_dict())
    rows = select_clean_samples(
        previous, [neighbour], [1.0, 0.5], noisy, PIPELINE, LocalTraining(1, 8, 0.05, 0.9, 5e-4),
        0.5, 0, torch.Generator().manual_seed(0), 32,
    )  # fmt: skip
    assert sorted(rows.tolist()) == sorted(set(range(64)) - set(wrong.tolist()))


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("fedrn_neighbours", 0, "fedrn-neighbours=0"),
        ("fedrn_neighbours", 10, "fedrn-neighbours=10"),
        ("fedrn_alpha", 1.5, "fedrn-alpha"),
        ("p_threshold", 1.0, "p-threshold"),
    ],
)
def test_bad_settings_are_refused_before_the_run(key, value, match):
    with pytest.raises(ConfigError, match=match):
        check_strategy_settings(config_with(strategy="fedrn", **{key: value}), 10)
