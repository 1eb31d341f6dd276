"""Aggregation rules, and the strategies that are FedAvg's messaging plus one rule.

A rule turns the round's uploaded models (lists of numpy arrays, in the replies' fixed order),
their sample counts and the global model they started from into the next global model. The
mathematics is in strategies.aggregation; `RuleStrategy` (strategies.base) only unpacks
Flower's messages.

- `GeometricMedian`: MaskedOptim's and RFA's rule (fidelity §5.1).
- `SampleWeightedMean`: FedAvg's rule, for strategies that differ from FedAvg only in the loss
  their clients train with (symmetric-ce).
- `LowerMedian`, `KrumFnbench`, `TrimmedMeanFnbench`, `FedExp`: the authors' baselines as
  FNBench implements them (fidelity §5.2), beside Flower's own FedMedian, Krum and FedTrimmedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Message

from common.errors import ConfigError
from common.protocol import (
    CENTROIDS,
    COTEACH_TRAIN,
    DIVIDEMIX_TRAIN,
    FEDLSR_TRAIN,
    JOINT_TRAIN,
    PEER_ARRAYS,
    ROBUSTFL_TRAIN,
    SELFIE_TRAIN,
    CoteachSettings,
    DivideMixSettings,
    FedlsrSettings,
    RobustflSettings,
    SampleLabelSettings,
)
from strategies import aggregation
from strategies.base import (
    SeededStrategy,
    StrategyParams,
    array_record,
    check_stage_starts,
    retyped,
    take_records,
)

Models = list[list[np.ndarray]]


@dataclass(frozen=True)
class GeometricMedian:
    """How the uploaded models are combined (fidelity §5.1, §11.2 row 10)."""

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


class RuleStrategy(SeededStrategy):
    """FedAvg's messaging; the next global model is `rule.combine(models, examples, current)`
    with the rule that `make_rule` builds from the strategy's parameters."""

    def __init__(self, params: StrategyParams, **base) -> None:
        super().__init__(params, **base)
        self.rule = self.make_rule(params)

    @staticmethod
    def make_rule(params):
        raise NotImplementedError

    def combine(self, models, examples, current, replies) -> list[np.ndarray]:
        return self.rule.combine(models, examples, current)


@dataclass(frozen=True)
class GeometricMedianParams(StrategyParams):
    gm_scope: str
    gm_weighted: bool
    gm_max_iter: int
    gm_eps: float

    def median(self) -> GeometricMedian:
        return GeometricMedian(
            scope=self.gm_scope,
            weighted=self.gm_weighted,
            max_iter=self.gm_max_iter,
            eps=self.gm_eps,
        )


class Rfa(RuleStrategy):
    names = ("rfa",)
    description = "plain CE + geometric median (RFA; MaskedOptim's aggregation without detection)"
    Params = GeometricMedianParams
    local_loss = "ce"
    make_rule = staticmethod(GeometricMedianParams.median)


class MedianTorch(RuleStrategy):
    names = ("median-torch",)
    description = "coordinate-wise median, the lower middle value for an even count (the authors')"
    local_loss = "ce"
    make_rule = staticmethod(lambda params: LowerMedian())


@dataclass(frozen=True)
class CompromisedRate(StrategyParams):
    """f = int(clients-per-round x compromised-rate) assumed malicious, as FNBench sets it."""

    compromised_rate: float

    def malicious(self, sampled: int) -> int:
        return int(sampled * self.compromised_rate)

    def require(self, who: str, rule: str, factor: int, sampled: int, num_clients: int) -> None:
        """ConfigError unless sampled >= factor * f + 3 (Krum: 2, Bulyan: 4), naming the ways
        out, each of which passes: the largest compromised-rate for these clients per round,
        and the fewest clients per round for this rate (beyond the federation: say so)."""
        if sampled >= factor * self.malicious(sampled) + 3:
            return
        ways = []
        if sampled >= 3:
            ways.append(f"set compromised-rate={self.largest_rate(sampled, factor)} or lower")
        fewest = next(  # the smallest that works, if any (a rate >= 1/factor has none)
            (m for m in range(max(sampled, 3), 10_000) if m >= factor * self.malicious(m) + 3),
            None,
        )
        if fewest is not None and fewest <= num_clients:
            ways.append(f"set clients-per-round={fewest} or more")
        elif fewest is not None:
            ways.append(
                f"give the federation {fewest} clients or more (it has {num_clients}) and "
                f"clients-per-round={fewest}"
            )
        if not ways:  # fewer than 3 clients a round, and a rate no count of clients can carry
            ways.append(
                f"set clients-per-round=3 and compromised-rate={self.largest_rate(3, factor)} "
                "or lower"
                + (f" (the federation has {num_clients} clients)" if num_clients < 3 else "")
            )
        fix = " or ".join(ways)
        raise ConfigError(
            f"{who} clients-per-round >= {rule} with f = int(clients-per-round x "
            f"compromised-rate) = {self.malicious(sampled)}; got {sampled} clients per round. "
            f"{fix[0].upper()}{fix[1:]}"
        )

    @staticmethod
    def largest_rate(sampled: int, factor: int) -> float:
        """The largest rate in steps of 0.001 with sampled >= factor * int(sampled x rate) + 3:
        int(sampled x k / 1000) <= f_max exactly when sampled x k < (f_max + 1) x 1000."""
        most_malicious = (sampled - 3) // factor
        return ((most_malicious + 1) * 1000 - 1) // sampled / 1000


@dataclass(frozen=True)
class TrimmedMeanParams(CompromisedRate):
    def check(self, *, sampled: int, num_clients: int, num_rounds: int) -> None:
        f = self.malicious(sampled)
        if sampled - 2 * f < 1:
            raise ConfigError(
                f"trimmedmean-fnbench keeps clients-per-round - 2f models with f = {f}; got "
                f"{sampled} clients per round, which keeps none. Lower compromised-rate below 0.5"
            )


class TrimmedMeanFnbenchStrategy(RuleStrategy):
    names = ("trimmedmean-fnbench",)
    description = (
        "the authors' TrimmedMean: mean of the m - 2f models with the most typical distance"
    )
    Params = TrimmedMeanParams
    local_loss = "ce"
    make_rule = staticmethod(lambda params: TrimmedMeanFnbench(params.compromised_rate))


class KrumFnbenchStrategy(RuleStrategy):
    names = ("krum-fnbench",)
    description = "the authors' Krum: the model nearest all others (a medoid)"
    local_loss = "ce"
    make_rule = staticmethod(lambda params: KrumFnbench())


class FedExpStrategy(RuleStrategy):
    names = ("fedexp",)
    description = "FedAvg's update extrapolated by FedExP's server step size"
    local_loss = "ce"
    make_rule = staticmethod(lambda params: FedExp())


@dataclass(frozen=True)
class ClippingParams(StrategyParams):
    max_grad_norm: float

    def check(self, *, sampled: int, num_clients: int, num_rounds: int) -> None:
        if self.max_grad_norm <= 0:
            raise ConfigError(
                f"max-grad-norm={self.max_grad_norm} is not allowed: clipping needs a norm > 0"
            )


class Clipping(RuleStrategy):
    """FNBench's `clipping` (fl_components/update.py, LocalUpdateClipping): CE training whose
    every step's gradient, the whole model's as one vector, is clipped to norm `max-grad-norm`
    (torch.nn.utils.clip_grad_norm_, FNBench's default 5.0); FedAvg's sample-weighted mean."""

    names = ("clipping",)
    description = "FedAvg whose clients clip every step's gradient norm to max-grad-norm (FNBench)"
    Params = ClippingParams
    local_loss = "ce"
    make_rule = staticmethod(lambda params: SampleWeightedMean())


@dataclass(frozen=True)
class SampleLabelParams(StrategyParams):
    label_history: int
    label_warmup_rounds: int

    def check(self, *, sampled: int, num_clients: int, num_rounds: int) -> None:
        if self.label_history < 1:
            raise ConfigError(f"label-history={self.label_history} must be at least 1")
        check_stage_starts("label-warmup-rounds", self.label_warmup_rounds, num_rounds)


class SampleLabelStrategy(RuleStrategy):
    """FedAvg whose clients keep a per-sample label state (`message_type`'s handler) that
    starts correcting after `label-warmup-rounds`."""

    message_type: str = ""
    make_rule = staticmethod(lambda params: SampleWeightedMean())

    def configure_sampled(self, server_round, arrays, config, view):
        # FNBench corrects once its 0-based round counter reaches the warm-up
        state = SampleLabelSettings(
            label_history=self.params.label_history,
            correcting=server_round > self.params.label_warmup_rounds,
        ).to_config()
        sampled = super().configure_sampled(server_round, arrays, config, view)
        return [retyped(message, self.message_type, state) for message in sampled]


@dataclass(frozen=True)
class JointOptimParams(SampleLabelParams):
    joint_optim_alpha: float
    joint_optim_beta: float

    def check(self, *, sampled: int, num_clients: int, num_rounds: int) -> None:
        super().check(sampled=sampled, num_clients=num_clients, num_rounds=num_rounds)
        for key, value in (
            ("joint-optim-alpha", self.joint_optim_alpha),
            ("joint-optim-beta", self.joint_optim_beta),
        ):
            if value < 0:
                raise ConfigError(f"{key}={value} is not allowed: it must be >= 0")


class JointOptim(SampleLabelStrategy):
    """Joint Optimization (Tanaka et al., CVPR 2018) as local training under FedAvg, as FNBench
    runs it (client_app.joint_optim): clients train on soft labels with the prior and entropy
    terms; after `label-warmup-rounds` their soft labels follow their recorded predictions."""

    names = ("joint-optim",)
    description = (
        "FedAvg whose clients train with Joint Optimization (Tanaka et al., CVPR 2018): soft "
        "labels updated from each sample's recent predictions, prior and entropy terms"
    )
    Params = JointOptimParams
    local_loss = "joint-optim"
    message_type = JOINT_TRAIN


@dataclass(frozen=True)
class SelfieParams(SampleLabelParams):
    selfie_noise_rate: float
    selfie_uncertainty: float

    def check(self, *, sampled: int, num_clients: int, num_rounds: int) -> None:
        super().check(sampled=sampled, num_clients=num_clients, num_rounds=num_rounds)
        if not 0.0 <= self.selfie_noise_rate < 1.0:
            raise ConfigError(
                f"selfie-noise-rate={self.selfie_noise_rate} must be in [0, 1): the share of "
                "each batch left out as high-loss"
            )
        if not 0.0 <= self.selfie_uncertainty <= 1.0:
            raise ConfigError(f"selfie-uncertainty={self.selfie_uncertainty} must be in [0, 1]")


class Selfie(SampleLabelStrategy):
    """SELFIE (Song et al., ICML 2019) as local training under FedAvg, as FNBench runs it
    (client_app.selfie): after `label-warmup-rounds`, each batch trains on its small-loss samples
    and on the samples whose prediction history is certain, with that history's label."""

    names = ("selfie",)
    description = (
        "FedAvg whose clients train with SELFIE (Song et al., ICML 2019): small-loss samples "
        "plus samples refurbished with the label of a certain prediction history"
    )
    Params = SelfieParams
    local_loss = "selfie"
    message_type = SELFIE_TRAIN


@dataclass(frozen=True)
class CoteachingParams(StrategyParams):
    forget_rate: float
    coteaching_ramp_rounds: int

    def check(self, *, sampled: int, num_clients: int, num_rounds: int) -> None:
        if not 0.0 <= self.forget_rate < 1.0:
            raise ConfigError(f"forget-rate={self.forget_rate} must be in [0, 1)")
        if self.coteaching_ramp_rounds < 0:
            raise ConfigError(
                f"coteaching-ramp-rounds={self.coteaching_ramp_rounds} must be 0 or more"
            )


class TwoNetworks(RuleStrategy):
    """FedAvg of two networks per client (Co-teaching, DivideMix): every client trains the
    global model and a second network, both uploaded and each averaged as FedAvg does. The
    first is the run's global model (evaluated, checkpointed like any); the second is this
    strategy's state, sent as `peer-arrays`, initialised by the ServerApp (`needs_peer_model`)
    with its own seed. A subclass names its `message_type` and its `round_settings`."""

    local_loss = "ce"
    make_rule = staticmethod(lambda params: SampleWeightedMean())
    state_keys = ("peer_model",)
    needs_peer_model = True  # the ServerApp sets peer_model to a seeded initialisation
    message_type: str = ""

    def __init__(self, params, **base) -> None:
        super().__init__(params, **base)
        self.peer_model: dict[str, np.ndarray] | None = None  # the second network's global model

    def round_settings(self, server_round: int):
        """The protocol Settings of the round's training messages."""
        raise NotImplementedError

    def configure_sampled(self, server_round, arrays, config, view):
        if self.peer_model is None:
            raise RuntimeError(f"{self.names[0]}: no second network (the ServerApp sets it)")
        settings = self.round_settings(server_round).to_config()
        sampled = super().configure_sampled(server_round, arrays, config, view)
        return [
            retyped(m, self.message_type, settings, {PEER_ARRAYS: array_record(self.peer_model)})
            for m in sampled
        ]

    def aggregate_models(self, server_round: int, replies: list[Message]):
        """The global model as FedAvg; the second network the same way, over the replies
        whose second network is finite (none: it stays as it was)."""
        examples = {r.metadata.src_node_id: r.content["metrics"]["num-examples"]
                    for r in replies if not r.has_error()}  # fmt: skip
        peers = [
            (peer, int(examples[node]))
            for node, peer in take_records(replies, PEER_ARRAYS).items()
            if aggregation.is_finite_model([a.numpy() for a in peer.values()])
        ]
        arrays, metrics = super().aggregate_models(server_round, replies)
        if peers:
            keys = list(peers[0][0].keys())
            models = [[peer[k].numpy() for k in keys] for peer, _ in peers]
            examples = [count for _, count in peers]
            self.peer_model = dict(
                zip(keys, aggregation.weighted_mean(models, examples), strict=True)
            )
        return arrays, metrics


class Coteaching(TwoNetworks):
    """Co-teaching (Han et al., NeurIPS 2018) as local training under FedAvg, as FNBench runs it
    (client_app.coteaching): the two networks exchange their small-loss samples."""

    names = ("coteaching",)
    description = (
        "FedAvg of two networks per client that train on each other's small-loss samples "
        "(Co-teaching, Han et al., NeurIPS 2018), with the forget-rate schedule"
    )
    Params = CoteachingParams
    message_type = COTEACH_TRAIN

    def disagreement(self, server_round: int) -> bool:
        return False

    def round_settings(self, server_round: int) -> CoteachSettings:
        from client_app.coteaching import forget_rate  # the one schedule (pure, torch-free)

        return CoteachSettings(
            forget_rate=forget_rate(
                server_round, self.params.forget_rate, self.params.coteaching_ramp_rounds
            ),
            disagreement=self.disagreement(server_round),
        )


@dataclass(frozen=True)
class DivideMixParams(StrategyParams):
    label_warmup_rounds: int
    p_threshold: float
    dividemix_alpha: float
    dividemix_lambda_u: float
    dividemix_temperature: float

    def check(self, *, sampled: int, num_clients: int, num_rounds: int) -> None:
        # FNBench warms DivideMix up while its 0-based round is <= the warm-up: one round more
        check_stage_starts(
            "label-warmup-rounds", self.label_warmup_rounds, num_rounds,
            last=self.label_warmup_rounds + 1,
        )  # fmt: skip
        if not 0.0 <= self.p_threshold < 1.0:
            raise ConfigError(f"p-threshold={self.p_threshold} must be in [0, 1)")
        if self.dividemix_alpha <= 0:
            raise ConfigError(f"dividemix-alpha={self.dividemix_alpha} must be > 0")
        if self.dividemix_lambda_u < 0:
            raise ConfigError(f"dividemix-lambda-u={self.dividemix_lambda_u} must be >= 0")
        if not 0.0 < self.dividemix_temperature <= 1.0:
            raise ConfigError(
                f"dividemix-temperature={self.dividemix_temperature} must be in (0, 1]: "
                "sharpening raises probabilities to the power 1/T"
            )


class DivideMix(TwoNetworks):
    """DivideMix (Li et al., ICLR 2020) as local training under FedAvg, as FNBench runs it
    (client_app.dividemix): after the warm-up, each network trains on the other's
    Gaussian-mixture division of the samples with MixMatch."""

    names = ("dividemix",)
    description = (
        "FedAvg of two networks per client trained with DivideMix (Li et al., ICLR 2020): "
        "co-divided samples, label co-guessing and refinement, MixMatch"
    )
    Params = DivideMixParams
    message_type = DIVIDEMIX_TRAIN

    def round_settings(self, server_round: int) -> DivideMixSettings:
        done = server_round - 1  # FNBench's 0-based round; it warms up while done <= warm-up
        return DivideMixSettings(
            warm=done <= self.params.label_warmup_rounds,
            rounds_after_warmup=float(done - self.params.label_warmup_rounds),
            p_threshold=self.params.p_threshold,
            dividemix_alpha=self.params.dividemix_alpha,
            dividemix_lambda_u=self.params.dividemix_lambda_u,
            dividemix_temperature=self.params.dividemix_temperature,
        )


@dataclass(frozen=True)
class CoteachingPlusParams(CoteachingParams):
    disagreement_start_round: int

    def check(self, *, sampled: int, num_clients: int, num_rounds: int) -> None:
        super().check(sampled=sampled, num_clients=num_clients, num_rounds=num_rounds)
        check_stage_starts("disagreement-start-round", self.disagreement_start_round, num_rounds)


class CoteachingPlus(Coteaching):
    """Co-teaching+ (Yu et al., ICML 2019): Co-teaching until `disagreement-start-round`
    (FNBench's `init_epoch`, 10), then the exchange only on the samples the two networks
    disagree on."""

    names = ("coteaching-plus",)
    description = (
        "Co-teaching+ (Yu et al., ICML 2019): Co-teaching, then the small-loss exchange only "
        "on the samples where the two networks disagree"
    )
    Params = CoteachingPlusParams

    def disagreement(self, server_round: int) -> bool:
        # FNBench switches once its 0-based round counter reaches init_epoch
        return server_round > self.params.disagreement_start_round


@dataclass(frozen=True)
class RobustflParams(StrategyParams):
    forget_rate: float
    robustfl_ramp_rounds: int
    robustfl_pseudo_rounds: int
    robustfl_lambda_cen: float
    robustfl_lambda_e: float

    def check(self, *, sampled: int, num_clients: int, num_rounds: int) -> None:
        if not 0.0 <= self.forget_rate < 1.0:
            raise ConfigError(f"forget-rate={self.forget_rate} must be in [0, 1)")
        for key, value in (
            ("robustfl-ramp-rounds", self.robustfl_ramp_rounds),
            ("robustfl-pseudo-rounds", self.robustfl_pseudo_rounds),
            ("robustfl-lambda-cen", self.robustfl_lambda_cen),
            ("robustfl-lambda-e", self.robustfl_lambda_e),
        ):
            if value < 0:
                raise ConfigError(f"{key}={value} is not allowed: it must be 0 or more")
        # pseudo-labels from the (1-based) round T_pl + 1 on
        check_stage_starts("robustfl-pseudo-rounds", self.robustfl_pseudo_rounds, num_rounds)

    def settings(self, server_round: int) -> RobustflSettings:
        """Round `server_round`'s settings (FNBench's 0-based round g = server_round - 1): the
        forget-rate ramp, lambda_cen * g / T_pl while g < T_pl, pseudo-labels once g >= T_pl."""
        from client_app.coteaching import forget_rate  # the one schedule (pure, torch-free)

        done = server_round - 1
        pseudo = self.robustfl_pseudo_rounds
        ramp = min(1.0, done / pseudo) if pseudo > 0 else 1.0
        return RobustflSettings(
            forget_rate=forget_rate(server_round, self.forget_rate, self.robustfl_ramp_rounds),
            lambda_cen=self.robustfl_lambda_cen * ramp,
            robustfl_lambda_e=self.robustfl_lambda_e,
            use_pseudo=done >= pseudo,
        )


class Robustfl(RuleStrategy):
    """RobustFL (Yang et al., IEEE Intelligent Systems 2022) as FNBench runs it
    (client_app.robustfl): clients train with small-loss selection, centroid-guided
    pseudo-labels, a centroid loss and an entropy term, and upload their class-wise feature
    centroids with their model; the model is averaged as FedAvg does, the centroids by their
    similarity to the global ones (aggregation.similarity_weighted_centroids). The global
    centroids are this strategy's state (None until round 1's uploads)."""

    names = ("robustfl",)
    description = (
        "RobustFL (Yang et al., 2022): small-loss samples, labels checked against class-wise "
        "feature centroids shared by the server, global-guided pseudo-labels; FedAvg"
    )
    Params = RobustflParams
    local_loss = "ce"
    make_rule = staticmethod(lambda params: SampleWeightedMean())
    state_keys = ("centroids",)

    def __init__(self, params, **base) -> None:
        super().__init__(params, **base)
        self.centroids: np.ndarray | None = None  # (C, D) float32, the global class centroids

    def configure_sampled(self, server_round, arrays, config, view):
        settings = self.params.settings(server_round).to_config()
        records = {}
        if self.centroids is not None:
            records[CENTROIDS] = array_record({CENTROIDS: self.centroids})
        sampled = super().configure_sampled(server_round, arrays, config, view)
        return [retyped(m, ROBUSTFL_TRAIN, settings, records) for m in sampled]

    def aggregate_models(self, server_round: int, replies: list[Message]):
        """The model as FedAvg; the centroids of the replies whose centroids are finite (none:
        the global ones stay as they were)."""
        examples = {r.metadata.src_node_id: r.content["metrics"]["num-examples"]
                    for r in replies if not r.has_error()}  # fmt: skip
        uploads = []
        for node, record in take_records(replies, CENTROIDS).items():
            centroids = record[CENTROIDS].numpy()
            if np.isfinite(centroids).all():
                uploads.append((centroids, int(examples[node])))
        arrays, metrics = super().aggregate_models(server_round, replies)
        if uploads:
            self.centroids = aggregation.similarity_weighted_centroids(
                self.centroids, [c for c, _ in uploads], [n for _, n in uploads]
            )
        return arrays, metrics


@dataclass(frozen=True)
class FedlsrParams(StrategyParams):
    fedlsr_gamma: float
    fedlsr_gamma_e: float
    fedlsr_temperature: float
    fedlsr_warmup_ratio: float

    def check(self, *, sampled: int, num_clients: int, num_rounds: int) -> None:
        for key, value in (
            ("fedlsr-gamma", self.fedlsr_gamma),
            ("fedlsr-gamma-e", self.fedlsr_gamma_e),
        ):
            if value < 0:
                raise ConfigError(f"{key}={value} is not allowed: it must be 0 or more")
        if self.fedlsr_temperature <= 0:
            raise ConfigError(f"fedlsr-temperature={self.fedlsr_temperature} must be > 0")
        if not 0.0 <= self.fedlsr_warmup_ratio <= 1.0:
            raise ConfigError(f"fedlsr-warmup-ratio={self.fedlsr_warmup_ratio} must be in [0, 1]")

    def settings(self, server_round: int, num_rounds: int) -> FedlsrSettings:
        """Round `server_round`'s settings: gamma * g / W while g < W (FNBench's 0-based round
        g = server_round - 1, W = ratio x rounds), then gamma."""
        warmup = self.fedlsr_warmup_ratio * num_rounds
        done = server_round - 1
        gamma = self.fedlsr_gamma * done / warmup if done < warmup else self.fedlsr_gamma
        return FedlsrSettings(
            gamma=gamma,
            fedlsr_gamma_e=self.fedlsr_gamma_e,
            fedlsr_temperature=self.fedlsr_temperature,
        )


class Fedlsr(RuleStrategy):
    """FedLSR (Jiang et al., CIKM 2022) as local training under FedAvg, as FNBench runs it
    (client_app.fedlsr): two views per batch, a sharpened mixed prediction, self-distillation
    between the views and entropy regularisation."""

    names = ("fedlsr",)
    description = (
        "FedLSR (Jiang et al., CIKM 2022): local self-regularisation, two augmented views with "
        "a sharpened mixed prediction, self-distillation and entropy terms; FedAvg"
    )
    Params = FedlsrParams
    local_loss = "ce"
    make_rule = staticmethod(lambda params: SampleWeightedMean())
    input_kinds = ("image",)  # its second view is a colour distortion

    def configure_sampled(self, server_round, arrays, config, view):
        settings = self.params.settings(server_round, self.num_rounds).to_config()
        sampled = super().configure_sampled(server_round, arrays, config, view)
        return [retyped(message, FEDLSR_TRAIN, settings) for message in sampled]


@dataclass(frozen=True)
class SymmetricCeParams(StrategyParams):
    sce_alpha: float
    sce_beta: float


class SymmetricCe(RuleStrategy):
    names = ("symmetric-ce",)
    description = "FedAvg with the symmetric cross-entropy loss (alpha CE + beta reverse CE)"
    Params = SymmetricCeParams
    local_loss = "symmetric-ce"
    make_rule = staticmethod(lambda params: SampleWeightedMean())
