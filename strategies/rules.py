"""Aggregation rules as Flower strategies: FedAvg's messaging, a pure function's aggregation.

A rule turns the round's uploaded models (lists of numpy arrays, in the replies' fixed order),
their sample counts and the global model they started from into the next global model. The
mathematics is in strategies.aggregation; `RuleAggregation` only unpacks Flower's messages.

- `GeometricMedian`: MaskedOptim's and RFA's rule (spec §5.1).
- `SampleWeightedMean`: FedAvg's rule, for strategies that differ from FedAvg only in the loss
  their clients train with (symmetric-ce).
- `LowerMedian`, `KrumFnbench`, `TrimmedMeanFnbench`, `FedExp`: the authors' baselines as
  FNBench implements them (spec §5.2), beside Flower's own FedMedian, Krum and FedTrimmedAvg.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp.strategy import FedAvg

from strategies import aggregation

Models = list[list[np.ndarray]]


@dataclass(frozen=True)
class GeometricMedian:
    """How the uploaded models are combined (spec §5.1, §11.2 row 10)."""

    scope: str = "per-tensor"  # or "whole-model" (RFA's original, one median of flat vectors)
    weighted: bool = False  # the authors ignore sample counts
    max_iter: int = 10
    eps: float = 1e-5

    def combine(self, models: Models, examples: list[int], current: list[np.ndarray]):
        rule = (
            aggregation.geometric_median_per_tensor
            if self.scope == "per-tensor"
            else aggregation.geometric_median_whole_model
        )
        weights = examples if self.weighted else None
        return rule(models, weights, max_iter=self.max_iter, eps=self.eps)


@dataclass(frozen=True)
class SampleWeightedMean:
    """FedAvg's rule: the mean weighted by the clients' sample counts."""

    def combine(self, models: Models, examples: list[int], current: list[np.ndarray]):
        return aggregation.weighted_mean(models, examples)


@dataclass(frozen=True)
class LowerMedian:
    """`median-torch`: coordinate-wise median, the lower middle value for an even count."""

    def combine(self, models: Models, examples: list[int], current: list[np.ndarray]):
        return aggregation.coordinate_lower_median(models)


@dataclass(frozen=True)
class KrumFnbench:
    """`krum-fnbench`: the model with the smallest summed squared distance to all others."""

    def combine(self, models: Models, examples: list[int], current: list[np.ndarray]):
        return aggregation.krum_fnbench(models)[0]


@dataclass(frozen=True)
class TrimmedMeanFnbench:
    """`trimmedmean-fnbench`: uniform mean of the m - 2f models with the most typical
    distance score, f = int(m * compromised-rate)."""

    compromised_rate: float = 0.3

    def combine(self, models: Models, examples: list[int], current: list[np.ndarray]):
        trimmed = int(len(models) * self.compromised_rate)
        return aggregation.trimmed_mean_fnbench(models, trimmed)[0]


@dataclass(frozen=True)
class FedExp:
    """`fedexp`: FedAvg's update, extrapolated by FedExP's server step size."""

    eps: float = aggregation.FEDEXP_EPS

    def combine(self, models: Models, examples: list[int], current: list[np.ndarray]):
        return aggregation.fedexp(current, models, examples, eps=self.eps)[0]


class RuleAggregation(FedAvg):
    """FedAvg's messaging; the next global model is `rule.combine(models, examples, current)`.

    `local_loss` is sent to the clients with every `train` message (the loss they train with)."""

    def __init__(self, *, rule, local_loss: str, **flower_kwargs) -> None:
        super().__init__(**flower_kwargs)
        self.rule = rule
        self.local_loss = local_loss
        self._current: ArrayRecord | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid):
        config["local-loss"] = self.local_loss
        self._current = arrays  # the global model this round's clients start from
        return super().configure_train(server_round, arrays, config, grid)

    def combine(
        self, models: Models, examples: list[int], current: list[np.ndarray], replies: list
    ) -> list[np.ndarray]:
        """The next global model; strategies that weigh clients by who they are override this."""
        return self.rule.combine(models, examples, current)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contents = [message.content for message in valid]
        keys = list(contents[0]["arrays"].keys())
        models = [[content["arrays"][key].numpy() for key in keys] for content in contents]
        examples = [int(content["metrics"]["num-examples"]) for content in contents]
        current = [self._current[key].numpy() for key in keys] if self._current else []
        combined = self.combine(models, examples, current, valid)
        pairs = zip(keys, combined, strict=True)
        # np.require keeps 0-d tensors 0-d (BatchNorm's num_batches_tracked);
        # np.ascontiguousarray would make them shape (1,)
        arrays = ArrayRecord(
            array_dict={k: Array(np.require(a, requirements="C")) for k, a in pairs}
        )
        return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)
