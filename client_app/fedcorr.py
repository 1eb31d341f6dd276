"""FedCorr's client-side mathematics (Xu et al., CVPR 2022), torch and scikit-learn only.

- `lid_per_sample`: local intrinsic dimensionality of each row of a client's softmax outputs
  among the rows (maximum-likelihood estimate from the k nearest neighbours); a client's score is
  the mean. Noisy labels make the local model's output space more complex: higher LID.
- `double_softmax_losses`: the per-sample loss FedCorr ranks samples by. Its code feeds softmax
  *probabilities* to a cross-entropy that applies softmax again; we keep that, as it sets which
  samples count as noisy.
- `estimated_noise_fraction`: a two-component Gaussian mixture on those losses; the
  larger-mean component is "noisy", its share is the client's estimated noise level mu.
- `relabel`: the labels after FedCorr's correction with the global model's predictions.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.mixture import GaussianMixture


def lid_per_sample(outputs: torch.Tensor, k: int = 20) -> torch.Tensor:
    """LID(x) = -k / (sum_j log(r_j / (r_k + 1e-6)) + 1e-6) over the k nearest other rows
    (Euclidean; r_1 <= ... <= r_k; FedCorr's `lid_term`). With fewer than k other rows, all of
    them are used; a single row gets LID 0."""
    rows = outputs.shape[0]
    k = min(k, rows - 1)
    if k < 1:
        return torch.zeros(rows, dtype=torch.float64)
    distances = torch.cdist(outputs.double(), outputs.double())
    nearest = distances.sort(dim=1).values[:, 1 : k + 1]  # drop the row itself
    logs = torch.log(nearest / (nearest[:, -1:] + 1e-6)).sum(dim=1)
    return -k / (logs + 1e-6)


def double_softmax_losses(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample CE of `probabilities` taken as logits (FedCorr's `get_output` + CE)."""
    return F.cross_entropy(probabilities, labels, reduction="none")


def estimated_noise_fraction(losses: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """(noisy mask, noisy fraction) from a 2-component GMM on the per-sample losses; the
    component with the larger mean is noisy. Fewer than two distinct losses: nothing is noisy."""
    values = np.asarray(losses, dtype=np.float64).reshape(-1, 1)
    if len(np.unique(values)) < 2:
        return np.zeros(len(values), dtype=bool), 0.0
    gmm = GaussianMixture(n_components=2, random_state=seed).fit(values)
    noisy = gmm.predict(values) == int(np.argmax(gmm.means_.ravel()))
    return noisy, float(noisy.mean())


def relabel(
    labels: torch.Tensor,
    losses: torch.Tensor,
    global_probabilities: torch.Tensor,
    noise_fraction: float,
    ratio: float = 0.5,
    confidence: float = 0.5,
    only_high_loss: bool = True,
) -> torch.Tensor:
    """New labels: argmax of the global model's prediction where it is confident (max > confidence)
    and, with `only_high_loss` (the pre-processing stage), the sample is among the
    floor(n * noise_fraction * ratio) largest losses; elsewhere the old label."""
    confident, predicted = global_probabilities.max(dim=1)
    chosen = confident > confidence
    if only_high_loss:
        count = int(len(labels) * noise_fraction * ratio)
        high_loss = torch.zeros_like(chosen)
        high_loss[losses.argsort(descending=True)[:count]] = True
        chosen &= high_loss
    return torch.where(chosen, predicted, labels)
