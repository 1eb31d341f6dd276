"""The run configuration: every `[tool.flwr.app.config]` key, typed.

Flower hands both apps a flat `run_config` mapping (pyproject defaults merged with `--run-config`
overrides). `RunConfig.from_mapping` turns it into a typed, frozen object and rejects what is
common to all keys (types, ranges, finiteness, the choices this module owns) with a message
that names the key, the value and what is allowed. The names that other parts own (dataset,
partition, noise, model, strategy) are checked by their owners, all at once by
server_app.checks.check_run_config. The defaults live only in `pyproject.toml`
(`app_defaults()` reads them), so there is one source. Nothing of the project is imported here.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.acceleration import PRECISIONS
from common.attacks import ATTACKS
from common.errors import ConfigError
from common.protocol import parse_masked_terms

PROJECT_ROOT = Path(__file__).resolve().parents[1]

GM_SCOPES = ("per-tensor", "whole-model")
# strategies.detection: the authors' GMM on per-class losses, or issue 22's robust client score
NOISY_DETECTORS = ("per-class-gmm", "robust-score")
# what maskedoptim's flagged clients train with: the authors' masked optimisation, or FedNoRo's
# distillation from the global model (issue 22)
NOISY_TRAININGS = ("masked", "la-distill")
# what the mildly noisy flagged clients train with (issue 22): like the others, relabelled only,
# or like clean clients with a smaller aggregation weight
MILD_TRAININGS = ("la-distill", "relabel", "down-weight")
LOCAL_LOSSES = ("ce", "logit-adjusted", "symmetric-ce")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class RunConfig:
    """Typed view of the run config; field names are the keys with '-' replaced by '_'."""

    strategy: str
    dataset: str
    data_dir: str
    download: bool
    cifar10n_labels: str
    model: str
    pretrained_weights: str
    num_rounds: int
    clients_per_round: int | float
    local_epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    local_loss: str
    partition: str
    dirichlet_alpha: float
    dirichlet_min_size: int
    shards_per_client: int
    noise_type: str
    noise_rate: str
    noise_groups: str
    seed: int
    device: str
    precision: str
    channels_last: bool
    cudnn_benchmark: bool
    cuda_graphs: bool
    eval_batch_size: int
    fraction_evaluate: float
    proximal_mu: float
    trimmed_beta: float
    compromised_rate: float
    out_dir: str
    run_name: str
    on_divergence: str
    checkpoint_every: int
    resume: bool
    client_state_dir: str
    attack: str
    attack_fraction: float
    attack_scale: float
    attack_mean: float
    attack_std: float
    attack_epsilon: float
    test_dir: str
    classes: str
    classes_file: str
    image_size: int
    image_channels: int
    image_augment: str
    text_column: str
    label_column: str
    vocab_file: str
    labels_every: int
    warmup_rounds: int
    gmm_fits: int
    noisy_detector: str
    noisy_components: int
    noisy_training: str
    distill_relabel_below: float
    mild_training: str
    mild_weight: float
    strong_model_agreement: float
    noisy_threshold: float
    class_loss_batch_size: int
    mask_keep: float
    masked_terms: str
    compat_weight: float
    entropy_weight: float
    label_lr: float
    label_scale: float
    premerge_local_weight: float
    label_merge_confidence: float
    label_step_confidence: float
    masked_fp16: bool
    gm_scope: str
    gm_weighted: bool
    gm_max_iter: int
    gm_eps: float
    baseline_warmup_rounds: int
    fedelc_entropy_weight: float
    sce_alpha: float
    sce_beta: float
    max_grad_norm: float
    joint_optim_alpha: float
    joint_optim_beta: float
    label_history: int
    label_warmup_rounds: int
    selfie_noise_rate: float
    selfie_uncertainty: float
    forget_rate: float
    coteaching_ramp_rounds: int
    disagreement_start_round: int
    robustfl_ramp_rounds: int
    robustfl_pseudo_rounds: int
    robustfl_lambda_cen: float
    robustfl_lambda_e: float
    fedrn_neighbours: int
    fedrn_alpha: float
    p_threshold: float
    dividemix_alpha: float
    dividemix_lambda_u: float
    dividemix_temperature: float
    feddiv_clean_threshold: float
    feddiv_xi: float
    feddiv_momentum: float
    fedlsr_gamma: float
    fedlsr_gamma_e: float
    fedlsr_temperature: float
    fedlsr_warmup_ratio: float
    fednoro_kd_weight: float
    fednoro_temperature: float
    fedcorr_iterations: int
    fedcorr_finetune_rounds: int
    fedcorr_prox_beta: float
    fedcorr_lid_k: int
    fedcorr_relabel_ratio: float
    fedcorr_confidence: float
    fedcorr_clean_threshold: float
    fedcorr_mixup_alpha: float

    @classmethod
    def from_mapping(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Parse and validate a Flower run config: one ConfigError naming every missing key,
        value of the wrong type, and value out of its range or choices (see parsed)."""
        config, problems, _ = cls.parsed(run_config)
        if problems:
            raise config_error(problems)
        return config

    @classmethod
    def parsed(cls, run_config: Mapping[str, Any]) -> tuple[RunConfig, list[str], set[str]]:
        """(the config, every problem of its values, the keys missing or of the wrong type):
        each missing key, value of the wrong type, and value out of its range or choices, one
        message each. A key missing or of the wrong type holds a stand-in value of its type in
        the config, so that the other keys are checked too."""
        values: dict[str, Any] = {}
        problems: dict[str, str] = {}  # key -> message
        for field in dataclasses.fields(cls):
            key = field.name.replace("_", "-")
            if key not in run_config:
                problems[key] = f"run config is missing key '{key}' (see pyproject.toml)"
            else:
                try:
                    values[field.name] = _coerce(key, run_config[key], field.type)
                    continue
                except ConfigError as err:
                    problems[key] = str(err)
            values[field.name] = _PLACEHOLDERS[field.type]  # so the other keys are checked too
        config = cls(**values)
        unparsed = set(problems)
        problems = config.problems() | problems  # a key's own type problem wins
        return config, list(problems.values()), unparsed

    def to_mapping(self) -> dict[str, Any]:
        """The run config as Flower spells it (kebab-case keys)."""
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}

    def clients_sampled(self, num_clients: int) -> int:
        """Clients per round. An integer is a count (0: 10 % of the clients, at least 1, as the
        paper samples with frac = 0.1); a number with a decimal point in (0, 1] is a fraction of
        the clients, rounded half up, at least 1 (the default 0.5 fits any federation: Flower's
        own 2 SuperNodes as well as the paper's 100). A count above the number of clients is
        refused (ConfigError), never silently cut."""
        if isinstance(self.clients_per_round, float):
            return max(1, int(self.clients_per_round * num_clients + 0.5))
        wanted = self.clients_per_round or max(int(0.1 * num_clients), 1)
        if wanted > num_clients:
            raise ConfigError(
                f"clients-per-round={wanted} is larger than the number of clients "
                f"({num_clients}); use at most {num_clients}, or a fraction such as "
                "clients-per-round=0.5"
            )
        return wanted

    def problems(self) -> dict[str, str]:
        """{key: message} for every value out of its range or choices (a key with several
        faults: its first), in the order of the checks."""
        problems: dict[str, str] = {}

        def bad(key: str, message: str) -> None:
            problems.setdefault(key, message)

        for key, value, allowed in (
            ("local-loss", self.local_loss, LOCAL_LOSSES),
            ("device", self.device, DEVICES),
            ("precision", self.precision, PRECISIONS),
            ("gm-scope", self.gm_scope, GM_SCOPES),
            ("noisy-detector", self.noisy_detector, NOISY_DETECTORS),
            ("noisy-training", self.noisy_training, NOISY_TRAININGS),
            ("mild-training", self.mild_training, MILD_TRAININGS),
            ("on-divergence", self.on_divergence, ("stop", "continue")),
            ("attack", self.attack, ATTACKS),
        ):
            if value not in allowed:
                near = difflib.get_close_matches(value, allowed, n=1)
                near = ["cuda"] if key == "device" and "gpu" in value.lower() else near
                guess = f" (did you mean '{near[0]}'?)" if near else ""
                bad(key, f"{key}='{value}' is not known{guess}; allowed: {', '.join(allowed)}")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                key = field.name.replace("_", "-")
                bad(key, f"{key}={value} is not allowed: it must be a finite number")
        try:
            parse_masked_terms(self.masked_terms)  # the protocol's one validator
        except ValueError as err:
            bad("masked-terms", str(err))
        for key, value in (
            ("num-rounds", self.num_rounds),
            ("local-epochs", self.local_epochs),
            ("batch-size", self.batch_size),
            ("eval-batch-size", self.eval_batch_size),
            ("shards-per-client", self.shards_per_client),
            ("gmm-fits", self.gmm_fits),
            ("class-loss-batch-size", self.class_loss_batch_size),
            ("gm-max-iter", self.gm_max_iter),
            ("fedcorr-lid-k", self.fedcorr_lid_k),
            ("image-size", self.image_size),
        ):
            if value < 1:
                bad(key, f"{key}={value} is not allowed: it must be at least 1")
        if isinstance(self.clients_per_round, float) and not 0 < self.clients_per_round <= 1:
            bad(
                "clients-per-round",
                f"clients-per-round={self.clients_per_round} is not allowed: a fraction of the "
                "clients is in (0, 1] (e.g. 0.5); a count is an integer (e.g. 5)",
            )
        for key, value in (
            ("clients-per-round", self.clients_per_round),
            ("dirichlet-min-size", self.dirichlet_min_size),
            ("warmup-rounds", self.warmup_rounds),
            ("baseline-warmup-rounds", self.baseline_warmup_rounds),
            ("fedcorr-iterations", self.fedcorr_iterations),
            ("fedcorr-finetune-rounds", self.fedcorr_finetune_rounds),
            ("labels-every", self.labels_every),
            ("checkpoint-every", self.checkpoint_every),
        ):
            if value < 0:
                bad(key, f"{key}={value} is not allowed: it must be 0 or more")
        for key, value in (
            ("lr", self.lr),
            ("weight-decay", self.weight_decay),
            ("proximal-mu", self.proximal_mu),
            ("compat-weight", self.compat_weight),
            ("entropy-weight", self.entropy_weight),
            ("label-lr", self.label_lr),
            ("fedelc-entropy-weight", self.fedelc_entropy_weight),
            ("sce-alpha", self.sce_alpha),
            ("sce-beta", self.sce_beta),
            ("fedcorr-prox-beta", self.fedcorr_prox_beta),
            ("fedcorr-mixup-alpha", self.fedcorr_mixup_alpha),
            ("attack-scale", self.attack_scale),
            ("attack-std", self.attack_std),
            ("attack-epsilon", self.attack_epsilon),
        ):
            if value < 0:
                bad(key, f"{key}={value} is not allowed: it must be >= 0")
        for key, value in (
            ("label-scale", self.label_scale),
            ("gm-eps", self.gm_eps),
            ("fednoro-temperature", self.fednoro_temperature),
        ):
            if value <= 0:
                bad(key, f"{key}={value} is not allowed: it must be > 0")
        if self.dirichlet_alpha <= 0:
            bad("dirichlet-alpha", f"dirichlet-alpha={self.dirichlet_alpha} must be > 0")
        for key, value in (
            ("momentum", self.momentum),
            ("fraction-evaluate", self.fraction_evaluate),
            ("compromised-rate", self.compromised_rate),
            ("noisy-threshold", self.noisy_threshold),
            ("mask-keep", self.mask_keep),
            ("premerge-local-weight", self.premerge_local_weight),
            ("label-merge-confidence", self.label_merge_confidence),
            ("label-step-confidence", self.label_step_confidence),
            ("distill-relabel-below", self.distill_relabel_below),
            ("strong-model-agreement", self.strong_model_agreement),
            ("fednoro-kd-weight", self.fednoro_kd_weight),
            ("fedcorr-relabel-ratio", self.fedcorr_relabel_ratio),
            ("fedcorr-confidence", self.fedcorr_confidence),
            ("fedcorr-clean-threshold", self.fedcorr_clean_threshold),
            ("attack-fraction", self.attack_fraction),
        ):
            if not 0.0 <= value <= 1.0:
                bad(key, f"{key}={value} must be in [0, 1]")
        if not 0.0 < self.mild_weight <= 1.0:  # 0 would drop the mild clients' models
            bad("mild-weight", f"mild-weight={self.mild_weight} must be in (0, 1]")
        if not 0.0 <= self.trimmed_beta < 0.5:
            bad("trimmed-beta", f"trimmed-beta={self.trimmed_beta} must be in [0, 0.5)")
        if self.run_name in (".", "..") or any(c in self.run_name for c in "/\\"):
            bad(
                "run-name",
                f"run-name={self.run_name!r} is not allowed: it names one folder inside out-dir "
                "(no / or \\, not . or ..)",
            )
        if self.seed < 0:
            bad("seed", f"seed={self.seed} is not allowed: it must be 0 or more")
        return problems


def config_error(problems: list[str]) -> ConfigError:
    """One ConfigError for one or more problems: a single one as it is, several as a list."""
    if len(problems) == 1:
        error = ConfigError(problems[0])
    else:
        listed = "".join(f"\n  - {problem}" for problem in problems)
        error = ConfigError(f"{len(problems)} problems in the run config:{listed}")
    error.problems = list(problems)
    return error


def problems_of(error: ConfigError) -> list[str]:
    """The problems a ConfigError names: those of config_error, else its message."""
    return list(getattr(error, "problems", [str(error)]))


# A value of the right type for each field's type, standing in for one of the wrong type while
# the other keys are checked (its own problem is the type's)
_PLACEHOLDERS: dict[str, Any] = {"str": "", "int": 1, "float": 1.0, "bool": False, "int | float": 1}

# Text keys that also take a bare number: noise-rate=0.3 means the single rate "0.3".
_NUMBER_AS_TEXT = frozenset({"noise-rate"})


def _coerce(key: str, value: Any, annotation: str) -> Any:
    """Flower keeps TOML types; accept ints for floats, reject anything else with a clear error."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if annotation == "int | float":  # a count or a fraction, told apart by the decimal point
        if not number:
            raise ConfigError(
                f"{key}={value!r} must be a number (a count, or a fraction in (0, 1])"
            )
        return value
    if key in _NUMBER_AS_TEXT and number:
        return f"{value:g}"
    kind = {"str": str, "int": int, "float": float, "bool": bool}[annotation]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        examples = {"str": f"{key}='text'", "bool": f"{key}=true", "float": f"{key}=0.5"}
        example = examples.get(annotation, f"{key}=3")  # the form only: the key's range applies
        raise ConfigError(f"{key}={value!r} must be of type {annotation} (e.g. {example})")
    return value


def app_defaults(pyproject: Path = PROJECT_ROOT / "pyproject.toml") -> dict[str, Any]:
    """The `[tool.flwr.app.config]` defaults, read from pyproject.toml (the single source)."""
    with open(pyproject, "rb") as handle:
        return dict(tomllib.load(handle)["tool"]["flwr"]["app"]["config"])


def config_with(**overrides: Any) -> RunConfig:
    """The default RunConfig with some keys changed (snake_case names); for tests and scripts."""
    mapping = app_defaults()
    for name, value in overrides.items():
        mapping[name.replace("_", "-")] = value
    return RunConfig.from_mapping(mapping)
