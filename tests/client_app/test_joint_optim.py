"""client_app/joint_optim.py: Joint Optimization's loss and label history, against values
computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from client_app.joint_optim import LabelHistory, joint_optimisation_loss


def test_the_loss_is_ce_on_soft_labels_plus_prior_and_entropy_terms():
    # two samples, two classes; logits chosen so that p = [[0.5, 0.5], [e/(1+e), 1/(1+e)]]
    logits = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    soft = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    q = math.e / (1 + math.e)
    p = [[0.5, 0.5], [q, 1 - q]]
    ce = -(math.log(0.5) + 0.5 * math.log(q) + 0.5 * math.log(1 - q)) / 2
    mean = [(0.5 + q) / 2, (0.5 + 1 - q) / 2]
    prior = -(math.log(mean[0]) + math.log(mean[1])) / 2
    entropy = -sum(v * math.log(v) for row in p for v in row) / 2
    expected = ce + 1.2 * prior + 0.8 * entropy
    assert float(joint_optimisation_loss(logits, soft, 1.2, 0.8)) == pytest.approx(expected)
    assert float(joint_optimisation_loss(logits, soft, 0.0, 0.0)) == pytest.approx(ce)


def test_the_soft_labels_become_the_mean_of_the_recorded_predictions():
    history = LabelHistory.start(torch.tensor([0, 1, 2]), 3, size=2, correcting=True)
    assert history.targets(torch.tensor([2])).tolist() == [[0.0, 0.0, 1.0]]
    first, second, third = (torch.tensor([[a, 1 - a, 0.0]]) for a in (0.2, 0.6, 1.0))
    for seen in (first, second, third):  # sample 0 three times: the queue keeps the last two
        history.observe(torch.tensor([0]), seen)
    history.observe(torch.tensor([1]), torch.tensor([[0.0, 0.3, 0.7]]))
    history.end_epoch()
    assert history.soft[0].tolist() == pytest.approx([0.8, 0.2, 0.0])  # (0.6 + 1.0) / 2
    assert history.soft[1].tolist() == pytest.approx([0.0, 0.3, 0.7])  # one prediction
    assert history.soft[2].tolist() == [0.0, 0.0, 1.0]  # never seen: its label stays
    assert history.counts.tolist() == [3, 1, 0]


def test_before_the_warm_up_ends_the_labels_stay_and_the_state_round_trips():
    history = LabelHistory.start(torch.tensor([1, 0]), 2, size=3, correcting=False)
    history.observe(torch.tensor([0, 1]), torch.tensor([[0.9, 0.1], [0.2, 0.8]]))
    history.end_epoch()
    assert history.soft.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    stored = history.arrays()
    back = LabelHistory.restore(stored, torch.device("cpu"), size=3, correcting=True)
    back.end_epoch()
    assert back.soft.flatten().tolist() == pytest.approx([0.9, 0.1, 0.2, 0.8])
    assert np.array_equal(back.counts.numpy(), [1, 1])
    with pytest.raises(ValueError, match="not label-history=4"):
        LabelHistory.restore(stored, torch.device("cpu"), size=4, correcting=True)
