"""Benchmark: seconds the server spends combining one round's uploads, per aggregation rule.

Builds a seeded model (`models.build_model`), makes `--clients` uploads from it (its tensors plus
seeded Gaussian noise of scale 0.01: clients that trained apart), and times each rule of
strategies.aggregation on them, best of `--repeats`, in this process with the threads it has
(set OMP_NUM_THREADS / OPENBLAS_NUM_THREADS to pin them). Prints a Markdown table and a digest
of each result, so that a change meant to keep the numbers can be checked to the bit:

    .venv/bin/python bench/aggregation_cost.py --model resnet18 --clients 10
    .venv/bin/python bench/aggregation_cost.py --model fasttext --vocab 30000 --clients 5
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models import MODEL_NAMES, build_model  # noqa: E402
from strategies import aggregation  # noqa: E402

RULES = {
    "mean (FedAvg)": lambda models, counts: aggregation.weighted_mean(models, counts),
    "geometric median per tensor (MaskedOptim, RFA)": (
        lambda models, counts: aggregation.geometric_median_per_tensor(models)
    ),
}


def uploads(model: str, clients: int, vocab: int, seed: int) -> list[list[np.ndarray]]:
    torch.manual_seed(seed)
    net = build_model(model, 10 if model != "fasttext" else 4, vocab_size=vocab)
    base = [t.detach().cpu().numpy() for t in net.state_dict().values()]
    rng = np.random.default_rng(seed)
    return [
        [
            (t + 0.01 * rng.standard_normal(t.shape)).astype(t.dtype) if t.dtype.kind == "f" else t
            for t in base
        ]
        for _ in range(clients)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODEL_NAMES, default="resnet18")
    parser.add_argument("--clients", type=int, default=10, help="uploads per round (>= 1)")
    parser.add_argument("--vocab", type=int, default=30000, help="fasttext's vocabulary size")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per rule (>= 1)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.clients < 1 or args.repeats < 1:
        parser.error("--clients and --repeats must be at least 1")
    models = uploads(args.model, args.clients, args.vocab, args.seed)
    counts = [100 + i for i in range(args.clients)]
    values = sum(t.size for t in models[0])
    print(f"{args.model}: {args.clients} uploads of {values:,} values\n")
    print(f"| rule | best of {args.repeats} (s) | result digest |")
    print("| --- | --- | --- |")
    for name, rule in RULES.items():
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = rule(models, counts)
            best = min(best, time.perf_counter() - start)
        digest = hashlib.sha1(b"".join(np.ascontiguousarray(t).tobytes() for t in result))
        print(f"| {name} | {best:.3f} | {digest.hexdigest()[:12]} |")


if __name__ == "__main__":
    main()
