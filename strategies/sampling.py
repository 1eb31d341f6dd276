"""Seeded client sampling over partition ids, for every strategy.

Flower's built-in sampling is an unseeded `random.sample` over node ids, and node ids are random
per run, so two strategies with the same seed would train different clients. Here the sampled
*partition ids* of round r are a function of (seed, r) alone, and the roster (learned from the
clients) turns them into node ids. Every strategy with the same seed therefore trains the same
clients in the same rounds.

In deployment a SuperNode can die and come back. A restarted insecure SuperNode registers with a
new node id, so at the start of every round the roster asks any node it does not know who it is
and routes that partition to it (`SeededSampling.refresh_roster`). A node that is gone answers
nothing; the SuperLink then replies for it with an error (after Flower's heartbeat patience), and
that client is left out of the round instead of failing the run (`drop_lost_replies`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.common.constant import SUPERLINK_NODE_ID

from common import seeding
from strategies.aggregation import cast_back, is_finite_model

WHOAMI_QUERY = "query.whoami"
REJOIN_WAIT_SECONDS = 300.0  # how long a new node may take to say who it is


def sample_partitions(
    seed: int,
    server_round: int,
    num_clients: int,
    count: int,
    purpose: int = seeding.CLIENT_SAMPLING,
) -> list[int]:
    """`count` distinct partition ids for `server_round`, uniform without replacement, sorted."""
    if count <= 0:
        return []
    rng = seeding.numpy_rng(seed, purpose, server_round)
    return sorted(int(p) for p in rng.choice(num_clients, size=count, replace=False))


@dataclass
class ClientRoster:
    """Which Flower node holds which partition (learned by asking the clients).

    `node_of_partition` is the current node of each partition; `partition_of_node` also keeps
    the nodes a partition was on before its SuperNode restarted, so that late replies from them
    still name their client.
    """

    node_of_partition: dict[int, int]
    examples_of_partition: dict[int, int]
    true_noise_rates: dict[int, float]  # simulation diagnostic, never used by an algorithm
    partition_of_node: dict[int, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.partition_of_node = {node: part for part, node in self.node_of_partition.items()}

    @property
    def num_clients(self) -> int:
        return len(self.node_of_partition)

    def partition_of(self, node_id: int) -> int:
        return self.partition_of_node[node_id]

    def node_ids(self, partitions: Iterable[int]) -> list[int]:
        return [self.node_of_partition[p] for p in partitions]

    def rejoin(self, node_id: int, answer: dict[str, float]) -> int:
        """A node that was not there at the start answered `whoami`: route its partition to it
        (a restarted SuperNode). Returns the partition. Raises ValueError when the answer does
        not fit the federation (another number of partitions, a partition id out of range, or
        another data size: a different client claiming an existing one's id)."""
        partition = int(answer["partition-id"])
        if int(answer["num-partitions"]) != self.num_clients:
            raise ValueError(
                f"inconsistent clients: node {node_id} reports num-partitions "
                f"{int(answer['num-partitions'])}, the federation has {self.num_clients}"
            )
        if partition not in self.node_of_partition:
            raise ValueError(
                f"inconsistent clients: node {node_id} has partition-id {partition}, "
                f"outside 0..{self.num_clients - 1}"
            )
        if int(answer["num-examples"]) != self.examples_of_partition[partition]:
            raise ValueError(
                f"inconsistent clients: node {node_id} claims partition-id {partition} with "
                f"{int(answer['num-examples'])} examples; that client had "
                f"{self.examples_of_partition[partition]}"
            )
        self.node_of_partition[partition] = node_id
        self.partition_of_node[node_id] = partition
        return partition


def ask_whoami(
    grid, node_ids: list[int], timeout: float
) -> tuple[dict[int, dict[str, float]], dict[int, str]]:
    """Send `query.whoami` to `node_ids`: (their answers by node id, the reasons of the nodes
    whose client failed to answer)."""
    queries = [
        Message(RecordDict(), dst_node_id=node, message_type=WHOAMI_QUERY) for node in node_ids
    ]
    answers: dict[int, dict[str, float]] = {}
    failures: dict[int, str] = {}
    for reply in drop_lost_replies(grid.send_and_receive(queries, timeout=timeout), "whoami"):
        node = reply.metadata.src_node_id
        if reply.has_error():
            failures[node] = reply.error.reason
        else:
            answers[node] = dict(reply.content["metrics"])
    return answers, failures


def drop_lost_replies(replies: Iterable[Message], what: str) -> list[Message]:
    """The replies without the errors the SuperLink made for messages that no client answered
    (the node went offline, or the message expired): that client is simply left out."""
    kept, lost = [], 0
    for reply in replies:
        if reply.has_error() and reply.metadata.src_node_id == SUPERLINK_NODE_ID:
            lost += 1
        else:
            kept.append(reply)
    if lost:
        log(WARNING, "%s: %d client(s) did not answer (their node went offline); left out",
            what, lost)  # fmt: skip
    return kept


def roster_from_whoami(answers: dict[int, dict[str, float]]) -> ClientRoster:
    """Build the roster from the clients' `whoami` answers (node id -> metrics).

    Raises ValueError when the clients are inconsistent: they disagree on the number of
    partitions, two nodes claim one partition, or some partitions never answered.
    """
    if not answers:
        raise ValueError("no client answered: is any SuperNode connected?")
    counts = sorted({int(a["num-partitions"]) for a in answers.values()})
    if len(counts) > 1:
        raise ValueError(f"inconsistent clients: they report num-partitions {counts}")
    expected = counts[0]
    node_of_partition: dict[int, int] = {}
    for node, answer in sorted(answers.items()):
        partition = int(answer["partition-id"])
        if partition in node_of_partition:
            raise ValueError(
                f"inconsistent clients: nodes {node_of_partition[partition]} and {node} "
                f"both hold partition-id {partition}"
            )
        if not 0 <= partition < expected:
            raise ValueError(
                f"inconsistent clients: node {node} has partition-id {partition}, "
                f"outside 0..{expected - 1}"
            )
        node_of_partition[partition] = node
    missing = sorted(set(range(expected)) - set(node_of_partition))
    if missing:
        raise ValueError(
            f"only {len(node_of_partition)} of {expected} clients answered; "
            f"missing partition-ids {missing[:20]}"
        )
    by_partition = {int(a["partition-id"]): a for a in answers.values()}
    return ClientRoster(
        node_of_partition=dict(sorted(node_of_partition.items())),
        examples_of_partition={p: int(a["num-examples"]) for p, a in sorted(by_partition.items())},
        true_noise_rates={p: float(a["true-noise-rate"]) for p, a in sorted(by_partition.items())},
    )


class SampledGrid:
    """A view of a Grid that shows only this round's sampled nodes to the parent strategy."""

    def __init__(self, grid, node_ids: list[int]) -> None:
        self._grid = grid
        self._node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    def __getattr__(self, name: str):
        return getattr(self._grid, name)


class SeededSampling:
    """Mixin placed before a Flower strategy class (e.g. `class X(SeededSampling, FedAvg)`).

    The parent is built with fraction 1.0 and minimum 1 node, so it takes exactly the nodes that
    this mixin shows it. Replies are sorted by partition id before aggregation, so the sums run
    in the same order every time (bit-reproducible aggregation).
    """

    def __init__(
        self,
        *,
        roster: ClientRoster,
        seed: int,
        clients_per_round: int,
        evaluate_clients: int,
        **flower_kwargs,
    ) -> None:
        flower_kwargs.update(
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_train_nodes=1,
            min_evaluate_nodes=1,
            min_available_nodes=1,
        )
        super().__init__(**flower_kwargs)
        self.roster = roster
        self.seed = seed
        self.clients_per_round = clients_per_round
        self.evaluate_clients = evaluate_clients
        self.last_train_metrics: MetricRecord | None = None
        self.last_evaluate_metrics: MetricRecord | None = None
        self.last_sampled: list[int] = []
        self.last_uploads = 0  # training replies of the last round
        self.last_nonfinite: list[int] = []  # partitions whose upload held NaN or inf
        self.ignored_nodes: set[int] = set()  # joined later and could not be placed

    def sampled_partitions(self, server_round: int) -> list[int]:
        return sample_partitions(
            self.seed, server_round, self.roster.num_clients, self.clients_per_round
        )

    def refresh_roster(self, grid) -> None:
        """Place nodes that joined since the last round (restarted SuperNodes). A node that
        cannot be placed (its client fails, or does not fit the federation) is left out with a
        warning: it should not stop a run that is going well."""
        known = self.roster.partition_of_node.keys() | self.ignored_nodes
        unknown = [n for n in grid.get_node_ids() if n not in known]
        if not unknown:
            return
        answers, failures = ask_whoami(grid, unknown, REJOIN_WAIT_SECONDS)
        for node, reason in failures.items():
            log(WARNING, "node %d joined, but its client failed: %s; left out", node, reason)
            self.ignored_nodes.add(node)
        for node, answer in answers.items():
            before = self.roster.node_of_partition.get(int(answer["partition-id"]))
            try:
                partition = self.roster.rejoin(node, answer)
            except ValueError as err:
                log(WARNING, "node %d joined, but %s; left out", node, err)
                self.ignored_nodes.add(node)
                continue
            log(WARNING, "client %d is back on node %d (was node %s): a SuperNode restarted",
                partition, node, before)  # fmt: skip

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid
    ) -> Iterable[Message]:
        self.refresh_roster(grid)
        self.last_sampled = self.sampled_partitions(server_round)
        view = SampledGrid(grid, self.roster.node_ids(self.last_sampled))
        return super().configure_train(server_round, arrays, config, view)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid
    ) -> Iterable[Message]:
        # Its own stream, so that evaluation does not mirror the training sample.
        partitions = sample_partitions(
            self.seed,
            server_round,
            self.roster.num_clients,
            self.evaluate_clients,
            purpose=seeding.EVALUATE_SAMPLING,
        )
        if not partitions:
            return []
        view = SampledGrid(grid, self.roster.node_ids(partitions))
        return super().configure_evaluate(server_round, arrays, config, view)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        """Aggregate the round's finite uploads in partition order. Uploads holding NaN or inf
        (a client's training diverged) are dropped with a warning and counted
        (`last_nonfinite`); with no finite upload the round returns no model, and Flower's loop
        keeps the previous global model."""
        ordered = _ordered_without_errors(replies, self.roster, f"round {server_round} training")
        flags = [_finite_upload(reply) for reply in ordered]
        finite = [reply for reply, ok in zip(ordered, flags, strict=True) if ok]
        self.last_nonfinite = [
            self.roster.partition_of(reply.metadata.src_node_id)
            for reply, ok in zip(ordered, flags, strict=True)
            if not ok
        ]
        self.last_uploads = len(ordered)
        if self.last_nonfinite:
            log(WARNING, "round %d: dropped %d of %d uploads holding NaN or inf (partitions %s)",
                server_round, len(self.last_nonfinite), len(ordered),
                self.last_nonfinite)  # fmt: skip
        if not finite:
            self.last_train_metrics = None
            return None, None
        # (Flower's FedMedian empties the replies' records: take the layout first)
        layout = {k: (a.shape, a.dtype) for k, a in finite[0].content["arrays"].items()}
        arrays, metrics = super().aggregate_train(server_round, finite)
        self.last_train_metrics = metrics
        if arrays is not None:
            arrays = _with_layout(arrays, layout)
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        ordered = _ordered_without_errors(
            replies, self.roster, f"round {server_round} evaluation", allow_none=True
        )
        metrics = super().aggregate_evaluate(server_round, ordered)
        self.last_evaluate_metrics = metrics
        return metrics


def _with_layout(arrays: ArrayRecord, layout: dict[str, tuple]) -> ArrayRecord:
    """`arrays` with every tensor in the (shape, dtype) that `layout` gives for its key (as
    the clients uploaded it).

    Flower's FedAvg family returns float64 for integer buffers (BatchNorm's 0-d int64
    `num_batches_tracked`); integers are truncated toward zero, as torch's load_state_dict
    copy does."""
    restored = {}
    for key, array in arrays.items():
        value = array.numpy()
        shape, dtype = layout[key]
        if value.dtype != np.dtype(dtype) or value.shape != tuple(shape):
            value = cast_back(value.astype(np.float64).reshape(shape), np.dtype(dtype))
        restored[key] = Array(np.require(value, requirements="C"))
    return ArrayRecord(array_dict=restored)


def _finite_upload(reply: Message) -> bool:
    return is_finite_model([array.numpy() for array in reply.content["arrays"].values()])


def _ordered_without_errors(
    replies: Iterable[Message], roster: ClientRoster, what: str, allow_none: bool = False
) -> list[Message]:
    """Replies sorted by partition id; a client that raised fails the run, loudly.

    (A client whose node went offline is left out: see drop_lost_replies.)
    """
    replies = drop_lost_replies(replies, what)
    failed = [m for m in replies if m.has_error()]
    if failed:
        reasons = "; ".join(
            f"partition {roster.partition_of(m.metadata.src_node_id)}: {m.error.reason}"
            for m in failed[:3]
        )
        raise RuntimeError(f"{len(failed)} client(s) failed in {what}: {reasons}")
    if not replies and not allow_none:
        raise RuntimeError(f"no client replied in {what}")
    return sorted(replies, key=lambda m: roster.partition_of(m.metadata.src_node_id))
