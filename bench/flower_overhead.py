"""Benchmark: Flower's overhead per round with 10 clients per round (target <= 0.5 s).

Runs the real app through simulation.py with clients that take no SGD step (batch size larger
than any client's data), so a round's time is Flower's own work: sending the model to 10 clients
and back through Ray, serialising records and client state, aggregating, plus the server's test
evaluation of the small digits model. Reports the median round time after the first round.

    .venv/bin/python bench/flower_overhead.py [--rounds 20] [--clients 10]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--cpus-per-client", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        keys = (
            f"num-rounds={args.rounds} clients-per-round={args.clients} local-epochs=1 "
            f"batch-size=100000 dirichlet-min-size=0 out-dir='{tmp}' run-name='overhead'"
        )
        command = [
            sys.executable, str(ROOT / "simulation.py"), "--quiet",
            "--num-clients", str(args.clients), "--run-config", keys,
            "--flwr-home", str(Path(tmp) / "flwr"),
            "--federation-config",
            f"client-resources-num-cpus={args.cpus_per_client} client-resources-num-gpus=0",
        ]  # fmt: skip
        subprocess.run(command, check=True)
        with open(Path(tmp) / "overhead" / "metrics.csv") as handle:
            rows = [r for r in csv.DictReader(handle) if int(r["round"]) >= 2]
        summary = json.loads((Path(tmp) / "overhead" / "summary.json").read_text())
    seconds = [float(r["round_seconds"]) for r in rows]
    print(
        json.dumps(
            {
                "clients_per_round": args.clients,
                "rounds_measured": len(seconds),
                "median_round_seconds": round(statistics.median(seconds), 3),
                "max_round_seconds": round(max(seconds), 3),
                "run_wall_seconds": summary["wall_seconds"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
