"""FedDiv (Li et al., AAAI 2024) as a Flower strategy, read from the paper and from the authors'
code (lijichang/FLNL-FedDiv, `code release/main.py`, `server.py`). The client side is in
client_app.feddiv (`train.feddiv`).

Clients train with CE for `baseline-warmup-rounds` rounds, then select and relabel their samples
with the global noise filter and predictive consistency (client_app.feddiv). Every client fits a
local noise filter (a two-component Gaussian mixture over its normalised per-sample losses) after
training and uploads its parameters; the server keeps each client's latest filter and, after
every round, aggregates all kept filters into the global one (`aggregate_filters`). Aggregation
of the models is FedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Message

from common.errors import ConfigError
from common.protocol import FEDDIV_REPORT, FEDDIV_TRAIN, FeddivSettings
from strategies.base import StrategyParams, check_stage_starts, retyped, take_records
from strategies.rules import RuleStrategy, SampleWeightedMean

Filter = tuple[np.ndarray, np.ndarray, np.ndarray]  # means, variances, weights: (2,) each


def aggregate_filters(filters: list[Filter], sizes: list[int]) -> Filter:
    """The global noise filter from the clients' (components sorted by mean): with
    gamma_k = n_k / sum n, means sum_k gamma_k mu_k, variances sum_k gamma_k^2 sigma_k^2 and
    weights sum_k gamma_k pi_k, as the authors' server (weighted_average_clients_models: the
    covariances weighted by gamma squared, the variance of a weighted sum). Raises ValueError
    on no filter or mismatched lengths."""
    if not filters or len(filters) != len(sizes):
        raise ValueError(f"{len(filters)} filters for {len(sizes)} client sizes")
    gamma = np.asarray(sizes, dtype=np.float64)[:, None] / float(np.sum(sizes))
    means, variances, weights = (
        np.stack([np.asarray(f[part], dtype=np.float64) for f in filters]) for part in range(3)
    )  # (K, 2) each
    return (
        (gamma * means).sum(axis=0),
        (gamma**2 * variances).sum(axis=0),
        (gamma * weights).sum(axis=0),
    )


@dataclass(frozen=True)
class FeddivParams(StrategyParams):
    baseline_warmup_rounds: int
    p_threshold: float
    feddiv_clean_threshold: float
    feddiv_xi: float
    feddiv_momentum: float

    def check(self, *, sampled: int, num_clients: int, num_rounds: int) -> None:
        check_stage_starts("baseline-warmup-rounds", self.baseline_warmup_rounds, num_rounds)
        if not 0.0 <= self.p_threshold < 1.0:
            raise ConfigError(f"p-threshold={self.p_threshold} must be in [0, 1)")
        if not 0.0 <= self.feddiv_clean_threshold < 1.0:
            raise ConfigError(
                f"feddiv-clean-threshold={self.feddiv_clean_threshold} must be in [0, 1)"
            )
        if self.feddiv_xi < 0:
            raise ConfigError(f"feddiv-xi={self.feddiv_xi} must be >= 0")
        if not 0.0 <= self.feddiv_momentum < 1.0:
            raise ConfigError(f"feddiv-momentum={self.feddiv_momentum} must be in [0, 1)")


class Feddiv(RuleStrategy):
    """FedDiv: the federated noise filter and predictive-consistency sampling (client_app.feddiv);
    FedAvg. State: every client's latest local filter and sample count, and the global filter
    (checkpointed)."""

    names = ("feddiv",)
    description = (
        "FedDiv (Li et al., AAAI 2024): a global two-component mixture over per-sample losses "
        "aggregated from the clients' filters, predictive-consistency sample selection and "
        "relabelling; FedAvg"
    )
    Params = FeddivParams
    local_loss = "ce"
    make_rule = staticmethod(lambda params: SampleWeightedMean())
    state_keys = ("local_filters", "global_filter")

    def __init__(self, params, **base) -> None:
        super().__init__(params, **base)
        self.local_filters: dict[int, tuple[Filter, int]] = {}  # partition -> (filter, n)
        self.global_filter: Filter | None = None

    def configure_sampled(self, server_round, arrays, config, view):
        means, variances, weights = self.global_filter or ([], [], [])
        settings = FeddivSettings(
            warm=server_round <= self.params.baseline_warmup_rounds,
            filter_means=[float(v) for v in means],
            filter_variances=[float(v) for v in variances],
            filter_weights=[float(v) for v in weights],
            p_threshold=self.params.p_threshold,
            feddiv_clean_threshold=self.params.feddiv_clean_threshold,
            feddiv_xi=self.params.feddiv_xi,
            feddiv_momentum=self.params.feddiv_momentum,
        )
        sampled = super().configure_sampled(server_round, arrays, config, view)
        return [retyped(message, FEDDIV_TRAIN, settings.to_config()) for message in sampled]

    def aggregate_models(self, server_round: int, replies: list[Message]):
        """FedAvg; then each reply's finite filter replaces its client's, and the global filter
        is aggregated from every client's latest."""
        reports = take_records(replies, FEDDIV_REPORT)
        arrays, metrics = super().aggregate_models(server_round, replies)
        for node, report in reports.items():
            local = tuple(
                np.asarray(report[key], dtype=np.float64)
                for key in ("means", "variances", "weights")
            )
            if not all(np.isfinite(part).all() and part.shape == (2,) for part in local):
                continue
            partition = self.roster.partition_of(node)
            size = self.roster.examples_of_partition[partition]
            self.local_filters[partition] = (local, size)
        if self.local_filters:
            kept = [self.local_filters[p] for p in sorted(self.local_filters)]
            self.global_filter = aggregate_filters([f for f, _ in kept], [n for _, n in kept])
        return arrays, metrics
