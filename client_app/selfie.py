"""SELFIE (Song et al., "SELFIE: Refurbishing Unclean Samples for Robust Deep Learning", ICML
2019) as local training under FedAvg, as FNBench runs it (`selfie`: fl_components/update.py
LocalUpdateSELFIE, fl_components/correctors.py SelfieCorrector). Torch only.

Every training forward pass records each sample's predicted class in a history of its last
`label-history` (q = 15) predictions. After the warm-up rounds, each batch is trained on:
- the "clean" samples: the ceil(b * (1 - r)) with the smallest CE loss, r = `selfie-noise-rate`
  (the paper's noise rate, small-loss selection as in Co-teaching);
- the "refurbishable" samples: those whose prediction history is certain enough, normalised
  entropy H(history) / log C <= `selfie-uncertainty` (0.05), get the history's most frequent
  class as their label (paper eq. 3-4), and keep it from then on;
with the refurbished label wherever a sample has one; the rest of the batch is left out, and the
loss is the CE of a second forward pass on the kept samples (FNBench does the same).

Departures: FNBench gives each client its true noise rate as r, an oracle no real client has;
here r is one assumed rate for all clients (a key). FNBench's history starts as q zeros, counted
as predictions of class 0 until the queue is full; here only a sample with q recorded
predictions can be refurbished. A tie for the most frequent class goes to the lower class index.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from client_app.joint_optim import stored_history
from common.protocol import LocalTraining


def history_certainty(history: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised entropy in [0, 1], most frequent class) of prediction histories [b, q]
    (int64 classes): H(counts / q) / log C, and the argmax of the counts (lowest class on ties)."""
    counts = F.one_hot(history, num_classes).sum(dim=1).float()  # [b, C]
    share = counts / history.shape[1]
    entropy = -(share * torch.log(share.clamp(min=1e-12))).sum(dim=1)
    return entropy / math.log(num_classes), counts.argmax(dim=1)


def small_loss_mask(losses: torch.Tensor, noise_rate: float) -> torch.Tensor:
    """bool [b]: the ceil(b * (1 - noise_rate)) smallest losses (ties by position)."""
    keep = math.ceil(len(losses) * (1.0 - noise_rate))
    order = torch.argsort(losses, stable=True)
    mask = torch.zeros_like(losses, dtype=torch.bool)
    mask[order[:keep]] = True
    return mask


class SelfieState:
    """One client's prediction history [n, q] (int64), how many predictions were recorded [n],
    and the refurbished labels [n] (-1: none), on the training device."""

    def __init__(
        self,
        history: torch.Tensor,
        counts: torch.Tensor,
        refurbished: torch.Tensor,
        num_classes: int,
        correcting: bool,
    ) -> None:
        self.history, self.counts, self.refurbished = history, counts, refurbished
        self.num_classes = num_classes
        self.correcting = correcting  # after the warm-up: select and refurbish

    @classmethod
    def start(
        cls, num_samples: int, num_classes: int, size: int, device, correcting: bool
    ) -> SelfieState:
        history = torch.zeros(num_samples, size, dtype=torch.int64, device=device)
        counts = torch.zeros(num_samples, dtype=torch.int64, device=device)
        refurbished = torch.full((num_samples,), -1, dtype=torch.int64, device=device)
        return cls(history, counts, refurbished, num_classes, correcting)

    @classmethod
    def restore(
        cls,
        stored: dict[str, np.ndarray],
        device: torch.device,
        num_classes: int,
        size: int,
        correcting: bool,
    ) -> SelfieState:
        """From `arrays()`; ValueError when the stored history has another size."""
        history = stored_history(stored, device, size)
        counts = torch.as_tensor(stored["counts"]).to(device)
        refurbished = torch.as_tensor(stored["refurbished"]).to(device)
        return cls(history, counts, refurbished, num_classes, correcting)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "history": self.history.cpu().numpy(),
            "counts": self.counts.cpu().numpy(),
            "refurbished": self.refurbished.cpu().numpy(),
        }

    def observe(self, idx: torch.Tensor, predicted: torch.Tensor) -> None:
        """Record the batch's predicted classes in the samples' next history slots."""
        slots = self.counts[idx] % self.history.shape[1]
        self.history[idx, slots] = predicted
        self.counts[idx] += 1

    def refurbish(self, idx: torch.Tensor, threshold: float) -> None:
        """Give the batch's samples whose full history is certain enough (normalised entropy <=
        `threshold`) the history's most frequent class as their refurbished label."""
        uncertainty, mode = history_certainty(self.history[idx], self.num_classes)
        full = self.counts[idx] >= self.history.shape[1]
        certain = full & (uncertainty <= threshold)
        self.refurbished[idx] = torch.where(certain, mode, self.refurbished[idx])

    def batch_loss(
        self,
        idx: torch.Tensor,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        forward: Callable[[torch.Tensor], torch.Tensor],
        settings: LocalTraining,
    ) -> torch.Tensor:
        """Mean CE of the batch; after the warm-up, of its small-loss and refurbished samples
        (refurbished labels applied), from a second forward pass on them (module doc)."""
        logits = forward(inputs)
        losses = F.cross_entropy(logits, targets, reduction="none")
        self.observe(idx, logits.detach().argmax(dim=1))
        if not self.correcting:
            return losses.mean()
        self.refurbish(idx, settings.selfie_uncertainty)
        clean = small_loss_mask(losses.detach(), settings.selfie_noise_rate)
        labels = self.refurbished[idx]
        has_label = labels >= 0
        keep = clean | has_label
        corrected = torch.where(has_label, labels, targets)
        return F.cross_entropy(forward(inputs[keep]), corrected[keep])

    def end_epoch(self) -> None:
        """Nothing: SELFIE refurbishes batch by batch."""
