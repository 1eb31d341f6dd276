"""The ClientApp: thin Flower glue around client_app.training.

Messages it answers:
- `train`: E local epochs with the loss the server's `local-loss` names (CE, logit-adjusted CE,
  symmetric CE, FedNoRo's distillation with `kd-weight`), plus FedProx's term when it sends
  `proximal-mu`; replies with the weights, `num-examples`, `train-loss`, `train-seconds`.
- `train.masked`: MaskedOptim's (and FedELC's) noisy-client training (client_app.masked) with
  per-sample label logits kept in `context.state` across rounds; plus label diagnostics.
- `train.joint`, `train.selfie`, `train.coteach`, `train.dividemix`, `train.robustfl`,
  `train.fedrn`, `train.fedlsr`, `train.feddiv`: the baselines' local training
  (client_app.joint_optim, .selfie, .coteaching, .dividemix, .robustfl, .fedrn, .fedlsr,
  .feddiv).
- `train.corr`, `query.relabel`: FedCorr's training on corrected labels and its relabelling
  (client_app.fedcorr), with the corrected labels kept in `context.state`.
- `query.class_loss`: the per-class mean loss of the received model, for noisy-client detection.
- `evaluate`: the received model on the client's local data (observed and clean labels).
- `query.labels`: write the corrected-labels CSV on the client (client_app.label_export).
- `query.whoami`: the partition id and size, so the server maps node ids to clients, plus the
  true noise rate (a simulation-only diagnostic that no algorithm reads).

Start-up work (dataset, federation, the client's tensors on the device, the model) is done once
per process and partition, then reused by every message (the model: one per thread, for the
in-process runtime trains several clients at once in threads of one process). State that must
outlive a round (label logits, corrected labels) is kept in `context.state` and, when the
SuperNode's node-config has a `state-dir`, in a file there too, so it survives a SuperNode
restart (client_app.state).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_app.coteaching import train_two_networks
from client_app.dividemix import train_dividemix
from client_app.fedcorr import (
    double_softmax_losses,
    estimated_noise_fraction,
    lid_per_sample,
    relabel,
)
from client_app.feddiv import (
    NoiseFilter,
    fit_local_filter,
    normalised,
    select_samples,
    updated_prior,
)
from client_app.fedlsr import train_fedlsr
from client_app.fedrn import probe_input, reliability_report, select_clean_samples, subset
from client_app.joint_optim import LabelHistory
from client_app.label_export import (
    change_summary,
    corrected_labels_path,
    write_corrected_labels,
)
from client_app.masked import (
    init_label_logits,
    masked_train_locally,
    per_class_loss,
    relabel_unlikely,
)
from client_app.robustfl import train_robustfl
from client_app.selfie import SelfieState
from client_app.state import ClientStateStore
from client_app.training import train_locally
from common import seeding
from common.acceleration import DeviceOptions, load_weights
from common.attacks import AttackSettings, attacked_keys, flip_labels, poison_model
from common.config import RunConfig
from common.evaluation import evaluate_model, predict_logits, resolve_device
from common.label_metrics import label_confusion
from common.protocol import (
    CENTROIDS,
    FEDDIV_REPORT,
    FEDRN_REPORT,
    NEIGHBOUR_ARRAYS,
    PEER_ARRAYS,
    PREVIOUS_ARRAYS,
    SERVER_ROUND,
    ClassLossQuery,
    CorrSettings,
    CoteachSettings,
    DivideMixSettings,
    FeddivSettings,
    FedlsrSettings,
    FedrnSettings,
    LabelsQuery,
    LocalTraining,
    MaskedSettings,
    RelabelQuery,
    RobustflSettings,
    SampleLabelSettings,
)
from data.client_data import ClientData
from data.datasets import load_own_training_data
from data.federation import DataSettings, Federation, cached_federation, own_data_federation
from data.transforms import InputPipeline, config_pipeline
from models import Classifier, build_model

app = ClientApp()


@dataclass(frozen=True, eq=False)
class LocalClient:
    """Everything a client process keeps between messages."""

    config: RunConfig
    data: ClientData
    pipeline: InputPipeline
    models: ThreadModels
    noise_rate: float
    class_names: tuple[str, ...]
    options: DeviceOptions  # precision and memory layout (common.acceleration)
    attack: AttackSettings  # the run's attack and attackers (common.attacks)

    def load(self, arrays: ArrayRecord) -> Classifier:
        """This thread's cached model holding the received weights (all of them, BN buffers too)."""
        model = self.models.get()
        with _deserializing:
            state = arrays.to_torch_state_dict()
        load_weights(model, state)  # through pinned memory to a GPU
        return model

    def load_peer(self, arrays: ArrayRecord, slot: int = 1) -> Classifier:
        """This thread's model number `slot` holding `arrays`: Co-teaching's second network
        (1), FedRN's previous and neighbour models (1, 2, ...)."""
        model = self.models.get(slot=slot)
        with _deserializing:
            state = arrays.to_torch_state_dict()
        load_weights(model, state)
        return model

    def upload(self, state: dict[str, torch.Tensor], received: ArrayRecord, server_round: int):
        """The trained model as this client uploads it: honest, or, for a sign-flip or gaussian
        attacker, its update poisoned (common.attacks.poison_model; the noise seeded per round
        and partition)."""
        record = ArrayRecord(state)
        partition = self.data.partition_id
        if not self.attack.poisons_upload(partition):
            return record
        mine = {key: array.numpy() for key, array in record.items()}
        with _deserializing:
            base = {key: array.numpy() for key, array in received.items()}
        rng = seeding.numpy_rng(self.config.seed, seeding.ATTACK_NOISE, server_round, partition)
        poisoned = poison_model(mine, base, attacked_keys(mine), self.attack, rng)
        return ArrayRecord(
            array_dict={k: Array(np.array(v, order="C")) for k, v in poisoned.items()}
        )

    def truth_diagnostic(self, key: str, labels: np.ndarray) -> dict[str, list[int]]:
        """{key: flattened confusion of `labels` against the clean labels} (a simulation
        diagnostic), or {} when the clean labels are unknown (a user's own labels)."""
        if not self.data.truth_known:
            return {}
        clean = self.data.clean_labels.cpu().numpy()
        return {key: label_confusion(clean, labels, self.data.num_classes).ravel().tolist()}

    def label_changes(self, corrected: np.ndarray, confidence: np.ndarray) -> dict[str, float]:
        """How many labels differ from the observed ones, and their mean confidence."""
        observed = self.data.observed_labels.cpu().numpy()
        summary = change_summary(observed, corrected, confidence)
        del summary["samples"]
        return summary


class LabelStore:
    """A noisy client's label logits (n x C) and the number of masked rounds they have been
    through, kept between rounds (client_app.state: context.state, plus the node's state-dir)."""

    def __init__(
        self, context: Context, partition_id: int, server_round: int, after_training=False
    ) -> None:
        self.store = ClientStateStore(
            context, "masked-labels", partition_id, server_round, after_training
        )

    def load(self, device: torch.device) -> torch.Tensor | None:
        stored = self.store.load()
        return None if stored is None else torch.as_tensor(stored["label-logits"]).to(device)

    def save(self, label_logits: torch.Tensor) -> int:
        """Store the logits; return how many masked rounds they have now been through."""
        stored = self.store.load()
        rounds = 1 + (int(stored["masked-rounds"]) if stored is not None else 0)
        self.store.save(
            {
                "label-logits": label_logits.detach().cpu().numpy(),
                "masked-rounds": np.array(rounds, dtype=np.int64),
            }
        )
        return rounds


def _frozen(run_config) -> tuple:
    return tuple(sorted(run_config.items()))


class ThreadModels:
    """One model per thread, built on a thread's first use and kept. A Ray actor or a SuperNode's
    ClientApp handles its messages in one thread (one model); the in-process runtime trains
    several clients at once, each thread with its own model."""

    def __init__(self, build: Callable[[], Classifier]) -> None:
        self._build = build
        self._of_thread = threading.local()

    def get(self, slot: int = 0) -> Classifier:
        """This thread's model number `slot` (Co-teaching trains a second one, slot 1)."""
        models = getattr(self._of_thread, "models", None)
        if models is None:
            models = self._of_thread.models = {}
        if slot not in models:
            models[slot] = self._build()
        return models[slot]


@dataclass(frozen=True, eq=False)
class ProcessShared:
    """What all partitions served by one process share: config, federation, the models."""

    config: RunConfig
    federation: Federation
    models: ThreadModels
    device: torch.device


@functools.lru_cache(maxsize=2)
def _process_shared(
    frozen_config: tuple, num_partitions: int, own_data: tuple[str, int] | None = None
) -> ProcessShared:
    """`own_data` = (data-dir, partition-id) for a SuperNode that brings its own data."""
    config = RunConfig.from_mapping(dict(frozen_config))
    device = resolve_device(config.device)
    settings = DataSettings.from_config(config)
    if own_data is None:
        federation = cached_federation(settings, num_partitions)
    else:
        data_dir, partition_id = own_data
        own = load_own_training_data(
            config.dataset, data_dir, cifar10n_labels=config.cifar10n_labels, own=settings.own
        )
        federation = own_data_federation(settings, num_partitions, partition_id, own)
    dataset = federation.dataset
    options = DeviceOptions.from_config(config)
    options.apply_globals()
    models = ThreadModels(
        lambda: options.prepare_model(
            build_model(
                config.model,
                dataset.num_classes,
                vocab_size=dataset.vocab_size,
                pad_index=dataset.pad_index,
            ).to(device)
        )
    )
    return ProcessShared(config, federation, models, device)


# The in-process runtime's threads must not load the same federation twice at once.
_start_up = threading.Lock()
# Nor parse received arrays at once: np.load reads each array's header with ast.literal_eval,
# and CPython 3.11's AST construction is not safe across threads (a garbage collection inside
# it can switch threads; CPython issue 106905): two clients deserialising together failed with
# "SystemError: AST constructor recursion depth mismatch" in 2 of 5 runs of test_numbers.py.
_deserializing = threading.Lock()


# A Ray actor serves many partitions in turn: keep each one's tensors (about 1.5 MB for a
# CIFAR-10 client of 500 images), so no round rebuilds them.
@functools.lru_cache(maxsize=1024)
def _local_client(
    frozen_config: tuple, partition_id: int, num_partitions: int, own_data_dir: str = ""
) -> LocalClient:
    own_data = (own_data_dir, partition_id) if own_data_dir else None
    shared = _process_shared(frozen_config, num_partitions, own_data)
    data = ClientData.from_federation(shared.federation, partition_id, shared.device)
    attack = AttackSettings.from_config(shared.config, num_partitions)
    noise_rate = float(shared.federation.noise_rates[partition_id])
    if attack.flips_labels(partition_id):  # this client trains on y -> C - 1 - y
        flipped = flip_labels(data.observed_labels.cpu().numpy(), data.num_classes)
        data = dataclasses.replace(
            data, observed_labels=torch.as_tensor(flipped).to(data.observed_labels.device)
        )
        if data.truth_known:  # what the server's detection diagnostics compare against
            noise_rate = float((data.observed_labels != data.clean_labels).float().mean())
    if len(data) < shared.config.batch_size:  # the launchers' pre-flight checks every client
        raise ValueError(
            f"client {partition_id} holds {len(data)} samples, fewer than batch-size="
            f"{shared.config.batch_size}: it cannot take one training step"
        )
    return LocalClient(
        config=shared.config,
        data=data,
        pipeline=config_pipeline(shared.config),
        models=shared.models,
        noise_rate=noise_rate,
        class_names=shared.federation.dataset.class_names,
        options=DeviceOptions.from_config(shared.config),
        attack=attack,
    )


def local_client(context: Context) -> LocalClient:
    """This node's client. Its node-config names it (`partition-id` of `num-partitions`) and
    either carves the shared dataset of the run config with that, or, with `data-dir`, reads the
    client's own data from there (data.datasets.load_own_training_data)."""
    node = context.node_config
    if "partition-id" not in node or "num-partitions" not in node:
        raise ValueError(
            "this SuperNode's node-config needs partition-id and num-partitions "
            f"(got keys: {sorted(node)})"
        )
    with _start_up:
        return _local_client(
            _frozen(context.run_config),
            int(node["partition-id"]),
            int(node["num-partitions"]),
            str(node.get("data-dir", "") or ""),
        )


def train_metrics(client: LocalClient, mean_loss: float, seconds: float) -> MetricRecord:
    """The same keys for every kind of training reply (Flower checks that they agree)."""
    return MetricRecord(
        {
            "num-examples": len(client.data),
            "train-loss": mean_loss,
            "train-seconds": seconds,
            # no partition-id: Flower averages every train metric into the round's log, and
            # the server knows each reply's client from its node id
        }
    )


def settings_round(msg: Message) -> int:
    """The server round of a training message."""
    return int(msg.content["config"][SERVER_ROUND])


def shuffle_generator(client: LocalClient, server_round: int, purpose: int = seeding.LOCAL_SHUFFLE):
    return seeding.torch_generator(
        client.config.seed, purpose, server_round, client.data.partition_id
    )


@app.train()
def train(msg: Message, context: Context) -> Message:
    client = local_client(context)
    server_config = msg.content["config"]
    model = client.load(msg.content["arrays"])
    settings = LocalTraining.from_config(server_config)
    generator = shuffle_generator(client, int(server_config[SERVER_ROUND]))
    started = time.perf_counter()
    data, labels = client.data, None
    if settings.relabel_below > 0:  # maskedoptim's la-distill with distill-relabel-below
        data, labels = relabelled(context, client, model, settings, settings_round(msg))
    stats = train_locally(model, data, client.pipeline, settings, generator, client.options)
    metrics = train_metrics(client, stats.mean_loss, time.perf_counter() - started)
    arrays = client.upload(model.state_dict(), msg.content["arrays"], settings_round(msg))
    content = RecordDict({"arrays": arrays, "metrics": metrics})
    if labels is not None:
        content["labels"] = labels
    return Message(content=content, reply_to=msg)


RELABELLED = "relabelled"  # the client state store of distill-relabel-below's labels


def relabelled(
    context: Context, client: LocalClient, model, settings: LocalTraining, server_round: int
) -> tuple[ClientData, ConfigRecord]:
    """This round's labels under `distill-relabel-below` (client_app.masked.relabel_unlikely,
    with the received model in eval mode): the client's data with them, and the `labels`
    record the strategy tracks (their confusion where the truth is known, how many differ
    from the observed ones, and the rounds so far as "masked-rounds"). They are made afresh
    from the observed labels each round and kept in the client's state for the export."""
    observed = client.data.observed_labels
    probabilities = softmax_outputs(client, model)
    labels = relabel_unlikely(observed, probabilities, settings.relabel_below)
    confidence = probabilities.gather(1, labels.view(-1, 1)).view(-1)
    store = ClientStateStore(context, RELABELLED, client.data.partition_id, server_round)
    rounds = 1 + int((store.load() or {}).get("rounds", 0))
    store.save(
        {
            "labels": labels.cpu().numpy(),
            "confidence": confidence.cpu().numpy(),
            "rounds": np.array(rounds, dtype=np.int64),
        }
    )
    corrected = labels.cpu().numpy()
    record = ConfigRecord(
        {
            **client.truth_diagnostic("corrected-confusion", corrected),
            **client.label_changes(corrected, confidence.cpu().numpy()),
            "masked-rounds": rounds,
        }
    )
    return dataclasses.replace(client.data, observed_labels=labels), record


@app.train("masked")
def train_masked(msg: Message, context: Context) -> Message:
    """MaskedOptim's noisy-client training (fidelity §3) with label logits kept across rounds."""
    client = local_client(context)
    server_config = msg.content["config"]
    model = client.load(msg.content["arrays"])
    masked = MaskedSettings.from_config(server_config)
    labels = LabelStore(context, client.data.partition_id, settings_round(msg))
    label_logits = labels.load(client.data.inputs.device)
    if label_logits is None:  # first time this client is noisy: K * onehot(observed)
        label_logits = init_label_logits(
            client.data.observed_labels, client.data.num_classes, masked.label_scale
        )
    generator = shuffle_generator(client, int(server_config[SERVER_ROUND]))
    started = time.perf_counter()
    result = masked_train_locally(
        model,
        client.data,
        client.pipeline,
        LocalTraining.from_config(server_config),
        masked,
        label_logits,
        generator,
        client.options,
    )
    seconds = time.perf_counter() - started
    rounds = labels.save(result.label_logits)
    confidence, corrected = torch.softmax(result.label_logits.float(), dim=1).max(dim=1)
    corrected, confidence = corrected.cpu().numpy(), confidence.cpu().numpy()
    diagnostics = ConfigRecord(
        {
            **client.truth_diagnostic("corrected-confusion", corrected),
            **client.label_changes(corrected, confidence),
            "masked-rounds": rounds,
        }
    )
    content = RecordDict(
        {
            "arrays": client.upload(
                result.upload_state, msg.content["arrays"], settings_round(msg)
            ),
            "metrics": train_metrics(client, result.mean_loss, seconds),
            "labels": diagnostics,
        }
    )
    return Message(content=content, reply_to=msg)


@app.train("joint")
def train_joint(msg: Message, context: Context) -> Message:
    """Joint Optimization's local training (client_app.joint_optim) on soft labels kept, with
    the history of predictions they follow, across rounds (client_app.state)."""

    def state(client: LocalClient, stored, settings: SampleLabelSettings) -> LabelHistory:
        if stored is None:  # the client's first round: one-hot observed labels, no history
            return LabelHistory.start(
                client.data.observed_labels, client.data.num_classes, settings.label_history,
                settings.correcting,
            )  # fmt: skip
        device = client.data.inputs.device
        return LabelHistory.restore(stored, device, settings.label_history, settings.correcting)

    return train_with_label_state(msg, context, "joint-optim", state)


@app.train("selfie")
def train_selfie(msg: Message, context: Context) -> Message:
    """SELFIE's local training (client_app.selfie) with its prediction history and refurbished
    labels kept across rounds (client_app.state)."""

    def state(client: LocalClient, stored, settings: SampleLabelSettings) -> SelfieState:
        data, size = client.data, settings.label_history
        if stored is None:
            return SelfieState.start(
                len(data), data.num_classes, size, data.inputs.device, settings.correcting
            )
        return SelfieState.restore(
            stored, data.inputs.device, data.num_classes, size, settings.correcting
        )

    return train_with_label_state(msg, context, "selfie", state)


def train_two_networks_message(msg: Message, context: Context, train) -> Message:
    """A method with a second network (`peer-arrays`): `train(client, model, peer, config,
    generator)` trains both in place and returns their TrainStats; both are uploaded."""
    client = local_client(context)
    model = client.load(msg.content["arrays"])
    if PEER_ARRAYS not in msg.content:
        raise ValueError(f"the server's {msg.metadata.message_type} message has no '{PEER_ARRAYS}'")
    peer_start = msg.content[PEER_ARRAYS]
    peer = client.load_peer(peer_start)
    server_round = settings_round(msg)
    started = time.perf_counter()
    config = msg.content["config"]
    stats = train(client, model, peer, config, shuffle_generator(client, server_round))
    metrics = train_metrics(client, stats.mean_loss, time.perf_counter() - started)
    content = RecordDict(
        {
            "arrays": client.upload(model.state_dict(), msg.content["arrays"], server_round),
            PEER_ARRAYS: client.upload(peer.state_dict(), peer_start, server_round),
            "metrics": metrics,
        }
    )
    return Message(content=content, reply_to=msg)


@app.train("coteach")
def train_coteach(msg: Message, context: Context) -> Message:
    """Co-teaching / Co-teaching+ (client_app.coteaching)."""

    def train(client: LocalClient, model, peer, config, generator):
        settings = CoteachSettings.from_config(config)
        return train_two_networks(
            model, peer, client.data, client.pipeline, LocalTraining.from_config(config),
            settings.forget_rate, settings.disagreement, generator, client.options,
        )  # fmt: skip

    return train_two_networks_message(msg, context, train)


@app.train("robustfl")
def train_robustfl_message(msg: Message, context: Context) -> Message:
    """RobustFL (client_app.robustfl): training guided by the server's class centroids
    (`centroids`, absent in round 1); the model and the client's centroids uploaded."""
    client = local_client(context)
    server_config = msg.content["config"]
    model = client.load(msg.content["arrays"])
    settings = RobustflSettings.from_config(server_config)
    centroids = None
    if CENTROIDS in msg.content:
        with _deserializing:
            received = msg.content[CENTROIDS][CENTROIDS].numpy()
        centroids = torch.as_tensor(received).to(client.data.inputs.device)
    server_round = settings_round(msg)
    started = time.perf_counter()
    stats, mine = train_robustfl(
        model,
        client.data,
        client.pipeline,
        LocalTraining.from_config(server_config),
        centroids,
        settings.forget_rate,
        settings.lambda_cen,
        settings.robustfl_lambda_e,
        settings.use_pseudo,
        shuffle_generator(client, server_round),
        client.config.eval_batch_size,
        client.options,
    )
    metrics = train_metrics(client, stats.mean_loss, time.perf_counter() - started)
    content = RecordDict(
        {
            "arrays": client.upload(model.state_dict(), msg.content["arrays"], server_round),
            CENTROIDS: ArrayRecord(
                array_dict={CENTROIDS: Array(np.array(mine.detach().cpu().numpy(), order="C"))}
            ),
            "metrics": metrics,
        }
    )
    return Message(content=content, reply_to=msg)


@app.train("fedrn")
def train_fedrn(msg: Message, context: Context) -> Message:
    """FedRN (client_app.fedrn): after the warm-up, CE on the samples that the client's previous
    model and its neighbours' (`previous-arrays`, `neighbour-arrays-<i>`) deem clean; before,
    CE on all. Replies with the model's expertise and probe output (`fedrn`)."""
    client = local_client(context)
    server_config = msg.content["config"]
    settings = FedrnSettings.from_config(server_config)
    training = LocalTraining.from_config(server_config)
    server_round = settings_round(msg)
    generator = shuffle_generator(client, server_round)
    started = time.perf_counter()
    data = client.data
    if settings.selecting:
        # the received models go into the thread's spare model slots (1: previous, 2+: the
        # neighbours), so the global model's slot 0 is loaded last, for training
        previous = None
        if settings.has_previous:
            previous = client.load_peer(msg.content[PREVIOUS_ARRAYS], slot=1)
        count = len(settings.scores) - int(settings.has_previous)
        neighbours = [
            client.load_peer(msg.content[f"{NEIGHBOUR_ARRAYS}-{rank}"], slot=2 + rank)
            for rank in range(count)
        ]
        rows = select_clean_samples(
            previous, neighbours, settings.scores, data, client.pipeline, training,
            settings.p_threshold, client.config.seed, generator,
            client.config.eval_batch_size, client.options,
        )  # fmt: skip
        data = subset(data, rows)
    model = client.load(msg.content["arrays"])
    stats = train_locally(model, data, client.pipeline, training, generator, client.options)
    probe_generator = seeding.torch_generator(client.config.seed, seeding.FEDRN_PROBE)
    probe = probe_input(model, client.data, client.pipeline, probe_generator)
    expertise, probe_output = reliability_report(
        model, client.data, client.pipeline, probe, client.config.eval_batch_size, client.options
    )
    metrics = train_metrics(client, stats.mean_loss, time.perf_counter() - started)
    content = RecordDict(
        {
            "arrays": client.upload(model.state_dict(), msg.content["arrays"], server_round),
            "metrics": metrics,
            FEDRN_REPORT: ConfigRecord({"expertise": expertise, "probe-output": probe_output}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.train("fedlsr")
def train_fedlsr_message(msg: Message, context: Context) -> Message:
    """FedLSR (client_app.fedlsr): two views per batch, self-distillation and entropy terms."""
    client = local_client(context)
    server_config = msg.content["config"]
    model = client.load(msg.content["arrays"])
    settings = FedlsrSettings.from_config(server_config)
    server_round = settings_round(msg)
    started = time.perf_counter()
    stats = train_fedlsr(
        model,
        client.data,
        client.pipeline,
        LocalTraining.from_config(server_config),
        settings.gamma,
        settings.fedlsr_gamma_e,
        settings.fedlsr_temperature,
        shuffle_generator(client, server_round),
        client.options,
    )
    metrics = train_metrics(client, stats.mean_loss, time.perf_counter() - started)
    arrays = client.upload(model.state_dict(), msg.content["arrays"], server_round)
    return Message(content=RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@app.train("dividemix")
def train_dividemix_message(msg: Message, context: Context) -> Message:
    """DivideMix (client_app.dividemix)."""

    def train(client: LocalClient, model, peer, config, generator):
        return train_dividemix(
            model, peer, client.data, client.pipeline, LocalTraining.from_config(config),
            DivideMixSettings.from_config(config), client.config.seed, generator,
            client.config.eval_batch_size, client.options,
        )  # fmt: skip

    return train_two_networks_message(msg, context, train)


def logits_and_losses(client: LocalClient, model) -> tuple[np.ndarray, np.ndarray]:
    """The model's logits (n, C) and FedDiv's per-sample losses (n,) on the client's given
    labels (eval mode and transform), as float64 numpy arrays. The losses are the CE of the
    softmax outputs taken as logits, as the authors' get_output computes them (FedCorr's
    double softmax): a bounded, decreasing function of the given label's probability. With the
    plain CE, the filter, fitted on trained local models' losses, deemed most of the global
    model's samples noisy: on the CPU paper preset FedDiv fell from 39 % in round 24 to 26 % in
    round 120, its test loss from 1.8 to 9.2."""
    with torch.no_grad():
        logits = predict_logits(
            model, client.data.inputs, client.pipeline, client.config.eval_batch_size,
            client.options,
        )  # fmt: skip
        losses = double_softmax_losses(torch.softmax(logits, dim=1), client.data.observed_labels)
    return logits.double().cpu().numpy(), losses.double().cpu().numpy()


@app.train("feddiv")
def train_feddiv(msg: Message, context: Context) -> Message:
    """FedDiv (client_app.feddiv): after the warm-up, CE on the samples that the global noise
    filter and predictive consistency select (some relabelled for this round); then the local
    noise filter (uploaded as `feddiv`) and the de-biased predictions (kept, client_app.state)."""
    client = local_client(context)
    server_config = msg.content["config"]
    settings = FeddivSettings.from_config(server_config)
    training = LocalTraining.from_config(server_config)
    server_round = settings_round(msg)
    data, seed = client.data, client.config.seed
    store = ClientStateStore(context, "feddiv", data.partition_id, server_round)
    state = store.load() or {
        "prior": np.full(data.num_classes, 1.0 / data.num_classes),
        "debiased-labels": np.zeros(len(data), dtype=np.int64),
        "rounds": np.array(0, dtype=np.int64),
    }
    global_filter = None
    if settings.filter_means:
        global_filter = NoiseFilter.sorted(
            settings.filter_means, settings.filter_variances, settings.filter_weights
        )
    model = client.load(msg.content["arrays"])
    started = time.perf_counter()
    train_data = data
    rounds_done = int(state["rounds"])
    if not settings.warm:
        logits, losses = logits_and_losses(client, model)
        values = normalised(losses)
        split_filter = global_filter or fit_local_filter(values, None, seed)
        probabilities = torch.softmax(torch.as_tensor(logits), dim=1).numpy()
        if rounds_done == 0:  # the authors start the de-biased labels at the global model's
            state["debiased-labels"] = probabilities.argmax(axis=1)
        selection = select_samples(
            split_filter.clean_probability(values), probabilities,
            data.observed_labels.cpu().numpy(), state["debiased-labels"], rounds_done,
            settings.p_threshold, settings.feddiv_clean_threshold,
        )  # fmt: skip
        relabelled = dataclasses.replace(
            data, observed_labels=torch.as_tensor(selection.labels).to(data.inputs.device)
        )
        train_data = subset(relabelled, selection.rows)
    stats = None
    if len(train_data) >= training.batch_size:  # the authors: too few to train, send it back
        generator = shuffle_generator(client, server_round)
        stats = train_locally(
            model, train_data, client.pipeline, training, generator, client.options
        )
    logits, losses = logits_and_losses(client, model)
    local_filter = fit_local_filter(normalised(losses), global_filter, seed)
    if not settings.warm:
        labels, prior = updated_prior(
            logits, state["prior"], settings.feddiv_xi, settings.feddiv_momentum
        )
        state = {"prior": prior, "debiased-labels": labels, "rounds": np.array(rounds_done + 1)}
    store.save(state)
    mean_loss = stats.mean_loss if stats is not None else float(losses.mean())
    metrics = train_metrics(client, mean_loss, time.perf_counter() - started)
    content = RecordDict(
        {
            "arrays": client.upload(model.state_dict(), msg.content["arrays"], server_round),
            "metrics": metrics,
            FEDDIV_REPORT: ConfigRecord(local_filter.to_lists()),
        }
    )
    return Message(content=content, reply_to=msg)


def train_with_label_state(msg: Message, context: Context, name: str, make_state) -> Message:
    """Train with a per-sample label state (`make_state(client, stored arrays or None,
    settings)`) loaded from and saved to the client's store `name`."""
    client = local_client(context)
    server_config = msg.content["config"]
    model = client.load(msg.content["arrays"])
    settings = SampleLabelSettings.from_config(server_config)
    server_round = settings_round(msg)
    store = ClientStateStore(context, name, client.data.partition_id, server_round)
    history = make_state(client, store.load(), settings)
    generator = shuffle_generator(client, server_round)
    started = time.perf_counter()
    stats = train_locally(
        model,
        client.data,
        client.pipeline,
        LocalTraining.from_config(server_config),
        generator,
        client.options,
        labels=history,
    )
    store.save(history.arrays())
    metrics = train_metrics(client, stats.mean_loss, time.perf_counter() - started)
    arrays = client.upload(model.state_dict(), msg.content["arrays"], server_round)
    return Message(content=RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


class CorrectedLabels:
    """FedCorr's per-client state (client_app.state): the corrected labels (the observed ones
    until the first relabelling), the global model's probability of each label at the last
    relabelling, and the per-sample losses of the last pre-processing round."""

    def __init__(
        self,
        context: Context,
        observed: torch.Tensor,
        partition_id: int,
        server_round: int,
        after_training: bool = False,
    ) -> None:
        self.store = ClientStateStore(
            context, "fedcorr", partition_id, server_round, after_training
        )
        self.observed = observed

    def labels(self) -> torch.Tensor:
        stored = self.store.load() or {}
        if "labels" not in stored:
            return self.observed
        return torch.as_tensor(stored["labels"]).to(self.observed.device)

    def losses(self) -> np.ndarray | None:
        return (self.store.load() or {}).get("losses")

    def confidence(self) -> np.ndarray | None:
        return (self.store.load() or {}).get("confidence")

    def save(
        self,
        *,
        labels: torch.Tensor | None = None,
        losses: torch.Tensor | None = None,
        confidence: torch.Tensor | None = None,
    ):
        arrays = self.store.load() or {}
        for name, value in (("labels", labels), ("losses", losses), ("confidence", confidence)):
            if value is not None:
                arrays[name] = value.detach().cpu().numpy()
        self.store.save(arrays)


def softmax_outputs(client: LocalClient, model) -> torch.Tensor:
    with torch.no_grad():
        logits = predict_logits(
            model,
            client.data.inputs,
            client.pipeline,
            client.config.eval_batch_size,
            client.options,
        )
    return torch.softmax(logits.float(), dim=1)


@app.train("corr")
def train_corr(msg: Message, context: Context) -> Message:
    """FedCorr's local training on the client's corrected labels (CE + mixup, and in the
    pre-processing stage the adaptive proximal term); then, when asked, the LID of the local
    model's outputs (reported) and its per-sample losses (kept for the relabelling query)."""
    client = local_client(context)
    server_config = msg.content["config"]
    model = client.load(msg.content["arrays"])
    store = CorrectedLabels(
        context, client.data.observed_labels, client.data.partition_id, settings_round(msg)
    )
    data = dataclasses.replace(client.data, observed_labels=store.labels())
    corr = CorrSettings.from_config(server_config)
    generator = shuffle_generator(client, int(server_config[SERVER_ROUND]))
    started = time.perf_counter()
    stats = train_locally(
        model,
        data,
        client.pipeline,
        LocalTraining.from_config(server_config),
        generator,
        client.options,
    )
    # before the eval passes (they change nothing)
    arrays = client.upload(model.state_dict(), msg.content["arrays"], settings_round(msg))
    lid = 0.0
    if corr.report_lid:
        outputs = softmax_outputs(client, model)
        lid = float(lid_per_sample(outputs, corr.fedcorr_lid_k).mean())
        store.save(losses=double_softmax_losses(outputs, data.observed_labels))
    metrics = train_metrics(client, stats.mean_loss, time.perf_counter() - started)
    metrics["lid"] = lid
    return Message(content=RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@app.query("relabel")
def relabel_query(msg: Message, context: Context) -> Message:
    """FedCorr's relabelling with the received global model: after a pre-processing iteration,
    estimate the noise level from the kept losses and relabel the confident high-loss samples;
    after fine-tuning (`everything`), relabel every confident sample."""
    client = local_client(context)
    query = RelabelQuery.from_config(msg.content["config"])
    model = client.load(msg.content["arrays"])
    store = CorrectedLabels(
        context, client.data.observed_labels, client.data.partition_id, query.server_round, True
    )
    before = store.labels()
    losses = store.losses()
    everything = query.everything
    fraction = 0.0
    if not everything and losses is not None:
        fraction = estimated_noise_fraction(losses, client.config.seed)[1]
    outputs = softmax_outputs(client, model)
    after = relabel(
        before,
        torch.as_tensor(losses if losses is not None else np.zeros(len(before))).to(before.device),
        outputs,
        fraction,
        ratio=query.fedcorr_relabel_ratio,
        confidence=query.fedcorr_confidence,
        only_high_loss=not everything,
    )
    confidence = outputs.gather(1, after.view(-1, 1)).view(-1)
    store.save(labels=after, confidence=confidence)
    metrics = MetricRecord(
        {
            "noise-fraction": fraction,
            "relabelled": int((after != before).sum()),
        }
    )
    diagnostics = ConfigRecord(
        {
            **client.truth_diagnostic(
                "observed-confusion", client.data.observed_labels.cpu().numpy()
            ),
            **client.truth_diagnostic("corrected-confusion", after.cpu().numpy()),
            **client.label_changes(after.cpu().numpy(), confidence.cpu().numpy()),
        }
    )
    content = RecordDict({"metrics": metrics, "labels": diagnostics})
    return Message(content=content, reply_to=msg)


@app.query("class_loss")
def class_loss(msg: Message, context: Context) -> Message:
    """Per-class mean loss of the received model on local data, for noisy-client detection."""
    client = local_client(context)
    model = client.load(msg.content["arrays"])
    query = ClassLossQuery.from_config(msg.content["config"])
    losses, present, agree = per_class_loss(
        model,
        client.data,
        client.pipeline,
        shuffle_generator(client, query.server_round, seeding.CLASS_LOSS),
        query.class_loss_batch_size,
    )
    observed = client.data.observed_labels.cpu().numpy()
    metrics = MetricRecord(
        {
            "class-loss": [float(v) if p else 0.0 for v, p in zip(losses, present, strict=True)],
            "class-present": [int(p) for p in present],
        }
    )
    if query.class_counts:  # the robust-score detector weighs each class by its samples
        metrics["class-count"] = np.bincount(observed, minlength=len(present)).tolist()
    if query.agreement:  # strong-model-agreement: how often the model predicts the labels
        metrics["class-agree"] = agree.tolist()
    diagnostics = ConfigRecord(client.truth_diagnostic("observed-confusion", observed))
    content = RecordDict({"metrics": metrics, "labels": diagnostics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    client = local_client(context)
    model = client.load(msg.content["arrays"])
    data = client.data
    size, options = client.config.eval_batch_size, client.options
    observed = evaluate_model(
        model, data.inputs, data.observed_labels, client.pipeline, size, options
    )
    metrics = {"num-examples": len(data), **observed.as_metrics("local-")}
    known = data.clean_labels >= 0
    if bool(known.all()):
        clean = evaluate_model(
            model, data.inputs, data.clean_labels, client.pipeline, size, options
        )
        metrics["local-clean-accuracy"] = clean.accuracy
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def held_labels(
    context: Context, client: LocalClient, server_round: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(corrected labels, their confidence) of a client whose method learned or corrected
    labels (MaskedOptim / FedELC: argmax and max of softmax(label logits); FedCorr, and
    MaskedOptim's `distill-relabel-below`: its corrected labels and the global model's
    probability of them), or None."""
    partition = client.data.partition_id
    logits = LabelStore(context, partition, server_round, True).load(torch.device("cpu"))
    if logits is not None:
        confidence, corrected = torch.softmax(logits.float(), dim=1).max(dim=1)
        return corrected.numpy(), confidence.numpy()
    store = CorrectedLabels(context, client.data.observed_labels, partition, server_round, True)
    confidence = store.confidence()
    if confidence is not None:
        return store.labels().cpu().numpy(), confidence
    kept = ClientStateStore(context, RELABELLED, partition, server_round, True).load()
    if kept is not None:  # maskedoptim's la-distill with distill-relabel-below
        return np.asarray(kept["labels"]), np.asarray(kept["confidence"])
    return None


@app.query("labels")
def labels_query(msg: Message, context: Context) -> Message:
    """Write this client's corrected-labels CSV (client_app.label_export) and reply with counts
    only: the file, the labels and the sample ids stay on the client."""
    client = local_client(context)
    query = LabelsQuery.from_config(msg.content["config"])
    held = held_labels(context, client, query.server_round)
    if held is None:
        content = RecordDict({"metrics": MetricRecord({"has-labels": 0})})
        return Message(content=content, reply_to=msg)
    corrected, confidence = held
    observed = client.data.observed_labels.cpu().numpy()
    path = corrected_labels_path(
        str(context.node_config.get("state-dir", "") or ""),
        context.run_id,
        client.data.partition_id,
        query.results_dir,
    )
    ids = client.data.sample_ids
    if ids is None:
        ids = client.data.indices.astype(str)
    write_corrected_labels(path, ids, observed, corrected, confidence, client.class_names)
    metrics = MetricRecord({"has-labels": 1, **change_summary(observed, corrected, confidence)})
    labels = ConfigRecord(
        {
            "file": str(path),
            **client.truth_diagnostic("observed-confusion", observed),
            **client.truth_diagnostic("corrected-confusion", corrected),
        }
    )
    return Message(content=RecordDict({"metrics": metrics, "labels": labels}), reply_to=msg)


@app.query("whoami")
def whoami(msg: Message, context: Context) -> Message:
    client = local_client(context)
    metrics = MetricRecord(
        {
            "partition-id": client.data.partition_id,
            "num-partitions": int(context.node_config["num-partitions"]),
            "num-examples": len(client.data),
            "true-noise-rate": client.noise_rate,
        }
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
