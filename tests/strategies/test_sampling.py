"""Tests for strategies/sampling.py and strategies/registry.py (no Flower runtime, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.error import Error
from flwr.serverapp.strategy import (
    Bulyan,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
)

from common import seeding
from common.config import ConfigError, config_with
from strategies.base import SeededStrategy
from strategies.registry import STRATEGY_NAMES, build_strategy, check_strategy_settings
from strategies.rules import FedExp, KrumFnbench, LowerMedian, TrimmedMeanFnbench
from strategies.sampling import (
    drop_lost_replies,
    ordered_without_errors,
    roster_from_whoami,
    sample_partitions,
)

NUM_CLIENTS = 20
FLOWER_CLASS = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
    "multikrum": MultiKrum,
    "bulyan": Bulyan,
}


def node_of(partition: int) -> int:
    """Node ids that sort in the opposite order to the partition ids."""
    return 9000 - 13 * partition


def whoami(num_clients: int = NUM_CLIENTS) -> dict[int, dict[str, float]]:
    return {
        node_of(p): {
            "partition-id": p,
            "num-partitions": num_clients,
            "num-examples": 30 + p,
            "true-noise-rate": p / 100,
        }
        for p in range(num_clients)
    }


ROSTER = roster_from_whoami(whoami())


class FakeGrid:
    """What the strategies need of a Grid: the connected node ids, and `whoami` answers from
    nodes that joined later (`newcomers`: node id -> answer)."""

    def __init__(self, node_ids, newcomers=None):
        self.node_ids = list(node_ids)
        self.newcomers = dict(newcomers or {})
        self.asked: list[int] = []

    def get_node_ids(self):
        return list(self.node_ids)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for message in messages:
            assert message.metadata.message_type == "query.whoami"
            node = message.metadata.dst_node_id
            self.asked.append(node)
            answer = self.newcomers[node]
            if isinstance(answer, str):  # its client raised this
                reply = Message(Error(code=2, reason=answer), reply_to=message)
            else:
                reply = Message(RecordDict({"metrics": MetricRecord(answer)}), reply_to=message)
            reply.metadata.__dict__["_src_node_id"] = node
            replies.append(reply)
        return replies


# --- sample_partitions -------------------------------------------------------------------------


def test_sample_partitions_is_a_function_of_seed_and_round():
    assert sample_partitions(1, 3, 100, 10) == sample_partitions(1, 3, 100, 10)
    rounds = {tuple(sample_partitions(1, r, 100, 10)) for r in range(1, 21)}
    assert len(rounds) == 20
    assert sample_partitions(1, 3, 100, 10) != sample_partitions(2, 3, 100, 10)


@pytest.mark.parametrize(("num_clients", "count"), [(100, 10), (10, 5), (7, 7), (3, 1)])
def test_sample_partitions_gives_distinct_sorted_ids_in_range(num_clients, count):
    for server_round in range(1, 6):
        ids = sample_partitions(4, server_round, num_clients, count)
        assert len(ids) == count
        assert ids == sorted(set(ids))
        assert all(isinstance(i, int) and 0 <= i < num_clients for i in ids)


def test_sample_partitions_all_clients_when_count_is_all():
    assert sample_partitions(1, 1, 6, 6) == list(range(6))


def test_sample_partitions_zero_count_is_empty():
    assert sample_partitions(1, 1, 10, 0) == []


def test_sample_partitions_is_uniform_over_rounds():
    rounds, num_clients, count = 2000, 10, 3
    hits = np.zeros(num_clients)
    for server_round in range(1, rounds + 1):
        hits[sample_partitions(0, server_round, num_clients, count)] += 1
    expected = rounds * count / num_clients  # 600; sd ~ 20
    assert np.all(np.abs(hits - expected) < 0.15 * expected), hits


def test_evaluation_sampling_is_its_own_stream():
    train = [sample_partitions(1, r, 100, 10) for r in range(1, 6)]
    evaluate = [
        sample_partitions(1, r, 100, 10, purpose=seeding.EVALUATE_SAMPLING) for r in range(1, 6)
    ]
    assert train != evaluate


# --- roster ------------------------------------------------------------------------------------


def test_roster_maps_nodes_and_partitions():
    roster = roster_from_whoami(whoami(5))
    assert roster.num_clients == 5
    assert roster.node_of_partition == {p: node_of(p) for p in range(5)}
    for p in range(5):
        assert roster.partition_of(node_of(p)) == p
    assert roster.node_ids([3, 0]) == [node_of(3), node_of(0)]
    assert roster.examples_of_partition == {p: 30 + p for p in range(5)}
    assert roster.true_noise_rates == {p: p / 100 for p in range(5)}


def test_roster_rejects_disagreeing_num_partitions():
    answers = whoami(4)
    answers[node_of(2)]["num-partitions"] = 5
    with pytest.raises(ValueError, match="inconsistent clients") as info:
        roster_from_whoami(answers)
    assert "4" in str(info.value) and "5" in str(info.value)


def test_roster_rejects_duplicate_partition_ids():
    answers = whoami(4)
    answers[node_of(3)]["partition-id"] = 1
    with pytest.raises(ValueError, match="inconsistent clients") as info:
        roster_from_whoami(answers)
    message = str(info.value)
    assert str(node_of(1)) in message and str(node_of(3)) in message
    assert "partition-id 1" in message


def test_roster_rejects_out_of_range_partition_ids():
    answers = whoami(4)
    answers[node_of(3)]["partition-id"] = 7
    with pytest.raises(ValueError, match="inconsistent clients") as info:
        roster_from_whoami(answers)
    assert "partition-id 7" in str(info.value)


def test_roster_names_the_missing_partitions():
    answers = whoami(6)
    del answers[node_of(1)]
    del answers[node_of(4)]
    with pytest.raises(ValueError) as info:
        roster_from_whoami(answers)
    message = str(info.value)
    assert "4 of 6" in message
    assert "[1, 4]" in message


def test_a_restarted_client_is_routed_to_its_new_node():
    roster = roster_from_whoami(whoami())
    assert roster.rejoin(777, whoami()[node_of(3)]) == 3
    assert roster.node_ids([2, 3]) == [node_of(2), 777]
    # late replies from the node it was on still name the client
    assert roster.partition_of(777) == roster.partition_of(node_of(3)) == 3
    assert roster.num_clients == NUM_CLIENTS


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("num-partitions", 21, "num-partitions 21, the federation has 20"),
        ("partition-id", 20, "partition-id 20, outside 0..19"),
        ("num-examples", 99, "claims partition-id 3 with 99 examples; that client had 33"),
    ],
)
def test_a_rejoining_node_that_does_not_fit_is_refused(key, value, message):
    roster = roster_from_whoami(whoami())
    answer = {**whoami()[node_of(3)], key: value}
    with pytest.raises(ValueError, match=message):
        roster.rejoin(777, answer)
    assert roster.node_ids([3]) == [node_of(3)]


@pytest.mark.usefixtures("flower_task")
def test_configure_train_asks_new_nodes_who_they_are_and_trains_them():
    config = config_with()
    roster = roster_from_whoami(whoami())
    strategy = build_strategy(config, roster)
    restarted = sample_partitions(config.seed, 2, NUM_CLIENTS, config.clients_sampled(NUM_CLIENTS))[
        0
    ]
    nodes = [n for n in roster.node_of_partition.values() if n != node_of(restarted)]
    grid = FakeGrid([*nodes, 4242], newcomers={4242: whoami()[node_of(restarted)]})
    messages = list(strategy.configure_train(2, ArrayRecord(), ConfigRecord(), grid))
    assert grid.asked == [4242]  # only the node it did not know
    assert 4242 in {m.metadata.dst_node_id for m in messages}
    assert node_of(restarted) not in {m.metadata.dst_node_id for m in messages}
    list(strategy.configure_train(3, ArrayRecord(), ConfigRecord(), grid))
    assert grid.asked == [4242]  # known from then on


@pytest.mark.usefixtures("flower_task")
def test_a_node_that_joins_and_cannot_be_placed_is_left_out():
    roster = roster_from_whoami(whoami())
    strategy = build_strategy(config_with(), roster)
    misfit = {**whoami()[node_of(2)], "num-partitions": 7}
    grid = FakeGrid(
        [*roster.node_of_partition.values(), 51, 52],
        newcomers={51: misfit, 52: "FileNotFoundError: /data/cifar10"},
    )
    messages = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid))
    assert sorted(grid.asked) == [51, 52]
    assert not {51, 52} & {m.metadata.dst_node_id for m in messages}
    assert roster.node_ids([2]) == [node_of(2)]
    list(strategy.configure_train(2, ArrayRecord(), ConfigRecord(), grid))
    assert sorted(grid.asked) == [51, 52]  # not asked again


def test_roster_rejects_no_answers():
    with pytest.raises(ValueError, match="no client answered"):
        roster_from_whoami({})


# --- registry ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_every_strategy_name_is_built_with_seeded_sampling(name):
    strategy = build_strategy(config_with(strategy=name, clients_per_round=10), ROSTER)
    assert isinstance(strategy, SeededStrategy) and isinstance(strategy, FedAvg)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_every_strategy_declares_itself_once_with_single_inheritance(name):
    cls = type(build_strategy(config_with(strategy=name, clients_per_round=10), ROSTER))
    assert name in cls.names and cls.description
    for klass in cls.__mro__[: cls.__mro__.index(SeededStrategy)]:
        assert len(klass.__bases__) == 1, klass  # one parent all the way to the base


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("median-torch", LowerMedian()),
        ("krum-fnbench", KrumFnbench()),
        ("trimmedmean-fnbench", TrimmedMeanFnbench(0.3)),
        ("fedexp", FedExp()),
    ],
)
def test_the_authors_aggregation_baselines_get_their_rule(name, rule):
    config = config_with(strategy=name, clients_per_round=10, compromised_rate=0.3)
    strategy = build_strategy(config, ROSTER)
    assert strategy.rule == rule and strategy.local_loss == "ce"


def test_trimmedmean_fnbench_must_keep_a_model():
    config = config_with(strategy="trimmedmean-fnbench", clients_per_round=4, compromised_rate=0.5)
    with pytest.raises(ConfigError, match="keeps none"):
        build_strategy(config, ROSTER)


@pytest.mark.parametrize("name", ["maskedoptim", "rfa"])
def test_geometric_median_strategies_are_seeded_and_configured(name):
    config = config_with(strategy=name, clients_per_round=10, gm_scope="whole-model", gm_max_iter=7)
    strategy = build_strategy(config, ROSTER)
    assert isinstance(strategy, SeededStrategy) and isinstance(strategy, FedAvg)
    assert strategy.rule.scope == "whole-model" and strategy.rule.max_iter == 7
    assert strategy.local_loss == ("logit-adjusted" if name == "maskedoptim" else "ce")
    assert strategy.clients_per_round == 10


@pytest.mark.parametrize("name", list(FLOWER_CLASS))
def test_build_strategy_gives_the_matching_flower_class(name):
    config = config_with(strategy=name, clients_per_round=10, compromised_rate=0.1)
    strategy = build_strategy(config, ROSTER)
    assert type(strategy.flower) is FLOWER_CLASS[name]  # Flower's own class does the round
    assert strategy.clients_per_round == config.clients_sampled(NUM_CLIENTS) == 10
    assert strategy.seed == config.seed
    assert strategy.roster is ROSTER


def test_build_strategy_passes_the_strategy_settings():
    prox = build_strategy(config_with(strategy="fedprox", proximal_mu=0.37), ROSTER)
    assert prox.flower.proximal_mu == 0.37
    trimmed = build_strategy(config_with(strategy="fedtrimmedavg", trimmed_beta=0.3), ROSTER)
    assert trimmed.flower.beta == 0.3
    # f = int(clients-per-round * compromised-rate) = int(12 * 0.2) = 2
    for name in ("krum", "multikrum", "bulyan"):
        robust = build_strategy(
            config_with(strategy=name, clients_per_round=12, compromised_rate=0.2), ROSTER
        )
        assert robust.flower.num_malicious_nodes == 2
    multikrum = build_strategy(
        config_with(strategy="multikrum", clients_per_round=12, compromised_rate=0.2), ROSTER
    )
    assert multikrum.flower.num_nodes_to_select == 10


def test_build_strategy_ten_percent_when_clients_per_round_is_zero():
    strategy = build_strategy(config_with(clients_per_round=0), ROSTER)
    assert strategy.clients_per_round == 2


def test_build_strategy_evaluate_clients_from_fraction():
    assert build_strategy(config_with(fraction_evaluate=0.25), ROSTER).evaluate_clients == 5
    assert build_strategy(config_with(fraction_evaluate=0.0), ROSTER).evaluate_clients == 0


def test_bulyan_needs_enough_clients():
    config = config_with(strategy="bulyan", clients_per_round=10, compromised_rate=0.2)
    with pytest.raises(ConfigError) as info:
        check_strategy_settings(config, NUM_CLIENTS)
    message = str(info.value)
    assert "bulyan" in message
    assert "4*f + 3" in message
    assert "= 2" in message  # f
    assert "got 10" in message
    with pytest.raises(ConfigError):
        build_strategy(config, ROSTER)


def test_bulyan_accepts_exactly_4f_plus_3():
    config = config_with(strategy="bulyan", clients_per_round=11, compromised_rate=0.2)
    check_strategy_settings(config, NUM_CLIENTS)  # f = 2, 11 = 4*2 + 3


def test_krum_needs_enough_clients():
    config = config_with(strategy="krum", clients_per_round=4, compromised_rate=0.5)
    with pytest.raises(
        ConfigError, match="krum and multikrum need clients-per-round >= 2\\*f \\+ 3"
    ) as info:
        check_strategy_settings(config, NUM_CLIENTS)
    # rate 0.5 leaves no clients-per-round that works, only a lower rate: f = 0 with 4 clients
    assert str(info.value).endswith("Set compromised-rate=0.249 or lower")


def test_robust_rules_name_both_ways_out_and_both_work():
    config = config_with(strategy="multikrum", clients_per_round=4, compromised_rate=0.3)
    with pytest.raises(ConfigError) as info:
        check_strategy_settings(config, NUM_CLIENTS)  # f = 1 needs 5 clients
    assert str(info.value).endswith(
        "Set compromised-rate=0.249 or lower or set clients-per-round=5 or more"
    )
    check_strategy_settings(
        config_with(strategy="multikrum", clients_per_round=5, compromised_rate=0.3), NUM_CLIENTS
    )
    check_strategy_settings(
        config_with(strategy="multikrum", clients_per_round=4, compromised_rate=0.0), NUM_CLIENTS
    )
    bulyan = config_with(strategy="bulyan", clients_per_round=10, compromised_rate=0.2)
    with pytest.raises(
        ConfigError, match="compromised-rate=0.199 or lower or set clients-per-round=11 or more"
    ):
        check_strategy_settings(bulyan, NUM_CLIENTS)
    # the paper presets' rate: no m makes 4 * int(0.3 m) + 3 <= m, only a lower rate works
    with pytest.raises(ConfigError) as info:
        check_strategy_settings(
            config_with(strategy="bulyan", clients_per_round=10, compromised_rate=0.3), NUM_CLIENTS
        )
    assert str(info.value).endswith("Set compromised-rate=0.199 or lower")
    # each way out passes, and a rate one step above the largest does not
    cases = (
        ("krum", 7, 0.428, True), ("krum", 7, 0.429, False), ("bulyan", 10, 0.199, True),
        ("multikrum", 4, 0.249, True), ("bulyan", 11, 0.272, True), ("bulyan", 11, 0.273, False),
    )  # fmt: skip
    for name, per_round, rate, ok in cases:
        config = config_with(strategy=name, clients_per_round=per_round, compromised_rate=rate)
        if ok:
            check_strategy_settings(config, NUM_CLIENTS)
        else:
            with pytest.raises(ConfigError):
                check_strategy_settings(config, NUM_CLIENTS)
    # two clients a round and a rate no count can carry: both must change
    with pytest.raises(ConfigError) as info:
        check_strategy_settings(
            config_with(strategy="krum", clients_per_round=2, compromised_rate=0.5), NUM_CLIENTS
        )
    assert str(info.value).endswith("Set clients-per-round=3 and compromised-rate=0.333 or lower")


def test_too_many_clients_per_round_for_the_roster():
    with pytest.raises(ConfigError, match="clients-per-round=30"):
        build_strategy(config_with(clients_per_round=30), ROSTER)


# --- seeded configure_train --------------------------------------------------------------------


def train_messages(name: str, server_round: int = 1, **config):
    strategy = build_strategy(config_with(strategy=name, **config), ROSTER)
    grid = FakeGrid(ROSTER.node_of_partition.values())
    return strategy, list(
        strategy.configure_train(server_round, ArrayRecord(), ConfigRecord(), grid)
    )


@pytest.mark.usefixtures("flower_task")
@pytest.mark.parametrize("server_round", [1, 2, 7])
def test_configure_train_sends_to_the_seeded_sample(server_round):
    config = config_with()
    m = config.clients_sampled(NUM_CLIENTS)
    expected = set(ROSTER.node_ids(sample_partitions(config.seed, server_round, NUM_CLIENTS, m)))
    _, avg = train_messages("fedavg", server_round)
    _, median = train_messages("fedmedian", server_round)
    assert len(avg) == m
    assert {msg.metadata.dst_node_id for msg in avg} == expected
    assert {msg.metadata.dst_node_id for msg in median} == expected
    for msg in avg + median:
        assert msg.metadata.message_type == "train"
        assert msg.content["config"]["server-round"] == server_round


@pytest.mark.usefixtures("flower_task")
def test_configure_train_sample_changes_with_seed_and_round():
    _, first = train_messages("fedavg", 1, seed=1)
    _, second = train_messages("fedavg", 2, seed=1)
    _, other_seed = train_messages("fedavg", 1, seed=2)
    nodes = [{msg.metadata.dst_node_id for msg in msgs} for msgs in (first, second, other_seed)]
    assert nodes[0] != nodes[1]
    assert nodes[0] != nodes[2]


@pytest.mark.usefixtures("flower_task")
def test_configure_train_records_the_sampled_partitions():
    strategy, messages = train_messages("fedavg", 4)  # clients-per-round=0.5 of 20
    assert strategy.last_sampled == sample_partitions(1, 4, NUM_CLIENTS, 10)
    assert sorted(ROSTER.partition_of(m.metadata.dst_node_id) for m in messages) == (
        strategy.last_sampled
    )


@pytest.mark.usefixtures("flower_task")
def test_fedprox_sends_proximal_mu():
    _, messages = train_messages("fedprox", 1, proximal_mu=0.25)
    assert all(m.content["config"]["proximal-mu"] == 0.25 for m in messages)
    _, plain = train_messages("fedavg", 1)
    assert all(m.content["config"]["proximal-mu"] == 0.0 for m in plain)  # complete settings


@pytest.mark.usefixtures("flower_task")
def test_configure_evaluate_uses_its_own_seeded_sample():
    config = config_with(fraction_evaluate=0.25)
    strategy = build_strategy(config, ROSTER)
    grid = FakeGrid(ROSTER.node_of_partition.values())
    messages = list(strategy.configure_evaluate(3, ArrayRecord(), ConfigRecord(), grid))
    expected = sample_partitions(config.seed, 3, NUM_CLIENTS, 5, purpose=seeding.EVALUATE_SAMPLING)
    assert {m.metadata.dst_node_id for m in messages} == set(ROSTER.node_ids(expected))
    assert all(m.metadata.message_type == "evaluate" for m in messages)
    none = build_strategy(config_with(fraction_evaluate=0.0), ROSTER)
    assert list(none.configure_evaluate(3, ArrayRecord(), ConfigRecord(), grid)) == []


# --- aggregation -------------------------------------------------------------------------------


def train_replies(messages, seed: int = 0):
    """One successful reply per instruction, with weights whose float32 sum depends on order."""
    rng = np.random.default_rng(seed)
    replies = []
    for msg in messages:
        partition = ROSTER.partition_of(msg.metadata.dst_node_id)
        values = rng.standard_normal(500) * 10.0 ** rng.integers(-6, 7, 500)
        content = RecordDict(
            {
                "arrays": ArrayRecord([values.astype(np.float32)]),
                "metrics": MetricRecord(
                    {"num-examples": 30 + partition, "train-loss": 0.1 * partition}
                ),
            }
        )
        replies.append(Message(content, reply_to=msg))
    return replies


@pytest.mark.usefixtures("flower_task")
def test_aggregate_train_is_independent_of_reply_order():
    strategy, messages = train_messages("fedavg", 1, clients_per_round=8)
    replies = train_replies(messages)
    first, metrics = strategy.aggregate_train(1, replies)
    second, _ = strategy.aggregate_train(1, list(reversed(replies)))
    third, last_metrics = strategy.aggregate_train(1, replies[3:] + replies[:3])
    a = first.to_numpy_ndarrays()[0]
    assert np.array_equal(a, second.to_numpy_ndarrays()[0])
    assert np.array_equal(a, third.to_numpy_ndarrays()[0])
    assert metrics["train-loss"] == last_metrics["train-loss"]
    assert strategy.last_train_metrics is last_metrics


@pytest.mark.usefixtures("flower_task")
def test_aggregate_train_is_the_weighted_mean():
    strategy, messages = train_messages("fedavg", 1)
    replies = train_replies(messages)
    arrays, _ = strategy.aggregate_train(1, replies)
    weights, values = [], []
    for reply in replies:
        weights.append(reply.content["metrics"]["num-examples"])
        values.append(reply.content["arrays"].to_numpy_ndarrays()[0].astype(np.float64))
    expected = np.average(np.stack(values), axis=0, weights=weights)
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], expected, rtol=1e-4, atol=1e-3)


@pytest.mark.usefixtures("flower_task")
def test_aggregate_train_fails_loudly_on_a_client_error():
    strategy, messages = train_messages("fedavg", 1)
    replies = train_replies(messages)
    failing = messages[2]
    replies[2] = Message(Error(code=0, reason="CUDA out of memory"), reply_to=failing)
    partition = ROSTER.partition_of(failing.metadata.dst_node_id)
    with pytest.raises(RuntimeError) as info:
        strategy.aggregate_train(1, replies)
    message = str(info.value)
    assert f"partition {partition}: CUDA out of memory" in message
    assert "round 1 training" in message


@pytest.mark.usefixtures("flower_task")
def test_aggregate_train_fails_without_replies():
    strategy, _ = train_messages("fedavg", 1)
    with pytest.raises(RuntimeError, match="no client replied in round 1 training"):
        strategy.aggregate_train(1, [])


class StubMessage:
    def __init__(self, node: int, reason: str | None = None):
        self.metadata = type("Metadata", (), {"src_node_id": node})()
        self.error = type("Error", (), {"reason": reason})()
        self._failed = reason is not None

    def has_error(self) -> bool:
        return self._failed


def testordered_without_errors_sorts_by_partition_id():
    replies = [StubMessage(node_of(p)) for p in (4, 0, 9, 2)]
    ordered = ordered_without_errors(replies, ROSTER, "test")
    assert [ROSTER.partition_of(m.metadata.src_node_id) for m in ordered] == [0, 2, 4, 9]


def testordered_without_errors_allows_none_for_evaluation():
    assert ordered_without_errors([], ROSTER, "evaluation", allow_none=True) == []
    with pytest.raises(RuntimeError, match="no client replied"):
        ordered_without_errors([], ROSTER, "training")


def test_replies_the_superlink_made_for_offline_nodes_are_left_out():
    lost = StubMessage(1, "SuperNode is not online")  # SUPERLINK_NODE_ID
    failed = StubMessage(node_of(6), "disk full")
    replies = [StubMessage(node_of(1)), lost, failed]
    assert drop_lost_replies(replies, "x") == [replies[0], failed]
    ordered = ordered_without_errors([replies[0], lost], ROSTER, "x")
    assert [m.metadata.src_node_id for m in ordered] == [node_of(1)]


def testordered_without_errors_names_failed_partitions():
    replies = [StubMessage(node_of(1)), StubMessage(node_of(6), "disk full")]
    with pytest.raises(RuntimeError, match="1 client\\(s\\) failed in x: partition 6: disk full"):
        ordered_without_errors(replies, ROSTER, "x")


@pytest.mark.parametrize(
    ("strategy", "key", "latest"),
    [
        ("joint-optim", "label_warmup_rounds", 9),
        ("selfie", "label_warmup_rounds", 9),
        ("fedrn", "label_warmup_rounds", 9),
        ("dividemix", "label_warmup_rounds", 8),  # it warms up one round more, as FNBench
        ("feddiv", "baseline_warmup_rounds", 9),
        ("robustfl", "robustfl_pseudo_rounds", 9),
        ("coteaching-plus", "disagreement_start_round", 9),
    ],
)
def test_a_warm_up_that_leaves_no_later_round_is_refused(strategy, key, latest):
    """With 10 rounds, `latest` is the longest warm-up that leaves the method a round."""
    check_strategy_settings(config_with(strategy=strategy, num_rounds=10, **{key: latest}), 20)
    too_long = config_with(strategy=strategy, num_rounds=10, **{key: latest + 1})
    flag = key.replace("_", "-")
    with pytest.raises(ConfigError, match=f"{flag}={latest + 1} is not allowed with num-rounds=10"):
        check_strategy_settings(too_long, 20)
    # both ways out, each of which the check then lets through
    with pytest.raises(
        ConfigError, match=f"lower it below {latest + 1}, or raise num-rounds above 10"
    ):
        check_strategy_settings(too_long, 20)
    check_strategy_settings(config_with(strategy=strategy, num_rounds=11, **{key: latest + 1}), 20)
