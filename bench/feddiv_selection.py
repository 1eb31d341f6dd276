"""Diagnostic: what FedDiv's clients train on, round by round.

Runs one FedDiv simulation in this process (simulation.py with `--runtime inprocess`; the
run-config options `--config`/`--run-config`, `--set` and `--out` as simulation.py takes them,
and `--num-clients`, `--federation-config`, `--quiet` passed on) and records each client's
selection after the warm-up (client_app.feddiv.select_samples). The run and its results are
the ones `simulation.py` gives (the function the ClientApp calls is wrapped, nothing else); the
records are not part of a run's metrics.

It prints a table, one line per round after the warm-up, the round's clients together:
- est. noise: the clients' estimated noise levels (the share of their samples the global
  filter deems noisy), averaged over the round's clients (not the true rates);
- kept: the share of the round's samples the clients train on (relabelled ones included);
- top kept class: the class most frequent among the kept samples (their training labels), and
  its share of the kept samples, of the global model's predictions on the clients' data, and of
  the clients' given (noisy) labels;
- relabelled kept: kept samples that train with the global model's prediction as label.
The JSON (`--json`) holds these rows (`rounds`) and every client's record (`clients`: round,
partition, samples, noise_level, kept, kept_by_class, relabelled_kept, given_by_class,
predicted_by_class; counts per class index).

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
from launch.overrides import parse_overrides  # noqa: E402
from launch.preflight import check_writable, resolve_run_config  # noqa: E402

_lock = threading.Lock()  # clients may train in threads at once
_message = threading.local()  # the round and partition of the message this thread handles


class RecordingStore(client_app.ClientStateStore):
    """The ClientApp's state store, noting the round and partition of the message it serves
    (train_feddiv makes its store before it selects)."""

    def __init__(self, context, name, partition_id, server_round, *args, **kwargs):
        super().__init__(context, name, partition_id, server_round, *args, **kwargs)
        _message.round, _message.partition = int(server_round), int(partition_id)


def recording(select, records: list[dict]):
    """`select` (client_app.feddiv.select_samples) that also appends a record per call."""

    def select_and_record(clean_probability, global_probabilities, given, *args, **kwargs):
        selection = select(clean_probability, global_probabilities, given, *args, **kwargs)
        classes = global_probabilities.shape[1]
        kept_labels = selection.labels[selection.rows]
        record = {
            "round": _message.round,
            "partition": _message.partition,
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


def per_round(records: list[dict]) -> list[dict]:
    """The clients' records summed per round, in round order (see the module docstring)."""
    rounds = []
    for number in sorted({r["round"] for r in records}):
        group = [r for r in records if r["round"] == number]
        total = {
            k: np.sum([r[k] for r in group], axis=0)
            for k in ("samples", "kept", "kept_by_class", "relabelled_kept",
                      "given_by_class", "predicted_by_class")
        }  # fmt: skip
        kept, predicted, given = (
            total[k] for k in ("kept_by_class", "predicted_by_class", "given_by_class")
        )
        top = int(np.argmax(kept))
        rounds.append({
            "round": number,
            "clients": len(group),
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
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", type=Path, required=True, help="where the records go")
    parser.add_argument(
        "--run-config", "--config", action="append", default=[], metavar="TOML_OR_KEYS",
        help="as simulation.py's: a preset file or \"key=value ...\"; repeatable",
    )  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="one run-config key, as simulation.py's; repeatable")  # fmt: skip
    parser.add_argument("--out", type=Path, help="the run's folder goes here (default results/)")
    parser.add_argument("--num-clients", type=int, help="as simulation.py's")
    parser.add_argument("--federation-config", help="as simulation.py's")
    parser.add_argument("--quiet", action="store_true", help="no round-by-round log")
    ours, rest = parser.parse_known_args(argv)
    if rest:
        print(f"error: {rest[0]}: not an option of this diagnostic (it makes one run, in "
              "process; see --help)", file=sys.stderr)  # fmt: skip
        return 2
    try:
        if ours.json.expanduser().is_dir():
            raise ConfigError(f"--json {ours.json} is a folder; name the file to write")
        check_writable(ours.json.expanduser().absolute().parent, f"--json {ours.json}: its folder")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:  # the run config as simulation.py resolves it: FedDiv, and its folder known up front
        overrides = parse_overrides(ours.run_config, ours.set)
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
    client_app.ClientStateStore = RecordingStore
    typed = [f"--run-config={item}" for item in ours.run_config]
    typed += [f"--set={item}" for item in ours.set]
    typed += [f"--set=run-name={mapping['run-name']}"] if "run-name" not in overrides else []
    typed += [f"--out={ours.out}"] if ours.out is not None else []
    typed += [f"--num-clients={ours.num_clients}"] if ours.num_clients is not None else []
    typed += [f"--federation-config={ours.federation_config}"] if ours.federation_config else []
    typed += ["--quiet"] if ours.quiet else []
    code = simulation.main([*typed, "--runtime", "inprocess"])
    if code != 0:
        return code
    run = Path(mapping["out-dir"]) / mapping["run-name"]
    records.sort(key=lambda r: (r["round"], r["partition"]))
    rounds = per_round(records)
    out = ours.json.expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": str(run), "rounds": rounds, "clients": records}))
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
