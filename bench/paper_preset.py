"""Benchmark: the paper's CIFAR-10 protocol on the CPU (LeNet, 100 clients, 120 rounds).

Needs CIFAR-10 in the official layout under --data-dir (the team measures on its "CIFAR-10
(JPEG q75 copy)", see docs/datasets.md), runs the preset through simulation.py and prints wall
time, seconds per round and the last-10-round mean accuracy. The authors' code needs 27 min
45 s (13.9 s per round) for FedAvg on a 2-core machine and reaches 54.3 % (seed 1).

    .venv/bin/python bench/paper_preset.py --strategy fedavg [--seed 1] [--rounds 120] \
        [--runtime inprocess]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ensure_cifar10(data_dir: Path) -> None:
    if not (data_dir / "cifar-10-batches-py" / "data_batch_1").is_file():
        raise SystemExit(
            f"no CIFAR-10 in {data_dir}: give --data-dir, the folder that holds "
            "cifar-10-batches-py/ (docs/datasets.md)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategy", default="fedavg")
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=120)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".data" / "cifar10")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    parser.add_argument("--federation-config", default="client-resources-num-cpus=1")
    parser.add_argument("--runtime", default="flower", choices=["flower", "inprocess"])
    parser.add_argument("--set", action="append", default=[], help="extra key=value overrides")
    args = parser.parse_args()
    ensure_cifar10(args.data_dir.resolve())
    name = f"paper-{args.model}-{args.strategy}-seed{args.seed}-r{args.rounds}"
    name += "-inprocess" if args.runtime == "inprocess" else ""
    keys = (
        f"data-dir='{args.data_dir.resolve()}' strategy='{args.strategy}' model='{args.model}' "
        f"seed={args.seed} num-rounds={args.rounds} out-dir='{args.out.resolve()}' "
        f"run-name='{name}'"
    )
    command = [
        sys.executable, str(ROOT / "simulation.py"), "--quiet",
        "--num-clients", str(args.clients),
        "--run-config", str(ROOT / "configs" / "paper-cifar10-lenet.toml"),
        "--run-config", keys,
        *(x for item in args.set for x in ("--run-config", item)),  # later items win
        "--runtime", args.runtime,
        "--federation-config", args.federation_config,
    ]  # fmt: skip
    subprocess.run(command, check=True)
    summary = json.loads((args.out / name / "summary.json").read_text())
    print(json.dumps({"run": name, **summary}, indent=2))


if __name__ == "__main__":
    main()
