"""A client's corrected labels handed back to its owner: one CSV row per sample, on the client.

The file never leaves the client; the server receives only counts. Where it goes:
`<state-dir>/run-<run id>/partition-<id>/corrected-labels.csv` when the SuperNode's node-config
has a `state-dir` (deployment), else `<results-dir>/clients/partition-<id>/corrected-labels.csv`
(simulation: the clients share the server's disk). Columns:

- `sample_id`: the image's path relative to the client's data-dir, or the CSV data row (1 = the
  first row after the header), or the sample's position in the training split (built-in data);
- `observed_label`, `corrected_label`: class names;
- `confidence`: the method's probability of the corrected label, in [0, 1] (MaskedOptim and
  FedELC: the learned label distribution, softmax of the label logits; FedCorr: the global
  model's softmax output at the client's last relabelling);
- `suspected_mislabelled`: 1 where the corrected label differs from the observed one, else 0.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

FILE_NAME = "corrected-labels.csv"
COLUMNS = ("sample_id", "observed_label", "corrected_label", "confidence", "suspected_mislabelled")


def corrected_labels_path(state_dir: str, run_id: int, partition_id: int, results_dir: str) -> Path:
    """Where client `partition_id` writes its CSV (see the module docstring)."""
    if state_dir:
        return Path(state_dir) / f"run-{run_id}" / f"partition-{partition_id}" / FILE_NAME
    return Path(results_dir) / "clients" / f"partition-{partition_id}" / FILE_NAME


def write_corrected_labels(
    path: Path,
    sample_ids: Sequence[str],
    observed: np.ndarray,
    corrected: np.ndarray,
    confidence: np.ndarray,
    class_names: Sequence[str],
) -> None:
    """Write the CSV atomically (a temporary file renamed over the old one), so a reader never
    sees half a file. `observed`, `corrected`: int [n] class indices; `confidence`: float [n]."""
    n = len(sample_ids)
    if not (len(observed) == len(corrected) == len(confidence) == n):
        raise ValueError(
            f"lengths differ: {n} ids, {len(observed)} observed, {len(corrected)} corrected, "
            f"{len(confidence)} confidences"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for i in range(n):
            writer.writerow(
                (
                    sample_ids[i],
                    class_names[int(observed[i])],
                    class_names[int(corrected[i])],
                    f"{float(confidence[i]):.4f}",
                    int(observed[i] != corrected[i]),
                )
            )
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def change_summary(
    observed: np.ndarray, corrected: np.ndarray, confidence: np.ndarray
) -> dict[str, float]:
    """The counts the server may see: `samples`, `labels-changed`, and `changed-confidence`
    (the mean confidence of the changed labels) only when some label changed."""
    changed = np.asarray(observed) != np.asarray(corrected)
    summary: dict[str, float] = {"samples": int(changed.size), "labels-changed": int(changed.sum())}
    if changed.any():
        summary["changed-confidence"] = float(np.asarray(confidence)[changed].mean())
    return summary
