"""Model-poisoning and data-poisoning attacks as pure functions (numpy), for measuring what each
aggregation strategy survives. An update is a float array: the attacker's local model minus the
global model it received (per tensor; every formula here is per coordinate).

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
- `AttackSettings`: the run-config keys (`attack`, `attack-fraction`, `attack-scale`,
  `attack-mean`, `attack-std`, `attack-epsilon`) and the run's attackers, which the server and
  every client derive alike from the seed; `poison_model` applies a client-side attack to an
  upload, `mimic_honest` a server-side one.
`sign-flip`, `gaussian` and `label-flip` run on the attacking clients, so they work in deployment
too. `alie` and `ipm` need the honest updates of the round, which no client sees, so they are
simulated at the server from the round's honest replies (the attacker's own upload is replaced).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from common import seeding

ATTACKS = ("none", "sign-flip", "gaussian", "alie", "ipm", "label-flip")
CLIENT_ATTACKS = ("sign-flip", "gaussian", "label-flip")  # done by the attacking client
SERVER_ATTACKS = ("alie", "ipm")  # simulated at the server from the round's honest replies


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


@dataclass(frozen=True)
class AttackSettings:
    """The run's attack (run-config keys `attack`, `attack-fraction`, `attack-scale`,
    `attack-mean`, `attack-std`, `attack-epsilon`) and its attackers: partition ids, the same
    seeded subset on the server and on every client (`attacker_set` with the run's seed)."""

    attack: str
    fraction: float
    scale: float
    mean: float
    std: float
    epsilon: float
    attackers: frozenset[int]

    @classmethod
    def from_config(cls, config, num_clients: int) -> AttackSettings:
        """From a common.config.RunConfig for a federation of `num_clients` (no attackers when
        `attack` is none)."""
        fraction = float(config.attack_fraction)
        attackers: frozenset[int] = frozenset()
        if config.attack != "none":
            rng = seeding.numpy_rng(int(config.seed), seeding.ATTACKERS)
            attackers = attacker_set(num_clients, fraction, rng)
        return cls(
            attack=config.attack,
            fraction=fraction,
            scale=float(config.attack_scale),
            mean=float(config.attack_mean),
            std=float(config.attack_std),
            epsilon=float(config.attack_epsilon),
            attackers=attackers,
        )

    def poisons_upload(self, partition: int) -> bool:
        """Whether this client replaces its honest upload itself (sign-flip, gaussian)."""
        return self.attack in ("sign-flip", "gaussian") and partition in self.attackers

    def flips_labels(self, partition: int) -> bool:
        return self.attack == "label-flip" and partition in self.attackers

    def record(self) -> dict:
        """config.json's `attack` entry: the settings that the attack reads, and the attackers."""
        own = {
            "sign-flip": {"scale": self.scale},
            "gaussian": {"mean": self.mean, "std": self.std},
            "ipm": {"epsilon": self.epsilon},
        }.get(self.attack, {})
        where = "server" if self.attack in SERVER_ATTACKS else "client"
        if self.attack == "none":
            return {"attack": "none"}
        return {
            "attack": self.attack,
            "fraction": self.fraction,
            **own,
            "simulated_at": where,
            "attackers": sorted(self.attackers),
        }


def check_attack(config, num_clients: int) -> None:
    """ConfigError when an attack is asked for but `attack-fraction` of `num_clients` makes no
    attacker, or when a server-side attack (alie, ipm) leaves no honest client to mimic."""
    from common.errors import ConfigError

    if config.attack == "none":
        return
    count = int(round(config.attack_fraction * num_clients))
    if count == 0:
        raise ConfigError(
            f"attack='{config.attack}' with attack-fraction={config.attack_fraction} of "
            f"{num_clients} clients makes no attacker (round(fraction * clients) = 0); raise "
            "attack-fraction or set attack='none'"
        )
    if config.attack in SERVER_ATTACKS and count == num_clients:
        raise ConfigError(
            f"attack='{config.attack}' imitates the honest clients' updates, but "
            f"attack-fraction={config.attack_fraction} makes every client an attacker; "
            "allowed: a fraction that leaves at least one honest client"
        )


def attacked_keys(model: Mapping[str, np.ndarray]) -> list[str]:
    """The tensors of a model state that a model-poisoning attack changes: every floating-point
    tensor except BatchNorm's running statistics (torch's names `*.running_mean` and
    `*.running_var`; poisoned variances can turn negative and make every later evaluation NaN,
    which would measure the evaluation, not the aggregator)."""
    return [
        key
        for key, value in model.items()
        if np.issubdtype(np.asarray(value).dtype, np.floating)
        and not key.endswith((".running_mean", ".running_var"))
    ]


def poison_model(
    upload: Mapping[str, np.ndarray],
    received: Mapping[str, np.ndarray],
    keys: Iterable[str],
    settings: AttackSettings,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """A client-side attack on a whole upload: for each tensor named in `keys` (`attacked_keys`)
    the update u =
    upload - received becomes `sign_flip(u, scale)` or `gaussian_update(mean, std)`, and the
    tensor received + that. Every tensor keeps its shape and dtype. ValueError for an attack
    that is not a client-side model attack."""
    if settings.attack not in ("sign-flip", "gaussian"):
        raise ValueError(f"attack {settings.attack!r} does not poison a client's upload")
    poisoned = dict(upload)
    for key in keys:
        mine, base = np.asarray(upload[key]), np.asarray(received[key])
        if settings.attack == "sign-flip":
            update = sign_flip(mine.astype(np.float64) - base, settings.scale)
        else:
            update = gaussian_update(mine.shape, settings.mean, settings.std, rng)
        poisoned[key] = (base + update).astype(mine.dtype)
    return poisoned


def mimic_honest(
    settings: AttackSettings, honest: Sequence[np.ndarray], num_clients: int, num_attackers: int
) -> np.ndarray:
    """A server-side attack's update from the round's honest updates [k, ...] (one tensor):
    ALIE with n = `num_clients` (the round's uploads) and f = `num_attackers`, or IPM. When the
    attackers are a majority, ALIE's s = floor(n/2 + 1) - f is below 1 and its z_max undefined;
    s = 1 is used (they need to win over no one, and the mean shifted by a quantile still hides
    them best). ValueError for another attack or no honest update."""
    if not honest:
        raise ValueError("no honest update to mimic")
    if settings.attack == "ipm":
        return ipm(honest, settings.epsilon)
    if settings.attack != "alie":
        raise ValueError(f"attack {settings.attack!r} is not simulated at the server")
    n = num_clients
    f = min(num_attackers, math.floor(n / 2 + 1) - 1)
    return alie(honest, n, max(f, 1))
