"""Diagnostic: what FedDiv's clients train on, round by round.

Runs one FedDiv simulation in this process (`--runtime inprocess`; every other argument goes to
simulation.py as typed) and records, for each client's selection after the warm-up
(client_app.feddiv.select_samples), its estimated noise level, the samples it keeps and their
classes, how many of those are relabelled, and the classes the global model predicts. It prints
one line a round (the clients of the round summed) and writes every client's record as JSON.
The selection is observed by wrapping the function the ClientApp calls, so the run and its
results are the ones `simulation.py` gives; the records are not part of a run's metrics.

    .venv/bin/python bench/feddiv_selection.py --json /tmp/feddiv.json \\
        --config configs/paper-agnews-mini-fasttext.toml --set data-dir=.data/agnews-mini \\
        --set strategy=feddiv --set seed=1 --set num-rounds=40 --out /tmp/feddiv-runs

docs/results.md (AG News mini) reads FedDiv's collapse from this.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import client_app.app as client_app  # noqa: E402
import simulation  # noqa: E402
from common.errors import ConfigError  # noqa: E402
from launch.overrides import parse_run_config_items, parse_set_items  # noqa: E402
from launch.preflight import resolve_run_config  # noqa: E402

_lock = threading.Lock()  # clients may train in threads at once


def recording(select, records: list[dict]):
    """`select` (client_app.feddiv.select_samples) that also appends a record per call."""

    def select_and_record(clean_probability, global_probabilities, given, *args, **kwargs):
        selection = select(clean_probability, global_probabilities, given, *args, **kwargs)
        classes = global_probabilities.shape[1]
        kept_labels = selection.labels[selection.rows]
        record = {
            "samples": int(len(given)),
            "noise_level": float(selection.noise_level),
            "kept": int(len(selection.rows)),
            "kept_by_class": np.bincount(kept_labels, minlength=classes).tolist(),
            "relabelled_kept": int((kept_labels != given[selection.rows]).sum()),
            "given_by_class": np.bincount(given, minlength=classes).tolist(),
            "predicted_by_class": np.bincount(
                global_probabilities.argmax(axis=1), minlength=classes
            ).tolist(),
        }
        with _lock:
            records.append(record)
        return selection

    return select_and_record


def per_round(records: list[dict], per_round_clients: int, first_round: int) -> list[dict]:
    """The records summed over each round's clients (calls come round after round, one per
    sampled client). ValueError when the count does not divide into rounds."""
    if len(records) % per_round_clients:
        raise ValueError(f"{len(records)} selections for {per_round_clients} clients a round")
    rounds = []
    for start in range(0, len(records), per_round_clients):
        group = records[start : start + per_round_clients]
        total = {k: np.sum([r[k] for r in group], axis=0) for k in group[0]}
        kept, predicted, given = (
            total[k] for k in ("kept_by_class", "predicted_by_class", "given_by_class")
        )
        top = int(np.argmax(kept))
        rounds.append({
            "round": first_round + start // per_round_clients,
            "estimated_noise": float(np.mean([r["noise_level"] for r in group])),
            "kept_share": float(total["kept"] / total["samples"]),
            "top_kept_class": top,
            "top_kept_class_share": float(kept[top] / max(kept.sum(), 1)),
            "its_share_of_predictions": float(predicted[top] / predicted.sum()),
            "its_share_of_given_labels": float(given[top] / given.sum()),
            "relabelled_kept": int(total["relabelled_kept"]),
        })  # fmt: skip
    return rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="where the records go")
    parser.add_argument("--run-config", "--config", action="append", default=[])
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--out", type=Path)
    ours, rest = parser.parse_known_args(argv)
    taken = [arg for arg in rest if arg.split("=")[0] in ("--runtime", "--strategies", "--seeds")]
    if taken:
        print(f"error: {taken[0]}: this diagnostic makes one run, in process", file=sys.stderr)
        return 2
    try:  # the run config as simulation.py resolves it: FedDiv, and its folder known up front
        overrides = parse_run_config_items(ours.run_config) | parse_set_items(ours.set)
        if ours.out is not None:
            overrides["out-dir"] = str(ours.out)
        mapping = resolve_run_config(overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if mapping["strategy"] != "feddiv":
        print(f"error: strategy={mapping['strategy']!r}: this diagnostic reads FedDiv's "
              "selection; add --set strategy=feddiv", file=sys.stderr)  # fmt: skip
        return 2
    records: list[dict] = []
    client_app.select_samples = recording(client_app.select_samples, records)
    typed = [f"--run-config={item}" for item in ours.run_config]
    typed += [f"--set={item}" for item in ours.set]
    typed += [f"--set=run-name={mapping['run-name']}"] if "run-name" not in overrides else []
    typed += [f"--out={ours.out}"] if ours.out is not None else []
    code = simulation.main([*typed, *rest, "--runtime", "inprocess", "--quiet"])
    if code != 0:
        return code
    run = Path(mapping["out-dir"]) / mapping["run-name"]
    stored = json.loads((run / "config.json").read_text())
    first = int(mapping["baseline-warmup-rounds"]) + 1
    rounds = per_round(records, int(stored["clients_per_round"]), first)
    ours.json.write_text(json.dumps({"run": str(run), "rounds": rounds, "clients": records}))
    print("| round | est. noise | kept | top kept class | its share: kept | predicted | given "
          "| relabelled kept |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rounds:
        print(
            f"| {r['round']} | {r['estimated_noise']:.2f} | {r['kept_share']:.2f} | "
            f"{r['top_kept_class']} | {r['top_kept_class_share']:.2f} | "
            f"{r['its_share_of_predictions']:.2f} | {r['its_share_of_given_labels']:.2f} | "
            f"{r['relabelled_kept']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
