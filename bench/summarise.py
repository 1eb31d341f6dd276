"""Summarise finished runs per strategy: mean ± std over seeds of the headline figures.

Reads `summary.json` (and `detection.json` where present) of every run folder given (or found
under a results root) and prints a Markdown table:

    .venv/bin/python bench/summarise.py results/bench/paper-lenet-*-r120
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path


def mean_std(values: list[float], scale: float = 1.0) -> str:
    values = [scale * v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def load(run: Path) -> dict:
    config = json.loads((run / "config.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    record = {
        "strategy": config["run_config"]["strategy"],
        "seed": config["seed"],
        "status": summary["status"],
        "last10": summary.get("last10_mean_accuracy"),
        "final": summary.get("final_accuracy"),
        "best": summary.get("best_accuracy"),
        "f1": summary.get("last10_mean_macro_f1"),
        "minutes": summary["wall_seconds"] / 60,
        "per_round": summary.get("seconds_per_round"),
    }
    detection_file = run / "detection.json"
    if detection_file.is_file():
        report = json.loads(detection_file.read_text())
        quality = (report.get("detection") or {}).get("quality", {})
        labels = report.get("label_correction") or {}
        record.update(
            flagged=quality.get("flagged"),
            precision=quality.get("precision"),
            recall=quality.get("recall"),
            rate_flagged=quality.get("mean_true_rate_flagged"),
            rate_clean=quality.get("mean_true_rate_clean"),
            labels_before=labels.get("label_acc_observed"),
            labels_after=labels.get("label_acc_corrected"),
            labels_f1=labels.get("label_f1_corrected"),
        )
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (with summary.json)")
    args = parser.parse_args()
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in args.runs:
        if (run / "summary.json").is_file():
            record = load(run)
            if record["status"] == "completed":
                groups[record["strategy"]].append(record)
    print(
        "| strategy | seeds | last-10 acc (%) | final (%) | best (%) | last-10 macro-F1 (%) "
        "| wall (min) | s/round | flagged | det. precision | det. recall "
        "| true rate flagged / clean | label acc before → after (%) |"
    )
    print("|" + " --- |" * 13)
    for strategy, records in sorted(groups.items()):

        def column(key: str, scale: float = 1.0, records=records) -> str:
            return mean_std([r.get(key) for r in records], scale)

        has_detection = any("flagged" in r for r in records)
        print(
            f"| {strategy} | {','.join(str(r['seed']) for r in records)} | {column('last10')} "
            f"| {column('final')} | {column('best')} | {column('f1')} | {column('minutes')} "
            f"| {column('per_round')} "
            + (
                f"| {column('flagged')} | {column('precision')} | {column('recall')} "
                f"| {column('rate_flagged')} / {column('rate_clean')} "
                f"| {column('labels_before', 100)} → {column('labels_after', 100)} |"
                if has_detection
                else "| | | | | |"
            )
        )


if __name__ == "__main__":
    main()
