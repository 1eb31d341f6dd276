"""Evaluation of a model on stored inputs: the metrics the authors log (fidelity §9).

Used by the ServerApp (centralized evaluation on the test set) and the ClientApp (federated
evaluation on local data); torch and scikit-learn only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import precision_recall_fscore_support
from torch import nn

from common.acceleration import DeviceOptions

if TYPE_CHECKING:  # annotations only: common imports nothing of the project
    from data.transforms import InputPipeline


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean cross-entropy
    accuracy: float  # fraction in [0, 1]
    macro_precision: float
    macro_recall: float
    macro_f1: float
    num_examples: int

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}loss": self.loss,
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}macro-precision": self.macro_precision,
            f"{prefix}macro-recall": self.macro_recall,
            f"{prefix}macro-f1": self.macro_f1,
        }


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for, but torch sees no CUDA GPU here")
    return torch.device(name)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    inputs: torch.Tensor,
    pipeline: InputPipeline,
    batch_size: int,
    options: DeviceOptions = DeviceOptions(),  # noqa: B008 (frozen)
) -> torch.Tensor:
    """fp32 logits for all `inputs` (eval mode, eval transform), on the inputs' device; the
    forward pass in `options`' precision and layout."""
    model.eval()
    outputs = []
    for start in range(0, inputs.shape[0], batch_size):
        batch = options.prepare_inputs(pipeline.eval_batch(inputs[start : start + batch_size]))
        with options.autocast(inputs.device):
            outputs.append(model(batch).float())
    return torch.cat(outputs)


def evaluate_model(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    pipeline: InputPipeline,
    batch_size: int,
    options: DeviceOptions = DeviceOptions(),  # noqa: B008 (frozen)
) -> EvalResult:
    """Accuracy, mean CE and sklearn macro precision/recall/F1 of `model` on (inputs, labels)."""
    logits = predict_logits(model, inputs, pipeline, batch_size, options)
    loss = float(F.cross_entropy(logits.float(), labels))
    predicted = logits.argmax(1).cpu().numpy()
    truth = labels.cpu().numpy()
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth, predicted, average="macro", zero_division=0
    )
    return EvalResult(
        loss=loss,
        accuracy=float(np.mean(predicted == truth)),
        macro_precision=float(precision),
        macro_recall=float(recall),
        macro_f1=float(f1),
        num_examples=int(truth.shape[0]),
    )
