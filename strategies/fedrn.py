"""FedRN (Kim et al., CIKM 2022) as a Flower strategy, read from the paper and from FNBench's
`fedrn` (main_fed_LNL.py for the server's neighbour choice). The client side is in
client_app.fedrn (`train.fedrn`).

The server records, for every client, its last uploaded local model, that model's *expertise*
(its accuracy on the client's given labels) and its *probe output* (logits of a fixed random
input). During the warm-up (`label-warmup-rounds`, FNBench's `warmup_epochs` 30) clients train
as FedAvg's. Afterwards each sampled client i receives, with the global model, its own previous
model and the models of its `fedrn-neighbours` k most reliable neighbours j, ranked by

    score_j = alpha * e_j + (1 - alpha) * s_ij,        score_i = alpha * e_i + (1 - alpha),

e the min-max normalised expertise and s_ij the min-max normalised cosine similarity of the two
clients' probe outputs (alpha = `fedrn-alpha`, 0.6). It uses them to select the samples it
trains on. Aggregation is FedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Message

from common.errors import ConfigError
from common.protocol import (
    FEDRN_REPORT,
    FEDRN_TRAIN,
    NEIGHBOUR_ARRAYS,
    PREVIOUS_ARRAYS,
    FedrnSettings,
)
from strategies import aggregation
from strategies.base import (
    StrategyParams,
    array_record,
    check_stage_starts,
    retyped,
    take_records,
)
from strategies.rules import RuleStrategy, SampleWeightedMean


def min_max(values: np.ndarray) -> np.ndarray:
    """(v - min) / (max - min); all ones when every value is equal (FNBench divides by 0)."""
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.ones_like(values, dtype=np.float64)
    return (values - low) / (high - low)


def reliable_neighbours(
    client: int,
    expertise: dict[int, float],
    probes: dict[int, np.ndarray],
    alpha: float,
    k: int,
) -> tuple[float | None, list[tuple[int, float]]]:
    """(client's own score or None when it has no record, [(neighbour, score)] best first) for
    FedRN's k reliable neighbours among the clients with a record (`expertise` and `probes`
    share their keys: partition -> accuracy in [0, 1], partition -> (C,) logits).

    Expertise and similarity are min-max normalised over the recorded clients (the client
    included); without a record of its own the similarity term is 0 (neighbours by expertise
    alone). Ties keep the lower partition id first. Source: FNBench main_fed_LNL.py."""
    others = sorted(p for p in expertise if p != client)
    recorded = client in expertise
    members = ([client] if recorded else []) + others
    if not others:
        return (alpha * 1.0 + (1 - alpha) if recorded else None), []
    normal_exp = dict(zip(members, min_max(np.array([expertise[p] for p in members])), strict=True))
    if recorded:
        own = np.asarray(probes[client], dtype=np.float64)
        cosines = []
        for p in members:
            other = np.asarray(probes[p], dtype=np.float64)
            norm = max(float(np.linalg.norm(own) * np.linalg.norm(other)), 1e-8)
            cosines.append(float(own @ other) / norm)
        normal_sim = dict(zip(members, min_max(np.array(cosines)), strict=True))
    else:
        normal_sim = dict.fromkeys(members, 0.0)
    scored = [(p, alpha * normal_exp[p] + (1 - alpha) * normal_sim[p]) for p in others]
    scored.sort(key=lambda pair: -pair[1])  # stable: ties by partition id
    own_score = alpha * normal_exp[client] + (1 - alpha) if recorded else None
    return own_score, scored[:k]


@dataclass(frozen=True)
class FedrnParams(StrategyParams):
    label_warmup_rounds: int
    fedrn_neighbours: int
    fedrn_alpha: float
    p_threshold: float

    def check(self, *, sampled: int, num_clients: int, num_rounds: int) -> None:
        check_stage_starts("label-warmup-rounds", self.label_warmup_rounds, num_rounds)
        if not 1 <= self.fedrn_neighbours < num_clients:
            raise ConfigError(
                f"fedrn-neighbours={self.fedrn_neighbours} is not allowed: between 1 and the "
                f"number of other clients ({num_clients - 1})"
            )
        if not 0.0 <= self.fedrn_alpha <= 1.0:
            raise ConfigError(f"fedrn-alpha={self.fedrn_alpha} must be in [0, 1]")
        if not 0.0 <= self.p_threshold < 1.0:
            raise ConfigError(f"p-threshold={self.p_threshold} must be in [0, 1)")


class Fedrn(RuleStrategy):
    """FedRN: after the warm-up, each client selects the samples it trains on with its k
    reliable neighbours' models (client_app.fedrn); FedAvg aggregation. State: every client's
    last upload, expertise and probe output (checkpointed)."""

    names = ("fedrn",)
    description = (
        "FedRN (Kim et al., CIKM 2022): after the warm-up, clients train on the samples that "
        "their k reliable neighbours' models (by expertise and similarity) deem clean; FedAvg"
    )
    Params = FedrnParams
    local_loss = "ce"
    make_rule = staticmethod(lambda params: SampleWeightedMean())
    state_keys = ("local_models", "expertise", "probes")

    def __init__(self, params, **base) -> None:
        super().__init__(params, **base)
        self.local_models: dict[int, dict[str, np.ndarray]] = {}
        self.expertise: dict[int, float] = {}
        self.probes: dict[int, np.ndarray] = {}

    def configure_sampled(self, server_round, arrays, config, view):
        warm = server_round <= self.params.label_warmup_rounds  # FNBench: its 0-based epoch
        messages = []
        for message in super().configure_sampled(server_round, arrays, config, view):
            partition = self.roster.partition_of(message.metadata.dst_node_id)
            records = {}
            scores: list[float] = []  # the previous model's first, then the neighbours'
            own = None
            if not warm:
                own, neighbours = reliable_neighbours(
                    partition, self.expertise, self.probes,
                    self.params.fedrn_alpha, self.params.fedrn_neighbours,
                )  # fmt: skip
                if own is not None:
                    records[PREVIOUS_ARRAYS] = array_record(self.local_models[partition])
                    scores.append(own)
                for rank, (neighbour, score) in enumerate(neighbours):
                    records[f"{NEIGHBOUR_ARRAYS}-{rank}"] = array_record(
                        self.local_models[neighbour]
                    )
                    scores.append(score)
            settings = FedrnSettings(
                selecting=bool(scores),  # nothing recorded yet: it trains as FedAvg's clients
                has_previous=own is not None,
                scores=scores,
                p_threshold=self.params.p_threshold,
            )
            messages.append(retyped(message, FEDRN_TRAIN, settings.to_config(), records))
        return messages

    def aggregate_models(self, server_round: int, replies: list[Message]):
        """FedAvg; then record each finite upload with its client's expertise and probe."""
        reports = take_records(replies, FEDRN_REPORT)
        arrays, metrics = super().aggregate_models(server_round, replies)
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error() or node not in reports or "arrays" not in reply.content:
                continue
            model = {k: a.numpy() for k, a in reply.content["arrays"].items()}
            probe = np.asarray(reports[node]["probe-output"], dtype=np.float64)
            if not (aggregation.is_finite_model(list(model.values())) and np.isfinite(probe).all()):
                continue
            partition = self.roster.partition_of(node)
            self.local_models[partition] = model
            self.expertise[partition] = float(reports[node]["expertise"])
            self.probes[partition] = probe
        return arrays, metrics
