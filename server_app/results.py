"""Results of one run, written while it goes, under `out-dir/<run-name>/`.

- `config.json`: the resolved run config, library versions, seed, federation facts (at start).
- `metrics.csv`: one row per round (round 0 = the initial model), appended and flushed each round.
- `summary.json`: final, best and last-10-round mean accuracy, wall time and status; rewritten
  every round, so an interrupted run still says how far it got.
- `accuracy.png`: test accuracy per round (every 10 rounds and at the end).
- `detection.json` (MaskedOptim): the clients flagged noisy, the GMM votes, detection precision
  and recall against the true noise rates, label correction per client (written at detection and
  at the end).
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

METRIC_COLUMNS = (
    "round",
    "test_accuracy",
    "test_loss",
    "test_macro_precision",
    "test_macro_recall",
    "test_macro_f1",
    "train_loss",
    "clients",
    "client_train_seconds",
    # MaskedOptim only (empty before detection and for other strategies):
    "detected_noisy",
    "detect_precision",
    "detect_recall",
    "label_acc_observed",
    "label_acc_corrected",
    "label_f1_observed",
    "label_f1_corrected",
    "label_precision_corrected",
    "label_recall_corrected",
    "round_seconds",
    "elapsed_seconds",
)
LAST_ROUNDS = 10  # the authors' headline statistic is the mean over the last 10 rounds


def default_run_name(strategy: str, dataset: str, seed: int) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{strategy}-{dataset}-seed{seed}-{stamp}"


def library_versions() -> dict[str, str]:
    import flwr
    import numpy
    import sklearn
    import torch

    return {
        "python": platform.python_version(),
        "flwr": flwr.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
    }


def summarise(rows: list[dict[str, Any]], wall_seconds: float, status: str) -> dict[str, Any]:
    """Final, best and last-10-round mean test accuracy (in %) over the trained rounds."""
    trained = [r for r in rows if r["round"] >= 1]
    summary: dict[str, Any] = {
        "status": status,
        "rounds_completed": len(trained),
        "wall_seconds": round(wall_seconds, 2),
    }
    if trained:
        last = trained[-LAST_ROUNDS:]
        best = max(trained, key=lambda r: r["test_accuracy"])
        summary.update(
            final_accuracy=100 * trained[-1]["test_accuracy"],
            best_accuracy=100 * best["test_accuracy"],
            best_round=best["round"],
            last10_mean_accuracy=100 * sum(r["test_accuracy"] for r in last) / len(last),
            last10_mean_macro_f1=100 * sum(r["test_macro_f1"] for r in last) / len(last),
            final_macro_f1=100 * trained[-1]["test_macro_f1"],
            seconds_per_round=round(wall_seconds / len(trained), 3),
        )
    return summary


def plot_accuracy(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["round"] for r in rows], [100 * r["test_accuracy"] for r in rows], marker=".")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)  # readers never see a half-written file


@dataclass
class RunResults:
    directory: Path
    title: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    last_round_end: float = field(default_factory=time.monotonic)

    @classmethod
    def create(cls, directory: Path, title: str, config: dict[str, Any]) -> RunResults:
        directory.mkdir(parents=True, exist_ok=True)
        _write_json(directory / "config.json", config)
        with open(directory / "metrics.csv", "w", newline="") as handle:
            csv.writer(handle).writerow(METRIC_COLUMNS)
        results = cls(directory=directory, title=title)
        _write_json(directory / "summary.json", summarise([], 0.0, "running"))
        return results

    def add_round(self, row: dict[str, Any]) -> None:
        now = time.monotonic()
        row = {
            **row,
            "round_seconds": round(now - self.last_round_end, 3),
            "elapsed_seconds": round(now - self.started, 3),
        }
        self.last_round_end = now
        self.rows.append(row)
        with open(self.directory / "metrics.csv", "a", newline="") as handle:
            csv.writer(handle).writerow([_cell(row.get(c)) for c in METRIC_COLUMNS])
        _write_json(self.directory / "summary.json", self.summary("running"))
        if row["round"] % 10 == 0:
            plot_accuracy(self.rows, self.directory / "accuracy.png", self.title)

    def has(self, name: str) -> bool:
        return (self.directory / name).exists()

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        _write_json(self.directory / name, payload)

    def summary(self, status: str) -> dict[str, Any]:
        return summarise(self.rows, time.monotonic() - self.started, status)

    def finish(self, status: str, error: str = "") -> dict[str, Any]:
        summary = self.summary(status)
        if error:
            summary["error"] = error
        if self.rows and self.rows[-1].get("label_acc_corrected") is not None:
            last = self.rows[-1]
            summary.update(
                {key: 100 * last[key] for key in METRIC_COLUMNS if key.startswith("label_")}
            )
            summary["detect_precision"] = last["detect_precision"]
            summary["detect_recall"] = last["detect_recall"]
        _write_json(self.directory / "summary.json", summary)
        if self.rows:
            plot_accuracy(self.rows, self.directory / "accuracy.png", self.title)
        return summary


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value
