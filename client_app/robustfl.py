"""RobustFL (Yang et al., "Robust Federated Learning with Noisy Labels", IEEE Intelligent
Systems 2022; arXiv 2012.01700) as local training, read from the paper and from FNBench's
`robustfl` (fl_components/update.py, LocalUpdateRFL; main_fed_LNL.py for the server). Torch only.

Clients and server share class-wise feature centroids f (C x D: one mean feature per class, D the
model's feature width). Each round a client:
1. takes the server's global centroids (in round 1, when there are none yet, the means of its
   own features by its given labels), and the global model's argmax prediction of each of its
   samples (the "global-guided pseudo-labels");
2. for each batch keeps its (1 - R(t)) share of smallest-CE samples (R(t): the forget-rate
   schedule of client_app.coteaching) and, for each kept sample, the class of its nearest
   centroid by cosine similarity; where that class equals the given label the sample is
   "confident" (mask m = 1) and trains on its label, otherwise on its pseudo-label (on its given
   label during the first `robustfl-pseudo-rounds` T_pl rounds);
3. minimises L_c + lambda_cen * L_cen + lambda_e * L_e over the kept samples (`robustfl_loss`);
4. moves each class's centroid toward the mean feature of that class's kept samples with weight
   cos^2 (`update_centroids`), and uploads its centroids with its model.
The server averages the uploaded centroids weighted by their cosine similarity to its own
(strategies.aggregation.similarity_weighted_centroids).

As in the authors' code (jangsoohyuk/Robust-Federated-Learning-with-Noisy-Labels, utils/train.py)
and FNBench's, the features are detached before the centroid loss, so L_cen adds to the loss's
value but trains nothing; the centroids act through the labels they check. Letting it train the
features (an earlier version here) collapsed the CPU paper preset: 14.3 % last-10 (seed 1), the
test accuracy falling from 20.6 % in round 10 to 16.1 % in round 20, where it reached 28.0 % with
`robustfl-lambda-cen = 0`. Departure: FNBench starts the server's centroids from random numbers
and weights the first round's uploads by their similarity to them; here the first round's
uploads are averaged by sample count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from client_app.training import TrainStats, batch_indices, local_optimiser
from common.acceleration import DeviceOptions
from common.protocol import LocalTraining
from data.client_data import ClientData
from data.transforms import InputPipeline
from models import Classifier


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean feature of each class. features: (n, D) float; labels: (n,) int64 in [0, C).
    Returns (C, D) float32; a class without samples gets a zero row (FNBench divides by 1)."""
    sums = torch.zeros(num_classes, features.shape[1], device=features.device)
    sums.index_add_(0, labels, features.float())
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1)
    return sums / counts.unsqueeze(1).to(sums.dtype)


def nearest_centroid(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The class of each row's most cosine-similar centroid: (n, D), (C, D) -> (n,) int64.
    A zero centroid has similarity 0 (torch's eps)."""
    similarity = F.cosine_similarity(features.float().unsqueeze(1), centroids.unsqueeze(0), dim=2)
    return similarity.argmax(dim=1)


def small_loss_indices(logits: torch.Tensor, targets: torch.Tensor, rate: float) -> torch.Tensor:
    """The int((1 - rate) * b) samples of the batch with the smallest CE (at least one), by
    increasing loss, ties by position (FNBench's get_small_loss_samples)."""
    loss = F.cross_entropy(logits.detach(), targets, reduction="none")
    remember = max(1, int((1.0 - rate) * len(targets)))
    return torch.argsort(loss, stable=True)[:remember]


@dataclass(frozen=True)
class RobustflTerms:
    """A batch's loss and what it selected (for tests and statistics)."""

    loss: torch.Tensor  # 0-d, differentiable
    kept: torch.Tensor  # (k,) int64: the small-loss samples
    confident: torch.Tensor  # (k,) bool: their nearest centroid is their given label
    targets: torch.Tensor  # (k,) int64: what each kept sample trained on


def robustfl_loss(
    logits: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    pseudo_labels: torch.Tensor,
    centroids: torch.Tensor,
    rate: float,
    lambda_cen: float,
    lambda_e: float,
    use_pseudo: bool,
) -> RobustflTerms:
    """RobustFL's batch loss L_c + lambda_cen * L_cen + lambda_e * L_e (the paper's Eq. for the
    local objective; FNBench's RFLloss), on the batch's small-loss samples S:

    - L_c = mean over S of CE(logits, t), t = the given label where the sample is confident
      (its nearest centroid is its label) or `use_pseudo` is False, else its pseudo-label;
    - L_cen = sum over S of m * ||feature - centroid[label]||^2 (m: confident), the features
      detached as in the authors' code (it adds to the value, not to the gradient);
    - L_e = mean over S of the entropy of softmax(logits).

    logits: (b, C); features: (b, D); labels, pseudo_labels: (b,) int64; centroids: (C, D)."""
    kept = small_loss_indices(logits, labels, rate)
    given = labels[kept]
    feats = features[kept].detach().float()  # the authors' `feature.detach()`
    confident = nearest_centroid(feats, centroids) == given
    targets = torch.where(confident | (not use_pseudo), given, pseudo_labels[kept])
    kept_logits = logits[kept]
    loss_c = F.cross_entropy(kept_logits, targets)
    distance = ((feats - centroids[given]) ** 2).sum(dim=1)
    loss_cen = (confident.float() * distance).sum()
    log_p = F.log_softmax(kept_logits, dim=1)
    loss_e = -(log_p.exp() * log_p).sum(dim=1).mean()
    loss = loss_c + lambda_cen * loss_cen + lambda_e * loss_e
    return RobustflTerms(loss, kept, confident, targets)


def update_centroids(
    centroids: torch.Tensor, features: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """f <- (1 - s^2) f + s^2 f_hat per class, f_hat the mean feature of the class's samples
    in (features, labels) and s = cos(f, f_hat); a class absent from them is unchanged (f_hat =
    0, s = 0). centroids: (C, D); features: (k, D); labels: (k,). Returns a new (C, D)."""
    batch_means = class_means(features.detach().float(), labels, len(centroids))
    weight = F.cosine_similarity(centroids, batch_means, dim=1).pow(2).unsqueeze(1)
    return (1 - weight) * centroids + weight * batch_means


def local_centroids(
    model: Classifier,
    data: ClientData,
    pipeline: InputPipeline,
    batch_size: int,
    options: DeviceOptions = DeviceOptions(),  # noqa: B008 (frozen)
) -> tuple[torch.Tensor, torch.Tensor]:
    """(class means of the model's eval-mode features by the given labels (C, D), the model's
    argmax prediction of each sample (n,) int64): FNBench's pass before local training."""
    model.eval()
    features, logits = [], []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = pipeline.eval_batch(data.inputs[start : start + batch_size])
            with options.autocast(data.inputs.device):
                out, feats = model.forward_with_features(options.prepare_inputs(batch))
            logits.append(out.float())
            features.append(feats.float())
    means = class_means(torch.cat(features), data.observed_labels, data.num_classes)
    return means, torch.cat(logits).argmax(dim=1)


def train_robustfl(
    model: Classifier,
    data: ClientData,
    pipeline: InputPipeline,
    settings: LocalTraining,
    centroids: torch.Tensor | None,
    rate: float,
    lambda_cen: float,
    lambda_e: float,
    use_pseudo: bool,
    generator: torch.Generator,
    eval_batch_size: int,
    options: DeviceOptions = DeviceOptions(),  # noqa: B008 (frozen)
) -> tuple[TrainStats, torch.Tensor]:
    """Train `model` in place for `settings.local_epochs` epochs with RobustFL's loss; return
    the statistics and the client's centroids after training ((C, D) float32). `centroids`:
    the server's global ones, or None in the first round (the client's own class means)."""
    own, pseudo_labels = local_centroids(model, data, pipeline, eval_batch_size, options)
    current = own if centroids is None else centroids.to(own.device).float()
    model.train()
    optimiser = local_optimiser(model, settings)
    device = data.inputs.device
    loss_sum = torch.zeros((), device=device)
    steps = 0
    for _ in range(settings.local_epochs):
        for idx in batch_indices(len(data), settings.batch_size, generator, device):
            inputs = options.prepare_inputs(pipeline.train_batch(data.inputs[idx], generator))
            labels = data.observed_labels[idx]
            with options.autocast(device):
                logits, features = model.forward_with_features(inputs)
            terms = robustfl_loss(
                logits.float(), features.float(), labels, pseudo_labels[idx], current,
                rate, lambda_cen, lambda_e, use_pseudo,
            )  # fmt: skip
            optimiser.zero_grad(set_to_none=True)
            terms.loss.backward()
            optimiser.step()
            current = update_centroids(current, features[terms.kept], labels[terms.kept])
            loss_sum += terms.loss.detach()
            steps += 1
    return TrainStats(mean_loss=float(loss_sum) / max(steps, 1), num_steps=steps), current
