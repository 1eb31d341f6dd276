"""Synthetic per-client label noise (the authors' "Add label noise" block and ``noisify_label``).

A noise *plan* gives every client a ``(kind, rate)`` pair in client-index order; the caller then
corrupts each client's labels with :func:`corrupt_labels`, using one generator per client.

- Rates ramp inside a group of ``G`` clients: client ``j`` gets ``low + j * (high - low) / G``
  (``high`` itself is never reached), e.g. 100 clients, 0.0-0.4 -> 0, 0.004, ..., 0.396.
- Exactly ``int(n * rate)`` labels of a client are replaced, so its realised rate is
  ``floor(n * rate) / n``.
- ``symmetric``: a uniformly drawn *other* class (always wrong); ``pairflip``: ``y -> (y-1) mod C``;
  ``clean``: untouched. ``human`` (CIFAR-10-N) labels come from the dataset, not from here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

NOISE_TYPES = ("none", "symmetric", "pairflip", "mixed", "human")
SYNTHETIC_KINDS = ("symmetric", "pairflip", "clean")


def parse_rate_range(text: str) -> tuple[float, float]:
    """Parse ``"lo,hi"`` (or a single ``"r"`` meaning ``(r, r)``) into a rate range.

    Both values must lie in [0, 1] with ``lo <= hi``; otherwise ``ValueError`` naming the text.
    A space also works as separator (``"0.0 0.4"``, the authors' flag style).
    """
    parts = [p for p in re.split(r"[,\s]+", str(text).strip()) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise ValueError(f"bad noise rate range {text!r}: expected 'lo,hi' or a single rate")
    lo, hi = values
    if not (0.0 <= lo <= 1.0 and 0.0 <= hi <= 1.0):
        raise ValueError(f"bad noise rate range {text!r}: rates must lie in [0, 1]")
    if lo > hi:
        raise ValueError(f"bad noise rate range {text!r}: lower rate {lo} > upper rate {hi}")
    return lo, hi


@dataclass(frozen=True)
class NoiseGroup:
    """``num_clients`` consecutive clients with noise ``kind``, rates ramping over [low, high)."""

    kind: str
    num_clients: int
    low: float
    high: float


def parse_noise_groups(
    spec: str, num_clients: int | None, default_range: tuple[float, float]
) -> list[NoiseGroup]:
    """Parse ``"kind:count[:lo,hi];kind:count[:lo,hi];..."`` into groups, in client-index order.

    Example: ``"symmetric:50:0.0,0.4;pairflip:50:0.0,0.4"`` (the authors' mixed setting). A
    group without a range uses ``default_range``. Kinds must be in ``SYNTHETIC_KINDS`` and the
    counts (each >= 0) must sum to ``num_clients``.

    An empty ``spec`` gives the authors' mixed setting: ``symmetric`` for the first
    ``ceil(num_clients / 2)`` clients, then ``pairflip`` for the rest, both over ``default_range``.

    ``num_clients=None`` checks the spec's syntax, kinds and ranges only (the run config is
    checked before the number of clients is known); an empty spec then gives no groups.
    """
    if num_clients is None and (not spec or not spec.strip()):
        return []
    if num_clients is not None and num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    lo, hi = default_range
    if not spec or not spec.strip():
        first = (num_clients + 1) // 2
        return [
            NoiseGroup("symmetric", first, lo, hi),
            NoiseGroup("pairflip", num_clients - first, lo, hi),
        ]
    groups = []
    for item in spec.split(";"):
        item = item.strip()
        if not item:
            continue
        fields = [f.strip() for f in item.split(":")]
        if len(fields) not in (2, 3):
            raise ValueError(
                f"bad noise group {item!r}: expected 'kind:count' or 'kind:count:lo,hi'"
            )
        kind = fields[0]
        if kind not in SYNTHETIC_KINDS:
            raise ValueError(
                f"bad noise group {item!r}: unknown kind {kind!r}; "
                f"expected one of {SYNTHETIC_KINDS}"
            )
        try:
            count = int(fields[1])
        except ValueError:
            raise ValueError(
                f"bad noise group {item!r}: count {fields[1]!r} is not an integer"
            ) from None
        if count < 0:
            raise ValueError(f"bad noise group {item!r}: count must be >= 0")
        g_lo, g_hi = parse_rate_range(fields[2]) if len(fields) == 3 else (lo, hi)
        groups.append(NoiseGroup(kind, count, g_lo, g_hi))
    total = sum(g.num_clients for g in groups)
    if num_clients is not None and total != num_clients:
        raise ValueError(
            f"noise groups {spec!r} cover {total} clients, but there are {num_clients} clients"
        )
    return groups


def ramp_rates(num_clients: int, low: float, high: float) -> np.ndarray:
    """Rates of a group of ``G`` clients: client ``j`` gets ``low + j * (high - low) / G``.

    As in the authors' code, ``high`` is never reached (0.0-0.4 over 100 -> 0 ... 0.396).
    """
    j = np.arange(num_clients, dtype=np.float64)
    if num_clients == 0:
        return j
    return low + j * (high - low) / num_clients


def client_noise_plan(
    noise_type: str, rate_range: tuple[float, float], num_clients: int, groups: str = ""
) -> list[tuple[str, float]]:
    """Per-client ``(kind, rate)`` in client-index order.

    - ``none``: all ``("clean", 0.0)``;
    - ``symmetric`` / ``pairflip``: one group of all clients, rates ramped over ``rate_range``;
    - ``mixed``: the groups of :func:`parse_noise_groups` (``groups``; empty -> half symmetric,
      half pairflip);
    - ``human``: all ``("human", 0.0)``; the noisy labels come from the dataset (CIFAR-10-N).

    ``groups`` is only read for ``mixed``.
    """
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"unknown noise type {noise_type!r}; expected one of {NOISE_TYPES}")
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if noise_type == "none":
        return [("clean", 0.0)] * num_clients
    if noise_type == "human":
        return [("human", 0.0)] * num_clients
    if noise_type == "mixed":
        group_list = parse_noise_groups(groups, num_clients, rate_range)
    else:
        group_list = [NoiseGroup(noise_type, num_clients, *rate_range)]
    plan: list[tuple[str, float]] = []
    for g in group_list:
        plan.extend((g.kind, float(r)) for r in ramp_rates(g.num_clients, g.low, g.high))
    return plan


def corrupt_labels(
    labels: np.ndarray, rate: float, kind: str, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Return a new int64 array with exactly ``int(len(labels) * rate)`` labels replaced.

    The positions are the first ones of ``rng.permutation(n)`` (the authors shuffle the client's
    index list and take the first ``int(n * rate)``). ``symmetric``: uniform over the
    ``num_classes - 1`` other classes; ``pairflip``: ``(y - 1) mod num_classes``; ``clean``: an
    unchanged copy. Departure: ``rng`` replaces the authors' Python ``random`` re-seeded with the
    run seed for every client.
    """
    if kind not in SYNTHETIC_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; expected one of {SYNTHETIC_KINDS}")
    if not (0.0 <= rate <= 1.0):
        raise ValueError(f"noise rate must lie in [0, 1], got {rate!r}")
    out = np.array(labels, dtype=np.int64, copy=True)
    if out.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {out.shape}")
    if kind == "clean":
        return out
    if num_classes < 2:
        raise ValueError(f"label noise needs num_classes >= 2, got {num_classes}")
    if out.size and (out.min() < 0 or out.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{out.min()}, {out.max()}]")
    n = len(out)
    pos = rng.permutation(n)[: int(n * rate)]
    if kind == "symmetric":
        out[pos] = (out[pos] + rng.integers(1, num_classes, size=len(pos))) % num_classes
    else:
        out[pos] = (out[pos] - 1) % num_classes
    return out


def realised_noise_rate(observed: np.ndarray, clean: np.ndarray) -> float:
    """Fraction of samples whose observed label differs from the clean one.

    Samples with ``clean == -1`` (unknown) are ignored; ``nan`` if no clean label is known.
    """
    observed = np.asarray(observed)
    clean = np.asarray(clean)
    if observed.shape != clean.shape:
        raise ValueError(f"shape mismatch: observed {observed.shape} vs clean {clean.shape}")
    known = clean != -1
    if not known.any():
        return math.nan
    return float(np.mean(observed[known] != clean[known]))
