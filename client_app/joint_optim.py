"""Joint Optimization (Tanaka et al., "Joint Optimization Framework for Learning with Noisy
Labels", CVPR 2018) as local training under FedAvg, as FNBench runs it (`jointoptim`:
fl_components/update.py LocalUpdateJointOptim, fl_components/correctors.py
JointOptimCorrector). Torch only.

Each client trains on soft labels s (initially one-hot of its observed labels) with

    L = L_c + alpha * L_p + beta * L_e,
    L_c = -mean_i sum_c s_ic log p_ic          (CE against the soft labels)
    L_p = -sum_c (1/C) log pbar_c              (pbar: the batch's mean prediction; the paper's
                                                KL(prior || pbar) up to a constant, uniform prior)
    L_e = -mean_i sum_c p_ic log p_ic          (entropy of the predictions)

(paper eq. 2, 5, 6; FNBench's alpha 1.2, beta 0.8, the paper's CIFAR-10 values). Every training
forward pass records each sample's softmax in a history of the last `label-history` (15)
predictions; after the warm-up rounds, at the end of every local epoch the soft labels become the
mean of each sample's recorded predictions (the paper's label update, eq. 8, averaged as FNBench
does). History and labels are the client's state across rounds (client_app.state).

Departure: FNBench averages the whole history buffer, zeros of not-yet-filled slots included, so a
sample seen fewer than `label-history` times gets soft labels summing to less than 1; we average
the filled slots only (the same once a sample has been seen `label-history` times).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from common.protocol import LocalTraining


def joint_optimisation_loss(
    logits: torch.Tensor, soft_targets: torch.Tensor, alpha: float, beta: float
) -> torch.Tensor:
    """L_c + alpha * L_p + beta * L_e (module doc) for logits [b, C] and soft targets [b, C]
    (rows summing to 1); a 0-d float tensor."""
    log_p = F.log_softmax(logits, dim=1)
    p = log_p.exp()
    classes = logits.shape[1]
    cross_entropy = -(soft_targets * log_p).sum(dim=1).mean()
    prior = -(torch.log(p.mean(dim=0)) / classes).sum()
    entropy = -(p * log_p).sum(dim=1).mean()
    return cross_entropy + alpha * prior + beta * entropy


def stored_history(stored: dict[str, np.ndarray], device, size: int) -> torch.Tensor:
    """A stored per-sample history [n, size, ...] on `device`; ValueError naming the key when it
    was kept with another `label-history`."""
    history = torch.as_tensor(stored["history"]).to(device)
    if history.shape[1] != size:
        raise ValueError(
            f"the stored history holds {history.shape[1]} predictions per sample, not "
            f"label-history={size}"
        )
    return history


class LabelHistory:
    """One client's soft labels [n, C] and the history of its last `size` predictions per sample
    [n, size, C] (with how many were recorded, [n]), on the training device."""

    def __init__(
        self,
        soft: torch.Tensor,
        history: torch.Tensor,
        counts: torch.Tensor,
        correcting: bool,
    ) -> None:
        self.soft, self.history, self.counts = soft, history, counts
        self.correcting = correcting  # update the labels at the end of each epoch

    @classmethod
    def start(
        cls, observed: torch.Tensor, num_classes: int, size: int, correcting: bool
    ) -> LabelHistory:
        """One-hot soft labels of the observed labels (int64 [n]) and an empty history."""
        n, device = len(observed), observed.device
        soft = F.one_hot(observed, num_classes).float()
        history = torch.zeros(n, size, num_classes, device=device)
        counts = torch.zeros(n, dtype=torch.int64, device=device)
        return cls(soft, history, counts, correcting)

    @classmethod
    def restore(
        cls, stored: dict[str, np.ndarray], device: torch.device, size: int, correcting: bool
    ) -> LabelHistory:
        """From `arrays()`; ValueError when the stored history has another size."""
        history = stored_history(stored, device, size)
        soft = torch.as_tensor(stored["soft-labels"]).to(device)
        counts = torch.as_tensor(stored["counts"]).to(device)
        return cls(soft, history, counts, correcting)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "soft-labels": self.soft.cpu().numpy(),
            "history": self.history.cpu().numpy(),
            "counts": self.counts.cpu().numpy(),
        }

    def targets(self, idx: torch.Tensor) -> torch.Tensor:
        return self.soft[idx]

    def batch_loss(
        self,
        idx: torch.Tensor,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        forward: Callable[[torch.Tensor], torch.Tensor],
        settings: LocalTraining,
    ) -> torch.Tensor:
        """The joint optimisation loss on the batch's soft labels; its predictions recorded."""
        logits = forward(inputs)
        loss = joint_optimisation_loss(
            logits, self.targets(idx), settings.joint_optim_alpha, settings.joint_optim_beta
        )
        self.observe(idx, F.softmax(logits.detach(), dim=1))
        return loss

    def observe(self, idx: torch.Tensor, probabilities: torch.Tensor) -> None:
        """Record a batch's predictions (softmax [b, C]) in the samples' next history slots."""
        slots = self.counts[idx] % self.history.shape[1]
        self.history[idx, slots] = probabilities.detach().float()
        self.counts[idx] += 1

    def end_epoch(self) -> None:
        """When correcting: each sample's soft label becomes the mean of its recorded
        predictions (samples never recorded keep theirs)."""
        if not self.correcting:
            return
        filled = self.counts.clamp(max=self.history.shape[1])
        seen = filled > 0
        mean = self.history.sum(dim=1) / filled.clamp(min=1).unsqueeze(1).float()
        self.soft = torch.where(seen.unsqueeze(1), mean, self.soft)
