"""Model-poisoning and data-poisoning attacks as pure functions (numpy only), for measuring what
each aggregation strategy survives. An update is a flat float array: the attacker's local model
minus the global model it received.

- `sign_flip`: the update negated and scaled, -s * u.
- `gaussian_update`: the update replaced by N(mean, std^2) noise.
- `alie` ("A little is enough", Baruch et al., NeurIPS 2019, eq. 3 and Algorithm 3): every
  attacker sends mean + z_max * std of the honest updates (per coordinate), with z_max from the
  number of clients n and attackers f: s = floor(n / 2 + 1) - f clients must be won over, and
  z_max = Phi^-1((n - s) / n), Phi the standard normal CDF.
- `ipm` (inner product manipulation, Xie et al., UAI 2019): every attacker sends -eps * the mean
  of the honest updates.
- `flip_labels`: the attacker trains on y -> C - 1 - y.
- `attacker_set`: which clients attack, a seeded subset of a given fraction.
`alie` and `ipm` need the honest updates of the round, so a simulation computes them at the
server from the round's honest replies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

ATTACKS = ("none", "sign-flip", "gaussian", "alie", "ipm", "label-flip")


def sign_flip(update: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """-scale * update (same shape and dtype). ValueError for a negative scale."""
    if scale < 0:
        raise ValueError(f"sign-flip scale must be >= 0, got {scale}")
    return (-scale * np.asarray(update)).astype(np.asarray(update).dtype, copy=False)


def gaussian_update(
    shape: tuple[int, ...], mean: float, std: float, rng: np.random.Generator
) -> np.ndarray:
    """float32 noise N(mean, std^2) of `shape`. ValueError for a negative std."""
    if std < 0:
        raise ValueError(f"gaussian std must be >= 0, got {std}")
    return rng.normal(mean, std, size=shape).astype(np.float32)


def alie_z_max(num_clients: int, num_attackers: int) -> float:
    """z_max of Baruch et al. (Algorithm 3) for n clients of which f attack: s = floor(n/2 + 1)
    - f; z_max = Phi^-1((n - s) / n). ValueError unless 0 < f < n and 0 < (n - s) / n < 1."""
    n, f = num_clients, num_attackers
    if not 0 < f < n:
        raise ValueError(f"ALIE needs 0 < attackers < clients, got {f} of {n}")
    s = math.floor(n / 2 + 1) - f
    quantile = (n - s) / n
    if not 0 < quantile < 1:
        raise ValueError(f"ALIE's quantile (n - s) / n = {quantile} is outside (0, 1)")
    return NormalDist().inv_cdf(quantile)


def alie(honest: Sequence[np.ndarray], num_clients: int, num_attackers: int) -> np.ndarray:
    """mean + z_max * std (population std, per coordinate) of the honest updates [k, d]."""
    stacked = np.stack([np.asarray(u, dtype=np.float64) for u in honest])
    z = alie_z_max(num_clients, num_attackers)
    return (stacked.mean(axis=0) + z * stacked.std(axis=0)).astype(np.asarray(honest[0]).dtype)


def ipm(honest: Sequence[np.ndarray], epsilon: float) -> np.ndarray:
    """-epsilon * mean of the honest updates. ValueError for epsilon < 0."""
    if epsilon < 0:
        raise ValueError(f"ipm epsilon must be >= 0, got {epsilon}")
    stacked = np.stack([np.asarray(u, dtype=np.float64) for u in honest])
    return (-epsilon * stacked.mean(axis=0)).astype(np.asarray(honest[0]).dtype)


def flip_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """y -> C - 1 - y (int64). ValueError for a label outside [0, C)."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    return num_classes - 1 - labels


def attacker_set(num_clients: int, fraction: float, rng: np.random.Generator) -> frozenset[int]:
    """round(fraction * num_clients) distinct client ids drawn with `rng` (seeded by the caller
    from the run's seed). ValueError for a fraction outside [0, 1]."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"attacker fraction must be in [0, 1], got {fraction}")
    count = int(round(fraction * num_clients))
    return frozenset(int(c) for c in rng.choice(num_clients, size=count, replace=False))
