"""Every strategy, fed uploads of a small model with BatchNorm: it keeps every tensor's shape and
dtype (0-d buffers included) and drops uploads holding NaN or inf (issue: trustworthy runs).

No Flower runtime: the strategies' configure_train / aggregate_train are called directly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from common.config import config_with
from strategies.registry import STRATEGY_NAMES, build_strategy
from strategies.sampling import roster_from_whoami

NUM_CLIENTS = 10
ROSTER = roster_from_whoami(
    {
        100 + p: {
            "partition-id": p,
            "num-partitions": NUM_CLIENTS,
            "num-examples": 40 + p,
            "true-noise-rate": 0.0,
        }
        for p in range(NUM_CLIENTS)
    }
)
# Warm-ups of 5 rounds and FedCorr iterations of 4 rounds (every client once, 3 per round):
# two rounds need no client query.
SETTINGS = {
    "clients_per_round": 5,
    "num_rounds": 10,
    "warmup_rounds": 5,
    "baseline_warmup_rounds": 5,
    "compromised_rate": 0.1,
    "fedcorr_iterations": 1,
    "fedcorr_finetune_rounds": 1,
    "label_warmup_rounds": 5,
    "robustfl_pseudo_rounds": 5,
    "disagreement_start_round": 5,
}


@pytest.fixture(autouse=True)
def _flower_task(flower_task):
    """Every test here builds Messages (conftest.flower_task)."""


class Grid:
    def get_node_ids(self):
        return list(ROSTER.node_of_partition.values())


def small_model_state() -> dict[str, torch.Tensor]:
    """A linear layer and BatchNorm: float32 weights, float32 running stats, 0-d int64
    num_batches_tracked."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    return model.state_dict()


def replies_to(messages, server_round: int, poisoned: frozenset[int] = frozenset()):
    """A reply per message: the received model plus a small step (num_batches_tracked + 2);
    the partitions in `poisoned` upload NaN and inf in their first weight."""
    replies = []
    for message in messages:
        partition = ROSTER.partition_of(message.metadata.dst_node_id)
        state = message.content["arrays"].to_torch_state_dict()
        rng = np.random.default_rng(100 * server_round + partition)
        upload = {}
        for key, tensor in state.items():
            if tensor.is_floating_point():
                step = torch.as_tensor(rng.normal(0, 0.01, tuple(tensor.shape)), dtype=tensor.dtype)
                upload[key] = tensor + step
            else:
                upload[key] = tensor + 2
        if partition in poisoned:
            first = next(iter(upload))
            upload[first] = upload[first].clone()
            upload[first].view(-1)[0] = float("nan")
            upload[first].view(-1)[1] = float("inf")
        metrics = {"num-examples": 40 + partition, "train-loss": 0.5, "train-seconds": 0.1}
        if message.metadata.message_type == "train.corr":
            metrics["lid"] = 1.0 + partition / 10
        content = RecordDict({"arrays": ArrayRecord(upload), "metrics": MetricRecord(metrics)})
        replies.append(Message(content, reply_to=message))
    return replies


def run_rounds(name: str, rounds: int, poison_first: int = 0, **changes):
    """(strategy, global arrays after each round) for `rounds` rounds of `name`."""
    per_round = {"clients_per_round": 3} if name == "fedcorr" else {}
    config = config_with(strategy=name, **SETTINGS | per_round | changes)
    strategy = build_strategy(config, ROSTER)
    arrays = ArrayRecord(small_model_state())
    if getattr(strategy, "needs_peer_model", False):  # as the ServerApp does
        strategy.peer_model = {k: a.numpy() for k, a in arrays.items()}
    history = []
    for server_round in range(1, rounds + 1):
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), Grid()))
        sampled = [ROSTER.partition_of(m.metadata.dst_node_id) for m in messages]
        poisoned = frozenset(sampled[:poison_first])
        new, _ = strategy.aggregate_train(
            server_round, replies_to(messages, server_round, poisoned)
        )
        arrays = new if new is not None else arrays
        history.append(new)
    return strategy, history


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_every_strategy_keeps_every_tensors_shape_and_dtype(name):
    reference = small_model_state()
    _, history = run_rounds(name, rounds=2)
    for arrays in history:
        state = arrays.to_torch_state_dict()
        assert list(state) == list(reference)
        for key, tensor in reference.items():
            assert state[key].shape == tensor.shape, (key, state[key].shape)
            assert state[key].dtype == tensor.dtype, (key, state[key].dtype)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_every_strategy_drops_uploads_holding_nan_or_inf(name):
    strategy, history = run_rounds(name, rounds=2, poison_first=2)
    assert len(strategy.last_nonfinite) == 2
    assert strategy.last_uploads == strategy.clients_per_round
    for arrays in history:
        for array in arrays.values():
            assert np.isfinite(array.numpy()).all()
    assert np.isfinite(strategy.last_train_metrics["train-loss"])


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_a_round_without_a_finite_upload_keeps_the_previous_model(name):
    strategy, history = run_rounds(name, rounds=1, poison_first=5)
    assert history == [None]  # Flower's loop keeps the previous global model
    assert len(strategy.last_nonfinite) == strategy.clients_per_round
    assert strategy.last_train_metrics is None


@pytest.mark.parametrize("attack", ["ipm", "alie"])
def test_server_side_attacks_replace_the_attackers_uploads(attack):
    """ALIE and IPM are simulated at the server: under FedAvg the new global model is the
    sample-weighted mean of the honest uploads and the attack computed from their updates
    (common.attacks.mimic_honest), BatchNorm statistics and integers left honest."""
    from common.attacks import mimic_honest

    config = config_with(strategy="fedavg", attack=attack, attack_fraction=0.3, **SETTINGS)
    strategy = build_strategy(config, ROSTER)
    current = ArrayRecord(small_model_state())
    messages = list(strategy.configure_train(1, current, ConfigRecord(), Grid()))
    replies = replies_to(messages, 1)
    partitions = [ROSTER.partition_of(m.metadata.dst_node_id) for m in messages]
    honest_uploads = {
        p: {k: a.numpy().copy() for k, a in r.content["arrays"].items()}
        for p, r in zip(partitions, replies, strict=True)
        if p not in strategy.attack.attackers
    }
    bad = [p for p in partitions if p in strategy.attack.attackers]
    assert bad, "the test needs an attacker among the sampled clients"
    new, _ = strategy.aggregate_train(1, replies)
    assert strategy.last_attackers == len(bad)
    base = {k: a.numpy() for k, a in current.items()}
    weights = {p: 40 + p for p in partitions}
    total = sum(weights.values())
    for key in ("0.weight", "0.bias", "1.weight"):
        honest = [u[key].astype(np.float64) - base[key] for u in honest_uploads.values()]
        forged = base[key] + mimic_honest(strategy.attack, honest, len(partitions), len(bad))
        expected = sum(weights[p] * honest_uploads[p][key] for p in honest_uploads)
        expected = (expected + sum(weights[p] for p in bad) * forged) / total
        assert new[key].numpy() == pytest.approx(expected, abs=1e-6), key


def test_without_an_attack_no_upload_is_counted_as_an_attacker():
    strategy, _ = run_rounds("fedavg", rounds=1)
    assert strategy.last_attackers == 0 and strategy.attack.attack == "none"


def test_coteaching_averages_the_second_networks_and_sends_them_back():
    from common.protocol import PEER_ARRAYS

    strategy = build_strategy(config_with(strategy="coteaching", **SETTINGS), ROSTER)
    arrays = ArrayRecord(small_model_state())
    strategy.peer_model = {k: a.numpy() for k, a in arrays.items()}  # as the ServerApp does
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), Grid()))
    assert all(PEER_ARRAYS in m.content for m in messages)
    replies = replies_to(messages, 1)
    peers = {}
    for reply in replies:
        partition = ROSTER.partition_of(reply.metadata.src_node_id)
        peer = {k: np.full(a.numpy().shape, partition, a.numpy().dtype)
                for k, a in reply.content["arrays"].items()}  # fmt: skip
        peers[partition] = peer
        reply.content[PEER_ARRAYS] = ArrayRecord(array_dict={k: Array(v) for k, v in peer.items()})
    new, _ = strategy.aggregate_train(1, replies)
    assert set(new.keys()) == set(arrays.keys())  # the global model holds the first network only
    weights = {p: 40 + p for p in peers}
    expected = sum(weights[p] * p for p in peers) / sum(weights.values())
    assert strategy.peer_model["0.weight"] == pytest.approx(np.full((3, 4), expected))
    again = list(strategy.configure_train(2, new, ConfigRecord(), Grid()))
    sent = again[0].content[PEER_ARRAYS]["0.weight"].numpy()
    assert sent == pytest.approx(np.full((3, 4), expected))
    assert again[0].metadata.message_type == "train.coteach"


def test_robustfl_sends_the_centroids_its_clients_uploaded():
    from common.protocol import CENTROIDS

    strategy = build_strategy(config_with(strategy="robustfl", **SETTINGS), ROSTER)
    arrays = ArrayRecord(small_model_state())
    first = list(strategy.configure_train(1, arrays, ConfigRecord(), Grid()))
    assert all(CENTROIDS not in m.content for m in first)  # none yet: clients use their own
    assert first[0].metadata.message_type == "train.robustfl"
    replies = replies_to(first, 1)
    for reply in replies:
        partition = ROSTER.partition_of(reply.metadata.src_node_id)
        centroids = np.full((2, 3), float(partition), dtype=np.float32)
        reply.content[CENTROIDS] = ArrayRecord(array_dict={CENTROIDS: Array(centroids)})
    new, _ = strategy.aggregate_train(1, replies)
    assert set(new.keys()) == set(arrays.keys())
    # round 1: the non-zero rows averaged by sample count (partition 0's rows are zeros)
    held = [ROSTER.partition_of(r.metadata.src_node_id) for r in replies]
    held = [p for p in held if p != 0]
    expected = sum((40 + p) * p for p in held) / sum(40 + p for p in held)
    assert strategy.centroids == pytest.approx(np.full((2, 3), expected))
    again = list(strategy.configure_train(2, new, ConfigRecord(), Grid()))
    assert again[0].content[CENTROIDS][CENTROIDS].numpy() == pytest.approx(strategy.centroids)
    state = strategy.checkpoint_state()
    assert state["centroids"] is strategy.centroids  # the checkpoint carries them


def test_fedrn_sends_previous_and_neighbour_models_after_the_warm_up():
    from common.protocol import FEDRN_REPORT, NEIGHBOUR_ARRAYS, PREVIOUS_ARRAYS

    config = config_with(strategy="fedrn", **SETTINGS | {"label_warmup_rounds": 1})
    strategy = build_strategy(config, ROSTER)
    arrays = ArrayRecord(small_model_state())
    first = list(strategy.configure_train(1, arrays, ConfigRecord(), Grid()))
    assert first[0].metadata.message_type == "train.fedrn"
    assert all(len(m.content.array_records) == 1 for m in first)  # the warm-up: global only
    assert not first[0].content["config"]["selecting"]
    replies = replies_to(first, 1)
    trained = []
    for reply in replies:
        partition = ROSTER.partition_of(reply.metadata.src_node_id)
        trained.append(partition)
        report = {"expertise": partition / 10, "probe-output": [1.0, float(partition)]}
        reply.content[FEDRN_REPORT] = ConfigRecord(report)
    new, _ = strategy.aggregate_train(1, replies)
    assert sorted(strategy.local_models) == sorted(trained)
    assert strategy.expertise == {p: p / 10 for p in trained}
    second = list(strategy.configure_train(2, new, ConfigRecord(), Grid()))
    for message in second:
        partition = ROSTER.partition_of(message.metadata.dst_node_id)
        config = message.content["config"]
        assert config["selecting"]
        assert (PREVIOUS_ARRAYS in message.content) == (partition in trained)
        assert config["has-previous"] == (partition in trained)
        assert f"{NEIGHBOUR_ARRAYS}-0" in message.content
        assert len(config["scores"]) == 1 + int(partition in trained)
        neighbour = message.content[f"{NEIGHBOUR_ARRAYS}-0"]["0.weight"].numpy()
        recorded = [strategy.local_models[p]["0.weight"] for p in trained if p != partition]
        assert any(np.array_equal(neighbour, model) for model in recorded)
    assert set(strategy.checkpoint_state()) == {"local_models", "expertise", "probes"}


def test_dividemix_sends_its_second_network_with_its_settings():
    from common.protocol import PEER_ARRAYS

    config = config_with(strategy="dividemix", **SETTINGS | {"label_warmup_rounds": 1})
    strategy, history = run_rounds("dividemix", 2, label_warmup_rounds=1)
    assert all(model is not None for model in history)
    messages = list(strategy.configure_train(3, history[-1], ConfigRecord(), Grid()))
    assert messages[0].metadata.message_type == "train.dividemix"
    assert all(PEER_ARRAYS in m.content for m in messages)
    assert not messages[0].content["config"]["warm"]  # 0-based round 2 > warm-up of 1
    assert build_strategy(config, ROSTER).round_settings(2).warm


def test_feddiv_aggregates_the_clients_filters_and_sends_the_global_one():
    from common.protocol import FEDDIV_REPORT

    config = config_with(strategy="feddiv", **SETTINGS | {"baseline_warmup_rounds": 1})
    strategy = build_strategy(config, ROSTER)
    arrays = ArrayRecord(small_model_state())
    first = list(strategy.configure_train(1, arrays, ConfigRecord(), Grid()))
    assert first[0].metadata.message_type == "train.feddiv"
    assert first[0].content["config"]["warm"] and first[0].content["config"]["filter-means"] == []
    replies = replies_to(first, 1)
    sizes = {}
    for reply in replies:
        partition = ROSTER.partition_of(reply.metadata.src_node_id)
        sizes[partition] = 40 + partition
        local = {"means": [0.1, 0.5 + partition / 100], "variances": [0.01, 0.02],
                 "weights": [0.7, 0.3]}  # fmt: skip
        reply.content[FEDDIV_REPORT] = ConfigRecord(local)
    new, _ = strategy.aggregate_train(1, replies)
    total = sum(sizes.values())
    expected_high = sum(n / total * (0.5 + p / 100) for p, n in sizes.items())
    assert strategy.global_filter[0] == pytest.approx([0.1, expected_high])
    second = list(strategy.configure_train(2, new, ConfigRecord(), Grid()))
    config2 = second[0].content["config"]
    assert not config2["warm"]
    assert config2["filter-means"] == pytest.approx([0.1, expected_high])
    assert set(strategy.checkpoint_state()) == {"local_filters", "global_filter"}
