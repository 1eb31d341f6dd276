"""DivideMix (Li et al., "DivideMix: Learning with Noisy Labels as Semi-supervised Learning",
ICLR 2020) as local training under FedAvg, as FNBench runs it (fl_components/update.py,
LocalUpdateDivideMix, SemiLoss, mixup). Torch, plus scikit-learn's Gaussian mixture.

Each client trains two networks (the global model and a second one, averaged like it; see
strategies.rules.TwoNetworks). During the warm-up (`label-warmup-rounds`) both train with CE.
Afterwards, in every local epoch:
1. co-divide: each network's per-sample CE losses (eval mode) are min-max normalised and
   fitted by a two-component Gaussian mixture; a sample is *labelled* where its probability w
   of the low-loss component exceeds `p-threshold`, *unlabelled* otherwise;
2. each network trains on the division made by the other (the other held fixed), one pass over
   its labelled samples, each batch with as many unlabelled ones (cycled):
   - two augmented views of every sample;
   - co-guessing: the unlabelled targets are the mean of both networks' softmax over both
     views, sharpened with temperature T (`dividemix-temperature`, 0.5);
   - label refinement: the labelled targets are w * one-hot(y) + (1 - w) * the trained
     network's mean softmax over the two views, sharpened;
   - MixMatch: the four groups (views x2, unlabelled views u2) are mixed with a random partner
     with lambda' = max(lambda, 1 - lambda), lambda ~ Beta(alpha, alpha) (`dividemix-alpha`, 4);
   - loss = CE of the mixed labelled part against its soft targets + lambda_u(t) * the mean
     squared error of the unlabelled part's softmax against its targets + the uniform-prior
     penalty sum_c (1/C) log((1/C) / mean prediction_c); lambda_u(t) ramps linearly from 0 to
     `dividemix-lambda-u` (25) over 16 rounds after the warm-up (t counts rounds, in fractions
     of the epoch's batches, as FNBench).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from client_app.fedrn import clean_probability, per_sample_losses
from client_app.training import TrainStats, batch_indices, local_optimiser
from common.acceleration import DeviceOptions
from common.protocol import DivideMixSettings, LocalTraining
from data.client_data import ClientData
from data.transforms import InputPipeline
from models import Classifier

RAMPUP_ROUNDS = 16  # DivideMix's and FNBench's linear_rampup length


def sharpen(probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """p^(1/T) renormalised per row: (B, C) -> (B, C)."""
    powered = probabilities ** (1.0 / temperature)
    return powered / powered.sum(dim=1, keepdim=True)


def unlabelled_weight(lambda_u: float, progress: float) -> float:
    """lambda_u * clip(progress / 16, 0, 1), progress = rounds since the warm-up ended."""
    return lambda_u * float(np.clip(progress / RAMPUP_ROUNDS, 0.0, 1.0))


def semi_supervised_loss(
    logits_x: torch.Tensor,
    targets_x: torch.Tensor,
    logits_u: torch.Tensor,
    targets_u: torch.Tensor,
    weight_u: float,
) -> torch.Tensor:
    """-mean sum(targets_x log softmax(logits_x)) + weight_u mean((softmax(logits_u) -
    targets_u)^2) (the mean over rows and classes) + the uniform-prior penalty over all rows,
    sum_c (1/C) log((1/C) / mean_c). An empty unlabelled part contributes 0."""
    supervised = -(F.log_softmax(logits_x, dim=1) * targets_x).sum(dim=1).mean()
    unsupervised = torch.zeros((), device=logits_x.device)
    if len(logits_u):
        unsupervised = ((torch.softmax(logits_u, dim=1) - targets_u) ** 2).mean()
    logits = torch.cat([logits_x, logits_u])
    prior = torch.full((logits.shape[1],), 1.0 / logits.shape[1], device=logits.device)
    mean_prediction = torch.softmax(logits, dim=1).mean(dim=0)
    penalty = (prior * torch.log(prior / mean_prediction)).sum()
    return supervised + weight_u * unsupervised + penalty


@dataclass(frozen=True)
class Division:
    """A network's split of the client's samples (positions in its data)."""

    probability: np.ndarray  # (n,) float64: each sample's probability of being clean
    labelled: np.ndarray  # int64, increasing
    unlabelled: np.ndarray  # int64, increasing


def co_divide(
    model: Classifier,
    data: ClientData,
    pipeline: InputPipeline,
    threshold: float,
    seed: int,
    batch_size: int,
    options: DeviceOptions = DeviceOptions(),  # noqa: B008 (frozen)
) -> Division:
    """Step 1: the Gaussian-mixture split of the client's samples by `model`'s losses."""
    probability = clean_probability(
        per_sample_losses(model, data, pipeline, batch_size, options), seed
    )
    labelled = probability > threshold
    return Division(probability, np.flatnonzero(labelled), np.flatnonzero(~labelled))


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels, num_classes).float()


def train_on_division(
    model: Classifier,
    peer: Classifier,
    data: ClientData,
    pipeline: InputPipeline,
    division: Division,
    settings: LocalTraining,
    dividemix: DivideMixSettings,
    generator: torch.Generator,
    options: DeviceOptions = DeviceOptions(),  # noqa: B008 (frozen)
) -> tuple[float, int]:
    """Step 2 for `model` on `peer`'s division, `peer` fixed: one pass over the labelled
    samples in shuffled batches of `settings.batch_size` (all of them as one batch when fewer),
    each with as many unlabelled samples, cycled. Returns (loss sum, steps)."""
    device = data.inputs.device
    if len(division.labelled) < 2:  # nothing to learn from (FNBench divides by zero here)
        return 0.0, 0
    model.train()
    peer.eval()
    optimiser = local_optimiser(model, settings)
    labelled = torch.as_tensor(division.labelled, device=device)
    unlabelled = torch.as_tensor(division.unlabelled, device=device)
    probability = torch.as_tensor(division.probability, dtype=torch.float32, device=device)
    size = min(settings.batch_size, len(labelled))
    batches = batch_indices(len(labelled), size, generator, device)
    unlabelled_order = torch.zeros(0, dtype=torch.long, device=device)
    mixing = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
    classes = data.num_classes
    loss_sum, steps = 0.0, 0
    for number, batch in enumerate(batches):
        rows_x = labelled[batch]
        if len(unlabelled):
            while len(unlabelled_order) < size:  # cycle through a fresh shuffle
                fresh = torch.randperm(len(unlabelled), generator=generator).to(device)
                unlabelled_order = torch.cat([unlabelled_order, unlabelled[fresh]])
            rows_u, unlabelled_order = unlabelled_order[:size], unlabelled_order[size:]
        else:
            rows_u = unlabelled  # empty
        views = [
            options.prepare_inputs(pipeline.train_batch(data.inputs[rows], generator))
            for rows in (rows_x, rows_x, rows_u, rows_u)
        ]
        with torch.no_grad(), options.autocast(device):
            if len(rows_u):
                guesses = [net(view).float() for net in (model, peer) for view in views[2:]]
                guessed = sum(torch.softmax(g, dim=1) for g in guesses) / 4
                targets_u = sharpen(guessed, dividemix.dividemix_temperature)
            own = [model(view).float() for view in views[:2]]
        if not len(rows_u):
            targets_u = torch.zeros(0, classes, device=device)
        w = probability[rows_x].view(-1, 1)
        refined = sum(torch.softmax(o, dim=1) for o in own) / 2
        refined = w * _one_hot(data.observed_labels[rows_x], classes) + (1 - w) * refined
        targets_x = sharpen(refined, dividemix.dividemix_temperature)
        inputs = pipeline.concat(views)
        targets = torch.cat([targets_x, targets_x, targets_u, targets_u])
        share = float(mixing.beta(dividemix.dividemix_alpha, dividemix.dividemix_alpha))
        share = max(share, 1.0 - share)
        partner = torch.randperm(len(inputs), generator=generator).to(device)
        with options.autocast(device):
            logits = model.mixed_forward(inputs, partner, share).float()
        mixed_targets = share * targets + (1 - share) * targets[partner]
        labelled_rows = 2 * len(rows_x)
        progress = dividemix.rounds_after_warmup + number / len(batches)
        loss = semi_supervised_loss(
            logits[:labelled_rows], mixed_targets[:labelled_rows],
            logits[labelled_rows:], mixed_targets[labelled_rows:],
            unlabelled_weight(dividemix.dividemix_lambda_u, progress),
        )  # fmt: skip
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        loss_sum += float(loss.detach())
        steps += 1
    return loss_sum, steps


def train_both_with_ce(
    model1: Classifier,
    model2: Classifier,
    data: ClientData,
    pipeline: InputPipeline,
    settings: LocalTraining,
    generator: torch.Generator,
    options: DeviceOptions,
) -> tuple[float, int]:
    """The warm-up (FNBench's train_multiple_models): both networks on the same batches, each
    with CE and its own optimiser, for the round's epochs. Returns network 1's (loss sum,
    steps)."""
    model1.train()
    model2.train()
    optimisers = (local_optimiser(model1, settings), local_optimiser(model2, settings))
    device = data.inputs.device
    loss_sum, steps = 0.0, 0
    for _ in range(settings.local_epochs):
        for idx in batch_indices(len(data), settings.batch_size, generator, device):
            inputs = options.prepare_inputs(pipeline.train_batch(data.inputs[idx], generator))
            targets = data.observed_labels[idx]
            with options.autocast(device):
                logits1, logits2 = model1(inputs).float(), model2(inputs).float()
            loss1 = F.cross_entropy(logits1, targets)
            loss2 = F.cross_entropy(logits2, targets)
            for optimiser in optimisers:
                optimiser.zero_grad(set_to_none=True)
            (loss1 + loss2).backward()  # the two graphs share nothing: each gets its own grad
            for optimiser in optimisers:
                optimiser.step()
            loss_sum += float(loss1.detach())
            steps += 1
    return loss_sum, steps


def train_dividemix(
    model1: Classifier,
    model2: Classifier,
    data: ClientData,
    pipeline: InputPipeline,
    settings: LocalTraining,
    dividemix: DivideMixSettings,
    seed: int,
    generator: torch.Generator,
    eval_batch_size: int,
    options: DeviceOptions = DeviceOptions(),  # noqa: B008 (frozen)
) -> TrainStats:
    """Train both networks in place for `settings.local_epochs` epochs (module docstring). The
    warm-up trains each with CE and its own optimiser for the whole round (FNBench's
    train_multiple_models); afterwards each epoch co-divides, then trains network 1 on network
    2's division and network 2 on network 1's, with a fresh optimiser each time (FNBench's
    divide_mix). The mean loss reported is network 1's."""
    if dividemix.warm:
        loss_sum, steps = train_both_with_ce(
            model1, model2, data, pipeline, settings, generator, options
        )
        return TrainStats(mean_loss=loss_sum / max(steps, 1), num_steps=steps)
    loss_sum, steps = 0.0, 0
    threshold = dividemix.p_threshold
    for _ in range(settings.local_epochs):
        first = co_divide(model1, data, pipeline, threshold, seed, eval_batch_size, options)
        second = co_divide(model2, data, pipeline, threshold, seed, eval_batch_size, options)
        total, count = train_on_division(
            model1, model2, data, pipeline, second, settings, dividemix, generator, options
        )
        train_on_division(
            model2, model1, data, pipeline, first, settings, dividemix, generator, options
        )
        loss_sum, steps = loss_sum + total, steps + count
    return TrainStats(mean_loss=loss_sum / max(steps, 1), num_steps=steps)
