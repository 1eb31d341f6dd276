"""Co-teaching (Han et al., NeurIPS 2018) and Co-teaching+ (Yu et al., ICML 2019) as local
training under FedAvg, as FNBench runs them (`coteaching`, `coteaching+`: fl_components/update.py
LocalUpdateCoteaching). Torch only.

Each client trains two networks on the same batches. Each network ranks the batch by its own CE
loss and keeps its (1 - R(t)) share of smallest-loss samples; each network then updates on the
samples its peer kept (the exchange), loss = sum of CE over them / their number. Co-teaching+
first restricts the batch to the samples on which the two networks' predictions disagree, then
exchanges as above; a batch without disagreement trains both on all of it.

R(t), the forget rate of round t, follows Han et al.'s schedule over global rounds: linear from 0
in round 1 to `forget-rate` tau in round T_k (`coteaching-ramp-rounds`, 10), then tau
(`numpy.linspace(0, tau, T_k)`, as their code). FNBench ramps over its `warmup_epochs`, 30
rounds: `coteaching-ramp-rounds = 30`.

Departures from FNBench's Co-teaching+: it feeds softmax probabilities to a CE that applies a
softmax again, and keeps a sample-index mask that can drop disagreeing samples; we use the
logits and the disagreement mask as the paper defines them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from client_app.training import TrainStats, batch_indices, local_optimiser
from common.acceleration import DeviceOptions
from common.protocol import LocalTraining
from data.client_data import ClientData
from data.transforms import InputPipeline


def forget_rate(server_round: int, tau: float, ramp_rounds: int) -> float:
    """R(t): tau * (t - 1) / (T_k - 1) for t <= T_k (1-based rounds), then tau; tau for
    T_k <= 1."""
    if ramp_rounds <= 1:
        return tau
    return tau * min(1.0, (server_round - 1) / (ramp_rounds - 1))


def coteaching_losses(
    logits1: torch.Tensor, logits2: torch.Tensor, targets: torch.Tensor, rate: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss of network 1, loss of network 2): each network's CE summed over the
    max(1, int((1 - rate) * b)) samples with the smallest loss under its peer, divided by that
    count (ties by position)."""
    loss1 = F.cross_entropy(logits1, targets, reduction="none")
    loss2 = F.cross_entropy(logits2, targets, reduction="none")
    remember = max(1, int((1.0 - rate) * len(targets)))
    keep1 = torch.argsort(loss1.detach(), stable=True)[:remember]
    keep2 = torch.argsort(loss2.detach(), stable=True)[:remember]
    return loss1[keep2].sum() / remember, loss2[keep1].sum() / remember


def coteaching_plus_losses(
    logits1: torch.Tensor, logits2: torch.Tensor, targets: torch.Tensor, rate: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Co-teaching on the samples where the two networks' argmax predictions disagree; plain
    mean CE of each on the whole batch when they agree everywhere."""
    disagree = logits1.detach().argmax(dim=1) != logits2.detach().argmax(dim=1)
    if bool(disagree.any()):
        return coteaching_losses(logits1[disagree], logits2[disagree], targets[disagree], rate)
    return F.cross_entropy(logits1, targets), F.cross_entropy(logits2, targets)


def train_two_networks(
    model1: nn.Module,
    model2: nn.Module,
    data: ClientData,
    pipeline: InputPipeline,
    settings: LocalTraining,
    rate: float,
    disagreement: bool,
    generator: torch.Generator,
    options: DeviceOptions = DeviceOptions(),  # noqa: B008 (frozen)
) -> TrainStats:
    """Train both networks in place for `settings.local_epochs` epochs on the same shuffled,
    augmented batches, each with its own fresh SGD optimiser; `disagreement` selects
    Co-teaching+. The mean loss reported is network 1's."""
    model1.train()
    model2.train()
    optimisers = (local_optimiser(model1, settings), local_optimiser(model2, settings))
    losses = coteaching_plus_losses if disagreement else coteaching_losses
    device = data.inputs.device
    loss_sum = torch.zeros((), device=device)
    steps = 0
    for _ in range(settings.local_epochs):
        for idx in batch_indices(len(data), settings.batch_size, generator, device):
            inputs = options.prepare_inputs(pipeline.train_batch(data.inputs[idx], generator))
            targets = data.observed_labels[idx]
            with options.autocast(device):
                logits1, logits2 = model1(inputs), model2(inputs)
            loss1, loss2 = losses(logits1.float(), logits2.float(), targets, rate)
            for optimiser in optimisers:
                optimiser.zero_grad(set_to_none=True)
            (loss1 + loss2).backward()  # the two graphs share nothing: each gets its own grad
            for optimiser in optimisers:
                optimiser.step()
            loss_sum += loss1.detach()
            steps += 1
    return TrainStats(mean_loss=float(loss_sum) / max(steps, 1), num_steps=steps)
