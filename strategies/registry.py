"""From the `strategy` run-config key to a configured Flower strategy.

Flower's own strategies get seeded partition-id sampling mixed in (strategies.sampling), so all
strategies see the same clients in the same rounds for one seed; the authors' aggregation
baselines are pure rules behind one strategy (strategies.rules); `maskedoptim`, `rfa`, `fedelc`
and `fednoro` are in strategies.maskedoptim. docs/baselines.md says what each one does.
"""

from __future__ import annotations

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

from common.config import STRATEGY_NAMES, ConfigError, RunConfig
from strategies.fedcorr import FedCorr, FedCorrSchedule
from strategies.maskedoptim import FedElc, FedNoRo, MaskedOptimStrategy, Rfa
from strategies.rules import (
    FedExp,
    GeometricMedian,
    KrumFnbench,
    LowerMedian,
    RuleAggregation,
    SampleWeightedMean,
    TrimmedMeanFnbench,
)
from strategies.sampling import ClientRoster, SeededSampling

_FLOWER_CLASSES = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
    "multikrum": MultiKrum,
    "bulyan": Bulyan,
}
_SEEDED_CLASSES = {
    name: type(f"Seeded{cls.__name__}", (SeededSampling, cls), {})
    for name, cls in _FLOWER_CLASSES.items()
} | {"maskedoptim": MaskedOptimStrategy, "rfa": Rfa}
# The authors' aggregation baselines (FNBench variants, spec §5.2): plain CE, FedAvg messaging.
_SEEDED_CLASSES |= dict.fromkeys(
    ("median-torch", "trimmedmean-fnbench", "krum-fnbench", "fedexp", "symmetric-ce"),
    type("SeededRuleAggregation", (SeededSampling, RuleAggregation), {}),
) | {"fedelc": FedElc, "fednoro": FedNoRo, "fedcorr": FedCorr}
assert tuple(_SEEDED_CLASSES) == STRATEGY_NAMES, "registry and config disagree on the names"


def malicious_clients(config: RunConfig, clients_per_round: int) -> int:
    """f for the Byzantine-robust rules: int(m * compromised-rate), as FNBench sets it."""
    return int(clients_per_round * config.compromised_rate)


def fedcorr_schedule(config: RunConfig, num_clients: int) -> FedCorrSchedule:
    return FedCorrSchedule(
        num_clients=num_clients,
        per_round=config.clients_sampled(num_clients),
        iterations=config.fedcorr_iterations,
        finetune_rounds=config.fedcorr_finetune_rounds,
    )


def check_strategy_settings(config: RunConfig, num_clients: int) -> None:
    """Reject settings a strategy cannot run with, before any training (ConfigError)."""
    sampled = config.clients_sampled(num_clients)
    f = malicious_clients(config, sampled)
    if config.strategy == "fedcorr":
        schedule = fedcorr_schedule(config, num_clients)
        staged = schedule.preprocess_rounds + schedule.finetune_rounds
        if staged > config.num_rounds:
            raise ConfigError(
                f"fedcorr needs num-rounds >= {staged}: {schedule.iterations} pre-processing "
                f"iterations of {schedule.rounds_per_iteration} rounds (every client once, "
                f"{sampled} per round) + fedcorr-finetune-rounds={schedule.finetune_rounds}; "
                f"got num-rounds={config.num_rounds}. Lower fedcorr-iterations or "
                "fedcorr-finetune-rounds"
            )
    if config.strategy == "bulyan" and sampled < 4 * f + 3:
        if sampled < 3:
            hint = "Sample at least 3 clients per round"
        else:
            hint = (
                f"Lower compromised-rate to at most {((sampled - 3) // 4) / sampled:.3f} or "
                "sample more clients"
            )
        raise ConfigError(
            f"bulyan needs clients-per-round >= 4*f + 3 with f = int(clients-per-round * "
            f"compromised-rate) = {f}; got {sampled} clients per round. {hint}"
        )
    warmups = {
        "maskedoptim": ("warmup-rounds", config.warmup_rounds),
        "fedelc": ("baseline-warmup-rounds", config.baseline_warmup_rounds),
        "fednoro": ("baseline-warmup-rounds", config.baseline_warmup_rounds),
    }
    if config.strategy in warmups:
        key, rounds = warmups[config.strategy]
        if not 1 <= rounds < config.num_rounds:
            raise ConfigError(
                f"{config.strategy} detects noisy clients with the model of its warm-up, so "
                f"{key} must be at least 1 and below num-rounds={config.num_rounds}; got "
                f"{key}={rounds} (detection would never run). For the warm-up alone use "
                "strategy='fedavg' (or 'rfa', MaskedOptim's aggregation)"
            )
    if config.strategy == "trimmedmean-fnbench" and sampled - 2 * f < 1:
        raise ConfigError(
            f"trimmedmean-fnbench keeps clients-per-round - 2f models with f = {f}; got "
            f"{sampled} clients per round, which keeps none. Lower compromised-rate below 0.5"
        )
    if config.strategy in ("krum", "multikrum") and sampled < 2 * f + 3:
        raise ConfigError(
            f"{config.strategy} needs clients-per-round >= 2*f + 3 with f = {f}; got {sampled}"
        )


def build_strategy(config: RunConfig, roster: ClientRoster) -> Strategy:
    """The strategy named by `config.strategy`, sampling over `roster`'s partitions."""
    check_strategy_settings(config, roster.num_clients)
    sampled = config.clients_sampled(roster.num_clients)
    f = malicious_clients(config, sampled)
    median = GeometricMedian(
        scope=config.gm_scope,
        weighted=config.gm_weighted,
        max_iter=config.gm_max_iter,
        eps=config.gm_eps,
    )
    detection = {"gmm_fits": config.gmm_fits, "noisy_threshold": config.noisy_threshold}
    extra = {
        "fedprox": {"proximal_mu": config.proximal_mu},
        "rfa": {"rule": median, "local_loss": "ce"},
        "median-torch": {"rule": LowerMedian(), "local_loss": "ce"},
        "trimmedmean-fnbench": {
            "rule": TrimmedMeanFnbench(config.compromised_rate),
            "local_loss": "ce",
        },
        "krum-fnbench": {"rule": KrumFnbench(), "local_loss": "ce"},
        "fedexp": {"rule": FedExp(), "local_loss": "ce"},
        "symmetric-ce": {"rule": SampleWeightedMean(), "local_loss": "symmetric-ce"},
        "maskedoptim": {
            "rule": median,
            "local_loss": "logit-adjusted",
            "warmup_rounds": config.warmup_rounds,
            **detection,
        },
        "fedelc": {
            "rule": None,  # FedAvg, then distance-aware (FedElc.combine)
            "local_loss": "logit-adjusted",
            "warmup_rounds": config.baseline_warmup_rounds,
            "entropy_weight": config.fedelc_entropy_weight,
            **detection,
        },
        "fednoro": {
            "rule": None,
            "local_loss": "logit-adjusted",
            "warmup_rounds": config.baseline_warmup_rounds,
            "kd_peak": config.fednoro_kd_weight,
            "kd_temperature": config.fednoro_temperature,
            "num_rounds": config.num_rounds,
            **detection,
        },
        "fedtrimmedavg": {"beta": config.trimmed_beta},
        "krum": {"num_malicious_nodes": f},
        "multikrum": {"num_malicious_nodes": f, "num_nodes_to_select": sampled - f},
        "bulyan": {"num_malicious_nodes": f},
        "fedcorr": {
            "schedule": fedcorr_schedule(config, roster.num_clients),
            "prox_beta": config.fedcorr_prox_beta,
            "mixup_alpha": config.fedcorr_mixup_alpha,
            "lid_k": config.fedcorr_lid_k,
            "relabel_ratio": config.fedcorr_relabel_ratio,
            "confidence": config.fedcorr_confidence,
            "clean_threshold": config.fedcorr_clean_threshold,
            "noisy_threshold": config.noisy_threshold,
        },
    }.get(config.strategy, {})
    return _SEEDED_CLASSES[config.strategy](
        roster=roster,
        seed=config.seed,
        clients_per_round=sampled,
        evaluate_clients=round(config.fraction_evaluate * roster.num_clients),
        **extra,
    )
