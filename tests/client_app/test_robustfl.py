"""Tests for client_app/robustfl.py and RobustFL's server step, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from client_app.robustfl import (
    class_means,
    nearest_centroid,
    robustfl_loss,
    small_loss_indices,
    train_robustfl,
    update_centroids,
)
from common.config import ConfigError, config_with
from common.protocol import LocalTraining
from data.transforms import pipeline_for
from models import build_model
from strategies.aggregation import similarity_weighted_centroids
from strategies.registry import check_strategy_settings
from strategies.rules import RobustflParams
from tests.client_app.test_training import separable_data


def test_class_means_average_each_class_and_leave_absent_classes_zero():
    features = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0]])
    labels = torch.tensor([0, 0, 2])
    means = class_means(features, labels, 3)
    assert torch.equal(means, torch.tensor([[2.0, 1.0], [0.0, 0.0], [0.0, 4.0]]))


def test_nearest_centroid_is_by_cosine_not_distance():
    centroids = torch.tensor([[1.0, 0.0], [0.0, 10.0]])
    # (5, 1) is nearer (1, 0) in angle and in distance; (0.1, 0.2) is nearer (1, 0) in
    # distance but (0, 10) in angle
    features = torch.tensor([[5.0, 1.0], [0.1, 0.2]])
    assert nearest_centroid(features, centroids).tolist() == [0, 1]


def test_small_loss_indices_keep_the_smallest_share():
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0], [1.0, 0.0], [0.0, 0.0]])
    targets = torch.tensor([0, 0, 0, 1])
    # CE: 0.0486, 3.0486, 0.3133, 0.6931 -> by loss: 0, 2, 3, 1; keep int(0.5 * 4) = 2
    assert small_loss_indices(logits, targets, 0.5).tolist() == [0, 2]
    assert small_loss_indices(logits, targets, 0.0).tolist() == [0, 2, 3, 1]
    assert small_loss_indices(logits, targets, 0.99).tolist() == [0]  # at least one


def test_robustfl_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 2.0]], requires_grad=True)
    features = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 1, 0])
    pseudo = torch.tensor([0, 0, 1])
    centroids = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    # CE to labels: 0.1269, 0.3133, 2.1269 -> keep (1 - 1/3) of 3 = 2: samples 0 and 1
    # nearest centroid: sample 0 -> 0 (= label, confident); sample 1 -> tie 0.7071 each, argmax
    # takes class 0 (!= label 1: unconfident, trains on its pseudo-label 0 when use_pseudo)
    terms = robustfl_loss(logits, features, labels, pseudo, centroids, 1 / 3, 0.5, 0.25, True)
    assert terms.kept.tolist() == [0, 1]
    assert terms.confident.tolist() == [True, False]
    assert terms.targets.tolist() == [0, 0]
    ce0 = math.log(1 + math.exp(-2.0))  # sample 0, class 0
    ce1 = math.log(1 + math.exp(1.0))  # sample 1, class 0 of logits (0, 1)
    loss_c = (ce0 + ce1) / 2
    loss_cen = 1.0 * 1.0 + 0.0  # summed; confident sample 0: ||(1,0) - (2,0)||^2 = 1
    p0 = 1 / (1 + math.exp(-2.0))
    p1 = 1 / (1 + math.exp(-1.0))

    def entropy(p):
        return -(p * math.log(p) + (1 - p) * math.log(1 - p))

    loss_e = (entropy(p0) + entropy(p1)) / 2
    expected = loss_c + 0.5 * loss_cen + 0.25 * loss_e
    assert float(terms.loss.detach()) == pytest.approx(expected, rel=1e-5)
    terms.loss.backward()
    assert features.grad is None  # detached, as the authors': the centroid loss trains nothing
    assert logits.grad is not None
    # before the pseudo-label rounds end, every kept sample trains on its given label
    early = robustfl_loss(logits, features, labels, pseudo, centroids, 1 / 3, 0.5, 0.25, False)
    assert early.targets.tolist() == [0, 1]


def test_update_centroids_moves_by_squared_cosine():
    centroids = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    features = torch.tensor([[1.0, 1.0], [3.0, 3.0]])
    labels = torch.tensor([0, 0])
    updated = update_centroids(centroids, features, labels)
    # class 0: batch mean (2, 2), cos((1,0),(2,2))^2 = 0.5 -> 0.5 (1,0) + 0.5 (2,2) = (1.5, 1)
    # class 1: absent -> unchanged
    assert torch.allclose(updated, torch.tensor([[1.5, 1.0], [0.0, 1.0]]))


def test_server_centroids_are_weighted_by_similarity():
    current = np.array([[1.0, 0.0], [0.0, 1.0]])
    a = np.array([[2.0, 0.0], [0.0, -1.0]])  # class 0 aligned (cos 1), class 1 opposite (-1 -> 0)
    b = np.array([[1.0, 1.0], [0.0, 0.0]])  # class 0 cos 0.7071; class 1 zero row (cos 0)
    out = similarity_weighted_centroids(current, [a, b], [10, 30])
    w = 1 / math.sqrt(2)
    expected0 = (1 * np.array([2.0, 0.0]) + w * np.array([1.0, 1.0])) / (1 + w)
    assert out[0] == pytest.approx(expected0.astype(np.float32))
    assert out[1] == pytest.approx([0.0, 1.0])  # no positive weight: kept
    assert out.dtype == np.float32
    first = similarity_weighted_centroids(None, [a, b], [10, 30])
    assert first[0] == pytest.approx((10 * a[0] + 30 * b[0]) / 40)
    assert first[1] == pytest.approx(a[1])  # b does not hold class 1
    with pytest.raises(ValueError, match="no centroids"):
        similarity_weighted_centroids(current, [], [])


def test_round_settings_follow_the_schedules():
    params = RobustflParams(
        forget_rate=0.2,
        robustfl_ramp_rounds=5,
        robustfl_pseudo_rounds=4,
        robustfl_lambda_cen=1.0,
        robustfl_lambda_e=0.8,
    )
    first, third, fifth = params.settings(1), params.settings(3), params.settings(5)
    assert (first.forget_rate, first.lambda_cen, first.use_pseudo) == (0.0, 0.0, False)
    assert third.forget_rate == pytest.approx(0.1) and third.lambda_cen == pytest.approx(0.5)
    assert not third.use_pseudo
    assert (fifth.forget_rate, fifth.lambda_cen, fifth.use_pseudo) == (0.2, 1.0, True)


@pytest.mark.parametrize(("key", "value"), [("forget_rate", 1.0), ("robustfl_lambda_cen", -1.0)])
def test_bad_settings_are_refused_before_the_run(key, value):
    config = config_with(strategy="robustfl", **{key: value})
    with pytest.raises(ConfigError, match=key.replace("_", "-")):
        check_strategy_settings(config, 10)


def test_training_learns_and_returns_finite_centroids():
    # forget rate 0: with 4 equal classes, a 0.2 rate can leave one class out of every batch
    data = separable_data(n=64, num_classes=4)
    torch.manual_seed(0)
    model = build_model("digitsnet", 10)
    settings = LocalTraining(3, 16, 0.05, 0.9, 5e-4)
    pipeline = pipeline_for("digits")
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("digitsnet", 10)
        stats, centroids = train_robustfl(
            model, data, pipeline, settings, None, 0.0, 1.0, 0.8, False,
            torch.Generator().manual_seed(1), 32,
        )  # fmt: skip
        runs.append((stats.mean_loss, centroids))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])  # seeded
    assert centroids.shape == (10, 128) and bool(torch.isfinite(centroids).all())
    with torch.no_grad():
        predicted = model(pipeline.eval_batch(data.inputs)).argmax(1)
    assert float((predicted == data.observed_labels).float().mean()) > 0.9
