"""FedLSR (Jiang et al., "Towards Federated Learning against Noisy Labels via Local
Self-Regularization", CIKM 2022) as local training under FedAvg, read from the paper and from
FNBench's `fedlsr` (fl_components/update.py, LocalUpdateFedLSR; FNBench is by the same first
author). Torch only.

Each batch is seen in two views: the training transform, and the same crop further distorted in
colour (data.transforms.colour_augment). With o1, o2 the two views' logits:
- the predictions are mixed, p = lambda softmax(o1) + (1 - lambda) softmax(o2) with lambda ~
  Beta(1, 1) per batch, and sharpened, p_s = p^2 / sum(p^2); L_cls = mean of -log p_s[y];
- self-distillation: the Jensen-Shannon divergence between softmax(t o1) and softmax(t o2)
  (t = `fedlsr-temperature`, 3, multiplies the logits), clamped at 1e-6 as FNBench does, with
  weight gamma ramped from 0 over the first `fedlsr-warmup-ratio` of the rounds;
- entropy regularisation: gamma_e times the mean entropy of softmax(o1).
loss = L_cls + gamma(t) JS + gamma_e H.

Departures from FNBench, toward the paper: FNBench passes the sharpened probabilities to a
cross-entropy that applies a softmax again, and takes the entropy of a softmax of
probabilities (both nearly flat); here L_cls is the negative log of the sharpened probability
and the entropy is that of the model's prediction. FNBench's JS keeps torch's KLDivLoss
`reduction='mean'` (a mean over batch x classes), and so does this: gamma was tuned with it.
"""

from __future__ import annotations

import torch

from client_app.training import TrainStats, batch_indices, local_optimiser
from common.acceleration import DeviceOptions
from common.protocol import LocalTraining
from data.client_data import ClientData
from data.transforms import ImagePipeline

PROBABILITY_FLOOR = 1e-6  # FNBench clamps the tempered predictions "for training stability"


def sharpened_mix(logits1: torch.Tensor, logits2: torch.Tensor, share: float) -> torch.Tensor:
    """p_s = p^2 / sum(p^2), p = share softmax(o1) + (1 - share) softmax(o2): (B, C) -> (B, C)."""
    p = share * torch.softmax(logits1, dim=1) + (1 - share) * torch.softmax(logits2, dim=1)
    squared = p**2
    return squared / squared.sum(dim=1, keepdim=True)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(KL(p || m) + KL(q || m)) / 2, m = (p + q) / 2, each KL a mean over all B x C terms
    p log(p / m) (torch's KLDivLoss, reduction='mean', as FNBench). p, q: (B, C)
    probabilities; returns a 0-d tensor."""
    log_m = ((p + q) / 2).log()
    return ((p * (p.log() - log_m)).mean() + (q * (q.log() - log_m)).mean()) / 2


def fedlsr_loss(
    logits1: torch.Tensor,
    logits2: torch.Tensor,
    targets: torch.Tensor,
    share: float,
    gamma: float,
    gamma_e: float,
    temperature: float,
) -> torch.Tensor:
    """FedLSR's batch loss (module docstring). logits1, logits2: (B, C) of the two views;
    targets: (B,) int64; share: lambda in [0, 1]. Returns a 0-d tensor."""
    sharpened = sharpened_mix(logits1, logits2, share)
    picked = sharpened.gather(1, targets.view(-1, 1)).squeeze(1)
    classification = -picked.clamp_min(1e-12).log().mean()
    tempered1 = torch.softmax(logits1 * temperature, dim=1).clamp(PROBABILITY_FLOOR, 1.0)
    tempered2 = torch.softmax(logits2 * temperature, dim=1).clamp(PROBABILITY_FLOOR, 1.0)
    log_p = torch.log_softmax(logits1, dim=1)
    entropy = -(log_p.exp() * log_p).sum(dim=1).mean()
    return classification + gamma * js_divergence(tempered1, tempered2) + gamma_e * entropy


def train_fedlsr(
    model: torch.nn.Module,
    data: ClientData,
    pipeline: ImagePipeline,
    settings: LocalTraining,
    gamma: float,
    gamma_e: float,
    temperature: float,
    generator: torch.Generator,
    options: DeviceOptions = DeviceOptions(),  # noqa: B008 (frozen)
) -> TrainStats:
    """Train `model` in place for `settings.local_epochs` epochs with FedLSR's loss on the
    pipeline's two views (`pipeline.train_pair`); lambda ~ Beta(1, 1) = U(0, 1) per batch,
    drawn from `generator`."""
    model.train()
    optimiser = local_optimiser(model, settings)
    device = data.inputs.device
    loss_sum = torch.zeros((), device=device)
    steps = 0
    for _ in range(settings.local_epochs):
        for idx in batch_indices(len(data), settings.batch_size, generator, device):
            first, second = pipeline.train_pair(data.inputs[idx], generator)
            share = float(torch.rand((), generator=generator))
            with options.autocast(device):
                logits1 = model(options.prepare_inputs(first))
                logits2 = model(options.prepare_inputs(second))
            loss = fedlsr_loss(
                logits1.float(), logits2.float(), data.observed_labels[idx],
                share, gamma, gamma_e, temperature,
            )  # fmt: skip
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            loss_sum += loss.detach()
            steps += 1
    return TrainStats(mean_loss=float(loss_sum) / max(steps, 1), num_steps=steps)
