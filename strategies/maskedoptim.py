"""MaskedOptim's server side (fidelity §1, §2, §5.1), the RFA baseline, and the two noisy-label
baselines that share its detection (FedELC, FedNoRo), as Flower strategies.

- `NoisyClientRouting`: rounds 1..T_w warm up (every sampled client trains with logit-adjusted
  CE); right after aggregating round T_w it asks *all* clients for their per-class mean loss of
  the global model, splits them into clean and noisy with a Gaussian mixture
  (strategies.detection), and from then on sends clean clients `train` (logit-adjusted CE) and
  noisy clients the method's own training.
- `MaskedOptim`: noisy clients get `train.masked` (masked optimisation with learnable
  labels); every round, warm-up included, is aggregated with the geometric median.
- `FedElc` (Jiang et al., CIKM 2024): noisy clients get `train.masked` without the mask and the
  pre-merge and with FedELC's entropy weight; FedAvg, then FedNoRo's distance-aware aggregation.
- `FedNoRo` (Wu et al., IJCAI 2023): noisy clients distil from the global model (`la-distill`,
  with a ramped weight); FedAvg, then distance-aware aggregation.

The mathematics is in strategies.aggregation and strategies.detection; this file routes
messages and keeps the diagnostics (which no decision ever reads).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common import log

from common.config import app_defaults
from common.errors import ConfigError
from common.label_metrics import metrics_from_confusion
from common.protocol import (
    CLASS_LOSS_QUERY,
    LABELS_QUERY,
    MASKED_TRAIN,
    TRAIN,
    ClassLossQuery,
    LabelsQuery,
    MaskedSettings,
)
from strategies.aggregation import distance_aware_weights, weighted_mean
from strategies.base import SeededStrategy, StrategyParams
from strategies.detection import (
    agreement_of_votes,
    detection_quality,
    robust_client_score,
    split_by_score,
    split_noisy_clients,
)
from strategies.rules import GeometricMedianParams


@dataclass
class LabelCorrection:
    """Label correction on the flagged clients, from their own reports.

    Without clean labels (always available): how many labels each client's correction changed
    and their mean confidence. Where the clean labels are known (simulation), also confusion
    matrices (rows = clean label, columns = label) summed over the flagged clients: the observed
    labels, and the current corrected labels (argmax of the label logits; the observed label for
    a flagged client not trained with masking yet), fidelity §3.8.
    """

    observed: dict[int, np.ndarray] = field(default_factory=dict)
    corrected: dict[int, np.ndarray] = field(default_factory=dict)
    masked_rounds: Counter = field(default_factory=Counter)
    changed: dict[int, int] = field(default_factory=dict)
    confidence: dict[int, float] = field(default_factory=dict)  # of the changed labels

    def start(self, partition: int, observed_confusion: np.ndarray | None) -> None:
        if observed_confusion is not None:
            self.observed[partition] = observed_confusion
            self.corrected[partition] = observed_confusion

    def update(self, partition: int, labels: ConfigRecord, rounds: int) -> None:
        """A client's `labels` record (common.protocol) after its `rounds`-th correction."""
        corrected = confusion_from(labels, "corrected-confusion")
        if corrected is not None:
            self.corrected[partition] = corrected
        self.masked_rounds[partition] = rounds
        if "labels-changed" in labels:
            self.changed[partition] = int(labels["labels-changed"])
            if "changed-confidence" in labels:
                self.confidence[partition] = float(labels["changed-confidence"])
            else:
                self.confidence.pop(partition, None)

    def change_metrics(self) -> dict[str, float]:
        """`labels_changed` (summed over the clients) and `label_confidence` (the mean
        confidence of the changed labels), which need no clean labels."""
        if not self.changed:
            return {}
        out: dict[str, float] = {"labels_changed": float(sum(self.changed.values()))}
        if self.confidence:
            weights = np.array([self.changed[p] for p in self.confidence], dtype=np.float64)
            values = np.array(list(self.confidence.values()), dtype=np.float64)
            out["label_confidence"] = float((weights * values).sum() / weights.sum())
        return out

    def metrics(self) -> dict[str, float]:
        if not self.observed:
            return self.change_metrics()
        before = metrics_from_confusion(sum(self.observed.values()))
        after = metrics_from_confusion(sum(self.corrected.values()))
        return {
            **self.change_metrics(),
            "label_acc_observed": before["accuracy"],
            "label_f1_observed": before["macro_f1"],
            "label_acc_corrected": after["accuracy"],
            "label_precision_corrected": after["macro_precision"],
            "label_recall_corrected": after["macro_recall"],
            "label_f1_corrected": after["macro_f1"],
        }

    def per_client(self) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for partition in sorted(self.observed.keys() | self.changed.keys()):
            entry: dict[str, Any] = {"masked_rounds": self.masked_rounds[partition]}
            if partition in self.changed:
                entry["labels_changed"] = self.changed[partition]
            if partition in self.confidence:
                entry["changed_confidence"] = self.confidence[partition]
            if partition in self.observed:
                entry["observed_accuracy"] = accuracy_of(self.observed[partition])
                entry["corrected_accuracy"] = accuracy_of(self.corrected[partition])
            out[partition] = entry
        return out


def accuracy_of(confusion: np.ndarray) -> float:
    return metrics_from_confusion(confusion)["accuracy"]


def confusion_from(record: ConfigRecord, key: str) -> np.ndarray | None:
    """A flattened confusion matrix of a `labels` record, or None when the client sent none
    (its clean labels are unknown)."""
    if key not in record:
        return None
    flat = np.asarray(record[key], dtype=np.int64)
    side = int(round(flat.size**0.5))
    return flat.reshape(side, side)


UNKNOWN_TRUTH = (
    "the clients' clean labels are unknown (their own data, without synthetic noise), so "
    "detection precision/recall and label accuracy cannot be measured"
)


def truth_known(true_rates: dict[int, float]) -> bool:
    """Whether any client's true noise rate is known (NaN: unknown, common.protocol)."""
    return any(not np.isnan(rate) for rate in true_rates.values())


@dataclass(frozen=True)
class LabelExport:
    """Where and how often flagged clients write their corrected-labels CSV
    (client_app.label_export): every `every` rounds (0: only at the end) and at the end."""

    results_dir: str
    every: int = 0


class DetectingStrategy(SeededStrategy):
    """A strategy that splits clients into clean and noisy. It keeps `detection` (None until
    the first split; its `quality` against the true noise rates), `noisy` (the flagged
    partitions) and `labels` (a LabelCorrection), which give its metrics.csv columns."""

    corrects_labels = False  # whether flagged clients learn or correct labels
    state_keys = ("noisy", "detection", "labels", "exported")
    export_timeout = 600.0

    def __init__(self, params: StrategyParams, **base) -> None:
        super().__init__(params, **base)
        self.noisy: frozenset[int] | None = None  # None until detection has run
        self.detection: dict[str, Any] | None = None
        self.labels = LabelCorrection()
        self.label_export: LabelExport | None = None  # set by the ServerApp
        self.exported: dict[int, dict[str, Any]] = {}  # partition -> its last CSV's counts

    def round_diagnostics(self) -> dict[str, float]:
        """Detection (and its quality where the truth is known) and label correction so far
        (empty before the first split)."""
        if self.detection is None:
            return {}
        quality = self.detection["quality"]
        known = {}
        if quality.get("available", True):
            known = {"detect_precision": quality["precision"], "detect_recall": quality["recall"]}
        return {"detected_noisy": len(self.noisy), **known, **self.labels.metrics()}

    def assess(self, flagged: frozenset[int], threshold: float) -> dict[str, Any]:
        """The detection's quality against the true noise rates, or, where those are unknown,
        {"available": False, "reason": ...} (never a made-up number)."""
        if not truth_known(self.roster.true_noise_rates):
            return {"available": False, "reason": UNKNOWN_TRUTH}
        return detection_quality(flagged, self.roster.true_noise_rates, threshold)

    def label_holders(self) -> list[int]:
        """The clients that may hold learned or corrected labels."""
        return sorted(self.noisy or ()) if self.corrects_labels else []

    def aggregate_train(self, server_round: int, replies):
        result = super().aggregate_train(server_round, replies)
        if self.restored(server_round):
            return result
        export = self.label_export
        if export and export.every and server_round % export.every == 0:
            if server_round < self.num_rounds:  # the last round's export comes from the app
                self.export_labels(server_round)
        return result

    def export_labels(self, server_round: int) -> None:
        """Ask the label holders to write their corrected-labels CSV; keep the counts."""
        if self.label_export is None or self._grid is None:
            return
        holders = self.label_holders()
        config = ConfigRecord(LabelsQuery(server_round, self.label_export.results_dir).to_config())
        queries = [
            Message(
                RecordDict({"config": config}),
                dst_node_id=self.roster.node_of_partition[p],
                message_type=LABELS_QUERY,
            )
            for p in holders
        ]
        for reply in self.query(queries, timeout=self.export_timeout) if queries else ():
            partition = self.roster.partition_of(reply.metadata.src_node_id)
            if reply.has_error():
                log(WARNING, "client %d could not write its corrected labels: %s",
                    partition, reply.error.reason)  # fmt: skip
                continue
            metrics = reply.content["metrics"]
            if not int(metrics["has-labels"]):
                continue
            labels = reply.content["labels"]
            entry: dict[str, Any] = {
                "round": server_round,
                "file": str(labels["file"]),
                "samples": int(metrics["samples"]),
                "labels_changed": int(metrics["labels-changed"]),
            }
            if "changed-confidence" in metrics:
                entry["changed_confidence"] = float(metrics["changed-confidence"])
            observed = confusion_from(labels, "observed-confusion")
            corrected = confusion_from(labels, "corrected-confusion")
            if observed is not None and corrected is not None:
                entry["observed_accuracy"] = accuracy_of(observed)
                entry["corrected_accuracy"] = accuracy_of(corrected)
            self.exported[partition] = entry
        if holders:
            log(INFO, "round %d: %d of %d flagged clients wrote their corrected labels",
                server_round, sum(e["round"] == server_round for e in self.exported.values()),
                len(holders))  # fmt: skip


@dataclass(frozen=True)
class DetectionParams(StrategyParams):
    """A warm-up, then detection by a GMM on per-class losses (MaskedOptim's, FedELC's and
    FedNoRo's); `warmup` names the run-config key of the warm-up's length."""

    gmm_fits: int
    noisy_detector: str
    noisy_components: int
    noisy_threshold: float
    class_loss_batch_size: int

    @property
    def warmup(self) -> tuple[str, int]:
        raise NotImplementedError

    def check(self, *, sampled: int, num_clients: int, num_rounds: int) -> None:
        key, rounds = self.warmup
        if not 1 <= rounds < num_rounds:
            why = "no warm-up model to detect with" if rounds < 1 else "detection would never run"
            why = f"the default; {why}" if app_defaults()[key] == rounds else why
            if num_rounds < 2:
                fix = f"set num-rounds=2 or more and {key}=1"
            elif rounds < 1:
                fix = f"set {key} between 1 and {num_rounds - 1}"
            else:
                fix = f"set {key}={num_rounds - 1} or fewer, or num-rounds={rounds + 1} or more"
            raise ConfigError(
                f"this strategy detects noisy clients with the model of its warm-up, so "
                f"{key} must be at least 1 and below num-rounds={num_rounds}; got "
                f"{key}={rounds} ({why}). Fix: {fix}; or, to train without "
                "detection, run strategy 'fedavg' or 'rfa'"
            )
        if self.noisy_components < 2:
            mild = getattr(self, "mild_training", "la-distill")  # MaskedOptim's (below)
            raise ConfigError(
                f"noisy-components={self.noisy_components} is not allowed: the split needs at "
                "least 2 Gaussian components (the lowest-mean one is clean)"
                + (f", and 3 with mild-training='{mild}'" if mild != "la-distill" else "")
            )
        if self.noisy_components != 2 and self.noisy_detector != "robust-score":
            raise ConfigError(
                f"noisy-components={self.noisy_components} needs noisy-detector='robust-score' "
                f"(noisy-detector='{self.noisy_detector}' fits the authors' 2 components on "
                "the per-class losses); set noisy-detector='robust-score' or noisy-components=2"
            )


class NoisyClientRouting(DetectingStrategy):
    """Warm-up, one-off detection after round T_w, then routing by group (see module doc)."""

    noisy_message_type = MASKED_TRAIN
    corrects_labels = True  # noisy clients report their corrected labels' confusion
    local_loss = "logit-adjusted"
    query_timeout = 3600.0
    state_keys = (*DetectingStrategy.state_keys, "masked_sent", "masked_received")
    # whether flagged clients that a 2-component split of the scores leaves clean are told
    # apart as `mild` (maskedoptim's mild-training='relabel' with noisy-components > 2)
    separates_mild = False
    # maskedoptim's strong-model-agreement (1.0: never asked): above it, the authors' split
    strong_model_agreement = 1.0

    def __init__(self, params: DetectionParams, **base) -> None:
        super().__init__(params, **base)
        self.warmup_rounds = params.warmup[1]
        self.gmm_fits = params.gmm_fits
        self.noisy_detector = params.noisy_detector
        self.noisy_components = params.noisy_components
        self.noisy_threshold = params.noisy_threshold
        self.class_loss_batch_size = params.class_loss_batch_size
        self.masked_sent: Counter = Counter()
        self.masked_received: Counter = Counter()

    def configure_sampled(self, server_round, arrays, config, view):
        messages = list(super().configure_sampled(server_round, arrays, config, view))
        if self.noisy is None:
            return messages
        return [self._route(message, server_round) for message in messages]

    @property
    def mild(self) -> frozenset[int]:
        """The flagged clients that a 2-component split of the scores leaves clean (empty
        unless `separates_mild`; kept in `detection`, so checkpoints carry it)."""
        return frozenset(self.detection.get("mild", ())) if self.detection else frozenset()

    def noisy_config(self, server_round: int, partition: int) -> dict[str, Any]:
        """Config entries that the noisy client `partition` gets on top of the round's config:
        the complete settings of its training (common.protocol)."""
        raise NotImplementedError

    def trains_as_flagged(self, partition: int) -> bool:
        """Whether the flagged client `partition` gets a flagged client's training, counted in
        masked_messages_sent (masked_replies_received counts those replying with labels)."""
        return True

    def _route(self, message: Message, server_round: int) -> Message:
        node = message.metadata.dst_node_id
        partition = self.roster.partition_of(node)
        if partition not in self.noisy:
            return message
        if self.trains_as_flagged(partition):
            self.masked_sent[partition] += 1
        content = message.content
        # a new record: the round's config is shared by all its messages
        own = self.noisy_config(server_round, partition)
        config = ConfigRecord({**dict(content["config"]), **own})
        content = RecordDict({"arrays": content["arrays"], "config": config})
        return Message(content=content, dst_node_id=node, message_type=self.noisy_message_type)

    def after_round(self, server_round: int, replies: list[Message], arrays: ArrayRecord) -> None:
        """Record the noisy clients' label reports; detect right after the warm-up."""
        for reply in replies:
            if "labels" in reply.content:
                labels = reply.content["labels"]
                partition = self.roster.partition_of(reply.metadata.src_node_id)
                self.masked_received[partition] += 1
                self.labels.update(partition, labels, int(labels["masked-rounds"]))
        if server_round == self.warmup_rounds:
            self.detect(server_round, arrays)

    def combine(self, models, examples, current, replies) -> list[np.ndarray]:
        return self.rule.combine(models, examples, current)

    def detect(self, server_round: int, arrays: ArrayRecord) -> None:
        """Ask every client for its per-class loss of the global model; split by GMM."""
        queries = [
            Message(
                RecordDict(
                    {
                        "arrays": arrays,
                        "config": ConfigRecord(
                            ClassLossQuery(
                                server_round,
                                self.class_loss_batch_size,
                                class_counts=self.noisy_detector == "robust-score"
                                or self.strong_model_agreement < 1.0,
                                agreement=self.strong_model_agreement < 1.0,
                            ).to_config()
                        ),
                    }
                ),
                dst_node_id=node,
                message_type=CLASS_LOSS_QUERY,
            )
            for node in self.roster.node_of_partition.values()
        ]
        answers: dict[int, Message] = {}
        failed: list[int] = []
        for reply in self.query(queries, timeout=self.query_timeout):
            partition = self.roster.partition_of(reply.metadata.src_node_id)
            if reply.has_error():
                log(WARNING, "detection: client %d failed (%s); it stays clean",
                    partition, reply.error.reason)  # fmt: skip
                failed.append(partition)
                continue
            answers[partition] = reply
        silent = sorted(set(self.roster.node_of_partition) - set(answers) - set(failed))
        if silent:
            log(WARNING, "detection: no answer from partitions %s; they stay clean", silent)
        partitions = sorted(answers)
        losses = np.array(
            [
                np.where(
                    np.asarray(answers[p].content["metrics"]["class-present"], dtype=bool),
                    np.asarray(answers[p].content["metrics"]["class-loss"], dtype=np.float64),
                    np.nan,
                )
                for p in partitions
            ]
        ).reshape(len(partitions), -1)
        if self.noisy_detector == "robust-score":
            counts = np.array(
                [np.asarray(answers[p].content["metrics"]["class-count"]) for p in partitions]
            ).reshape(losses.shape)
            scores = robust_client_score(losses, counts)
            split = split_by_score(scores, num_fits=self.gmm_fits, components=self.noisy_components)
        else:
            scores = None
            split = split_noisy_clients(losses, num_fits=self.gmm_fits)
        strength: dict[str, Any] = {}
        if self.strong_model_agreement < 1.0:
            strength = self.model_strength(answers, partitions, split.noisy)
            if strength["strong_model"]:  # the model is strong: the authors' split
                split = split_noisy_clients(losses, num_fits=self.gmm_fits)
        self.noisy = frozenset(partitions[row] for row in split.noisy)
        mild: set[int] = set()
        if (
            scores is not None
            and self.separates_mild
            and self.noisy_components > 2
            and not strength.get("strong_model")
        ):
            heavy = split_by_score(scores, num_fits=self.gmm_fits, components=2).noisy
            mild = self.noisy - {partitions[row] for row in heavy}
        if split.note:
            log(WARNING, "detection: %s", split.note)
        quality = self.assess(self.noisy, self.noisy_threshold)
        self.detection = {
            "round": server_round,
            "flagged_noisy": sorted(self.noisy),
            "clean": sorted(set(self.roster.node_of_partition) - self.noisy),
            "not_answered": silent,
            "failed": sorted(failed),
            "note": split.note,
            "detector": "per-class-gmm" if strength.get("strong_model") else self.noisy_detector,
            "components": 2 if strength.get("strong_model") else self.noisy_components,
            **strength,
            "mild": sorted(mild),
            "gmm_votes": [list(vote) for vote in split.votes],
            "gmm_agreement": agreement_of_votes(split.votes),
            "noisy_threshold": self.noisy_threshold,
            "quality": quality,
            # null for a class the client does not hold (not a failure: nothing to average)
            "class_loss": {
                p: [None if np.isnan(v) else float(v) for v in losses[i]]
                for i, p in enumerate(partitions)
            },
        }
        if scores is not None:
            self.detection["client_score"] = {p: float(scores[i]) for i, p in enumerate(partitions)}
        for partition in sorted(self.noisy) if self.corrects_labels else ():
            labels = answers[partition].content["labels"]
            self.labels.start(partition, confusion_from(labels, "observed-confusion"))
        log(INFO, "detection after round %d: %d of %d clients flagged noisy: %s; %s",
            server_round, len(self.noisy), self.roster.num_clients, sorted(self.noisy),
            quality)  # fmt: skip
        if strength:
            verdict = (
                "a strong model: the authors' split and masked training"
                if strength["strong_model"]
                else "a weak model: the configured departures"
            )
            log(INFO, "detection: the global model predicts %.1f %% of the clean clients' "
                "labels (strong-model-agreement %.2f), %s", 100 * strength["model_agreement"],
                self.strong_model_agreement, verdict)  # fmt: skip
        if self.noisy:
            log(INFO, "detection: the flagged clients train with %s", self.training_described())
        if mild:
            log(INFO, "detection: mildly noisy (flagged, but clean for 2 components): %s",
                sorted(mild))  # fmt: skip

    def training_described(self) -> str:
        """What the flagged clients train with, for the log."""
        return self.noisy_message_type

    def model_strength(
        self, answers: dict[int, Message], partitions: list[int], flagged_rows
    ) -> dict[str, Any]:
        """How often the global model predicts the observed labels of the clients the configured
        detector leaves clean (their samples pooled), and whether that is above
        `strong_model_agreement`. Issue 22, not the authors': their label merge needs a model
        that is right on most samples (docs/maskedoptim.md, "When the model is weak")."""
        flagged = set(flagged_rows)
        clean = [p for row, p in enumerate(partitions) if row not in flagged]
        metrics = [answers[p].content["metrics"] for p in clean]
        agree = sum(int(np.sum(m["class-agree"])) for m in metrics)
        samples = sum(int(np.sum(m["class-count"])) for m in metrics)
        agreement = agree / samples if samples else 0.0
        return {
            "model_agreement": agreement,
            "strong_model": agreement > self.strong_model_agreement,
        }

    def final_report(self) -> dict[str, Any]:
        """What results/detection.json holds."""
        return {
            "detection": self.detection,
            "masked_messages_sent": dict(sorted(self.masked_sent.items())),
            # a client's own count (label_correction_per_client) equals this one when its
            # label state was never lost, SuperNode restarts included
            "masked_replies_received": dict(sorted(self.masked_received.items())),
            "label_correction": self.labels.metrics(),
            "label_correction_per_client": self.labels.per_client(),
            "corrected_labels_files": dict(sorted(self.exported.items())),
        }


@dataclass(frozen=True)
class MaskedOptimParams(DetectionParams, GeometricMedianParams):
    warmup_rounds: int
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
    noisy_training: str
    distill_relabel_below: float
    mild_training: str
    mild_weight: float
    strong_model_agreement: float
    fednoro_kd_weight: float
    fednoro_temperature: float

    @property
    def warmup(self) -> tuple[str, int]:
        return "warmup-rounds", self.warmup_rounds

    def check(self, **context) -> None:
        super().check(**context)
        if self.distill_relabel_below > 0 and self.noisy_training != "la-distill":
            raise ConfigError(
                f"distill-relabel-below={self.distill_relabel_below} needs "
                f"noisy-training='la-distill' (got '{self.noisy_training}': masked training "
                "learns its labels instead); set noisy-training='la-distill' or "
                "distill-relabel-below=0"
            )
        if self.mild_training != "la-distill" and not (
            self.noisy_training == "la-distill"
            and self.noisy_detector == "robust-score"
            and self.noisy_components > 2
            and (self.mild_training != "relabel" or self.distill_relabel_below > 0)
        ):
            needs = ", and distill-relabel-below above 0" if self.mild_training == "relabel" else ""
            raise ConfigError(
                f"mild-training='{self.mild_training}' treats the flagged clients that a "
                "2-component split would leave clean apart from the others, so it needs "
                "noisy-detector='robust-score', noisy-components above 2 and "
                f"noisy-training='la-distill'{needs}; got noisy-detector="
                f"'{self.noisy_detector}', noisy-components={self.noisy_components}, "
                f"noisy-training='{self.noisy_training}', "
                f"distill-relabel-below={self.distill_relabel_below}"
            )
        if not 0 < self.mild_weight <= 1:
            raise ConfigError(f"mild-weight={self.mild_weight} must be in (0, 1]")
        if self.mild_weight != 1.0 and self.mild_training != "down-weight":
            raise ConfigError(
                f"mild-weight={self.mild_weight} applies with mild-training='down-weight' only "
                f"(got '{self.mild_training}'); set mild-training='down-weight' or mild-weight=1"
            )
        if not 0 <= self.strong_model_agreement <= 1:
            raise ConfigError(
                f"strong-model-agreement={self.strong_model_agreement} must be in [0, 1]"
            )
        if (
            self.strong_model_agreement < 1
            and self.noisy_detector != "robust-score"
            and self.noisy_training != "la-distill"
        ):
            raise ConfigError(
                f"strong-model-agreement={self.strong_model_agreement} falls back to the "
                "authors' detection and training when the model is strong, and this run uses "
                "them anyway (noisy-detector='per-class-gmm', noisy-training='masked'); set "
                "noisy-detector='robust-score' or noisy-training='la-distill', or "
                "strong-model-agreement=1"
            )


class MaskedOptim(NoisyClientRouting):
    """MaskedOptim: noisy clients get `train.masked`; geometric-median aggregation throughout."""

    names = ("maskedoptim",)
    description = (
        "the method: warm-up, noisy-client detection by a Gaussian mixture on per-class "
        "losses, masked label learning on noisy clients, geometric-median aggregation"
    )
    Params = MaskedOptimParams

    def __init__(self, params: MaskedOptimParams, **base) -> None:
        super().__init__(params, **base)
        self.rule = params.median()
        self.masked = MaskedSettings(
            mask_keep=params.mask_keep,
            compat_weight=params.compat_weight,
            entropy_weight=params.entropy_weight,
            label_lr=params.label_lr,
            label_scale=params.label_scale,
            premerge_local_weight=params.premerge_local_weight,
            label_merge_confidence=params.label_merge_confidence,
            label_step_confidence=params.label_step_confidence,
            masked_fp16=params.masked_fp16,
            masked_terms=params.masked_terms,
        )
        # issue 22, not the authors': flagged clients distil from the global model as FedNoRo's
        # noisy clients do (its loss and weight ramp), keeping their observed labels unless
        # `distill-relabel-below` swaps the ones the global model finds unlikely
        self.wants_distil = params.noisy_training == "la-distill"
        self.relabel_below = params.distill_relabel_below
        self.kd_peak, self.kd_temperature = params.fednoro_kd_weight, params.fednoro_temperature
        self.mild_training, self.mild_weight = params.mild_training, params.mild_weight
        self.separates_mild = params.mild_training != "la-distill"
        self.strong_model_agreement = params.strong_model_agreement

    @property
    def strong_model(self) -> bool:
        """Whether detection found the model strong (strong-model-agreement): then the run
        goes on as the authors' (in `detection`, so a checkpoint carries it)."""
        return bool(self.detection and self.detection.get("strong_model"))

    @property
    def distil(self) -> bool:
        """Whether flagged clients train with la-distill (noisy-training, unless the model is
        strong)."""
        return self.wants_distil and not self.strong_model

    @property
    def noisy_message_type(self) -> str:  # type: ignore[override]
        return TRAIN if self.distil else MASKED_TRAIN

    @property
    def corrects_labels(self) -> bool:  # type: ignore[override]
        return self.relabel_below > 0 if self.distil else True

    def training_described(self) -> str:
        if not self.distil:
            return "masked optimisation (the authors')"
        text = "la-distill" + (
            f", labels below {self.relabel_below:g} swapped" if self.relabel_below else ""
        )
        if self.mild and self.mild_training == "down-weight":
            text += f"; the mild ones as clean clients, weighing {self.mild_weight:g}"
        elif self.mild:
            text += "; the mild ones on their swapped labels, without distillation"
        return text

    def trains_as_flagged(self, partition: int) -> bool:
        # a mild client under down-weight trains as a clean one
        return not (self.mild_training == "down-weight" and partition in self.mild)

    def label_holders(self) -> list[int]:
        """The flagged clients, less the mild ones that train as clean clients (down-weight):
        they hold no labels of their own."""
        return [p for p in super().label_holders() if self.trains_as_flagged(p)]

    def noisy_config(self, server_round: int, partition: int) -> dict[str, Any]:
        if self.distil and partition in self.mild:  # mild-training 'relabel' or 'down-weight'
            relabel = self.relabel_below if self.mild_training == "relabel" else 0.0
            return dataclasses.replace(
                self.round_training(server_round), relabel_below=relabel
            ).to_config()
        if self.distil:
            return distillation_config(self, server_round, self.relabel_below)
        return self.masked.to_config()

    def combine(self, models, examples, current, replies) -> list[np.ndarray]:
        """The geometric median; with mild-training='down-weight' a weighted one, the mildly
        noisy clients' models weighing `mild-weight` (times their sample counts with
        gm-weighted) against 1 for the others."""
        mild = self.mild if self.mild_training == "down-weight" else frozenset()
        if not mild:
            return self.rule.combine(models, examples, current)
        base = examples if self.rule.weighted else [1] * len(models)
        weights = [
            w
            * (self.mild_weight if self.roster.partition_of(r.metadata.src_node_id) in mild else 1)
            for w, r in zip(base, replies, strict=True)
        ]
        return dataclasses.replace(self.rule, weighted=True).combine(models, weights, current)


def distillation_config(
    strategy: NoisyClientRouting, server_round: int, relabel_below: float = 0.0
) -> dict[str, Any]:
    """FedNoRo's noisy-client training: logit-adjusted distillation from the received global
    model, its weight ramped from the end of the warm-up to the last round. `relabel_below` > 0
    (maskedoptim's `distill-relabel-below`, issue 22) also has the client train each label the
    received model finds less likely than that as the model's prediction."""
    weight = kd_weight_rampup(
        server_round, strategy.warmup_rounds, strategy.num_rounds, strategy.kd_peak
    )
    training = dataclasses.replace(
        strategy.round_training(server_round),
        local_loss="la-distill",
        kd_weight=weight,
        kd_temperature=strategy.kd_temperature,
        relabel_below=relabel_below,
    )
    return training.to_config()


class DistanceAwareRouting(NoisyClientRouting):
    """FedAvg until detection, then FedNoRo's distance-aware aggregation (DaAgg): a noisy
    model's weight shrinks with its distance to the nearest clean model of the round."""

    def combine(self, models, examples, current, replies) -> list[np.ndarray]:
        if self.noisy is None:
            return weighted_mean(models, examples)
        flags = [self.roster.partition_of(r.metadata.src_node_id) in self.noisy for r in replies]
        return weighted_mean(models, distance_aware_weights(models, examples, flags))


@dataclass(frozen=True)
class BaselineDetectionParams(DetectionParams):
    baseline_warmup_rounds: int

    @property
    def warmup(self) -> tuple[str, int]:
        return "baseline-warmup-rounds", self.baseline_warmup_rounds


@dataclass(frozen=True)
class FedElcParams(BaselineDetectionParams):
    fedelc_entropy_weight: float
    compat_weight: float
    label_lr: float
    label_scale: float
    masked_fp16: bool


class FedElc(DistanceAwareRouting):
    """FedELC: MaskedOptim's label learning without mask and pre-merge (FNBench's settings)."""

    names = ("fedelc",)
    description = (
        "FedELC (CIKM 2024): detection, then label learning without mask or pre-merge on "
        "noisy clients; FedNoRo's distance-aware aggregation"
    )
    Params = FedElcParams

    def __init__(self, params: FedElcParams, **base) -> None:
        super().__init__(params, **base)
        self.masked = MaskedSettings(
            mask_keep=1.0,  # every sample in the compatibility term: no mask
            compat_weight=params.compat_weight,
            entropy_weight=params.fedelc_entropy_weight,
            label_lr=params.label_lr,
            label_scale=params.label_scale,
            premerge_local_weight=1.0,  # upload the local model as it is: no pre-merge
            masked_fp16=params.masked_fp16,
        )

    def noisy_config(self, server_round: int, partition: int) -> dict[str, Any]:
        return self.masked.to_config()


def kd_weight_rampup(
    server_round: int, begin: int, end: int, peak: float, sharpness: float = 5.0
) -> float:
    """FedNoRo's sigmoid ramp-up of the distillation weight: peak * exp(-5 (1 - r)^2) with
    r = (clip(t, begin, end) - begin) / (end - begin) and t = server_round - 1 (the authors count
    rounds from 0; FNBench: begin = T_w = 20, end = T = 120, peak 0.8)."""
    if end <= begin:
        return peak
    ramp = (min(max(server_round - 1, begin), end) - begin) / (end - begin)
    return float(peak * np.exp(-sharpness * (1.0 - ramp) ** 2))


@dataclass(frozen=True)
class FedNoRoParams(BaselineDetectionParams):
    fednoro_kd_weight: float
    fednoro_temperature: float


class FedNoRo(DistanceAwareRouting):
    """FedNoRo: noisy clients distil from the global model with logit adjustment."""

    names = ("fednoro",)
    description = (
        "FedNoRo (IJCAI 2023): detection, then distillation from the global model on noisy "
        "clients; distance-aware aggregation"
    )
    Params = FedNoRoParams
    noisy_message_type = TRAIN
    corrects_labels = False  # FedNoRo keeps the observed labels

    def __init__(self, params: FedNoRoParams, **base) -> None:
        super().__init__(params, **base)
        self.kd_peak, self.kd_temperature = params.fednoro_kd_weight, params.fednoro_temperature

    def noisy_config(self, server_round: int, partition: int) -> dict[str, Any]:
        return distillation_config(self, server_round)
