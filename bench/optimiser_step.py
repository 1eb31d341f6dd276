"""Benchmark: one CPU training step with PyTorch's plain (for-each) and fused SGD step.

Times forward, backward and SGD (momentum 0.9, weight decay 5e-4) on one batch of random
inputs, per model, and prints the median milliseconds of each step kind; the figures behind
client_app.training.FUSED_CPU_MIN_PARAMETERS. Run it on an otherwise idle machine:

    .venv/bin/python bench/optimiser_step.py [--models fasttext,lenet] [--steps 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import build_model  # noqa: E402

VOCAB = 30_000  # AG News mini's vocabulary has 22,382 words


def inputs_for(model: str, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """A batch of random inputs of `model`'s kind and its number of classes."""
    if model == "fasttext":
        return torch.randint(2, VOCAB, (batch, 60), generator=generator), 4
    return torch.randn(batch, 3, 32, 32, generator=generator), 10


def step_ms(model_name: str, fused: bool, steps: int, batch: int) -> tuple[float, int]:
    """Median milliseconds of a training step, and the model's number of values."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    inputs, classes = inputs_for(model_name, batch, generator)
    model = build_model(model_name, classes, vocab_size=VOCAB)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    optimiser = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, fused=fused or None
    )
    times = []
    for step in range(steps + 5):  # 5 steps of warm-up (allocations, momentum buffers)
        start = time.perf_counter()
        optimiser.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        optimiser.step()
        if step >= 5:
            times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times), sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="fasttext,lenet")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print("| model | values | plain step (ms) | fused step (ms) |")
    print("| --- | --- | --- | --- |")
    for name in args.models.split(","):
        plain, values = step_ms(name, False, args.steps, args.batch)
        fused, _ = step_ms(name, True, args.steps, args.batch)
        print(f"| {name} | {values:,} | {plain:.1f} | {fused:.1f} |")


if __name__ == "__main__":
    main()
