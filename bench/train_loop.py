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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_check import bare_loop, synthetic_client  # noqa: E402 (one bare loop)
from client_app.training import train_locally
from common.acceleration import DeviceOptions  # noqa: E402
from common.protocol import LocalTraining  # noqa: E402
from data.transforms import pipeline_for  # noqa: E402
from models import build_model  # noqa: E402


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
    data = synthetic_client(args.samples, device)
    settings = LocalTraining(args.epochs, args.batch_size, 0.01, 0.9, 5e-4)
    model = build_model(args.model, 10).to(device)
    images = images_per_round(args)

    def ours():
        train_locally(model, data, pipeline_for("cifar10"), settings, torch.Generator())

    def bare():
        bare_loop(model, data, settings, DeviceOptions())

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
