"""A client's local data as tensors on the training device, built once and reused every round."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data.federation import Federation


@dataclass(frozen=True, eq=False)
class ClientData:
    """Stored inputs (uint8 images or int64 tokens) and labels of one client, on one device.

    Augmentation and normalisation happen per batch in data.transforms, so only the compact
    stored form lives in memory.
    """

    partition_id: int
    indices: np.ndarray  # positions in the dataset's training split
    inputs: torch.Tensor
    observed_labels: torch.Tensor  # int64, what the client trains on
    clean_labels: torch.Tensor  # int64, -1 where unknown; diagnostics only
    num_classes: int
    # str [n]: what a user calls each sample (data.datasets.Dataset); None: the indices
    sample_ids: np.ndarray | None = None

    @property
    def truth_known(self) -> bool:
        """Whether every sample's clean label is known (a simulation diagnostic)."""
        return bool((self.clean_labels >= 0).all())

    def __len__(self) -> int:
        return int(self.observed_labels.shape[0])

    def class_prior(self) -> torch.Tensor:
        """Fraction of each class among the observed labels (the logit-adjustment prior)."""
        counts = torch.bincount(self.observed_labels, minlength=self.num_classes).float()
        return counts / counts.sum().clamp_min(1.0)

    @classmethod
    def from_federation(
        cls, federation: Federation, partition_id: int, device: torch.device
    ) -> ClientData:
        if not 0 <= partition_id < federation.num_clients:
            raise ValueError(
                f"partition-id {partition_id} is outside 0..{federation.num_clients - 1}"
            )
        indices = federation.client_indices[partition_id]
        dataset = federation.dataset
        return cls(
            partition_id=partition_id,
            indices=indices,
            inputs=torch.as_tensor(np.asarray(dataset.train_inputs[indices])).to(device),
            observed_labels=torch.as_tensor(federation.observed_labels[indices]).to(device),
            clean_labels=torch.as_tensor(federation.clean_labels[indices]).to(device),
            num_classes=dataset.num_classes,
            sample_ids=(
                dataset.train_sample_ids[indices]
                if dataset.train_sample_ids is not None
                else indices.astype(str)
            ),
        )
