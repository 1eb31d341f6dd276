"""The one base of every strategy, and how a strategy declares itself.

A strategy is one class under `SeededStrategy` (single inheritance) that declares, once:

- `names`: its run-config `strategy` name(s);
- `description`: one line for docs/configuration.md's strategy table (strategies.registry makes it);
- `Params`: a frozen dataclass of `StrategyParams` whose fields are the run-config keys the
  strategy reads (snake_case), with `check` for the settings it cannot run with;
- `local_loss`: the loss its clients train with (sent with every `train` message), if any;
- the hooks it overrides: `configure_sampled` (the round's messages to the sampled clients),
  `combine` (the next global model from the uploads) or `aggregate_models`, and `after_round`
  (server work after an aggregation, such as a detection query).

The registry, the run-config checks, the comparison runner's resume check (which keys matter for
which strategy) and the docs table derive from these declarations.

`SeededStrategy` is Flower's FedAvg with what every strategy here shares: seeded sampling over
partition ids (the same clients in the same rounds for every strategy with one seed), replies
sorted by partition id (bit-reproducible sums), uploads holding NaN or inf dropped, every tensor
returned in the shape and dtype the clients uploaded, and aggregation by a pure rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp.strategy import FedAvg

from common import seeding
from common.attacks import SERVER_ATTACKS, AttackSettings, attacked_keys, mimic_honest
from common.errors import ConfigError
from common.protocol import LocalTraining
from strategies.aggregation import cast_back, is_finite_model
from strategies.sampling import (
    REJOIN_WAIT_SECONDS,
    ClientRoster,
    SampledGrid,
    ask_whoami,
    ordered_without_errors,
    query_clients,
    sample_partitions,
)

Models = list[list[np.ndarray]]


@dataclass(frozen=True)
class StrategyParams:
    """A strategy's parameters: each field is a run-config key (`-` written `_`)."""

    @classmethod
    def from_config(cls, config) -> StrategyParams:
        """The fields' values from a common.config.RunConfig."""
        return cls(**{field.name: getattr(config, field.name) for field in dataclasses.fields(cls)})

    @classmethod
    def keys(cls) -> frozenset[str]:
        """The run-config keys these parameters are read from."""
        return frozenset(field.name.replace("_", "-") for field in dataclasses.fields(cls))

    def check(self, *, sampled: int, num_clients: int, num_rounds: int) -> None:
        """Raise common.errors.ConfigError for settings the strategy cannot run with, with
        `sampled` clients per round out of `num_clients`, for `num_rounds` rounds."""


def check_stage_starts(key: str, rounds: int, num_rounds: int, last: int | None = None) -> None:
    """Refuse a warm-up or start round `rounds` (run-config `key`) that is negative or leaves no
    round for the method's later stage: its last warm round is `last` (default `rounds`), which
    must be below `num_rounds` (ConfigError)."""
    if rounds < 0:
        raise ConfigError(f"{key}={rounds} is not allowed: it must be 0 or more")
    last = rounds if last is None else last
    if last >= num_rounds:
        raise ConfigError(
            f"{key}={rounds} is not allowed with num-rounds={num_rounds}: the method's later "
            f"stage would never run (round {last + 1} would be its first); lower it below "
            f"{num_rounds - (last - rounds)}, or raise num-rounds above {last}"
        )


@dataclass(frozen=True)
class NoParams(StrategyParams):
    """For a strategy that reads no key of its own."""


class SeededStrategy(FedAvg):
    """FedAvg's messaging with seeded sampling, ordered finite replies and rule aggregation.

    Flower's FedAvg machinery is built with fraction 1.0 and minimum 1 node, so it takes exactly
    the nodes that the seeded sample shows it (a SampledGrid view)."""

    names: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    Params: ClassVar[type[StrategyParams]] = NoParams
    local_loss: ClassVar[str | None] = None
    # The attributes that carry over from round to round (a checkpoint saves them; see
    # checkpoint_state). Sampling needs none: it is a pure function of (seed, round).
    state_keys: ClassVar[tuple[str, ...]] = ()
    # What the model's inputs may be (models.MODEL_INPUTS): checked before a run starts
    input_kinds: ClassVar[tuple[str, ...]] = ("image", "text")

    def __init__(
        self,
        params: StrategyParams,
        *,
        roster: ClientRoster,
        seed: int,
        clients_per_round: int,
        evaluate_clients: int,
        num_rounds: int,
        training: LocalTraining,
        attack: AttackSettings | None = None,
    ) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_train_nodes=1,
            min_evaluate_nodes=1,
            min_available_nodes=1,
        )
        self.params = params
        self.roster = roster
        self.seed = seed
        self.clients_per_round = clients_per_round
        self.evaluate_clients = evaluate_clients
        self.num_rounds = num_rounds
        self.training = training  # the run's local-training settings (common keys)
        self.attack = attack  # the run's malicious clients (common.attacks), if any
        self.last_attackers = 0  # uploads from attackers in the last round
        self.last_train_metrics: MetricRecord | None = None
        self.last_evaluate_metrics: MetricRecord | None = None
        self.last_sampled: list[int] = []
        self.last_uploads = 0  # training replies of the last round
        self.last_nonfinite: list[int] = []  # partitions whose upload held NaN or inf
        self.ignored_nodes: set[int] = set()  # joined later and could not be placed
        self._current: ArrayRecord | None = None  # the global model of the current round
        self.resume_after = 0  # rounds up to this one were restored from a checkpoint
        self._grid = None  # the round's grid, for queries after an aggregation

    # --- hooks a strategy overrides ------------------------------------------------------------

    def round_training(self, server_round: int) -> LocalTraining:
        """The complete local-training settings sent with this round's `train` messages: the
        run's, with the strategy's own loss, and each of its parameters that is also a
        LocalTraining field (the protocol names a knob after its run-config key, so
        `sce_alpha`, `max_grad_norm`, ... reach the clients by name)."""
        training = self.training
        if self.local_loss is not None:
            training = dataclasses.replace(training, local_loss=self.local_loss)
        return dataclasses.replace(training, **self.params_for(LocalTraining))

    def params_for(self, settings: type) -> dict[str, Any]:
        """The strategy's parameters that are fields of the dataclass `settings`."""
        names = {field.name for field in dataclasses.fields(settings)}
        return {
            field.name: getattr(self.params, field.name)
            for field in dataclasses.fields(self.params)
            if field.name in names
        }

    def configure_sampled(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, view: SampledGrid
    ) -> Iterable[Message]:
        """The round's `train` messages to the sampled nodes (`view` shows only them), with the
        round's complete local-training settings in their config."""
        config.update(self.round_training(server_round).to_config())
        return FedAvg.configure_train(self, server_round, arrays, config, view)

    def combine(
        self, models: Models, examples: list[int], current: list[np.ndarray], replies: list
    ) -> list[np.ndarray]:
        """The next global model from the uploads (numpy arrays in the replies' order, sorted by
        partition id), their sample counts and the current global model."""
        raise NotImplementedError(f"{type(self).__name__} must define combine")

    def aggregate_models(self, server_round: int, replies: list[Message]):
        """(arrays, metrics) from the round's finite replies: `combine` on numpy arrays."""
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contents = [message.content for message in valid]
        keys = list(contents[0]["arrays"].keys())
        models = [[content["arrays"][key].numpy() for key in keys] for content in contents]
        examples = [int(content["metrics"]["num-examples"]) for content in contents]
        current = [self._current[key].numpy() for key in keys] if self._current else []
        combined = self.combine(models, examples, current, valid)
        # np.require keeps 0-d tensors 0-d (np.ascontiguousarray makes them shape (1,))
        pairs = zip(keys, combined, strict=True)
        arrays = ArrayRecord(
            array_dict={k: Array(np.require(a, requirements="C")) for k, a in pairs}
        )
        return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    def after_round(self, server_round: int, replies: list[Message], arrays: ArrayRecord) -> None:
        """Server work after round `server_round` was aggregated into `arrays` (queries to the
        clients go through `self.query`)."""

    # --- what every strategy shares ---------------------------------------------------------------

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

    def query(self, messages: list[Message], timeout: float) -> list[Message]:
        """Send queries to clients after an aggregation (strategies.sampling.query_clients on
        this round's grid)."""
        return query_clients(self._grid, messages, timeout)

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint saves of the strategy (server_app.checkpoint): `state_keys`."""
        return {key: getattr(self, key) for key in self.state_keys}

    def restore_state(self, state: dict[str, Any], after_round: int) -> None:
        """Take a checkpoint's state; Flower's loop then skips rounds 1..`after_round` (it
        always counts from 1: those rounds send nothing and aggregate nothing here)."""
        missing = set(self.state_keys) - set(state)
        if missing:
            raise ValueError(f"the checkpoint lacks {sorted(missing)} of {type(self).__name__}")
        for key in self.state_keys:
            setattr(self, key, state[key])
        self.resume_after = after_round

    def restored(self, server_round: int) -> bool:
        """Whether round `server_round` was restored from a checkpoint (and is skipped)."""
        return server_round <= self.resume_after

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid
    ) -> Iterable[Message]:
        if self.restored(server_round):
            if server_round == 1:  # once, not for every restored round
                log(INFO, "rounds 1-%d were restored from the checkpoint: Flower's lines for "
                    "them run nothing", self.resume_after)  # fmt: skip
            return []
        self._grid = grid
        self._current = arrays  # the global model this round's clients start from
        self.refresh_roster(grid)
        self.last_sampled = self.sampled_partitions(server_round)
        # Flower's next line counts the nodes this view shows ("Sampled 10 nodes (out of 10)")
        log(INFO, "round %d: clients %s train, %d of %d (seeded sample)", server_round,
            self.last_sampled, len(self.last_sampled), self.roster.num_clients)  # fmt: skip
        view = SampledGrid(grid, self.roster.node_ids(self.last_sampled))
        return self.configure_sampled(server_round, arrays, config, view)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid
    ) -> Iterable[Message]:
        if self.restored(server_round):
            return []
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
        if self.restored(server_round):
            return None, None
        ordered = ordered_without_errors(replies, self.roster, f"round {server_round} training")
        flags = [_finite_upload(reply) for reply in ordered]
        finite = [reply for reply, ok in zip(ordered, flags, strict=True) if ok]
        self.last_nonfinite = [
            self.roster.partition_of(reply.metadata.src_node_id)
            for reply, ok in zip(ordered, flags, strict=True)
            if not ok
        ]
        self.last_uploads = len(ordered)
        finite = self.mimic_attackers(finite)
        if self.last_nonfinite:
            log(WARNING, "round %d: dropped %d of %d uploads holding NaN or inf (partitions %s)",
                server_round, len(self.last_nonfinite), len(ordered),
                self.last_nonfinite)  # fmt: skip
        if not finite:
            self.last_train_metrics = None
            return None, None
        # (Flower's FedMedian empties the replies' records: take the layout first)
        layout = {k: (a.shape, a.dtype) for k, a in finite[0].content["arrays"].items()}
        arrays, metrics = self.aggregate_models(server_round, finite)
        self.last_train_metrics = metrics
        if arrays is not None:
            arrays = _with_layout(arrays, layout)
            self.after_round(server_round, finite, arrays)
        return arrays, metrics

    def mimic_attackers(self, replies: list[Message]) -> list[Message]:
        """Count the attackers' uploads among the round's `replies`; for ALIE and IPM, replace
        them with the attack computed from the other (honest) uploads' updates against the
        round's global model (common.attacks.mimic_honest, per tensor of `attacked_keys`).
        Simulated here because no client sees the others' updates; a round without an honest
        upload, or without an attacker, is left as it is."""
        attack = self.attack
        if attack is None or not attack.attackers:
            self.last_attackers = 0
            return replies
        bad = [
            i
            for i, reply in enumerate(replies)
            if self.roster.partition_of(reply.metadata.src_node_id) in attack.attackers
        ]
        self.last_attackers = len(bad)
        honest = [i for i in range(len(replies)) if i not in bad]
        if attack.attack not in SERVER_ATTACKS or not bad or not honest or self._current is None:
            return replies
        base = {key: array.numpy() for key, array in self._current.items()}
        uploads = [{k: a.numpy() for k, a in reply.content["arrays"].items()} for reply in replies]
        forged = dict(uploads[bad[0]])
        for key in attacked_keys(base):
            updates = [uploads[i][key].astype(np.float64) - base[key] for i in honest]
            update = mimic_honest(attack, updates, len(replies), len(bad))
            forged[key] = (base[key] + update).astype(base[key].dtype)
        for i in bad:
            replies[i].content["arrays"] = ArrayRecord(
                array_dict={k: Array(np.array(v, order="C")) for k, v in forged.items()}
            )
        return replies

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        if self.restored(server_round):
            return None
        ordered = ordered_without_errors(
            replies, self.roster, f"round {server_round} evaluation", allow_none=True
        )
        metrics = super().aggregate_evaluate(server_round, ordered)
        self.last_evaluate_metrics = metrics
        return metrics

    # --- what the ServerApp reads (server_app.app's StrategyView) --------------------------------

    def round_diagnostics(self) -> dict[str, Any]:
        """This round's strategy-specific metrics.csv columns (none here)."""
        return {}

    def final_report(self) -> dict[str, Any] | None:
        """What detection.json holds, for a strategy that detects noisy clients (None here)."""
        return None


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


# --- building blocks for strategies whose messages carry more than FedAvg's -------------------


def array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Numpy arrays (C-ordered copies) as an ArrayRecord, in the dict's order."""
    return ArrayRecord(array_dict={k: Array(np.array(v, order="C")) for k, v in arrays.items()})


def retyped(
    message: Message,
    message_type: str,
    settings: dict[str, Any],
    records: dict[str, ArrayRecord | ConfigRecord] | None = None,
) -> Message:
    """A train message from `configure_sampled` sent as `message_type` instead, its config
    extended by `settings` (a protocol Settings' to_config()) and with `records` added (e.g.
    Co-teaching's `peer-arrays`)."""
    config = ConfigRecord({**dict(message.content["config"]), **settings})
    content = RecordDict({"arrays": message.content["arrays"], "config": config, **(records or {})})
    return Message(content, dst_node_id=message.metadata.dst_node_id, message_type=message_type)


def take_records(replies: list[Message], name: str) -> dict[int, Any]:
    """Remove the record `name` from every reply that has one, before Flower's reply checks
    (they want one ArrayRecord and one MetricRecord per reply): {source node id: record}."""
    taken = {}
    for reply in replies:
        if not reply.has_error() and name in reply.content:
            taken[reply.metadata.src_node_id] = reply.content[name]
            del reply.content[name]
    return taken
