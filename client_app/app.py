"""The ClientApp: thin Flower glue around client_app.training.

Messages it answers:
- `train`: E local epochs (CE or logit-adjusted CE, plus FedProx's term when the server sends
  `proximal-mu`); replies with the weights, `num-examples`, `train-loss`, `partition-id`.
- `evaluate`: the received model on the client's local data (observed and clean labels).
- `query.whoami`: the partition id and size, so the server maps node ids to clients, plus the
  true noise rate (a simulation-only diagnostic that no algorithm reads).

Start-up work (dataset, federation, the client's tensors on the device, the model) is done once
per process and partition, then reused by every message.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_app.training import LocalTraining, train_locally
from common import seeding
from common.config import RunConfig
from common.evaluation import evaluate_model, resolve_device
from data.client_data import ClientData
from data.federation import DataSettings, Federation, cached_federation
from data.transforms import InputPipeline, pipeline_for
from models import Classifier, build_model

app = ClientApp()


@dataclass(frozen=True, eq=False)
class LocalClient:
    """Everything a client process keeps between messages."""

    config: RunConfig
    data: ClientData
    pipeline: InputPipeline
    model: Classifier
    noise_rate: float

    def load(self, arrays: ArrayRecord) -> Classifier:
        """The cached model holding the received weights (all of them, BN buffers too)."""
        self.model.load_state_dict(arrays.to_torch_state_dict())
        return self.model


def _frozen(run_config) -> tuple:
    return tuple(sorted(run_config.items()))


@dataclass(frozen=True, eq=False)
class ProcessShared:
    """What all partitions served by one process share: config, federation, one model."""

    config: RunConfig
    federation: Federation
    model: Classifier
    device: torch.device


@functools.lru_cache(maxsize=2)
def _process_shared(frozen_config: tuple, num_partitions: int) -> ProcessShared:
    config = RunConfig.from_mapping(dict(frozen_config))
    device = resolve_device(config.device)
    federation = cached_federation(DataSettings.from_config(config), num_partitions)
    dataset = federation.dataset
    model = build_model(
        config.model,
        dataset.num_classes,
        vocab_size=dataset.vocab_size,
        pad_index=dataset.pad_index,
    ).to(device)
    return ProcessShared(config, federation, model, device)


# A Ray actor serves many partitions in turn: keep each one's tensors (about 1.5 MB for a
# CIFAR-10 client of 500 images), so no round rebuilds them.
@functools.lru_cache(maxsize=1024)
def _local_client(frozen_config: tuple, partition_id: int, num_partitions: int) -> LocalClient:
    shared = _process_shared(frozen_config, num_partitions)
    return LocalClient(
        config=shared.config,
        data=ClientData.from_federation(shared.federation, partition_id, shared.device),
        pipeline=pipeline_for(shared.config.dataset),
        model=shared.model,
        noise_rate=float(shared.federation.noise_rates[partition_id]),
    )


def local_client(context: Context) -> LocalClient:
    node = context.node_config
    if "partition-id" not in node or "num-partitions" not in node:
        raise ValueError(
            "this SuperNode's node-config needs partition-id and num-partitions "
            f"(got keys: {sorted(node)})"
        )
    return _local_client(
        _frozen(context.run_config), int(node["partition-id"]), int(node["num-partitions"])
    )


@app.train()
def train(msg: Message, context: Context) -> Message:
    client = local_client(context)
    config = client.config
    server_config = msg.content["config"]
    model = client.load(msg.content["arrays"])
    settings = LocalTraining(
        epochs=config.local_epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        loss=config.local_loss,
        proximal_mu=float(server_config.get("proximal-mu", 0.0)),
    )
    server_round = int(server_config["server-round"])
    generator = seeding.torch_generator(
        config.seed, seeding.LOCAL_SHUFFLE, server_round, client.data.partition_id
    )
    started = time.perf_counter()
    stats = train_locally(model, client.data, client.pipeline, settings, generator)
    metrics = MetricRecord(
        {
            "num-examples": len(client.data),
            "train-loss": stats.mean_loss,
            "train-seconds": time.perf_counter() - started,
            "partition-id": client.data.partition_id,
        }
    )
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    client = local_client(context)
    model = client.load(msg.content["arrays"])
    data = client.data
    observed = evaluate_model(
        model, data.inputs, data.observed_labels, client.pipeline, client.config.eval_batch_size
    )
    metrics = {"num-examples": len(data), **observed.as_metrics("local-")}
    known = data.clean_labels >= 0
    if bool(known.all()):
        clean = evaluate_model(
            model, data.inputs, data.clean_labels, client.pipeline, client.config.eval_batch_size
        )
        metrics["local-clean-accuracy"] = clean.accuracy
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


@app.query("whoami")
def whoami(msg: Message, context: Context) -> Message:
    client = local_client(context)
    metrics = MetricRecord(
        {
            "partition-id": client.data.partition_id,
            "num-partitions": int(context.node_config["num-partitions"]),
            "num-examples": len(client.data),
            "true-noise-rate": client.noise_rate,
            "cuda": int(client.data.inputs.is_cuda),
        }
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
