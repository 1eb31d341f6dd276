"""FedDiv (Li et al., "FedDiv: Collaborative Noise Filtering for Federated Learning with Noisy
Labels", AAAI 2024) on the client, read from the paper and from the authors' code
(lijichang/FLNL-FedDiv, `code release/main.py`). Numpy, scikit-learn's Gaussian mixture, torch.

After the warm-up, a client
1. computes the received global model's softmax outputs and per-sample CE losses on its data,
   min-max normalises the losses and takes each sample's posterior of the lower-mean component
   of the **global noise filter** (a two-component Gaussian mixture aggregated by the server):
   samples above `p-threshold` are deemed clean, and the share of the others is its estimated
   noise level;
2. **predictive consistency sampling** (PCS): a deemed-clean sample is kept where the global
   model's prediction equals the client's *de-biased* prediction of its last local model; a
   deemed-noisy sample whose global prediction equals the de-biased one is relabelled with it.
   For its first `PCS_AFTER` rounds a client keeps every deemed-clean sample; afterwards the
   PCS-kept ones, plus the relabelled ones when its estimated noise level exceeds
   `RELABEL_ABOVE`. A client whose estimated noise level is at most `feddiv-clean-threshold`
   trains on all its samples with their given labels;
3. trains the global model with CE on the selected samples (the relabelled ones with their new
   labels, for this round only);
4. fits its **local noise filter** to the trained model's normalised losses, starting from the
   global filter (`FILTER_ITERATIONS` EM iterations), and uploads its parameters;
5. updates its de-biased predictions: softmax(logits - xi log p_hat) of the trained model
   (causal inference on the class prior p_hat, xi = `feddiv-xi`), and p_hat by an exponential
   moving average (`feddiv-momentum`) of the softmax of its confident (de-biased probability
   above `PHAT_CONFIDENCE`) samples.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

# Constants of the authors' code (main.py), not exposed as keys there either
PCS_AFTER = 5  # rounds a client trains on the filter's selection before PCS starts
RELABEL_ABOVE = 0.2  # estimated noise level above which relabelled samples are trained on
PHAT_CONFIDENCE = 0.85  # de-biased probability above which a sample updates p_hat
FILTER_ITERATIONS = 3  # EM iterations of a local filter, started from the global one
VARIANCE_FLOOR = 1e-6  # a component's variance is kept above this (sklearn's reg_covar)

_FILTERS_LOCK = threading.Lock()
_MIXTURES = r"sklearn\.mixture"


def ignore_mixture_convergence() -> None:
    """Filter scikit-learn's mixtures' ConvergenceWarning for the process, once:
    FILTER_ITERATIONS EM iterations do not converge, by design. Not warnings.catch_warnings(),
    which is not thread-safe: in process, clients train in threads at once, and one thread
    leaving it restored the filters under another's fit, so the warning reached the user.
    The filter is added only where it is missing (adding it again removes it for a moment)."""
    with _FILTERS_LOCK:
        if not any(
            f[0] == "ignore"
            and f[2] is ConvergenceWarning
            and getattr(f[3], "pattern", "") == _MIXTURES
            for f in warnings.filters
        ):
            warnings.filterwarnings("ignore", category=ConvergenceWarning, module=_MIXTURES)


@dataclass(frozen=True)
class NoiseFilter:
    """A two-component Gaussian mixture over normalised losses, components by increasing mean.
    means, variances, weights: (2,) float64 each; weights sum to 1."""

    means: np.ndarray
    variances: np.ndarray
    weights: np.ndarray

    @classmethod
    def sorted(cls, means, variances, weights) -> NoiseFilter:
        order = np.argsort(np.asarray(means, dtype=np.float64), kind="stable")
        return cls(
            np.asarray(means, dtype=np.float64)[order],
            np.maximum(np.asarray(variances, dtype=np.float64)[order], VARIANCE_FLOOR),
            np.asarray(weights, dtype=np.float64)[order],
        )

    def clean_probability(self, values: np.ndarray) -> np.ndarray:
        """Each value's posterior probability of the lower-mean component: (n,) -> (n,)."""
        x = np.asarray(values, dtype=np.float64)[:, None]
        log_density = -0.5 * (
            (x - self.means) ** 2 / self.variances + np.log(2 * np.pi * self.variances)
        )
        log_joint = log_density + np.log(np.maximum(self.weights, 1e-300))
        log_joint -= log_joint.max(axis=1, keepdims=True)
        joint = np.exp(log_joint)
        return joint[:, 0] / joint.sum(axis=1)

    def to_lists(self) -> dict[str, list[float]]:
        return {
            "means": self.means.tolist(),
            "variances": self.variances.tolist(),
            "weights": self.weights.tolist(),
        }


def normalised(losses: np.ndarray) -> np.ndarray:
    """(l - min) / (max - min); all zeros when every loss is equal (the authors divide by 0)."""
    losses = np.asarray(losses, dtype=np.float64)
    spread = float(losses.max() - losses.min())
    if spread == 0.0:
        return np.zeros_like(losses)
    return (losses - losses.min()) / spread


def fit_local_filter(values: np.ndarray, start: NoiseFilter | None, seed: int) -> NoiseFilter:
    """The client's filter on normalised losses `values` (n,): `FILTER_ITERATIONS` EM
    iterations from `start` (the global filter), as the authors' client.fit; from scratch
    (k-means initialisation, up to 100 iterations, seeded) when there is none."""
    column = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    if start is None:
        gmm = GaussianMixture(n_components=2, random_state=seed, reg_covar=VARIANCE_FLOOR)
    else:
        gmm = GaussianMixture(
            n_components=2,
            max_iter=FILTER_ITERATIONS,
            random_state=seed,
            reg_covar=VARIANCE_FLOOR,
            weights_init=start.weights / start.weights.sum(),
            means_init=start.means.reshape(-1, 1),
            precisions_init=(1.0 / start.variances).reshape(-1, 1, 1),
        )
    ignore_mixture_convergence()
    gmm.fit(column)
    return NoiseFilter.sorted(gmm.means_.ravel(), gmm.covariances_.ravel(), gmm.weights_)


def debiased(logits: np.ndarray, prior: np.ndarray, xi: float) -> np.ndarray:
    """softmax(logits - xi log prior) per row: (n, C), (C,) -> (n, C) (the authors'
    causal_inference)."""
    adjusted = np.asarray(logits, dtype=np.float64) - xi * np.log(prior)
    adjusted -= adjusted.max(axis=1, keepdims=True)
    exp = np.exp(adjusted)
    return exp / exp.sum(axis=1, keepdims=True)


def updated_prior(
    logits: np.ndarray, prior: np.ndarray, xi: float, momentum: float
) -> tuple[np.ndarray, np.ndarray]:
    """(de-biased labels (n,) int64, the new p_hat (C,)): p_hat <- m p_hat + (1 - m) mean
    softmax(logits) over the samples whose de-biased probability exceeds PHAT_CONFIDENCE
    (unchanged when none does). The authors' client_cached_phat_update."""
    probabilities = debiased(logits, prior, xi)
    labels = probabilities.argmax(axis=1).astype(np.int64)
    confident = probabilities.max(axis=1) > PHAT_CONFIDENCE
    if not confident.any():
        return labels, prior
    shifted = np.asarray(logits, dtype=np.float64)[confident]
    shifted = np.exp(shifted - shifted.max(axis=1, keepdims=True))
    mean = (shifted / shifted.sum(axis=1, keepdims=True)).mean(axis=0)
    return labels, momentum * prior + (1 - momentum) * mean


@dataclass(frozen=True)
class Selection:
    """What a client trains on this round."""

    rows: np.ndarray  # int64 positions, increasing
    labels: np.ndarray  # (n,) int64: the given labels, relabelled where chosen
    deemed_clean: np.ndarray  # (n,) bool: the filter's split
    noise_level: float  # the estimated share of noisy samples


def select_samples(
    clean_probability: np.ndarray,
    global_probabilities: np.ndarray,
    given: np.ndarray,
    debiased_labels: np.ndarray,
    rounds_done: int,
    p_threshold: float,
    clean_threshold: float,
    confidence: float = 0.0,
) -> Selection:
    """Steps 1-2 of the module docstring (the authors' local_data_splitting and
    relabeling_and_reselection). clean_probability: (n,); global_probabilities: (n, C) the
    global model's softmax; given, debiased_labels: (n,) int64; rounds_done: the client's
    earlier rounds after the warm-up; confidence: the least global probability of a relabelled
    sample (the authors' `conf`, 0)."""
    deemed_clean = clean_probability > p_threshold
    noise_level = 1.0 - float(deemed_clean.mean())
    predicted = global_probabilities.argmax(axis=1)
    consistent = predicted == debiased_labels
    noisy = ~deemed_clean & (global_probabilities.max(axis=1) > confidence)
    relabelled = noisy & consistent
    if noise_level <= clean_threshold:
        return Selection(
            np.arange(len(given), dtype=np.int64), given.copy(), deemed_clean, noise_level
        )
    labels = np.where(relabelled, predicted, given).astype(np.int64)
    if rounds_done >= PCS_AFTER:
        keep = deemed_clean & consistent
        if noise_level > RELABEL_ABOVE:
            keep = keep | relabelled
    else:
        keep = deemed_clean
    return Selection(np.flatnonzero(keep).astype(np.int64), labels, deemed_clean, noise_level)
