"""FedCorr: its pure functions (client_app/fedcorr.py, the LID split), its schedule, and its
server strategy driven without a Flower runtime."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from client_app.fedcorr import (
    double_softmax_losses,
    estimated_noise_fraction,
    lid_per_sample,
    relabel,
)
from common.config import config_with
from strategies.detection import split_by_lid
from strategies.fedcorr import FedCorrSchedule
from strategies.registry import build_strategy
from strategies.sampling import roster_from_whoami


def test_lid_by_hand_for_one_row():
    # Row 0 at the origin; its 2 nearest others at distances 1 and 2.
    outputs = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    lid = lid_per_sample(outputs, k=2)
    expected = -2 / (math.log(1 / (2 + 1e-6)) + math.log(2 / (2 + 1e-6)) + 1e-6)
    assert float(lid[0]) == pytest.approx(expected, rel=1e-6)


def test_lid_is_higher_for_points_spread_in_more_dimensions():
    rng = np.random.default_rng(0)
    on_a_line = torch.as_tensor(rng.normal(size=(200, 1)) @ np.ones((1, 10)))
    spread = torch.as_tensor(rng.normal(size=(200, 10)))
    assert lid_per_sample(spread).mean() > 3 * lid_per_sample(on_a_line).mean()


def test_lid_with_too_few_rows_uses_what_there_is():
    assert lid_per_sample(torch.randn(1, 3)).tolist() == [0.0]
    assert lid_per_sample(torch.randn(4, 3), k=20).shape == (4,)


def test_double_softmax_loss_is_ce_on_probabilities():
    probabilities = F.softmax(torch.randn(5, 3), dim=1)
    labels = torch.tensor([0, 1, 2, 0, 1])
    expected = -F.log_softmax(probabilities, dim=1)[torch.arange(5), labels]
    assert torch.allclose(double_softmax_losses(probabilities, labels), expected)


def test_noise_fraction_finds_the_high_loss_group():
    losses = np.concatenate([np.full(70, 0.1), np.full(30, 2.0)]) + np.linspace(0, 0.01, 100)
    noisy, fraction = estimated_noise_fraction(losses, seed=1)
    assert fraction == 0.3 and noisy[70:].all() and not noisy[:70].any()
    assert estimated_noise_fraction(np.ones(10), seed=1)[1] == 0.0


def test_relabel_changes_only_confident_high_loss_samples():
    labels = torch.tensor([0, 0, 0, 0])
    losses = torch.tensor([5.0, 4.0, 3.0, 0.1])
    probabilities = torch.tensor([[0.1, 0.9], [0.45, 0.55], [0.2, 0.8], [0.1, 0.9]])
    # with confidence 0.6, sample 1 (max 0.55) is not confident
    partial = relabel(labels, losses, probabilities, 1.0, ratio=0.5, confidence=0.6)
    assert partial.tolist() == [1, 0, 0, 0]  # top 2 losses: samples 0, 1; only 0 is confident
    everything = relabel(labels, losses, probabilities, 0.0, confidence=0.6, only_high_loss=False)
    assert everything.tolist() == [1, 0, 1, 1]


# --- the schedule and the server strategy (no Flower runtime) ---------------------------------


def test_schedule_stages_with_the_paper_budget():
    schedule = FedCorrSchedule(num_clients=100, per_round=10, iterations=5, finetune_rounds=37)
    assert schedule.rounds_per_iteration == 10 and schedule.preprocess_rounds == 50
    assert [schedule.stage(r) for r in (1, 50, 51, 87, 88, 120)] == [
        "preprocess", "preprocess", "finetune", "finetune", "usual", "usual",
    ]  # fmt: skip
    assert schedule.position(1) == (0, 0) and schedule.position(50) == (4, 9)
    assert [r for r in range(1, 121) if schedule.ends_iteration(r)] == [10, 20, 30, 40, 50]
    assert [r for r in range(1, 121) if schedule.ends_finetuning(r)] == [87]
    uneven = FedCorrSchedule(num_clients=7, per_round=3, iterations=1, finetune_rounds=0)
    assert uneven.rounds_per_iteration == 3 and not any(uneven.ends_finetuning(r) for r in range(9))


def test_split_by_lid_flags_the_high_scores():
    scores = {p: 5.0 + 0.01 * p for p in range(6)} | {6: 9.0, 7: 9.2}
    assert split_by_lid(scores, seed=1) == frozenset({6, 7})
    assert split_by_lid(dict.fromkeys(range(4), 3.0), seed=1) == frozenset()


NUM = 6
NOISY = {4, 5}


def fedcorr_strategy(**changes):
    roster = roster_from_whoami(
        {
            100 + p: {
                "partition-id": p,
                "num-partitions": NUM,
                "num-examples": 40,
                "true-noise-rate": 0.6 if p in NOISY else 0.0,
            }
            for p in range(NUM)
        }
    )
    settings = dict(
        strategy="fedcorr",
        clients_per_round=2,
        num_rounds=12,
        fedcorr_iterations=2,
        fedcorr_finetune_rounds=3,
    )
    return build_strategy(config_with(**(settings | changes)), roster), roster


class RelabelGrid:
    """Answers FedCorr's relabel queries: estimated noise 0.5 for every client asked."""

    def __init__(self, roster):
        self.roster, self.queries = roster, []

    def get_node_ids(self):
        return list(self.roster.node_of_partition.values())

    def send_and_receive(self, messages, timeout=None):
        self.queries += messages
        confusion = np.eye(3, dtype=np.int64).ravel().tolist()
        return [
            Message(
                RecordDict(
                    {
                        "metrics": MetricRecord({"noise-fraction": 0.5, "relabelled": 3}),
                        "labels": ConfigRecord(
                            {"observed-confusion": confusion, "corrected-confusion": confusion}
                        ),
                    }
                ),
                reply_to=query,
            )
            for query in messages
        ]


def run_round(strategy, roster, grid, server_round):
    start = ArrayRecord([np.zeros(3, dtype=np.float32)])
    messages = list(strategy.configure_train(server_round, start, ConfigRecord(), grid))
    replies = []
    for message in messages:
        partition = roster.partition_of(message.metadata.dst_node_id)
        metrics = MetricRecord(
            {
                "num-examples": 40,
                "train-loss": 1.0,
                "train-seconds": 0.1,
                "partition-id": partition,
                "lid": 9.0 if partition in NOISY else 5.0 + 0.01 * partition,
            }
        )
        arrays = ArrayRecord([np.full(3, float(partition), dtype=np.float32)])
        replies.append(
            Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=message)
        )
    strategy.aggregate_train(server_round, replies)
    return messages


def test_fedcorr_stages_end_to_end_without_flower(flower_task):
    strategy, roster = fedcorr_strategy()
    grid = RelabelGrid(roster)
    seen = []
    for server_round in (1, 2, 3):  # iteration 1: every client once, 2 per round
        messages = run_round(strategy, roster, grid, server_round)
        assert {m.metadata.message_type for m in messages} == {"train.corr"}
        assert all(m.content["config"]["proximal-norm"] == 0.0 for m in messages)
        assert all(m.content["config"]["report-lid"] == 1 for m in messages)
        seen += [roster.partition_of(m.metadata.dst_node_id) for m in messages]
    assert sorted(seen) == list(range(NUM))
    assert strategy.noisy == frozenset(NOISY)  # the LID split after the iteration
    assert {roster.partition_of(q.metadata.dst_node_id) for q in grid.queries} == NOISY
    assert all(q.content["config"]["everything"] == 0 for q in grid.queries)
    assert strategy.noise_level == {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0, 4: 0.5, 5: 0.5}

    messages = run_round(strategy, roster, grid, 4)  # iteration 2: the adaptive proximal term
    for message in messages:
        partition = roster.partition_of(message.metadata.dst_node_id)
        expected = 5.0 * 0.5 if partition in NOISY else 0.0
        assert message.content["config"]["proximal-norm"] == expected
    run_round(strategy, roster, grid, 5)
    run_round(strategy, roster, grid, 6)
    for server_round in (7, 8, 9):  # fine-tuning: only clients with mu <= 0.1
        messages = run_round(strategy, roster, grid, server_round)
        assert {roster.partition_of(m.metadata.dst_node_id) for m in messages} <= {0, 1, 2, 3}
        assert all(m.content["config"]["report-lid"] == 0 for m in messages)
    final = grid.queries[-2:]  # after fine-tuning, the noisy relabel every confident sample
    assert all(q.content["config"]["everything"] == 1 for q in final)
    assert len(grid.queries) == 6
    report = strategy.final_report()
    assert report["detection"]["quality"]["precision"] == 1.0
    assert report["relabel_queries"] == {4: 3, 5: 3}
