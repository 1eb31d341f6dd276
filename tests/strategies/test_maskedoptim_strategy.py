"""MaskedOptim's server strategy without a Flower runtime: warm-up messages, the detection query
after round T_w (with a silent client and a failing one), routing by group, and the geometric
median as the aggregation rule."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from common.config import config_with
from common.errors import ConfigError
from strategies.aggregation import geometric_median_per_tensor
from strategies.registry import build_strategy
from strategies.sampling import roster_from_whoami

NUM_CLIENTS = 8
NUM_CLASSES = 3
NOISY = (5, 6)
SILENT = 7
FAILING = 0
ROSTER = roster_from_whoami(
    {
        1000 + p: {
            "partition-id": p,
            "num-partitions": NUM_CLIENTS,
            "num-examples": 50,
            "true-noise-rate": 0.5 if p in NOISY else 0.0,
        }
        for p in range(NUM_CLIENTS)
    }
)


@pytest.fixture(autouse=True)
def _flower_task(flower_task):
    """Every test here builds Messages (conftest.flower_task)."""


def class_loss_reply(query: Message, losses: list[float], agree: int = 5) -> Message:
    """The reply a client gives: `agree` of its 10 samples per class predicted as labelled."""
    partition = ROSTER.partition_of(query.metadata.dst_node_id)
    confusion = np.eye(NUM_CLASSES, dtype=np.int64) * 10
    metrics = {"class-loss": losses, "class-present": [1] * NUM_CLASSES, "partition-id": partition}
    if query.content["config"]["class-counts"]:
        metrics["class-count"] = [10] * NUM_CLASSES
    if query.content["config"]["agreement"]:
        metrics["class-agree"] = [agree] * NUM_CLASSES
    content = RecordDict(
        {
            "metrics": MetricRecord(metrics),
            "labels": ConfigRecord({"observed-confusion": confusion.ravel().tolist()}),
        }
    )
    return Message(content, reply_to=query)


class DetectionGrid:
    """Answers the class-loss query: noisy clients have high losses, one client stays silent,
    one fails with an error."""

    def __init__(
        self,
        same_losses: bool = False,
        bases: dict[int, float] | None = None,
        clean_agree: int = 5,
    ) -> None:
        self.same_losses = same_losses
        self.bases = bases  # partition -> its loss level (default: NOISY 2.0, others 0.3)
        self.clean_agree = clean_agree  # of 10 samples per class, at the low-loss clients
        self.queries: list[Message] = []

    def get_node_ids(self):
        return list(ROSTER.node_of_partition.values())

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for query in messages:
            self.queries.append(query)
            partition = ROSTER.partition_of(query.metadata.dst_node_id)
            if partition == SILENT:
                continue
            if partition == FAILING:
                replies.append(Message(Error(code=0, reason="disk full"), reply_to=query))
                continue
            if self.same_losses:
                replies.append(class_loss_reply(query, [0.5, 0.6, 0.7]))
                continue
            base = 2.0 if partition in NOISY else 0.3
            if self.bases is not None:
                base = self.bases[partition]
            losses = [base + 0.01 * partition + 0.1 * c for c in range(3)]
            agree = self.clean_agree if base < 0.5 else 2  # noisy labels: seldom predicted
            replies.append(class_loss_reply(query, losses, agree))
        return replies


def model_reply(message: Message, value: float) -> Message:
    arrays = ArrayRecord([np.full(4, value, dtype=np.float32), np.array(3 + int(value))])
    metrics = MetricRecord(
        {"num-examples": 50, "train-loss": value, "train-seconds": 0.1, "partition-id": 0}
    )
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=message)


def start(grid, warmup_rounds: int = 2, **keys):
    config = config_with(
        strategy="maskedoptim", clients_per_round=NUM_CLIENTS, warmup_rounds=warmup_rounds, **keys
    )
    return build_strategy(config, ROSTER)


def train_round(strategy, grid, server_round: int):
    initial = ArrayRecord([np.zeros(4, dtype=np.float32), np.array(0)])
    messages = list(strategy.configure_train(server_round, initial, ConfigRecord(), grid))
    replies = [model_reply(m, float(ROSTER.partition_of(m.metadata.dst_node_id))) for m in messages]
    arrays, _ = strategy.aggregate_train(server_round, replies)
    return messages, replies, arrays


def test_warmup_then_detection_then_routing():
    grid = DetectionGrid()
    strategy = start(grid)
    messages, _, _ = train_round(strategy, grid, 1)
    assert {m.metadata.message_type for m in messages} == {"train"}
    assert all(m.content["config"]["local-loss"] == "logit-adjusted" for m in messages)
    assert strategy.noisy is None and not grid.queries

    train_round(strategy, grid, 2)  # the end of warm-up: detection follows the aggregation
    assert {ROSTER.partition_of(q.metadata.dst_node_id) for q in grid.queries} == set(range(8))
    assert {q.metadata.message_type for q in grid.queries} == {"query.class_loss"}
    assert strategy.noisy == frozenset(NOISY)
    assert strategy.detection["not_answered"] == [SILENT]  # stays clean, logged
    assert strategy.detection["failed"] == [FAILING]  # likewise
    assert SILENT in strategy.detection["clean"] and FAILING in strategy.detection["clean"]
    assert strategy.detection["quality"]["precision"] == 1.0

    messages, _, _ = train_round(strategy, grid, 3)
    routed = {
        ROSTER.partition_of(m.metadata.dst_node_id): m.metadata.message_type for m in messages
    }
    assert {p for p, kind in routed.items() if kind == "train.masked"} == set(NOISY)
    assert {p for p, kind in routed.items() if kind == "train"} == set(range(8)) - set(NOISY)
    assert len(grid.queries) == 8  # detection ran once


def test_the_robust_score_detector_asks_for_class_counts_and_splits_on_the_score():
    grid = DetectionGrid()
    strategy = start(grid, noisy_detector="robust-score")
    train_round(strategy, grid, 1)
    train_round(strategy, grid, 2)
    assert all(q.content["config"]["class-counts"] for q in grid.queries)
    assert strategy.noisy == frozenset(NOISY)
    detection = strategy.detection
    assert detection["detector"] == "robust-score" and detection["gmm_agreement"] == 1.0
    # every class: median 0.3x, MAD 0.02; the noisy clients score far above the others
    scores = detection["client_score"]
    assert min(scores[p] for p in NOISY) > 10 > max(s for p, s in scores.items() if p not in NOISY)
    assert set(scores) == set(range(8)) - {SILENT, FAILING}


def test_the_authors_detector_asks_for_no_class_counts():
    grid = DetectionGrid()
    strategy = start(grid)
    train_round(strategy, grid, 1)
    train_round(strategy, grid, 2)
    assert not any(q.content["config"]["class-counts"] for q in grid.queries)
    assert strategy.detection["detector"] == "per-class-gmm"
    assert "client_score" not in strategy.detection


def test_flagged_clients_can_distil_as_fednoros_do():
    grid = DetectionGrid()
    strategy = start(grid, noisy_training="la-distill")
    train_round(strategy, grid, 1)
    train_round(strategy, grid, 2)
    messages, _, _ = train_round(strategy, grid, 3)
    assert {m.metadata.message_type for m in messages} == {"train"}
    loss = {ROSTER.partition_of(m.metadata.dst_node_id): m.content["config"]["local-loss"]
            for m in messages}  # fmt: skip
    assert {p for p, name in loss.items() if name == "la-distill"} == set(NOISY)
    assert {p for p, name in loss.items() if name == "logit-adjusted"} == set(range(8)) - set(NOISY)
    assert strategy.label_holders() == []  # the observed labels stay: nothing to export
    noisy = next(m for m in messages if ROSTER.partition_of(m.metadata.dst_node_id) in NOISY)
    assert 0 < noisy.content["config"]["kd-weight"] < 0.8  # FedNoRo's ramp, under its peak


def test_distilling_clients_can_swap_the_labels_the_global_model_finds_unlikely():
    grid = DetectionGrid()
    strategy = start(grid, noisy_training="la-distill", distill_relabel_below=0.05)
    train_round(strategy, grid, 1)
    train_round(strategy, grid, 2)
    messages, _, _ = train_round(strategy, grid, 3)
    relabel = {ROSTER.partition_of(m.metadata.dst_node_id): m.content["config"]["relabel-below"]
               for m in messages}  # fmt: skip
    assert {p for p, value in relabel.items() if value == 0.05} == set(NOISY)
    assert {p for p, value in relabel.items() if value == 0.0} == set(range(8)) - set(NOISY)
    assert strategy.label_holders() == list(NOISY)  # their swapped labels can be exported


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"distill_relabel_below": 0.05}, "needs noisy-training='la-distill'"),
        ({"noisy_components": 3}, "needs noisy-detector='robust-score'"),
        ({"noisy_components": 1, "noisy_detector": "robust-score"}, "at least 2 Gaussian"),
        ({"mild_training": "relabel", "noisy_detector": "robust-score"}, "components above 2"),
        ({"mild_weight": 0.5}, "applies with mild-training='down-weight' only"),
        ({"strong_model_agreement": 0.8}, "this run uses them anyway"),
        ({"strong_model_agreement": 1.5, "noisy_training": "la-distill"}, r"must be in \[0, 1\]"),
    ],
)
def test_issue_22_keys_that_cannot_apply_are_refused(keys, message):
    with pytest.raises(ConfigError, match=message):
        start(DetectionGrid(), **keys)


def test_more_components_flag_the_clients_above_the_lowest_group():
    grid = DetectionGrid()
    strategy = start(grid, noisy_detector="robust-score", noisy_components=3)
    train_round(strategy, grid, 1)
    train_round(strategy, grid, 2)
    assert strategy.detection["components"] == 3
    assert frozenset(NOISY) <= strategy.noisy


def test_mildly_noisy_clients_can_train_on_swapped_labels_without_distillation():
    # three levels among the six clients that answer: 1-2 clean, 3-4 mild, 5-6 heavy
    grid = DetectionGrid(bases={0: 0.3, 1: 0.3, 2: 0.3, 3: 1.0, 4: 1.0, 5: 2.5, 6: 2.5, 7: 0.3})
    keys = dict(noisy_detector="robust-score", noisy_components=3, noisy_training="la-distill",
                distill_relabel_below=0.05, mild_training="relabel")  # fmt: skip
    strategy = start(grid, **keys)
    train_round(strategy, grid, 1)
    train_round(strategy, grid, 2)
    assert strategy.noisy == frozenset({3, 4, 5, 6})
    assert strategy.detection["mild"] == [3, 4] and strategy.mild == frozenset({3, 4})
    messages, _, _ = train_round(strategy, grid, 3)
    config = {ROSTER.partition_of(m.metadata.dst_node_id): m.content["config"] for m in messages}
    assert {p: c["local-loss"] for p, c in config.items() if p in (3, 4, 5, 6)} == {
        3: "logit-adjusted",
        4: "logit-adjusted",
        5: "la-distill",
        6: "la-distill",
    }
    assert all(config[p]["relabel-below"] == 0.05 for p in (3, 4, 5, 6))
    assert all(config[p]["relabel-below"] == 0.0 for p in (0, 1, 2, 7))
    assert config[3]["kd-weight"] == 0.0 and config[5]["kd-weight"] > 0
    restored = start(DetectionGrid(), **keys)  # the split travels in the checkpoint
    restored.restore_state(strategy.checkpoint_state(), 2)
    assert restored.mild == frozenset({3, 4})


def test_mildly_noisy_clients_can_train_as_clean_ones_with_less_weight():
    grid = DetectionGrid(bases={0: 0.3, 1: 0.3, 2: 0.3, 3: 1.0, 4: 1.0, 5: 2.5, 6: 2.5, 7: 0.3})
    strategy = start(grid, noisy_detector="robust-score", noisy_components=3,
                     noisy_training="la-distill", mild_training="down-weight",
                     mild_weight=0.25)  # fmt: skip
    train_round(strategy, grid, 1)
    train_round(strategy, grid, 2)
    assert strategy.mild == frozenset({3, 4})
    initial = ArrayRecord([np.zeros(4, dtype=np.float32), np.array(0)])
    messages = list(strategy.configure_train(3, initial, ConfigRecord(), grid))
    # uneven values, so that the weights move the median
    replies = [model_reply(m, float(ROSTER.partition_of(m.metadata.dst_node_id)) ** 2)
               for m in messages]  # fmt: skip
    arrays, _ = strategy.aggregate_train(3, replies)
    config = {ROSTER.partition_of(m.metadata.dst_node_id): m.content["config"] for m in messages}
    assert config[3]["local-loss"] == "logit-adjusted" and config[3]["relabel-below"] == 0.0
    assert config[5]["local-loss"] == "la-distill"
    models = [[a.numpy() for a in r.content["arrays"].values()] for r in replies]
    weights = [0.25 if ROSTER.partition_of(m.metadata.dst_node_id) in (3, 4) else 1.0
               for m in messages]  # fmt: skip
    expected = geometric_median_per_tensor(models, weights)
    got = [a.numpy() for a in arrays.values()]
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)
    assert not np.allclose(got[0], geometric_median_per_tensor(models)[0])


def test_all_clients_alike_flags_nobody_and_the_run_goes_on():
    grid = DetectionGrid(same_losses=True)
    strategy = start(grid)
    train_round(strategy, grid, 1)
    train_round(strategy, grid, 2)
    assert strategy.noisy == frozenset()
    messages, _, _ = train_round(strategy, grid, 3)
    assert {m.metadata.message_type for m in messages} == {"train"}


def test_aggregation_is_the_per_tensor_geometric_median():
    grid = DetectionGrid()
    strategy = start(grid, warmup_rounds=5)
    _, replies, arrays = train_round(strategy, grid, 1)
    models = [[a.numpy() for a in r.content["arrays"].values()] for r in replies]
    expected = geometric_median_per_tensor(models)
    result = [a.numpy() for a in arrays.values()]
    for got, want in zip(result, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert result[1].dtype == np.int64  # integer buffers stay integers


@pytest.mark.parametrize("name", ["fedexp", "median-torch", "krum-fnbench", "trimmedmean-fnbench"])
def test_rule_strategies_aggregate_with_their_pure_function(name):
    from strategies import aggregation

    config = config_with(strategy=name, clients_per_round=NUM_CLIENTS, compromised_rate=0.3)
    strategy = build_strategy(config, ROSTER)
    messages, replies, arrays = train_round(strategy, DetectionGrid(), 1)
    assert all(m.content["config"]["local-loss"] == "ce" for m in messages)
    replies.sort(key=lambda r: ROSTER.partition_of(r.metadata.src_node_id))  # as aggregated
    models = [[a.numpy() for a in r.content["arrays"].values()] for r in replies]
    start = [np.zeros(4, dtype=np.float32), np.array(0)]  # the round's global model
    expected = {
        "fedexp": lambda: aggregation.fedexp(start, models, [50] * NUM_CLIENTS)[0],
        "median-torch": lambda: aggregation.coordinate_lower_median(models),
        "krum-fnbench": lambda: aggregation.krum_fnbench(models)[0],
        "trimmedmean-fnbench": lambda: aggregation.trimmed_mean_fnbench(models, 2)[0],
    }[name]()
    for got, want in zip([a.numpy() for a in arrays.values()], expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_kd_weight_ramps_up_from_the_warmup_to_the_last_round():
    from strategies.maskedoptim import kd_weight_rampup

    # FNBench: begin = T_w = 20, end = T = 120, rounds counted from 0 (our round 21 is its 20).
    assert kd_weight_rampup(21, 20, 120, 0.8) == pytest.approx(0.8 * np.exp(-5))
    assert kd_weight_rampup(5, 20, 120, 0.8) == pytest.approx(0.8 * np.exp(-5))
    assert kd_weight_rampup(71, 20, 120, 0.8) == pytest.approx(0.8 * np.exp(-5 * 0.25))
    assert kd_weight_rampup(121, 20, 120, 0.8) == pytest.approx(0.8)


@pytest.mark.parametrize("name", ["fedelc", "fednoro"])
def test_fedelc_and_fednoro_route_noisy_clients_and_aggregate_by_distance(name):
    from strategies import aggregation

    grid = DetectionGrid()
    config = config_with(
        strategy=name, clients_per_round=NUM_CLIENTS, baseline_warmup_rounds=1, num_rounds=5
    )
    strategy = build_strategy(config, ROSTER)
    messages, replies, arrays = train_round(strategy, grid, 1)  # warm-up: FedAvg
    models = [[a.numpy() for a in r.content["arrays"].values()] for r in replies]
    np.testing.assert_allclose(
        arrays["0"].numpy(), aggregation.weighted_mean(models, [50] * NUM_CLIENTS)[0]
    )
    assert strategy.noisy == frozenset(NOISY)  # detection after round 1

    messages, replies, arrays = train_round(strategy, grid, 2)
    noisy = [m for m in messages if ROSTER.partition_of(m.metadata.dst_node_id) in NOISY]
    clean = [m for m in messages if m not in noisy]
    assert all(m.content["config"]["local-loss"] == "logit-adjusted" for m in clean)
    assert {m.metadata.message_type for m in clean} == {"train"}
    if name == "fedelc":
        assert {m.metadata.message_type for m in noisy} == {"train.masked"}
        assert all(m.content["config"]["mask-keep"] == 1.0 for m in noisy)
        assert all(m.content["config"]["premerge-local-weight"] == 1.0 for m in noisy)
        assert all(m.content["config"]["entropy-weight"] == 0.2 for m in noisy)
    else:
        assert {m.metadata.message_type for m in noisy} == {"train"}
        assert all(m.content["config"]["local-loss"] == "la-distill" for m in noisy)
        assert all(0 < m.content["config"]["kd-weight"] < 0.8 for m in noisy)
        # clean clients keep the round's settings: the shared record is untouched
        assert all(m.content["config"]["kd-weight"] == 0.0 for m in clean)
        assert all(m.content["config"]["local-loss"] == "logit-adjusted" for m in clean)
    replies.sort(key=lambda r: ROSTER.partition_of(r.metadata.src_node_id))
    models = [[a.numpy() for a in r.content["arrays"].values()] for r in replies]
    flags = [ROSTER.partition_of(r.metadata.src_node_id) in NOISY for r in replies]
    weights = aggregation.distance_aware_weights(models, [50] * NUM_CLIENTS, flags)
    expected = aggregation.weighted_mean(models, weights)
    np.testing.assert_allclose(arrays["0"].numpy(), expected[0], rtol=1e-6)
    assert strategy.final_report()["label_correction"] == (
        {} if name == "fednoro" else strategy.labels.metrics()
    )


WEAK_MODEL_VARIANT = dict(
    noisy_detector="robust-score", noisy_components=3, noisy_training="la-distill",
    distill_relabel_below=0.05, mild_training="down-weight", mild_weight=0.75,
    strong_model_agreement=0.8,
)  # fmt: skip
THREE_LEVELS = {0: 0.3, 1: 0.3, 2: 0.3, 3: 1.0, 4: 1.0, 5: 2.5, 6: 2.5, 7: 0.3}


def test_a_strong_model_sends_the_run_back_to_the_authors_method():
    """Clean clients' labels predicted 9 times in 10 (> 0.8): the authors' split (their GMM on
    the per-class losses), masked training for every flagged client, no mild group; the
    verdict travels in the checkpoint."""
    grid = DetectionGrid(bases=THREE_LEVELS, clean_agree=9)
    strategy = start(grid, **WEAK_MODEL_VARIANT)
    train_round(strategy, grid, 1)
    train_round(strategy, grid, 2)
    assert all(q.content["config"]["agreement"] for q in grid.queries)
    assert strategy.detection["model_agreement"] == pytest.approx(0.9)  # clients 1, 2 pooled
    assert strategy.strong_model and strategy.detection["detector"] == "per-class-gmm"
    assert strategy.mild == frozenset() and strategy.detection["mild"] == []
    assert strategy.noisy == frozenset({5, 6})  # the authors' two components
    messages, _, _ = train_round(strategy, grid, 3)
    routed = {ROSTER.partition_of(m.metadata.dst_node_id): m for m in messages}
    assert {p for p, m in routed.items() if m.metadata.message_type == "train.masked"} == {5, 6}
    assert routed[3].metadata.message_type == "train"
    assert strategy.label_holders() == [5, 6]
    restored = start(DetectionGrid(), **WEAK_MODEL_VARIANT)
    restored.restore_state(strategy.checkpoint_state(), 2)
    assert restored.strong_model and restored.noisy_message_type == "train.masked"


def test_a_weak_model_keeps_the_configured_departures():
    grid = DetectionGrid(bases=THREE_LEVELS, clean_agree=5)
    strategy = start(grid, **WEAK_MODEL_VARIANT)
    train_round(strategy, grid, 1)
    train_round(strategy, grid, 2)
    assert strategy.detection["model_agreement"] == pytest.approx(0.5)
    assert not strategy.strong_model and strategy.detection["detector"] == "robust-score"
    assert strategy.noisy == frozenset({3, 4, 5, 6}) and strategy.mild == frozenset({3, 4})
    messages, _, _ = train_round(strategy, grid, 3)
    config = {ROSTER.partition_of(m.metadata.dst_node_id): m.content["config"] for m in messages}
    assert {m.metadata.message_type for m in messages} == {"train"}
    assert config[5]["local-loss"] == "la-distill" and config[3]["local-loss"] == "logit-adjusted"
    assert strategy.label_holders() == [5, 6]  # the mild clients train as clean: no labels
    assert set(strategy.masked_sent) == {5, 6}  # and are not counted as routed
