"""What a run's end says: its summary printed, its true status set when the runtime could not,
and one exit code for both runtimes (0 completed, 1 not).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from server_app.results import read_detection, read_json, read_summary


def print_summary(results_dir: Path) -> dict[str, Any] | None:
    print(f"\nResults: {results_dir}")
    summary = read_summary(results_dir)
    if summary is None:
        print("  (no summary.json was written)")
        return None
    labels = {
        "status": "status",
        "rounds_completed": "rounds",
        "final_accuracy": "final test accuracy (%)",
        "best_accuracy": "best test accuracy (%)",
        "best_round": "best round",
        "last10_mean_accuracy": f"mean of last {summary.get('last_rounds_averaged', 10)} rounds",
        "final_macro_f1": "final macro-F1 (%)",
        "central_evaluation": "central evaluation",
        "final_local_accuracy": "final local accuracy (%)",
        "last10_mean_local_accuracy": "local accuracy, last rounds",
        "wall_seconds": "wall time (s)",
        "seconds_per_round": "seconds per round",
    }
    for key, label in labels.items():
        if key in summary:
            value = summary[key]
            shown = f"{value:.2f}" if isinstance(value, float) else value
            print(f"  {label:<28} {shown}")
    attack = (read_json(results_dir, "config.json") or {}).get("attack") or {}
    if attack.get("attack", "none") != "none":
        attackers = attack.get("attackers", [])
        print(f"  {'attack':<28} {attack['attack']}: {len(attackers)} attacker(s) {attackers}, "
              f"simulated at the {attack.get('simulated_at')}")  # fmt: skip
    report = read_detection(results_dir)
    if report is not None:
        detection = report.get("detection") or {}
        quality = detection.get("quality", {})
        if not detection:
            print(f"  {'noisy-client detection':<28} did not run")
        else:
            print(f"  {'flagged noisy clients':<28} {detection.get('flagged_noisy')}")
            if detection.get("mild"):
                print(f"  {'of them mildly noisy':<28} {detection['mild']}")
            if "strong_model" in detection:  # maskedoptim's strong-model-agreement
                verdict = "strong: the authors' method" if detection["strong_model"] else "weak"
                agreement = 100 * detection["model_agreement"]
                print(f"  {'model at detection':<28} {verdict} (it predicts {agreement:.1f} % "
                      "of the clean clients' labels)")  # fmt: skip
            if quality.get("available", True):
                precision, recall = (quality.get(k) for k in ("precision", "recall"))
                shown = " / ".join("n/a" if v is None else f"{v:.2f}" for v in (precision, recall))
                print(
                    f"  {'detection precision/recall':<28} {shown} (truly noisy: true rate > "
                    f"{detection.get('noisy_threshold')})"
                )
            else:
                print(f"  {'detection precision/recall':<28} unavailable: {quality['reason']}")
        labels = report.get("label_correction") or {}
        if "labels_changed" in labels:
            confidence = labels.get("label_confidence")
            mean = f", mean confidence {confidence:.2f}" if confidence is not None else ""
            print(f"  {'labels changed, flagged':<28} {int(labels['labels_changed'])}{mean}")
        files = report.get("corrected_labels_files") or {}
        if files:
            print(f"  {'corrected labels (CSV)':<28} written by {len(files)} client(s), e.g.")
            print(f"    {next(iter(files.values()))['file']}")
        if "label_acc_observed" in labels:
            print(
                f"  {'label accuracy, flagged (%)':<28} {100 * labels['label_acc_observed']:.2f}"
                f" observed -> {100 * labels['label_acc_corrected']:.2f} corrected "
                f"(macro-F1 {100 * labels['label_f1_corrected']:.2f})"
            )
    if summary.get("nonfinite_uploads"):
        print(f"  {'uploads dropped (NaN/inf)':<28} {summary['nonfinite_uploads']}")
    if summary.get("diverged"):
        print(f"  diverged, went on: {summary['diverged']}")
    if "error" in summary:
        print(f"  error: {summary['error']}")
    return summary


def conclude(results_dir: Path, problem: str, log_file: Path | None, verbose: bool = True) -> int:
    """A run's exit code (0 or 1) from its summary.json and what the runtime said (`problem`,
    "" when the runtime reports success). A summary still `running` after the runtime ended
    (the ServerApp was killed, or stopped by `flwr stop`) is marked `interrupted` or `failed`
    with the runtime's word; the summary is printed (`verbose`), and a run that did not
    complete says its status and reason, with the end of its log when the summary has none."""
    from server_app.results import mark_ended

    if problem:
        stopped = "stopped" in problem or "interrupted" in problem
        mark_ended(results_dir, "interrupted" if stopped else "failed", problem)
    summary = (print_summary(results_dir) if verbose else read_summary(results_dir)) or {}
    status = summary.get("status", "unknown (no summary.json)")
    if not problem and status == "completed":
        return 0
    error = summary.get("error", "")
    reason = "; ".join(p for p in (error, "" if error and error in problem else problem) if p)
    if not summary.get("error") and log_file is not None and log_file.is_file():
        tail = log_file.read_text(errors="replace").splitlines()[-30:]
        print("\n".join(tail), file=sys.stderr)
    where = f"; log in {log_file}" if log_file else ""
    print(f"\nerror: the run did not complete (status {status}: {reason}){where}", file=sys.stderr)
    return 1


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
