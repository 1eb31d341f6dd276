"""client_app/coteaching.py: the forget-rate schedule, the small-loss exchange and the
disagreement rule, against values computed by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from client_app.coteaching import (
    coteaching_losses,
    coteaching_plus_losses,
    forget_rate,
)


def test_the_forget_rate_ramps_linearly_to_tau_over_the_ramp_rounds():
    assert [forget_rate(t, 0.2, 5) for t in (1, 2, 3, 5, 9)] == pytest.approx(
        [0.0, 0.05, 0.1, 0.2, 0.2]
    )  # numpy.linspace(0, 0.2, 5), then 0.2
    assert forget_rate(1, 0.2, 0) == forget_rate(1, 0.2, 1) == 0.2  # FNBench: constant


def test_each_network_learns_from_the_samples_its_peer_finds_easy():
    targets = torch.tensor([0, 0, 0, 0])
    # network 1 finds samples 0, 1 easy; network 2 finds samples 2, 3 easy
    logits1 = torch.tensor([[5.0, 0.0], [4.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    logits2 = torch.tensor([[0.0, 2.0], [0.0, 1.0], [4.0, 0.0], [5.0, 0.0]])
    loss1, loss2 = coteaching_losses(logits1, logits2, targets, rate=0.5)  # remember 2
    ce1 = F.cross_entropy(logits1, targets, reduction="none")
    ce2 = F.cross_entropy(logits2, targets, reduction="none")
    assert float(loss1) == pytest.approx(float(ce1[[2, 3]].sum() / 2))  # peer's picks: 3, 2
    assert float(loss2) == pytest.approx(float(ce2[[0, 1]].sum() / 2))
    all1, _ = coteaching_losses(logits1, logits2, targets, rate=0.0)
    assert float(all1) == pytest.approx(float(ce1.mean()))


def test_coteaching_plus_exchanges_only_where_the_networks_disagree():
    targets = torch.tensor([0, 1, 1])
    logits1 = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])  # predicts 0, 0, 1
    logits2 = torch.tensor([[2.0, 0.0], [0.0, 3.0], [3.0, 0.0]])  # predicts 0, 1, 0
    loss1, loss2 = coteaching_plus_losses(logits1, logits2, targets, rate=0.5)
    # disagreement on samples 1 and 2; remember int(0.5 * 2) = 1: network 2 finds sample 1
    # easiest (it predicts 1 there), network 1 sample 2
    assert float(loss1) == pytest.approx(float(F.cross_entropy(logits1[[1]], targets[[1]])))
    assert float(loss2) == pytest.approx(float(F.cross_entropy(logits2[[2]], targets[[2]])))
    agree1, agree2 = coteaching_plus_losses(logits1, logits1.clone(), targets, rate=0.5)
    assert float(agree1) == pytest.approx(float(F.cross_entropy(logits1, targets)))
    assert float(agree2) == pytest.approx(float(agree1))
