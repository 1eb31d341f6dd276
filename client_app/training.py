"""Local training loops (torch only: no Flower, so benchmarks can run them without Ray).

A client's data are tensors on the training device (data.client_data.ClientData); each batch is
indexed from them and augmented on the device (data.transforms). The loop follows the authors'
`train_stage1` / FedAvg client (spec §2.1, §5.2): a fresh SGD optimiser every round, E epochs,
shuffled batches of B with the last partial batch dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from data.client_data import ClientData
from data.transforms import InputPipeline


@dataclass(frozen=True)
class LocalTraining:
    """How a client trains in one round."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    loss: str = "ce"  # "ce" or "logit-adjusted"
    proximal_mu: float = 0.0  # FedProx's mu; 0 turns the proximal term off


@dataclass(frozen=True)
class TrainStats:
    mean_loss: float  # mean of the minimised loss over the steps taken
    num_steps: int


def logit_adjusted_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, log_prior: torch.Tensor, tau: float = 1.0
) -> torch.Tensor:
    """CE on logits shifted by tau * log(class prior) (Menon et al.; spec §2.1, tau = 1).

    Classes absent from the client have prior 0 and log-prior -inf, as in the authors' code:
    their probability becomes 0, which is harmless because no target is an absent class.
    """
    return F.cross_entropy(logits + tau * log_prior, targets)


def proximal_term(model: nn.Module, anchor: list[torch.Tensor]) -> torch.Tensor:
    """FedProx's sum of squared distances ||w - w_global||^2 over all parameters."""
    return sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True))


def batch_indices(
    num_samples: int, batch_size: int, generator: torch.Generator, device: torch.device
) -> list[torch.Tensor]:
    """One epoch of shuffled full batches (drop_last=True), as index tensors on `device`."""
    order = torch.randperm(num_samples, generator=generator).to(device)
    num_batches = num_samples // batch_size
    return list(order[: num_batches * batch_size].view(num_batches, batch_size))


def local_optimiser(model: nn.Module, settings: LocalTraining) -> torch.optim.SGD:
    """A fresh SGD optimiser, as the authors create one every round (no momentum carried over)."""
    return torch.optim.SGD(
        model.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )


def train_locally(
    model: nn.Module,
    data: ClientData,
    pipeline: InputPipeline,
    settings: LocalTraining,
    generator: torch.Generator,
) -> TrainStats:
    """Train `model` in place on the client's observed labels for `settings.epochs` epochs."""
    model.train()
    optimiser = local_optimiser(model, settings)
    log_prior = torch.log(data.class_prior()) if settings.loss == "logit-adjusted" else None
    anchor = [p.detach().clone() for p in model.parameters()] if settings.proximal_mu > 0 else None
    device = data.inputs.device
    loss_sum = torch.zeros((), device=device)
    steps = 0
    for _ in range(settings.epochs):
        for idx in batch_indices(len(data), settings.batch_size, generator, device):
            inputs = pipeline.train_batch(data.inputs[idx], generator)
            targets = data.observed_labels[idx]
            logits = model(inputs)
            if log_prior is None:
                loss = F.cross_entropy(logits, targets)
            else:
                loss = logit_adjusted_cross_entropy(logits, targets, log_prior)
            if anchor is not None:
                loss = loss + 0.5 * settings.proximal_mu * proximal_term(model, anchor)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            loss_sum += loss.detach()  # stays on the device: no sync per step
            steps += 1
    return TrainStats(mean_loss=float(loss_sum) / max(steps, 1), num_steps=steps)
