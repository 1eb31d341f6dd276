"""The client-server protocol: every message type, record key and settings object, in one place.

The server (strategies/) and the client (client_app/) both import this module and nothing of
each other. A strategy sends the complete settings of the round in the message's `config`
record (`Settings.to_config`); the client decodes them (`Settings.from_config`) and never falls
back to its own run config for an algorithm's knob. A settings field has the name of its
run-config key (`-` written `_`) where the knob has one.

Messages (type: what the server sends -> what the client replies):

- `train`: arrays; config: LocalTraining + `server-round` -> arrays; metrics: `num-examples`,
  `train-loss`, `train-seconds`.
- `train.masked`: arrays; config: LocalTraining + MaskedSettings + `server-round` -> the same,
  plus labels: `corrected-confusion`, `masked-rounds`.
- `train.corr`: arrays; config: LocalTraining + CorrSettings + `server-round` -> the same
  metrics plus `lid`.
- `train.joint`, `train.selfie`: arrays; config: LocalTraining + SampleLabelSettings +
  `server-round` -> the `train` reply (Joint Optimization's soft labels, SELFIE's prediction
  history and refurbished labels stay on the client).
- `train.coteach`: arrays and `peer-arrays` (the second network's global model);
  config: LocalTraining + CoteachSettings + `server-round` -> the `train` reply plus
  `peer-arrays` (the client's second network).
- `train.robustfl`: arrays and, after round 1, `centroids` (the global class centroids);
  config: LocalTraining + RobustflSettings + `server-round` -> the `train` reply plus
  `centroids` (the client's).
- `train.fedrn`: arrays, and after the warm-up `previous-arrays` (the client's last upload,
  when the server has one) and `neighbour-arrays-0` ... (its reliable neighbours' last
  uploads, best first); config: LocalTraining + FedrnSettings + `server-round` -> the `train`
  reply plus `fedrn` (a config record: `expertise`, `probe-output`).
- `train.dividemix`: as `train.coteach`, with DivideMixSettings.
- `train.feddiv`: arrays; config: LocalTraining + FeddivSettings + `server-round` -> the
  `train` reply plus `feddiv` (a config record: the local noise filter's `means`, `variances`,
  `weights`).
- `train.fedlsr`: arrays; config: LocalTraining + FedlsrSettings + `server-round` -> the
  `train` reply.
- `query.class_loss`: arrays; config: ClassLossQuery -> metrics: `class-loss`,
  `class-present`, and `class-count` / `class-agree` (samples whose observed label is the
  model's prediction) when the query asks for them; labels: `observed-confusion`.
- `query.relabel`: arrays; config: RelabelQuery -> metrics: `noise-fraction`, `relabelled`;
  labels: `observed-confusion`, `corrected-confusion`.
- `query.whoami`: nothing -> metrics: `partition-id`, `num-partitions`, `num-examples`,
  `true-noise-rate` (NaN: the client's clean labels are unknown).
- `query.labels`: config: LabelsQuery -> the client writes its corrected-labels CSV (where, see
  client_app.label_export) and replies metrics: `has-labels`, `samples`, `labels-changed`,
  `changed-confidence` (only when a label changed); labels: `file`, and the confusions when
  the clean labels are known.
- `evaluate`: arrays -> metrics: `num-examples`, `local-accuracy`, ... .

The `labels` records' confusions (`observed-confusion`, `corrected-confusion`) and
`true-noise-rate` are simulation diagnostics, sent only where the clean labels are known; no
algorithm reads them. `labels-changed` and `changed-confidence` (the masked and relabel replies'
`labels` records too) need no clean labels.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Message types
TRAIN = "train"
MASKED_TRAIN = "train.masked"
CORR_TRAIN = "train.corr"
CLASS_LOSS_QUERY = "query.class_loss"
RELABEL_QUERY = "query.relabel"
WHOAMI_QUERY = "query.whoami"
LABELS_QUERY = "query.labels"
JOINT_TRAIN = "train.joint"
SELFIE_TRAIN = "train.selfie"
COTEACH_TRAIN = "train.coteach"
ROBUSTFL_TRAIN = "train.robustfl"
FEDRN_TRAIN = "train.fedrn"
FEDLSR_TRAIN = "train.fedlsr"
DIVIDEMIX_TRAIN = "train.dividemix"
FEDDIV_TRAIN = "train.feddiv"

# Record keys of a message's content
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
LABELS = "labels"
PEER_ARRAYS = "peer-arrays"  # Co-teaching's second network
CENTROIDS = "centroids"  # RobustFL's class-wise feature centroids, one (C, D) array
PREVIOUS_ARRAYS = "previous-arrays"  # FedRN: the client's own last uploaded model
NEIGHBOUR_ARRAYS = "neighbour-arrays"  # FedRN: `neighbour-arrays-0`, `-1`, ...: best first
FEDRN_REPORT = "fedrn"  # FedRN's reply: `expertise`, `probe-output`
FEDDIV_REPORT = "feddiv"  # FedDiv's reply: the client's local noise filter

SERVER_ROUND = "server-round"


class Settings:
    """A frozen dataclass that encodes itself into a message's config record and back."""

    def to_config(self) -> dict[str, Any]:
        """The fields as config entries, keys in kebab-case."""
        return {
            field.name.replace("_", "-"): getattr(self, field.name)
            for field in dataclasses.fields(self)
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]):
        """The settings from a received config record. Raises ValueError naming a key the
        sender left out (a client never guesses a knob the server did not send)."""
        values = {}
        for field in dataclasses.fields(cls):
            key = field.name.replace("_", "-")
            if key not in config:
                raise ValueError(f"the server's message has no '{key}' ({cls.__name__})")
            kind = {
                "int": int,
                "float": float,
                "bool": bool,
                "str": str,
                "list[float]": lambda values: [float(v) for v in values],
            }[str(field.type)]
            values[field.name] = kind(config[key])
        return cls(**values)


@dataclass(frozen=True)
class LocalTraining(Settings):
    """How a client trains in one round (client_app.training)."""

    local_epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    local_loss: str = "ce"  # one of client_app.training.LOSSES
    proximal_mu: float = 0.0  # FedProx's mu; 0 turns the proximal term off
    sce_alpha: float = 0.1  # symmetric-ce: weight of CE (Wang et al.'s CIFAR-10 value)
    sce_beta: float = 1.0  # symmetric-ce: weight of reverse CE
    kd_weight: float = 0.0  # la-distill (FedNoRo's noisy clients): this round's KD weight
    kd_temperature: float = 0.8  # la-distill: the teacher's temperature (fednoro-temperature)
    # la-distill (maskedoptim, issue 22): train a label as the received model's prediction where
    # that model gives it a probability below this (distill-relabel-below); 0: keep every label
    relabel_below: float = 0.0
    mixup_alpha: float = 0.0  # FedCorr's mixup (Beta(a, a) mixing of each batch); 0: off
    proximal_norm: float = 0.0  # FedCorr's coefficient of the *unsquared* ||w - w_global||
    max_grad_norm: float = 0.0  # clipping: every step's gradient norm is clipped to it; 0: off
    joint_optim_alpha: float = 1.2  # joint-optim: weight of the prior term L_p
    joint_optim_beta: float = 0.8  # joint-optim: weight of the entropy term L_e
    selfie_noise_rate: float = 0.2  # selfie: the share of each batch left out as high-loss
    selfie_uncertainty: float = 0.05  # selfie: the largest normalised entropy to refurbish


# Terms the small-loss mask can apply to (fidelity §11.2 row 6: the authors mask only "compat").
MASKABLE_TERMS = ("compat", "entropy", "class")


@functools.lru_cache(maxsize=32)
def parse_masked_terms(masked_terms: str) -> frozenset[str]:
    """Parse a comma list such as "compat" or "compat,entropy"; "" or "none" masks nothing.
    Raises ValueError naming unknown terms. (The one validator of `masked-terms`.)"""
    names = [t.strip() for t in masked_terms.split(",") if t.strip()]
    if names == ["none"]:
        return frozenset()
    unknown = [t for t in names if t not in MASKABLE_TERMS]
    if unknown:
        raise ValueError(
            f"masked-terms {masked_terms!r} names unknown terms {unknown}; "
            f"allowed: a comma list of {', '.join(MASKABLE_TERMS)} (or 'none')"
        )
    return frozenset(names)


@dataclass(frozen=True)
class MaskedSettings(Settings):
    """MaskedOptim's stage-2 settings for a noisy client (defaults: the authors', fidelity §8);
    FedELC sends mask-keep 1 and premerge-local-weight 1 (no mask, no pre-merge)."""

    mask_keep: float = 0.8  # tau: fraction of each batch KEPT (smallest CE) for the compat term
    compat_weight: float = 0.5  # alpha
    entropy_weight: float = 0.1  # beta
    label_lr: float = 1000.0  # eta: label step, once per epoch
    label_scale: float = 10.0  # K: init K*onehot and rescale after the merge
    premerge_local_weight: float = 0.8  # zeta: upload zeta*local + (1-zeta)*received global
    # merge only where the prediction's top probability reaches this (0: always, the authors')
    label_merge_confidence: float = 0.0
    # step a sample's label logits only where the prediction reaches this (0: always, authors')
    label_step_confidence: float = 0.0
    masked_fp16: bool = False  # the authors' fp16 autocast (no GradScaler); CUDA only
    masked_terms: str = "compat"  # "compat" (authors) or a comma list of compat,entropy,class

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_keep <= 1.0:
            raise ValueError(f"mask-keep must lie in [0, 1], got {self.mask_keep}")
        if not 0.0 <= self.premerge_local_weight <= 1.0:
            raise ValueError(
                f"premerge-local-weight must lie in [0, 1], got {self.premerge_local_weight}"
            )
        for key, value in (
            ("label-merge-confidence", self.label_merge_confidence),
            ("label-step-confidence", self.label_step_confidence),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must lie in [0, 1], got {value}")
        parse_masked_terms(self.masked_terms)  # raises on unknown names


@dataclass(frozen=True)
class CorrSettings(Settings):
    """FedCorr's extra settings of a `train.corr` round."""

    report_lid: bool  # pre-processing: report the LID and keep the per-sample losses
    fedcorr_lid_k: int


@dataclass(frozen=True)
class ClassLossQuery(Settings):
    """Detection's query: the per-class mean loss of the sent model."""

    server_round: int
    class_loss_batch_size: int
    class_counts: bool = False  # also report how many samples of each class (robust-score)
    agreement: bool = False  # and how many the model predicts as labelled (strong-model-agreement)


@dataclass(frozen=True)
class SampleLabelSettings(Settings):
    """A client's per-sample label state (client_app.joint_optim, client_app.selfie)."""

    label_history: int  # predictions kept per sample
    correcting: bool  # after the warm-up: the soft labels follow the predictions


@dataclass(frozen=True)
class CoteachSettings(Settings):
    """Co-teaching's round (client_app.coteaching)."""

    forget_rate: float  # this round's R(t)
    disagreement: bool  # Co-teaching+: exchange only on the samples the networks disagree on


@dataclass(frozen=True)
class FedrnSettings(Settings):
    """FedRN's round (client_app.fedrn)."""

    selecting: bool  # select samples with the sent models (after the warm-up)
    has_previous: bool  # `previous-arrays` is sent; its score is the first of `scores`
    scores: list[float]  # reliability scores: the previous model's (if sent), the neighbours'
    p_threshold: float  # a sample is kept when its combined clean probability exceeds it


@dataclass(frozen=True)
class DivideMixSettings(Settings):
    """DivideMix's round (client_app.dividemix)."""

    warm: bool  # the warm-up: both networks with CE
    rounds_after_warmup: float  # for lambda_u's ramp
    p_threshold: float  # a sample is labelled when its clean probability exceeds it
    dividemix_alpha: float  # MixMatch's Beta(alpha, alpha)
    dividemix_lambda_u: float  # the unlabelled loss's weight after its ramp
    dividemix_temperature: float  # sharpening


@dataclass(frozen=True)
class FeddivSettings(Settings):
    """FedDiv's round (client_app.feddiv)."""

    warm: bool  # the warm-up: CE on every sample (the local filter is still fitted)
    filter_means: list[float]  # the global noise filter; empty before the first one
    filter_variances: list[float]
    filter_weights: list[float]
    p_threshold: float
    feddiv_clean_threshold: float
    feddiv_xi: float
    feddiv_momentum: float


@dataclass(frozen=True)
class FedlsrSettings(Settings):
    """FedLSR's round (client_app.fedlsr)."""

    gamma: float  # this round's self-distillation weight (ramped over the warm-up)
    fedlsr_gamma_e: float
    fedlsr_temperature: float


@dataclass(frozen=True)
class RobustflSettings(Settings):
    """RobustFL's round (client_app.robustfl)."""

    forget_rate: float  # this round's R(t)
    lambda_cen: float  # this round's centroid-loss weight (ramped over the pseudo-label rounds)
    robustfl_lambda_e: float  # the entropy term's weight
    use_pseudo: bool  # unconfident small-loss samples train on the global model's prediction


@dataclass(frozen=True)
class RelabelQuery(Settings):
    """FedCorr's relabelling with the sent global model."""

    server_round: int
    everything: bool  # after fine-tuning: every confident sample, not only high-loss ones
    fedcorr_relabel_ratio: float
    fedcorr_confidence: float


@dataclass(frozen=True)
class LabelsQuery(Settings):
    """Write the corrected-labels CSV now; `results_dir` is where a client without a state-dir
    writes it (the run's results folder: the simulation's clients share the server's disk)."""

    server_round: int
    results_dir: str
