"""Tests for DivideMix (client_app/dividemix.py, strategies.rules.DivideMix) against
hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from client_app.dividemix import (
    Division,
    co_divide,
    semi_supervised_loss,
    sharpen,
    train_dividemix,
    train_on_division,
    unlabelled_weight,
)
from common.config import ConfigError, config_with
from common.protocol import DivideMixSettings, LocalTraining
from data.transforms import pipeline_for
from models import build_model
from strategies.registry import build_strategy, check_strategy_settings
from strategies.sampling import roster_from_whoami
from tests.client_app.test_training import separable_data, wrong_labels_and_a_clean_model

PIPELINE = pipeline_for("digits")


def settings_after_warmup(**changes) -> DivideMixSettings:
    values = dict(
        warm=False,
        rounds_after_warmup=1.0,
        p_threshold=0.5,
        dividemix_alpha=4.0,
        dividemix_lambda_u=25.0,
        dividemix_temperature=0.5,
    )
    return DivideMixSettings(**(values | changes))


def test_sharpen_by_hand():
    # (0.6, 0.4)^2 = (0.36, 0.16) -> / 0.52
    out = sharpen(torch.tensor([[0.6, 0.4]]), 0.5)
    assert torch.allclose(out, torch.tensor([[0.36 / 0.52, 0.16 / 0.52]]))


def test_the_unlabelled_weight_ramps_over_16_rounds():
    assert unlabelled_weight(25.0, -1.0) == 0.0
    assert unlabelled_weight(25.0, 4.0) == pytest.approx(6.25)
    assert unlabelled_weight(25.0, 40.0) == 25.0


def test_semi_supervised_loss_by_hand():
    logits_x = torch.tensor([[0.0, 0.0]])
    targets_x = torch.tensor([[0.75, 0.25]])
    logits_u = torch.tensor([[math.log(3.0), 0.0]])  # softmax (0.75, 0.25)
    targets_u = torch.tensor([[0.5, 0.5]])
    supervised = -(0.75 * math.log(0.5) + 0.25 * math.log(0.5))
    unsupervised = (0.25**2 + 0.25**2) / 2
    mean = (0.5 + 0.75) / 2, (0.5 + 0.25) / 2
    penalty = sum(0.5 * math.log(0.5 / m) for m in mean)
    expected = supervised + 2.0 * unsupervised + penalty
    loss = semi_supervised_loss(logits_x, targets_x, logits_u, targets_u, 2.0)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    alone = semi_supervised_loss(logits_x, targets_x, logits_u[:0], targets_u[:0], 2.0)
    assert float(alone) == pytest.approx(supervised, rel=1e-6)  # prior met: no penalty


def test_co_divide_leaves_the_wrong_labels_unlabelled():
    noisy, wrong, model = wrong_labels_and_a_clean_model()
    division = co_divide(model, noisy, PIPELINE, 0.5, seed=0, batch_size=32)
    assert division.unlabelled.tolist() == wrong.tolist()
    assert len(division.labelled) == 56


def test_training_on_a_division_without_unlabelled_samples_still_trains():
    data = separable_data(n=32, num_classes=4)
    torch.manual_seed(0)
    model, peer = build_model("digitsnet", 10), build_model("digitsnet", 10)
    before = [p.detach().clone() for p in model.parameters()]
    everything = Division(np.ones(32), np.arange(32), np.zeros(0, dtype=np.int64))
    total, steps = train_on_division(
        model, peer, data, PIPELINE, everything, LocalTraining(1, 8, 0.05, 0.9, 5e-4),
        settings_after_warmup(), torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert steps == 4 and math.isfinite(total)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    nothing = Division(np.zeros(32), np.zeros(0, dtype=np.int64), np.arange(32))
    assert train_on_division(
        model, peer, data, PIPELINE, nothing, LocalTraining(1, 8, 0.05, 0.9, 5e-4),
        settings_after_warmup(), torch.Generator(),
    ) == (0.0, 0)  # fmt: skip


def test_the_warm_up_then_dividemix_are_seeded_and_learn():
    """Both phases in turn, as a run has them (DivideMix from an untrained model would co-divide
    at random); twice, for the same numbers."""
    data = separable_data(n=64, num_classes=4)
    settings = LocalTraining(3, 16, 0.05, 0.9, 5e-4)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model1, model2 = build_model("digitsnet", 10), build_model("digitsnet", 10)
        losses = []
        for phase in (settings_after_warmup(warm=True), settings_after_warmup()):
            stats = train_dividemix(
                model1, model2, data, PIPELINE, settings, phase, 0,
                torch.Generator().manual_seed(3), 32,
            )  # fmt: skip
            assert stats.num_steps > 0
            losses.append(stats.mean_loss)
        runs.append((losses, [p.detach().clone() for p in model2.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))
    model1.eval()
    with torch.no_grad():
        predicted = model1(PIPELINE.eval_batch(data.inputs)).argmax(1)
    assert float((predicted == data.observed_labels).float().mean()) > 0.9


def test_round_settings_follow_fnbenchs_warm_up():
    roster = roster_from_whoami(
        {
            p: {"partition-id": p, "num-partitions": 4, "num-examples": 10,
                "true-noise-rate": 0.0}
            for p in range(4)
        }
    )  # fmt: skip
    config = config_with(strategy="dividemix", label_warmup_rounds=3, clients_per_round=2)
    strategy = build_strategy(config, roster)
    # FNBench warms up while its 0-based round is <= warmup_epochs: rounds 1..4 here
    assert strategy.round_settings(4).warm and not strategy.round_settings(5).warm
    assert strategy.round_settings(5).rounds_after_warmup == 1.0


@pytest.mark.parametrize(
    ("key", "value"),
    [("dividemix_alpha", 0.0), ("dividemix_temperature", 1.5), ("p_threshold", 1.0)],
)
def test_bad_settings_are_refused_before_the_run(key, value):
    with pytest.raises(ConfigError, match=key.replace("_", "-")):
        check_strategy_settings(config_with(strategy="dividemix", **{key: value}), 10)
