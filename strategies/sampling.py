"""Seeded client sampling over partition ids, for every strategy.

Flower's built-in sampling is an unseeded `random.sample` over node ids, and node ids are random
per run, so two strategies with the same seed would train different clients. Here the sampled
*partition ids* of round r are a function of (seed, r) alone, and the roster (learned from the
clients) turns them into node ids. Every strategy with the same seed therefore trains the same
clients in the same rounds.

In deployment a SuperNode can die and come back. A restarted insecure SuperNode registers with a
new node id, so at the start of every round the roster asks any node it does not know who it is
and routes that partition to it (`strategies.base.SeededStrategy.refresh_roster`). A node that
is gone answers nothing; the SuperLink then replies for it with an error (after Flower's
heartbeat patience), and that client is left out of the round instead of failing the run
(`drop_lost_replies`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import WARNING

from flwr.app import Message, RecordDict
from flwr.common import log
from flwr.common.constant import SUPERLINK_NODE_ID

from common import seeding
from common.protocol import WHOAMI_QUERY

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
    for reply in query_clients(grid, queries, timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            failures[node] = reply.error.reason
        else:
            answers[node] = dict(reply.content["metrics"])
    return answers, failures


def query_clients(grid, messages: list[Message], timeout: float) -> list[Message]:
    """Send `messages` (queries: whoami, detection's class losses, FedCorr's relabelling) and
    return the replies, without the errors the SuperLink made for nodes that went offline
    (those clients are left out, with a warning). The one query loop of the server."""
    what = messages[0].metadata.message_type if messages else "query"
    return drop_lost_replies(grid.send_and_receive(messages, timeout=timeout), what)


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


def ordered_without_errors(
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
