"""Noisy-client detection after the warm-up: per-class losses, a 2-component GMM, a 9-seed vote.

This is the authors' procedure (`main_fed_LNL.py`, GMM block; fidelity §2.3), on an [N, C] matrix of
per-class mean losses of the global model (row = client, column = observed class, NaN where the
client has no sample of the class):

1. NaN entries become the minimum of their column; every column is min-max normalised to [0, 1]
   (a constant column becomes 0: the authors divide 0 by 0 there, fidelity §11.3 B8);
2. nine ``GaussianMixture(n_components=2, random_state=s)`` fits, s = 0..8, all other arguments at
   sklearn's defaults; in each fit the noisy component is the one with the larger summed mean, and
   its members form that fit's noisy set;
3. the noisy set that occurs most often wins (ties: the one that occurred first).

No fallback exists in the authors' code: if the vote puts every client (or none) in the noisy
component, that is the result; `NoisySplit.note` says so. `detection_quality` is a simulation-only
diagnostic against the true per-client noise rates; no algorithm uses it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

DEFAULT_NUM_FITS = 9
NOTE_FEW_CLIENTS = "fewer than 2 clients"
NOTE_ALL_EQUAL = "all rows equal"
NOTE_ONE_COMPONENT = "all clients in one component"


@dataclass(frozen=True)
class NoisySplit:
    """Result of `split_noisy_clients`; indices are row indices of the loss matrix."""

    noisy: tuple[int, ...]  # rows flagged noisy, sorted
    clean: tuple[int, ...]  # the other rows, sorted
    votes: tuple[tuple[int, ...], ...]  # the noisy set of each GMM fit, in fit order
    note: str  # "" or an explanation of an edge case


def normalise_loss_matrix(losses: np.ndarray) -> np.ndarray:
    """Fill gaps and min-max normalise each column of an [N, C] per-class loss matrix (float64).

    NaN (client without samples of that class) becomes the minimum of the column's other entries;
    a column without any value becomes 0. Then each column is mapped by (v - min) / (max - min);
    a constant column becomes 0 instead of the authors' 0/0. Raises ValueError for a matrix that is
    not 2-D or holds infinite values.
    """
    matrix = np.array(losses, dtype=np.float64)  # a copy
    if matrix.ndim != 2:
        raise ValueError(f"loss matrix must be 2-D [clients, classes], got shape {matrix.shape}")
    if np.any(np.isinf(matrix)):
        raise ValueError("loss matrix holds infinite values")
    for c in range(matrix.shape[1]):
        column = matrix[:, c]
        missing = np.isnan(column)
        if column.size == 0:
            continue
        column[missing] = 0.0 if missing.all() else column[~missing].min()
        low, high = column.min(), column.max()
        if high > low:
            matrix[:, c] = (column - low) / (high - low)
        else:
            matrix[:, c] = 0.0
    return matrix


def majority_vote(votes: Sequence[Iterable[int]]) -> tuple[int, ...]:
    """The set occurring most often among `votes` (as a sorted tuple); ties: the earliest one.

    Sets are compared as sets (order and duplicates inside a vote do not matter). Empty `votes`
    gives the empty set.
    """
    counts: dict[tuple[int, ...], int] = {}
    for vote in votes:
        key = tuple(sorted({int(i) for i in vote}))
        counts[key] = counts.get(key, 0) + 1  # dicts keep first-insertion order
    best: tuple[int, ...] = ()
    best_count = 0
    for key, count in counts.items():
        if count > best_count:  # strictly greater: an earlier set wins a tie
            best, best_count = key, count
    return best


def _fit_noisy_set(matrix: np.ndarray, seed: int) -> tuple[int, ...]:
    """One GMM fit with `random_state=seed`: rows predicted in the higher-summed-mean component."""
    gmm = GaussianMixture(n_components=2, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        gmm.fit(matrix)
        labels = gmm.predict(matrix)
    noisy_component = int(np.argmax(gmm.means_.sum(axis=1)))
    return tuple(int(i) for i in np.flatnonzero(labels == noisy_component))


def split_noisy_clients(losses: np.ndarray, *, num_fits: int = DEFAULT_NUM_FITS) -> NoisySplit:
    """Split clients into noisy and clean as the authors do (fidelity §2.3); never raises on
    edge cases.

    `losses` is the [N, C] per-class mean loss matrix (NaN where a client lacks a class). The matrix
    is normalised by `normalise_loss_matrix`, `num_fits` GMMs with seeds 0..num_fits-1 each vote for
    a noisy set, and `majority_vote` picks the result.

    Edge cases: N < 2, or all rows equal after normalisation -> nobody noisy, no fit, a note. If
    the vote is everyone or nobody it is kept (as the authors' code would) with the note
    "all clients in one component". A fit that sklearn rejects (ValueError, e.g. a degenerate
    covariance) casts no vote and is mentioned in the note; if every fit fails, nobody is noisy.
    """
    if num_fits < 1:
        raise ValueError(f"num_fits must be >= 1, got {num_fits}")
    matrix = normalise_loss_matrix(losses)
    everyone = tuple(range(matrix.shape[0]))
    if matrix.shape[0] < 2:
        return NoisySplit(noisy=(), clean=everyone, votes=(), note=NOTE_FEW_CLIENTS)
    if np.all(matrix == matrix[0]):
        return NoisySplit(noisy=(), clean=everyone, votes=(), note=NOTE_ALL_EQUAL)

    votes: list[tuple[int, ...]] = []
    failures: list[str] = []
    for seed in range(num_fits):
        try:
            votes.append(_fit_noisy_set(matrix, seed))
        except (ValueError, np.linalg.LinAlgError) as error:
            failures.append(f"fit {seed}: {error}")

    notes = []
    if failures:
        notes.append(f"{len(failures)} of {num_fits} GMM fits failed ({'; '.join(failures)})")
    noisy = majority_vote(votes)
    if votes and (len(noisy) == 0 or len(noisy) == len(everyone)):
        notes.append(NOTE_ONE_COMPONENT)
    noisy_set = set(noisy)
    clean = tuple(i for i in everyone if i not in noisy_set)
    return NoisySplit(noisy=noisy, clean=clean, votes=tuple(votes), note="; ".join(notes))


def robust_client_score(matrix: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """One number per client from an [N, C] per-class matrix (losses, or the fraction of samples
    the global model disagrees with; NaN where the client lacks the class) and its [N, C] sample
    counts: each column is centred on its median and divided by 1.4826 * its median absolute
    deviation (1 where that is 0), so every class weighs alike whatever its difficulty; a client's
    score is the sample-weighted mean over the classes it holds (0 if none). Unlike the authors'
    normalisation, a missing class is left out rather than set to the column's minimum, which
    under Dirichlet partitions pulls every client holding few classes towards "clean".
    Returns float64 [N]. Issue 22's alternative; not the authors' procedure."""
    values = np.asarray(matrix, dtype=np.float64)
    weights = np.where(np.isnan(values), 0.0, np.asarray(counts, dtype=np.float64))
    standardised = np.zeros_like(values)
    for c in range(values.shape[1]):
        column = values[:, c]
        present = ~np.isnan(column)
        if not present.any():
            continue
        median = np.median(column[present])
        spread = 1.4826 * np.median(np.abs(column[present] - median))
        standardised[present, c] = (column[present] - median) / (spread if spread > 0 else 1.0)
    totals = weights.sum(axis=1)
    summed = (standardised * weights).sum(axis=1)
    return np.divide(summed, totals, out=np.zeros_like(summed), where=totals > 0)


def split_by_score(
    scores: np.ndarray, *, num_fits: int = DEFAULT_NUM_FITS, components: int = 2
) -> NoisySplit:
    """`split_noisy_clients`'s vote on one score per client: `num_fits` GMMs (seeds
    0..num_fits-1) of `components` components on the [N] scores; in each fit the clients of the
    lowest-mean component are clean and all others noisy (with 2 components: the larger mean is
    noisy). More components suit noise rates spread over a range rather than two groups (run-config
    `noisy-components`, issue 22; at most N components are fitted). Raises ValueError for
    `components` < 2."""
    if components < 2:
        raise ValueError(f"components must be >= 2, got {components}")
    column = np.asarray(scores, dtype=np.float64).reshape(-1, 1)
    everyone = tuple(range(column.shape[0]))
    if column.shape[0] < 2 or np.all(column == column[0]):
        return NoisySplit(noisy=(), clean=everyone, votes=(), note=NOTE_ALL_EQUAL)
    count = min(components, column.shape[0])
    votes = [_fit_above_lowest(column, count, seed) for seed in range(num_fits)]
    noisy = majority_vote(votes)
    note = NOTE_ONE_COMPONENT if len(noisy) in (0, len(everyone)) else ""
    clean = tuple(i for i in everyone if i not in set(noisy))
    return NoisySplit(noisy=noisy, clean=clean, votes=tuple(votes), note=note)


def _fit_above_lowest(column: np.ndarray, components: int, seed: int) -> tuple[int, ...]:
    """One GMM fit on [N, 1] scores: the rows not predicted in the lowest-mean component."""
    gmm = GaussianMixture(n_components=components, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        gmm.fit(column)
        labels = gmm.predict(column)
    lowest = int(np.argmin(gmm.means_[:, 0]))
    return tuple(int(i) for i in np.flatnonzero(labels != lowest))


def agreement_of_votes(votes: Sequence[Iterable[int]]) -> float:
    """How much the GMM fits agree: the mean Jaccard similarity of their noisy sets over all
    pairs (1.0 for fewer than two votes; two empty sets agree fully). The authors' vote falls
    back to the first fit when no set repeats; this says how often that happens."""
    sets = [frozenset(int(i) for i in vote) for vote in votes]
    if len(sets) < 2:
        return 1.0
    pairs = [(a, b) for i, a in enumerate(sets) for b in sets[i + 1 :]]
    return float(np.mean([len(a & b) / len(a | b) if a | b else 1.0 for a, b in pairs]))


def _mean_or_nan(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def detection_quality(
    flagged: Iterable[int], true_rates: Mapping[int, float], threshold: float = 0.1
) -> dict[str, float]:
    """Simulation-only diagnostic of a detection against the true per-client noise rates.

    Clients are the keys of `true_rates`; a client is truly noisy when its rate is > `threshold`.
    A rate that is NaN (unknown) counts neither as noisy nor as clean: such clients are left out
    of `truly_noisy`, of the precision and recall denominators and of the means (flagged ids absent
    from `true_rates` are treated as unknown too). Returns:

    - ``flagged``: number of flagged clients (all of them, known rate or not);
    - ``truly_noisy``: number of clients with a known rate > threshold;
    - ``precision``: |flagged ∩ truly noisy| / |flagged with a known rate| (nan if that is 0);
    - ``recall``: |flagged ∩ truly noisy| / truly_noisy (nan if that is 0);
    - ``mean_true_rate_flagged`` / ``mean_true_rate_clean``: mean known rate of the flagged
      clients / of the other clients of `true_rates` (nan for an empty group).
    """
    flagged_set = {int(k) for k in flagged}
    known = {int(k): float(r) for k, r in true_rates.items() if not math.isnan(float(r))}
    truly_noisy = {k for k, r in known.items() if r > threshold}
    flagged_known = flagged_set & known.keys()
    hits = len(flagged_set & truly_noisy)
    clean_rates = [r for k, r in known.items() if k not in flagged_set]
    return {
        "flagged": float(len(flagged_set)),
        "truly_noisy": float(len(truly_noisy)),
        "precision": hits / len(flagged_known) if flagged_known else math.nan,
        "recall": hits / len(truly_noisy) if truly_noisy else math.nan,
        "mean_true_rate_flagged": _mean_or_nan([known[k] for k in sorted(flagged_known)]),
        "mean_true_rate_clean": _mean_or_nan(clean_rates),
    }


def split_by_lid(cumulative_lid: dict[int, float], seed: int) -> frozenset[int]:
    """FedCorr's client split: a 2-component GMM on the clients' cumulative LID scores; the
    clients in the component with the larger mean are noisy. Fewer than two distinct scores:
    nobody is flagged."""
    partitions = sorted(cumulative_lid)
    values = np.array([cumulative_lid[p] for p in partitions], dtype=np.float64).reshape(-1, 1)
    if len(np.unique(values)) < 2:
        return frozenset()
    gmm = GaussianMixture(n_components=2, random_state=seed).fit(values)
    noisy = gmm.predict(values) == int(np.argmax(gmm.means_.ravel()))
    return frozenset(p for p, flag in zip(partitions, noisy, strict=True) if flag)
