"""Benchmark: the client training loop's images/s against a bare PyTorch loop.

Both train the same model on the same client-sized data held as tensors on the device, with the
same batched augmentation; the bare loop is the shortest correct loop one would write by hand.
The target is >= 90 % of the bare loop. Runs without Flower or Ray (CPU or CUDA):

    .venv/bin/python bench/train_loop.py --model lenet --samples 500 --epochs 5
    .venv/bin/python bench/train_loop.py --model resnet18 --device cuda --samples 5000

`--at-once N` also trains N clients at the same time in N threads of one process, as the
in-process runtime does, and reports a client round's time then against alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from client_app.training import train_locally
from common.protocol import LocalTraining  # noqa: E402
from data.client_data import ClientData  # noqa: E402
from data.transforms import pipeline_for  # noqa: E402
from models import build_model  # noqa: E402


def synthetic_cifar_client(samples: int, device: torch.device) -> ClientData:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, 256, (samples, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (samples,), generator=generator)
    return ClientData(
        partition_id=0,
        indices=torch.arange(samples).numpy(),
        inputs=inputs.to(device),
        observed_labels=labels.to(device),
        clean_labels=labels.to(device),
        num_classes=10,
    )


def bare_loop(model, data: ClientData, settings: LocalTraining, generator) -> int:
    """The hand-written reference: same data, augmentation, optimiser and batches."""
    pipeline = pipeline_for("cifar10")
    model.train()
    opt = torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )  # fmt: skip
    n, b = len(data), settings.batch_size
    for _ in range(settings.local_epochs):
        order = torch.randperm(n, generator=generator).to(data.inputs.device)
        for start in range(0, n - b + 1, b):
            idx = order[start : start + b]
            loss = F.cross_entropy(
                model(pipeline.train_batch(data.inputs[idx], generator)), data.observed_labels[idx]
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return settings.local_epochs * (n // b) * b


def timed(fn, device: torch.device, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def clients_at_once(args, data, settings, device, alone_s: float) -> dict:
    """N clients trained at the same time, each in its own thread with its own model."""
    models = [build_model(args.model, 10).to(device) for _ in range(args.at_once)]
    threads = torch.get_num_threads()

    def client(model) -> None:
        torch.set_num_threads(threads)
        train_locally(model, data, pipeline_for("cifar10"), settings, torch.Generator())

    def together() -> None:
        workers = [threading.Thread(target=client, args=(m,)) for m in models]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    together()  # warm-up
    together_s = timed(together, device, args.repeats)
    return {
        "at_once": args.at_once,
        "at_once_seconds_per_client_round": round(together_s, 3),
        "at_once_slowdown": round(together_s / alone_s, 3),
        "at_once_images_per_s": round(args.at_once * images_per_round(args) / together_s, 1),
    }


def images_per_round(args) -> int:
    return args.epochs * (args.samples // args.batch_size) * args.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet", choices=["lenet", "resnet18"])
    parser.add_argument("--samples", type=int, default=500, help="client size (paper: ~500)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--at-once", type=int, default=0, help="also N clients at once (threads)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = synthetic_cifar_client(args.samples, device)
    settings = LocalTraining(args.epochs, args.batch_size, 0.01, 0.9, 5e-4)
    model = build_model(args.model, 10).to(device)
    images = images_per_round(args)

    def ours():
        train_locally(model, data, pipeline_for("cifar10"), settings, torch.Generator())

    def bare():
        bare_loop(model, data, settings, torch.Generator())

    ours()  # warm-up (allocator, cuDNN autotuning)
    bare()
    ours_s = timed(ours, device, args.repeats)
    bare_s = timed(bare, device, args.repeats)
    report = {
        "model": args.model,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "images_per_round": images,
        "ours_images_per_s": round(images / ours_s, 1),
        "bare_images_per_s": round(images / bare_s, 1),
        "ours_vs_bare": round(bare_s / ours_s, 3),
        "ours_seconds_per_client_round": round(ours_s, 3),
    }
    if args.at_once:
        report |= clients_at_once(args, data, settings, device, ours_s)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
