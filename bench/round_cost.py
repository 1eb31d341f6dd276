"""Benchmark: each strategy's seconds per round on the CPU paper preset, against FedAvg's.

Runs `configs/paper-cifar10-lenet.toml` (LeNet, CIFAR-10, 100 clients, 10 per round, E = 5,
B = 64) in process for a few rounds per strategy, with every warm-up shortened to --warmup
rounds so that the rounds measured are in each method's later, usually dearer, stage, and prints
the median `round_seconds` of the rounds after the warm-up and its ratio to FedAvg's (the
issue's budget: at most 2.5x unless the method needs more). Run it on an otherwise idle machine:
the figures are wall-clock seconds.

    .venv/bin/python bench/round_cost.py --data-dir .data/cifar10 \
        [--strategies fedavg,robustfl,...] [--rounds 6] [--warmup 2] [--out results/round-cost]

FedCorr is left out of the default list: its pre-processing iterations visit every client, 10
rounds each here, before its later stages.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = (
    "fedavg,clipping,joint-optim,selfie,coteaching,coteaching-plus,dividemix,fedlsr,fedrn,"
    "robustfl,feddiv,maskedoptim,fednoro,fedelc,symmetric-ce,rfa"
)
# Every key that delays a method's later stage, shortened to --warmup rounds
WARMUP_KEYS = (
    "warmup-rounds",
    "baseline-warmup-rounds",
    "label-warmup-rounds",
    "robustfl-pseudo-rounds",
    "disagreement-start-round",
    "coteaching-ramp-rounds",
    "robustfl-ramp-rounds",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", default=DEFAULT)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".data" / "cifar10")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "round-cost")
    args = parser.parse_args(argv)
    if args.rounds <= args.warmup:
        parser.error(f"--rounds {args.rounds} leaves no round after --warmup {args.warmup}")
    if not (args.data_dir / "cifar-10-batches-py" / "data_batch_1").is_file():
        parser.error(f"no CIFAR-10 in {args.data_dir} (docs/datasets.md)")
    sys.path.insert(0, str(ROOT))
    import simulation

    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    seconds: dict[str, float] = {}
    for name in names:
        sets = [f"{key}={args.warmup}" for key in WARMUP_KEYS]
        sets += [
            f"strategy={name}", f"seed={args.seed}", f"num-rounds={args.rounds}",
            f"data-dir={args.data_dir.resolve()}", f"out-dir={args.out.resolve()}",
            f"run-name={name}", "checkpoint-every=0",
        ]  # fmt: skip
        argv_run = ["--config", str(ROOT / "configs" / "paper-cifar10-lenet.toml"),
                    "--runtime", "inprocess", "--quiet"]  # fmt: skip
        for item in sets:
            argv_run += ["--set", item]
        code = simulation.main(argv_run)
        if code != 0:
            print(f"{name}: the run exited {code}", file=sys.stderr)
            return 1
        with open(args.out / name / "metrics.csv") as handle:
            rows = [r for r in csv.DictReader(handle) if int(r["round"]) > args.warmup + 1]
        seconds[name] = statistics.median(float(r["round_seconds"]) for r in rows)
        print(f"{name}: {seconds[name]:.2f} s per round", flush=True)
    base = seconds.get("fedavg")
    lines = ["| strategy | s/round | × FedAvg |", "| --- | --- | --- |"]
    for name, value in seconds.items():
        factor = f"{value / base:.2f}" if base else "(no fedavg)"
        lines.append(f"| {name} | {value:.2f} | {factor} |")
    table = "\n".join(lines)
    print(table)
    (args.out / "round-cost.md").write_text(table + "\n")
    (args.out / "round-cost.json").write_text(json.dumps(seconds, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
