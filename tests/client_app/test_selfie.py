"""client_app/selfie.py: SELFIE's certainty, small-loss selection and refurbishing, against
values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from client_app.selfie import SelfieState, history_certainty, small_loss_mask
from common.protocol import LocalTraining

SETTINGS = LocalTraining(
    local_epochs=1, batch_size=4, lr=0.1, momentum=0.0, weight_decay=0.0,
    local_loss="selfie", selfie_noise_rate=0.5, selfie_uncertainty=0.3,
)  # fmt: skip


def test_certainty_is_the_normalised_entropy_of_the_history_and_its_mode():
    history = torch.tensor([[2, 2, 2, 2], [0, 1, 0, 1], [1, 1, 1, 0]])
    uncertainty, mode = history_certainty(history, num_classes=3)
    three_one = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(3)
    assert uncertainty.tolist() == pytest.approx([0.0, math.log(2) / math.log(3), three_one])
    assert mode.tolist() == [2, 0, 1]  # a tie goes to the lower class


def test_small_loss_mask_keeps_the_ceil_share_of_smallest_losses():
    losses = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7])
    assert small_loss_mask(losses, 0.5).tolist() == [False, True, True, True, False]  # ceil 2.5
    assert small_loss_mask(losses, 0.0).all()


def test_only_a_full_and_certain_history_is_refurbished_and_it_stays():
    state = SelfieState.start(3, 3, size=4, device="cpu", correcting=True)
    for predicted in ([2, 0, 1], [2, 1, 1], [2, 0, 1], [2, 1, 1]):
        state.observe(torch.tensor([0, 1, 2]), torch.tensor(predicted))
    state.observe(torch.tensor([2]), torch.tensor([0]))  # sample 2: queue 0,1,1,1 after wrap
    state.refurbish(torch.tensor([0, 1, 2]), threshold=0.3)
    # 0: always 2 (entropy 0); 1: half 0, half 1 (0.63 > 0.3); 2: 3 x 1, 1 x 0 (0.51 > 0.3)
    assert state.refurbished.tolist() == [2, -1, -1]
    fresh = SelfieState.start(1, 3, size=4, device="cpu", correcting=True)
    for _ in range(3):  # three identical predictions: the queue is not full yet
        fresh.observe(torch.tensor([0]), torch.tensor([1]))
    fresh.refurbish(torch.tensor([0]), threshold=0.3)
    assert fresh.refurbished.tolist() == [-1]
    state.history[0] = torch.tensor([0, 1, 2, 0])  # uncertain later: the label stays
    state.refurbish(torch.tensor([0]), threshold=0.3)
    assert state.refurbished.tolist()[0] == 2


def test_after_the_warm_up_the_batch_is_the_small_loss_and_refurbished_samples():
    state = SelfieState.start(4, 3, size=2, device="cpu", correcting=True)  # none full yet
    state.refurbished[3] = 0  # sample 3 carries a refurbished label from an earlier round
    inputs = torch.eye(4)
    # logits favour class 0 for every sample; observed labels 0, 0, 1, 2: losses small, small,
    # large, large. Selection keeps ceil(4 * 0.5) = 2 small-loss samples (0, 1) plus sample 3.
    seen = []

    def forward(batch):
        seen.append(batch.clone())
        return torch.tensor([[3.0, 0.0, 0.0]]).repeat(len(batch), 1)

    loss = state.batch_loss(torch.arange(4), inputs, torch.tensor([0, 0, 1, 2]), forward, SETTINGS)
    assert torch.equal(seen[1], inputs[[0, 1, 3]])  # the second pass: only the kept samples
    expected = -math.log(math.exp(3) / (math.exp(3) + 2))  # all three now labelled 0
    assert float(loss) == pytest.approx(expected)
    assert state.counts.tolist() == [1, 1, 1, 1]


def test_during_the_warm_up_it_is_plain_ce_and_the_state_round_trips():
    state = SelfieState.start(2, 3, size=2, device="cpu", correcting=False)
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    loss = state.batch_loss(
        torch.arange(2), torch.zeros(2, 1), torch.tensor([0, 2]), lambda _: logits, SETTINGS
    )
    assert float(loss) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])))
    )
    back = SelfieState.restore(state.arrays(), torch.device("cpu"), 3, 2, correcting=True)
    assert back.history[:, 0].tolist() == [0, 1] and back.counts.tolist() == [1, 1]
    with pytest.raises(ValueError, match="not label-history=3"):
        SelfieState.restore(state.arrays(), torch.device("cpu"), 3, 3, correcting=True)
