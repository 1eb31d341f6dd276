"""Split a training set over federated clients (the authors' ``utils/sampling.py``).

Three partitions, all pure numpy and driven by an explicit ``np.random.Generator``:

- ``iid``: equal random shares (``sample_iid``);
- ``dirichlet``: per-class Dirichlet proportions with a minimum client size (``sample_dirichlet``,
  the one used in all of the authors' experiments);
- ``shard``: label-sorted shards, a few per client (``sample_noniid_shard``).

Every function returns one int64 index array per client (indices into the labels / dataset);
the arrays are disjoint. The partition is computed on the clean labels, before any noise.
"""

from __future__ import annotations

import numpy as np

PARTITION_NAMES = ("iid", "dirichlet", "shard")


def _check_num_clients(num_clients: int) -> None:
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)):
        raise ValueError(f"num_clients must be an integer, got {num_clients!r}")
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    return labels


def partition_iid(num_samples: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Equal random shares: each client gets ``int(num_samples / num_clients)`` distinct indices.

    Follows the authors' ``sample_iid``: every client draws ``int(N / K)`` indices without
    replacement from those still unused; the remainder ``N mod K`` is never assigned. Departure:
    the draw is one ``rng.permutation`` cut into consecutive blocks (same distribution, different
    numbers than ``np.random.choice`` after ``np.random.seed``); each client's indices come in
    random order (the authors hold them in a Python ``set``).
    """
    _check_num_clients(num_clients)
    if num_samples < num_clients:
        raise ValueError(
            f"IID partition needs at least one sample per client: num_samples={num_samples} < "
            f"num_clients={num_clients}"
        )
    per_client = num_samples // num_clients
    perm = rng.permutation(num_samples).astype(np.int64)
    return [perm[k * per_client : (k + 1) * per_client].copy() for k in range(num_clients)]


def partition_dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    min_size: int = 100,
    max_attempts: int = 1000,
) -> list[np.ndarray]:
    """Label-skewed partition with per-class Dirichlet(alpha) client proportions.

    The authors' ``sample_dirichlet``, repeated until every client holds ``>= min_size`` samples:
    for each class ``c`` (ascending label order): draw ``q ~ Dirichlet(alpha * ones(K))``, shuffle
    the class's indices, set ``q_j = 0`` for clients already holding ``>= N / K`` samples,
    renormalise, cut the indices at ``floor(cumsum(q) * n_c)`` and append piece ``j`` to client
    ``j``. Finally each client's list is shuffled. All samples are assigned. Smaller ``alpha``
    gives more skewed clients (fewer classes each); the size cap ``N / K`` limits size imbalance.

    Departures from the authors' code:

    - randomness comes from ``rng``. The authors call ``np.random.seed(c)`` before each class, so
      their partition ignores ``--seed`` (fidelity B7); here it depends on the generator's seed;
    - each attempt draws fresh numbers (theirs repeats the same draw, so it loops forever when the
      first attempt misses ``min_size``);
    - it always terminates: ``min_size * num_clients > len(labels)`` is rejected up front, and
      after ``max_attempts`` failed attempts a ``ValueError`` reports the smallest client size
      reached.
    """
    labels = _check_labels(labels)
    _check_num_clients(num_clients)
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"Dirichlet alpha must be a finite number > 0, got {alpha!r}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    num_samples = len(labels)
    if min_size * num_clients > num_samples:
        raise ValueError(
            f"Dirichlet partition impossible: min_size={min_size} x num_clients={num_clients} = "
            f"{min_size * num_clients} > {num_samples} samples; lower min_size or num_clients"
        )

    class_indices = [np.flatnonzero(labels == c).astype(np.int64) for c in np.unique(labels)]
    cap = num_samples / num_clients
    best_min = -1
    for _ in range(max_attempts):
        pieces: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, dtype=np.int64)
        for idx_c in class_indices:
            q = rng.dirichlet(np.full(num_clients, float(alpha)))
            idx_c = rng.permutation(idx_c)
            q = q * (sizes < cap)
            total = q.sum()
            if total > 0:
                q = q / total
            else:  # all open clients got (numerically) zero mass: spread evenly over them
                q = (sizes < cap) / np.count_nonzero(sizes < cap)
            cuts = (np.cumsum(q) * len(idx_c)).astype(np.int64)[:-1]
            for j, piece in enumerate(np.split(idx_c, cuts)):
                pieces[j].append(piece)
                sizes[j] += len(piece)
        smallest = int(sizes.min())
        best_min = max(best_min, smallest)
        if smallest >= min_size:
            out = []
            for parts in pieces:
                idx = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
                out.append(rng.permutation(idx).astype(np.int64))
            return out
    raise ValueError(
        f"Dirichlet partition failed after {max_attempts} attempts: alpha={alpha}, "
        f"min_size={min_size}, num_clients={num_clients}; the smallest client size reached was "
        f"{best_min}. Use a smaller min_size or a larger alpha."
    )


def partition_shard(
    labels: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Pathological non-IID split: each client gets ``shards_per_client`` label-sorted shards.

    As the authors' ``sample_noniid_shard`` (the FedAvg paper's scheme): sort the indices by label
    (stable), cut them into ``num_clients * shards_per_client`` shards of ``floor(N / num_shards)``
    consecutive indices (the tail ``N mod num_shards`` is unused), and give each client
    ``shards_per_client`` shards drawn without replacement. Each client therefore sees only a few
    classes. Departure: the shards are drawn from ``rng`` as one permutation of the shard ids.
    """
    labels = _check_labels(labels)
    _check_num_clients(num_clients)
    if shards_per_client < 1:
        raise ValueError(f"shards_per_client must be >= 1, got {shards_per_client}")
    num_shards = num_clients * shards_per_client
    shard_size = len(labels) // num_shards
    if shard_size < 1:
        raise ValueError(
            f"shard partition needs at least one sample per shard: {len(labels)} samples < "
            f"num_clients={num_clients} x shards_per_client={shards_per_client} = {num_shards}"
        )
    order = np.argsort(labels, kind="stable").astype(np.int64)
    shard_ids = rng.permutation(num_shards)
    out = []
    for k in range(num_clients):
        mine = shard_ids[k * shards_per_client : (k + 1) * shards_per_client]
        out.append(np.concatenate([order[s * shard_size : (s + 1) * shard_size] for s in mine]))
    return out


def make_partition(
    name: str,
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    *,
    alpha: float = 1.0,
    min_size: int = 100,
    shards_per_client: int = 5,
) -> list[np.ndarray]:
    """Partition ``labels`` over ``num_clients`` clients with a scheme from ``PARTITION_NAMES``.

    ``alpha`` and ``min_size`` apply to ``dirichlet``, ``shards_per_client`` to ``shard``.
    """
    if name not in PARTITION_NAMES:
        raise ValueError(f"unknown partition {name!r}; expected one of {PARTITION_NAMES}")
    labels = _check_labels(labels)
    _check_num_clients(num_clients)
    if name == "iid":
        return partition_iid(len(labels), num_clients, rng)
    if name == "dirichlet":
        return partition_dirichlet(labels, num_clients, alpha, rng, min_size=min_size)
    return partition_shard(labels, num_clients, shards_per_client, rng)
