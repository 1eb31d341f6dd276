"""Flower's own strategies, seeded: FedAvg, FedProx, FedMedian, FedTrimmedAvg, Krum, MultiKrum,
Bulyan (`flwr.serverapp.strategy`).

Each is a `FlowerStrategy`: the seeded base samples the clients, orders and filters the replies,
and hands the round to an instance of Flower's class, which sends its messages (FedProx adds
`proximal-mu`) and aggregates with its own rule. Flower's class is used, not re-implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from flwr.serverapp.strategy import (
    Bulyan,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)

from strategies.base import SeededStrategy, StrategyParams
from strategies.rules import CompromisedRate


class FlowerStrategy(SeededStrategy):
    """The round's messages and aggregation are those of `flower_class`, built from
    `flower_kwargs()` on the strategy's parameters."""

    flower_class: ClassVar[type[Strategy]] = FedAvg

    def __init__(self, params: StrategyParams, **base) -> None:
        super().__init__(params, **base)
        self.flower = self.flower_class(
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_train_nodes=1,
            min_evaluate_nodes=1,
            min_available_nodes=1,
            **self.flower_kwargs(),
        )

    def flower_kwargs(self) -> dict[str, Any]:
        return {}

    def configure_sampled(self, server_round, arrays, config, view):
        config.update(self.round_training(server_round).to_config())
        return self.flower.configure_train(server_round, arrays, config, view)

    def aggregate_models(self, server_round, replies):
        return self.flower.aggregate_train(server_round, replies)


class SeededFedAvg(FlowerStrategy):
    names = ("fedavg",)
    description = "Flower's FedAvg: the mean of the uploads weighted by sample count"


@dataclass(frozen=True)
class ProximalParams(StrategyParams):
    proximal_mu: float


class SeededFedProx(FlowerStrategy):
    names = ("fedprox",)
    description = "Flower's FedProx: FedAvg with the proximal term (mu/2) ‖w − w_global‖²"
    Params = ProximalParams
    flower_class = FedProx

    def flower_kwargs(self) -> dict[str, Any]:
        return {"proximal_mu": self.params.proximal_mu}


class SeededFedMedian(FlowerStrategy):
    names = ("fedmedian",)
    description = "Flower's FedMedian: coordinate-wise median"
    flower_class = FedMedian


@dataclass(frozen=True)
class TrimmedAvgParams(StrategyParams):
    trimmed_beta: float


class SeededFedTrimmedAvg(FlowerStrategy):
    names = ("fedtrimmedavg",)
    description = "Flower's FedTrimmedAvg: coordinate-wise mean without the beta tails"
    Params = TrimmedAvgParams
    flower_class = FedTrimmedAvg

    def flower_kwargs(self) -> dict[str, Any]:
        return {"beta": self.params.trimmed_beta}


@dataclass(frozen=True)
class KrumParams(CompromisedRate):
    def check(self, *, sampled: int, num_clients: int, num_rounds: int) -> None:
        self.require("krum and multikrum need", "2*f + 3", 2, sampled, num_clients)


class SeededKrum(FlowerStrategy):
    names = ("krum",)
    description = "Flower's Krum: the upload with the smallest distance to its m - f - 2 nearest"
    Params = KrumParams
    flower_class = Krum

    def flower_kwargs(self) -> dict[str, Any]:
        return {"num_malicious_nodes": self.params.malicious(self.clients_per_round)}


class SeededMultiKrum(FlowerStrategy):
    names = ("multikrum",)
    description = "Flower's MultiKrum: the mean of the m - f Krum-best uploads"
    Params = KrumParams
    flower_class = MultiKrum

    def flower_kwargs(self) -> dict[str, Any]:
        f = self.params.malicious(self.clients_per_round)
        return {"num_malicious_nodes": f, "num_nodes_to_select": self.clients_per_round - f}


@dataclass(frozen=True)
class BulyanParams(CompromisedRate):
    def check(self, *, sampled: int, num_clients: int, num_rounds: int) -> None:
        self.require("bulyan needs", "4*f + 3", 4, sampled, num_clients)


class SeededBulyan(FlowerStrategy):
    names = ("bulyan",)
    description = "Flower's Bulyan: Krum selection, then a trimmed coordinate-wise mean"
    Params = BulyanParams
    flower_class = Bulyan

    def flower_kwargs(self) -> dict[str, Any]:
        return {"num_malicious_nodes": self.params.malicious(self.clients_per_round)}
