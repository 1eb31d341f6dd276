"""The federation: which training samples each client holds and which labels it observes.

It is a pure, deterministic function of the data settings, the number of clients and the seed,
so every process (server, each simulated or real client) computes the same one. Steps, as in the
authors' code (fidelity §6.3-6.5): partition on the clean labels, then corrupt each client's labels
with its own noise kind and rate (or take the dataset's human labels). The clean labels and each
client's realised noise rate are kept as diagnostics; the algorithms never read them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common import seeding
from data.datasets import Dataset, check_data_files, load_dataset
from data.noise import client_noise_plan, corrupt_labels, parse_rate_range, realised_noise_rate
from data.own_data import OWN_FORMATS, OwnDataSpec
from data.partition import make_partition


@dataclass(frozen=True)
class DataSettings:
    """The run-config keys that decide the federation (hashable: it keys the process cache)."""

    dataset: str
    data_dir: str
    download: bool
    cifar10n_labels: str
    partition: str
    dirichlet_alpha: float
    dirichlet_min_size: int
    shards_per_client: int
    noise_type: str
    noise_rate: str
    noise_groups: str
    seed: int
    own: OwnDataSpec = OwnDataSpec()

    @classmethod
    def from_config(cls, config) -> DataSettings:
        """Take the fields of a common.config.RunConfig that decide the data."""
        names = [name for name in cls.__dataclass_fields__ if name != "own"]
        return cls(
            **{name: getattr(config, name) for name in names}, own=OwnDataSpec.from_config(config)
        )

    @property
    def truth_known(self) -> bool:
        """Whether the labels the data come with count as the truth: not for a user's own
        data without synthetic noise (its labels are what the run is meant to question)."""
        return not (self.dataset in OWN_FORMATS and self.noise_type == "none")


@dataclass(frozen=True, eq=False)
class Federation:
    dataset: Dataset
    client_indices: tuple[np.ndarray, ...]  # int64 indices into the training split, per client
    observed_labels: np.ndarray  # int64 [N]: the labels clients train on (noisy)
    noise_kinds: tuple[str, ...]  # per client: clean, symmetric, pairflip or human
    noise_rates: np.ndarray  # per client: realised fraction of observed != clean (diagnostic)
    clean_labels: np.ndarray  # int64 [N]: the truth as far as known, -1 where unknown

    @property
    def num_clients(self) -> int:
        return len(self.client_indices)


def build_federation(settings: DataSettings, num_clients: int, dataset: Dataset) -> Federation:
    """Partition `dataset` over `num_clients` and apply the label noise (deterministic).

    Raises ValueError naming the run-config keys when the partition is impossible."""
    if len(dataset.train_labels) == 0:
        raise ValueError(
            f"dataset '{settings.dataset}' has no training samples to split over {num_clients} "
            "clients: set data-dir to the training data (or, in deployment, give each "
            "SuperNode its own data-dir)"
        )
    try:
        partition = make_partition(
            settings.partition,
            dataset.train_labels,
            num_clients,
            seeding.numpy_rng(settings.seed, seeding.PARTITION),
            alpha=settings.dirichlet_alpha,
            min_size=settings.dirichlet_min_size,
            shards_per_client=settings.shards_per_client,
        )
    except ValueError as err:
        keys = {
            "dirichlet": f"dirichlet-alpha={settings.dirichlet_alpha:g} and "
            f"dirichlet-min-size={settings.dirichlet_min_size} (min_size)",
            "shard": f"shards-per-client={settings.shards_per_client}",
            "iid": "an equal share each",
        }[settings.partition]
        raise ValueError(
            f"partition='{settings.partition}' cannot split the {len(dataset.train_labels)} "
            f"training samples of {settings.dataset} over {num_clients} clients with {keys}: "
            f"{err}"
        ) from None
    plan = client_noise_plan(
        settings.noise_type,
        parse_rate_range(settings.noise_rate),
        num_clients,
        settings.noise_groups,
    )
    observed = dataset.train_labels.copy()
    clean = known_truth(settings, dataset)
    rates = np.zeros(num_clients)
    for client, (indices, (kind, rate)) in enumerate(zip(partition, plan, strict=True)):
        observed[indices] = observed_labels(dataset, indices, kind, rate, settings.seed, client)
        rates[client] = realised_noise_rate(observed[indices], clean[indices])
    return Federation(
        dataset=dataset,
        client_indices=tuple(partition),
        clean_labels=clean,
        observed_labels=observed,
        noise_kinds=tuple(kind for kind, _ in plan),
        noise_rates=rates,
    )


def known_truth(settings: DataSettings, dataset: Dataset) -> np.ndarray:
    """The clean labels as far as the run may know them (-1: unknown), see `truth_known`."""
    if settings.truth_known:
        return dataset.train_clean_labels
    return np.full(len(dataset.train_labels), -1, dtype=np.int64)


def check_client_sizes(sizes: Sequence[int], batch_size: int) -> None:
    """Every client must take at least one SGD step per local epoch: local training uses full
    batches only (drop_last, as the authors' DataLoader), so a client needs >= `batch_size`
    samples. Raises ValueError naming the clients that cannot, with their sizes (a client that
    trains nothing would upload the global model unchanged and still weigh in aggregation)."""
    small = {client: int(size) for client, size in enumerate(sizes) if size < batch_size}
    if small:
        shown = ", ".join(f"client {c}: {n}" for c, n in list(small.items())[:20])
        more = f" (and {len(small) - 20} more)" if len(small) > 20 else ""
        raise ValueError(
            f"{len(small)} of {len(sizes)} clients hold fewer samples than batch-size="
            f"{batch_size}, so they cannot take one training step ({shown}{more}); lower "
            "batch-size, use fewer clients, or raise dirichlet-min-size / dirichlet-alpha"
        )


def observed_labels(
    dataset: Dataset, indices: np.ndarray, kind: str, rate: float, seed: int, client: int
) -> np.ndarray:
    """The labels client `client` observes for its samples `indices`: the dataset's human
    labels, or its labels corrupted with its own seeded noise of `kind` and `rate`."""
    if kind == "human":
        return dataset.train_human_labels[indices]
    rng = seeding.numpy_rng(seed, seeding.NOISE, client)
    return corrupt_labels(dataset.train_labels[indices], rate, kind, dataset.num_classes, rng)


def check_own_labels_kept(settings: DataSettings) -> None:
    """A client's own image folder or CSV file is trained on with its labels as they are:
    synthetic noise on top (the run config's default `noise-type` included) would corrupt the
    owner's labels and then report them as the truth. ValueError saying so."""
    if settings.dataset in OWN_FORMATS and settings.noise_type != "none":
        raise ValueError(
            f"noise-type='{settings.noise_type}' would add synthetic noise to the clients' own "
            f"{settings.dataset} labels; set noise-type='none' (synthetic noise is for a "
            "simulation on one folder or file, docs/own-data.md)"
        )


def own_data_federation(
    settings: DataSettings, num_clients: int, client: int, own: Dataset
) -> Federation:
    """The federation as one SuperNode with its own data (node-config `data-dir`) sees it:
    client `client` holds all of `own`, the others nothing here. Its labels get the noise the
    run config plans for that client, with the same seeded generator as in a carved federation
    (`noise-type = "none"` keeps the labels as they are: real data brings its own noise)."""
    if not 0 <= client < num_clients:
        raise ValueError(f"partition-id {client} is outside 0..{num_clients - 1}")
    check_own_labels_kept(settings)
    kind, rate = client_noise_plan(
        settings.noise_type,
        parse_rate_range(settings.noise_rate),
        num_clients,
        settings.noise_groups,
    )[client]
    indices = np.arange(len(own.train_labels), dtype=np.int64)
    observed = observed_labels(own, indices, kind, rate, settings.seed, client)
    clean = known_truth(settings, own)
    empty = np.zeros(0, dtype=np.int64)
    rates = np.zeros(num_clients)
    rates[client] = realised_noise_rate(observed, clean)
    kinds = ["elsewhere"] * num_clients
    kinds[client] = kind
    return Federation(
        dataset=own,
        client_indices=tuple(indices if c == client else empty for c in range(num_clients)),
        clean_labels=clean,
        observed_labels=observed,
        noise_kinds=tuple(kinds),
        noise_rates=rates,
    )


@functools.lru_cache(maxsize=2)
def cached_dataset(
    name: str,
    data_dir: str,
    download: bool,
    cifar10n_labels: str,
    own: OwnDataSpec = OwnDataSpec(),  # noqa: B008 (frozen, hashable)
) -> Dataset:
    """Load a dataset once per process (every ClientApp call in a process reuses it)."""
    check_data_files(
        name, data_dir or None, download=download, cifar10n_labels=cifar10n_labels, own=own
    )
    return load_dataset(
        name, data_dir or None, download=download, cifar10n_labels=cifar10n_labels, own=own
    )


@functools.lru_cache(maxsize=2)
def cached_federation(settings: DataSettings, num_clients: int) -> Federation:
    """Build the federation once per process and configuration."""
    dataset = cached_dataset(
        settings.dataset,
        settings.data_dir,
        settings.download,
        settings.cifar10n_labels,
        settings.own,
    )
    return build_federation(settings, num_clients, dataset)
