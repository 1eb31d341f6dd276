"""FedCorr (Xu et al., CVPR 2022) as a Flower strategy: three stages over the run's rounds.

1. Pre-processing, `fedcorr-iterations` iterations. An iteration visits every client once, in a
   seeded order cut into groups of `clients-per-round` (one group per round). Clients train with
   CE + mixup + an adaptive proximal term beta * mu_k * ||w - w_global|| (mu_k: the client's
   estimated noise level from the previous iteration) and report the LID of their local model's
   outputs; they keep their per-sample losses. After the iteration's last round the server adds
   the LIDs to each client's cumulative score, splits the clients with a Gaussian mixture
   (strategies.detection.split_by_lid), and asks the noisy ones to estimate mu_k and relabel their
   highest-loss samples where the global model is confident (`query.relabel`).
2. Fine-tuning, `fedcorr-finetune-rounds` rounds, only among clients with mu_k below
   `fedcorr-clean-threshold`; afterwards the noisy clients relabel every sample the fine-tuned
   global model is confident about.
3. Usual training on the corrected labels for the remaining rounds, clients sampled as usual.
Aggregation is FedAvg throughout. The client side is in client_app (train.corr, query.relabel)
and client_app.fedcorr.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common import log

from common import seeding
from common.errors import ConfigError
from common.protocol import CORR_TRAIN, RELABEL_QUERY, CorrSettings, RelabelQuery
from strategies.base import StrategyParams
from strategies.detection import split_by_lid
from strategies.maskedoptim import DetectingStrategy, confusion_from
from strategies.rules import SampleWeightedMean


@dataclass(frozen=True)
class FedCorrSchedule:
    """Which stage a round belongs to (rounds count from 1)."""

    num_clients: int
    per_round: int
    iterations: int
    finetune_rounds: int

    @property
    def rounds_per_iteration(self) -> int:
        return math.ceil(self.num_clients / self.per_round)

    @property
    def preprocess_rounds(self) -> int:
        return self.iterations * self.rounds_per_iteration

    def stage(self, server_round: int) -> str:
        if server_round <= self.preprocess_rounds:
            return "preprocess"
        if server_round <= self.preprocess_rounds + self.finetune_rounds:
            return "finetune"
        return "usual"

    def position(self, server_round: int) -> tuple[int, int]:
        """(iteration, group) of a pre-processing round, both from 0."""
        return divmod(server_round - 1, self.rounds_per_iteration)

    def ends_iteration(self, server_round: int) -> bool:
        return (
            self.stage(server_round) == "preprocess"
            and self.position(server_round)[1] == self.rounds_per_iteration - 1
        )

    def ends_finetuning(self, server_round: int) -> bool:
        return self.finetune_rounds > 0 and server_round == (
            self.preprocess_rounds + self.finetune_rounds
        )


@dataclass(frozen=True)
class FedCorrParams(StrategyParams):
    fedcorr_iterations: int
    fedcorr_finetune_rounds: int
    fedcorr_prox_beta: float
    fedcorr_lid_k: int
    fedcorr_relabel_ratio: float
    fedcorr_confidence: float
    fedcorr_clean_threshold: float
    fedcorr_mixup_alpha: float
    noisy_threshold: float

    def schedule(self, num_clients: int, sampled: int) -> FedCorrSchedule:
        return FedCorrSchedule(
            num_clients=num_clients,
            per_round=sampled,
            iterations=self.fedcorr_iterations,
            finetune_rounds=self.fedcorr_finetune_rounds,
        )

    def check(self, *, sampled: int, num_clients: int, num_rounds: int) -> None:
        schedule = self.schedule(num_clients, sampled)
        staged = schedule.preprocess_rounds + schedule.finetune_rounds
        if staged > num_rounds:
            raise ConfigError(
                f"fedcorr needs num-rounds >= {staged}: {schedule.iterations} pre-processing "
                f"iterations of {schedule.rounds_per_iteration} rounds (every client once, "
                f"{sampled} per round) + fedcorr-finetune-rounds={schedule.finetune_rounds}; "
                f"got num-rounds={num_rounds}. Lower fedcorr-iterations or "
                "fedcorr-finetune-rounds"
            )


class FedCorr(DetectingStrategy):
    """FedCorr's stages on top of FedAvg (see module doc)."""

    names = ("fedcorr",)
    description = (
        "FedCorr (CVPR 2022): LID-based detection in pre-processing iterations, relabelling, "
        "fine-tuning among clean clients, then usual training"
    )
    Params = FedCorrParams
    local_loss = "ce"
    query_timeout = 3600.0
    state_keys = (
        *DetectingStrategy.state_keys,
        "cumulative_lid",
        "iteration_lid",
        "noise_level",
        "relabel_queries",
    )

    def __init__(self, params: FedCorrParams, **base) -> None:
        super().__init__(params, **base)
        self.rule = SampleWeightedMean()
        self.schedule = params.schedule(self.roster.num_clients, self.clients_per_round)
        self.prox_beta, self.mixup_alpha = params.fedcorr_prox_beta, params.fedcorr_mixup_alpha
        self.lid_k = params.fedcorr_lid_k
        self.relabel_ratio, self.confidence = (
            params.fedcorr_relabel_ratio,
            params.fedcorr_confidence,
        )
        self.clean_threshold = params.fedcorr_clean_threshold
        self.noisy_threshold = params.noisy_threshold
        partitions = range(self.roster.num_clients)
        self.cumulative_lid = dict.fromkeys(partitions, 0.0)
        self.iteration_lid: dict[int, float] = {}
        self.noise_level = dict.fromkeys(partitions, 0.0)  # mu_k, 0 for clients deemed clean
        self.relabel_queries: Counter = Counter()

    def sampled_partitions(self, server_round: int) -> list[int]:
        stage = self.schedule.stage(server_round)
        if stage == "preprocess":
            iteration, group = self.schedule.position(server_round)
            order = seeding.numpy_rng(self.seed, seeding.FEDCORR_PASS, iteration).permutation(
                self.roster.num_clients
            )
            size = self.schedule.per_round
            return sorted(int(p) for p in order[group * size : (group + 1) * size])
        if stage == "finetune":
            candidates = [p for p, mu in self.noise_level.items() if mu <= self.clean_threshold]
            count = min(self.clients_per_round, len(candidates))
            rng = seeding.numpy_rng(self.seed, seeding.CLIENT_SAMPLING, server_round)
            return sorted(int(p) for p in rng.choice(candidates, size=count, replace=False))
        return super().sampled_partitions(server_round)

    def configure_sampled(self, server_round, arrays, config, view):
        preprocessing = self.schedule.stage(server_round) == "preprocess"
        messages = []
        for message in super().configure_sampled(server_round, arrays, config, view):
            partition = self.roster.partition_of(message.metadata.dst_node_id)
            training = dataclasses.replace(
                self.round_training(server_round),
                mixup_alpha=self.mixup_alpha,
                proximal_norm=self.prox_beta * self.noise_level[partition]
                if preprocessing
                else 0.0,
            )
            extras = {
                **training.to_config(),
                **CorrSettings(report_lid=preprocessing, fedcorr_lid_k=self.lid_k).to_config(),
            }
            content = RecordDict(
                {
                    "arrays": message.content["arrays"],
                    "config": ConfigRecord({**dict(message.content["config"]), **extras}),
                }
            )
            messages.append(
                Message(content, dst_node_id=message.metadata.dst_node_id, message_type=CORR_TRAIN)
            )
        return messages

    def combine(self, models, examples, current, replies):
        return self.rule.combine(models, examples, current)

    def after_round(self, server_round: int, replies: list[Message], arrays: ArrayRecord) -> None:
        """Collect the pre-processing LIDs; split and relabel at an iteration's end; relabel
        everything after fine-tuning."""
        if self.schedule.stage(server_round) == "preprocess":
            for reply in replies:
                partition = self.roster.partition_of(reply.metadata.src_node_id)
                self.iteration_lid[partition] = float(reply.content["metrics"]["lid"])
        if self.schedule.ends_iteration(server_round):
            self.end_iteration(server_round, arrays)
        if self.schedule.ends_finetuning(server_round) and self.noisy:
            self.relabel(server_round, arrays, sorted(self.noisy), everything=True)

    def end_iteration(self, server_round: int, arrays: ArrayRecord) -> None:
        """Accumulate LID, split the clients, let the noisy ones estimate mu and relabel."""
        for partition, lid in self.iteration_lid.items():
            self.cumulative_lid[partition] += lid
        self.iteration_lid = {}
        self.noisy = split_by_lid(self.cumulative_lid, self.seed)
        answers = self.relabel(server_round, arrays, sorted(self.noisy), everything=False)
        self.noise_level = dict.fromkeys(self.noise_level, 0.0)
        for partition, answer in answers.items():
            self.noise_level[partition] = float(answer.content["metrics"]["noise-fraction"])
        quality = self.assess(self.noisy, self.noisy_threshold)
        self.detection = {
            "round": server_round,
            "iteration": self.schedule.position(server_round)[0] + 1,
            "flagged_noisy": sorted(self.noisy),
            "clean": sorted(set(self.noise_level) - self.noisy),
            "noisy_threshold": self.noisy_threshold,
            "quality": quality,
            "cumulative_lid": dict(self.cumulative_lid),
            "estimated_noise_level": {p: mu for p, mu in self.noise_level.items() if mu > 0},
        }
        log(INFO, "fedcorr after round %d: %d of %d clients flagged noisy; %s",
            server_round, len(self.noisy), self.roster.num_clients, quality)  # fmt: skip

    def relabel(self, server_round: int, arrays: ArrayRecord, partitions, everything: bool):
        """Ask `partitions` to relabel with the global model `arrays`; answers by partition."""
        config = ConfigRecord(
            RelabelQuery(
                server_round=server_round,
                everything=everything,
                fedcorr_relabel_ratio=self.relabel_ratio,
                fedcorr_confidence=self.confidence,
            ).to_config()
        )
        queries = [
            Message(
                RecordDict({"arrays": arrays, "config": config}),
                dst_node_id=self.roster.node_of_partition[p],
                message_type=RELABEL_QUERY,
            )
            for p in partitions
        ]
        answers = {}
        for reply in self.query(queries, timeout=self.query_timeout):
            partition = self.roster.partition_of(reply.metadata.src_node_id)
            if reply.has_error():
                log(WARNING, "fedcorr: client %d failed to relabel (%s)",
                    partition, reply.error.reason)  # fmt: skip
                continue
            answers[partition] = reply
            self.relabel_queries[partition] += 1
            labels = reply.content["labels"]
            if self.relabel_queries[partition] == 1:
                self.labels.start(partition, confusion_from(labels, "observed-confusion"))
            self.labels.update(partition, labels, self.relabel_queries[partition])
        return answers

    def final_report(self) -> dict[str, Any]:
        return {
            "detection": self.detection,
            "relabel_queries": dict(sorted(self.relabel_queries.items())),
            "label_correction": self.labels.metrics(),
            "label_correction_per_client": self.labels.per_client(),
            "corrected_labels_files": dict(sorted(self.exported.items())),
        }

    def label_holders(self) -> list[int]:
        """The clients FedCorr relabelled at least once."""
        return sorted(self.relabel_queries)
