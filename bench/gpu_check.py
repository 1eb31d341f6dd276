"""The first GPU lent to the project: one command that measures everything, in at most 8 minutes.

    python3 bench/gpu_check.py [--data-dir DIR] [--out gpu_check.json] [--budget 330]

Needs torch, torchvision, numpy, scikit-learn, Pillow and pytest (a GPU image that has PyTorch
has them); no Flower, no Ray, no network. On a machine without CUDA it exits at once (code 2).
`--device cpu --quick` runs the same logic on the CPU at tiny sizes, with LeNet in place of
ResNet-18 and 3 rounds per strategy (its test). Stages, each timed, each in the JSON written to
--out (a stage that fails records its error, the rest go on). The budget is split between the
stages beforehand (throughput 25 %, preset 55 %, at-once 20 %, after the CUDA tests); a stage
starts a measurement only when its share has room for it, judged by the last one:

1. `cuda_tests`: the tests marked `cuda` (pytest -m cuda), e.g. the same seed giving the same
   first-round numbers on CPU and GPU, pinned weight loading, bf16 training on the GPU; the
   CUDA-graph test apart: where it fails, the later stages run without CUDA graphs;
2. `throughput`: images/s of the client training core (client_app.training.train_locally)
   against a bare PyTorch loop on the same model, data and augmentation, for lenet and
   resnet18, fp32 and bf16 (+ channels_last and cuDNN autotuning for resnet18 bf16), eagerly
   and with the step recorded as a CUDA graph (`cuda-graphs`); then `authors_loop`: one client
   round run as the authors' code runs it (DataLoader, PIL transforms) against ours;
3. `preset`: the ResNet-18 paper preset (configs/paper-cifar10-resnet18.toml: 100 clients, 10
   per round, E = 5, B = 64) for fedavg and maskedoptim, driven here without Flower by the same
   functions the ClientApp and the strategies call (seeded sampling, local training, masked
   training with persistent label logits, per-class-loss detection, FedAvg / geometric-median
   aggregation in numpy as the server does, evaluation on the test set), as many rounds as the
   budget allows, with the warm-up shortened to 2 rounds so that detection and masked rounds
   are both measured: seconds per round by stage, test accuracy per round, peak GPU memory and
   the projected time of 120 rounds. Without --data-dir (CIFAR-10 in the official layout) the
   images are random, so the accuracies mean nothing; the timings do;
4. `at_once`: the preset's client core with 1, 2, 4 and 8 clients training at once on the GPU
   (threads, as the in-process runtime runs them), total images/s.
Targets (issue 20, docs/benchmarks.md): `core_vs_bare` (bare-loop seconds / core seconds) >=
0.9; ResNet-18 core >= 25,000 images/s (bf16); `projected_120_rounds_training_minutes` <= 2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from client_app.masked import init_label_logits, masked_train_locally, per_class_loss  # noqa: E402
from client_app.training import train_locally  # noqa: E402
from common import seeding  # noqa: E402
from common.acceleration import DeviceOptions, load_weights  # noqa: E402
from common.config import RunConfig, app_defaults  # noqa: E402
from common.evaluation import evaluate_model  # noqa: E402
from common.protocol import LocalTraining, MaskedSettings  # noqa: E402
from data.client_data import ClientData  # noqa: E402
from data.datasets import Dataset, load_dataset  # noqa: E402
from data.federation import DataSettings, build_federation  # noqa: E402
from data.transforms import pipeline_for  # noqa: E402
from models import build_model  # noqa: E402
from strategies.aggregation import geometric_median_per_tensor, weighted_mean  # noqa: E402
from strategies.detection import split_noisy_clients  # noqa: E402

PRESET = ROOT / "configs" / "paper-cifar10-resnet18.toml"
STAGES = ("cuda_tests", "throughput", "authors_loop", "preset", "at_once")


class Budget:
    """Wall-clock budget shared by the stages."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def synthetic_client(samples: int, device: torch.device, seed: int = 0) -> ClientData:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, 256, (samples, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (samples,), generator=generator)
    return ClientData(0, np.arange(samples), inputs.to(device), labels.to(device),
                      labels.to(device), 10)  # fmt: skip


def bare_loop(model, data: ClientData, settings: LocalTraining, options: DeviceOptions) -> None:
    """The shortest correct loop one would write by hand: same data, augmentation, optimiser,
    batches and precision."""
    pipeline = pipeline_for("cifar10")
    generator = torch.Generator()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                          weight_decay=settings.weight_decay)  # fmt: skip
    n, b = len(data), settings.batch_size
    device = data.inputs.device
    for _ in range(settings.local_epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n - b + 1, b):
            idx = order[start : start + b]
            x = options.prepare_inputs(pipeline.train_batch(data.inputs[idx], generator))
            with options.autocast(device):
                loss = F.cross_entropy(model(x).float(), data.observed_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def throughput(args, device: torch.device, budget: Budget) -> list[dict]:
    """Images/s of train_locally against bare_loop, per model and device options."""
    samples = 128 if args.quick else 2000
    settings = LocalTraining(1 if args.quick else 2, 64, 0.01, 0.9, 5e-4)
    data = synthetic_client(samples, device)
    images = settings.local_epochs * (samples // 64) * 64
    big = "lenet" if args.quick else "resnet18"
    cases = [
        ("lenet", DeviceOptions()),
        (big, DeviceOptions()),
        (big, DeviceOptions("bf16")),
        (big, DeviceOptions("bf16", channels_last=True)),
        (big, DeviceOptions("bf16", channels_last=True, cudnn_benchmark=True)),
        # recorded steps last: a failed recording cannot then cost the eager rows
        ("lenet", DeviceOptions(cuda_graphs=True)),
        (big, DeviceOptions(cuda_graphs=True)),
        (big, DeviceOptions("bf16", channels_last=True, cuda_graphs=True)),
        (big, DeviceOptions("bf16", channels_last=True, cudnn_benchmark=True, cuda_graphs=True)),
    ]
    rows, last = [], 0.0
    for name, options in cases:
        fields = {"model": name, "precision": options.precision,
                  "channels_last": options.channels_last,
                  "cudnn_benchmark": options.cudnn_benchmark,
                  "cuda_graphs": options.cuda_graphs}  # fmt: skip
        if budget.left() < 1.5 * last:
            rows.append({**fields, "skipped": "budget"})
            continue
        if options.cuda_graphs and not args.cuda_graphs:
            rows.append({**fields, "skipped": "no CUDA graphs (--no-cuda-graphs or a failed test)"})
            continue
        started = time.monotonic()
        options.apply_globals()
        model = options.prepare_model(build_model(name, 10).to(device))
        pipeline = pipeline_for("cifar10")

        def ours(model=model, options=options, pipeline=pipeline):
            train_locally(model, data, pipeline, settings, torch.Generator(), options)

        def bare(model=model, options=options):
            bare_loop(model, data, settings, options)

        ours(), bare()  # warm-up: allocator, cuDNN autotuning, lazy inits
        ours_s = min(timed(ours, device) for _ in range(2))
        bare_s = min(timed(bare, device) for _ in range(2))
        last = time.monotonic() - started
        rows.append(
            {
                **fields,
                "core_images_per_s": round(images / ours_s, 1),
                "bare_images_per_s": round(images / bare_s, 1),
                "core_vs_bare": round(bare_s / ours_s, 3),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    DeviceOptions().apply_globals()
    return rows


def authors_loop(args, device: torch.device, budget: Budget) -> dict:
    """One client round (500 images, E = 5, B = 64, ResNet-18) the way the authors' code runs
    it, against train_locally with the preset's device options. The authors' way: a map-style
    dataset of uint8 HWC images, each turned into a PIL image and augmented by torchvision's
    transforms (RandomCrop(32, 4), RandomHorizontalFlip, ToTensor, Normalize), a DataLoader
    (shuffle, drop_last), each batch copied to the device, fp32, cuDNN deterministic (their
    seeding), one client at a time. Measured with 0 and 4 loader workers (their --num_workers is
    4; whether their client loaders pass it on is not in the spec)."""
    from PIL import Image
    from torch.utils.data import DataLoader
    from torchvision import transforms

    samples, epochs = (128, 1) if args.quick else (500, 5)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (samples, 32, 32, 3), dtype=np.uint8)
    targets = rng.integers(0, 10, samples)
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    ])  # fmt: skip

    class ClientSplit(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return samples

        def __getitem__(self, i: int):
            return transform(Image.fromarray(pixels[i])), int(targets[i])

    settings = LocalTraining(epochs, 64, 0.01, 0.9, 5e-4)
    images = epochs * (samples // 64) * 64
    rows, last = [], 0.0

    def measure(label: str, fn: Callable[[], object]) -> None:
        nonlocal last
        if budget.left() < 1.5 * last and not args.quick:  # quick: its test needs all three
            rows.append({"loop": label, "skipped": "budget"})
            return
        started = time.monotonic()
        fn()  # warm-up
        seconds = timed(fn, device)
        last = time.monotonic() - started
        rows.append({"loop": label, "seconds": round(seconds, 3),
                     "images_per_s": round(images / seconds, 1)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)

    deterministic = torch.backends.cudnn.deterministic
    DeviceOptions().apply_globals()
    torch.backends.cudnn.deterministic = True
    try:
        model = build_model(preset_model(args), 10).to(device)
        for workers in (0, 4):

            def theirs(workers=workers) -> None:
                loader = DataLoader(ClientSplit(), batch_size=64, shuffle=True, drop_last=True,
                                    num_workers=workers)  # fmt: skip
                opt = torch.optim.SGD(model.parameters(), lr=settings.lr,
                                      momentum=settings.momentum,
                                      weight_decay=settings.weight_decay)  # fmt: skip
                model.train()
                for _ in range(epochs):
                    for x, y in loader:
                        x, y = x.to(device), y.to(device)
                        loss = F.cross_entropy(model(x), y)
                        opt.zero_grad()
                        loss.backward()
                        opt.step()

            measure(f"authors: DataLoader, PIL transforms, fp32, num_workers={workers}", theirs)
    finally:
        torch.backends.cudnn.deterministic = deterministic
    options = DeviceOptions(args.precision, args.channels_last, args.cudnn_benchmark,
                            args.cuda_graphs)  # fmt: skip
    options.apply_globals()
    ours_model = options.prepare_model(build_model(preset_model(args), 10).to(device))
    data = synthetic_client(samples, device)
    pipeline = pipeline_for("cifar10")

    def ours() -> None:
        train_locally(ours_model, data, pipeline, settings, torch.Generator(), options)

    measure(f"ours: train_locally, {options}", ours)
    DeviceOptions().apply_globals()
    done = [r for r in rows if "seconds" in r]
    if len(done) == 3:
        fastest_theirs = min(r["seconds"] for r in done[:2])
        return {"rows": rows, "ours_vs_authors": round(fastest_theirs / done[2]["seconds"], 2)}
    return {"rows": rows}


def preset_model(args) -> str:
    return "lenet" if args.quick else "resnet18"


def preset_config(args) -> RunConfig:
    preset = tomllib.loads(PRESET.read_text())
    preset.pop("federation", None)
    mapping = {**app_defaults(), **preset, "device": args.device, "precision": args.precision}
    mapping["channels-last"] = args.channels_last
    mapping["cudnn-benchmark"] = args.cudnn_benchmark
    mapping["cuda-graphs"] = args.cuda_graphs
    if args.quick:
        mapping |= {"local-epochs": 1, "dirichlet-min-size": 10, "clients-per-round": 4}
    return RunConfig.from_mapping(mapping)


def preset_dataset(args) -> Dataset:
    if args.data_dir:
        return load_dataset("cifar10", args.data_dir)
    rng = np.random.default_rng(0)
    train_n, test_n = (2000, 200) if args.quick else (50_000, 10_000)
    x_train = rng.integers(0, 256, (train_n, 3, 32, 32), dtype=np.uint8)
    y_train = rng.integers(0, 10, train_n).astype(np.int64)
    return Dataset(
        "cifar10", 10, tuple(str(i) for i in range(10)), "image", (3, 32, 32), x_train,
        y_train, y_train.copy(), None,
        rng.integers(0, 256, (test_n, 3, 32, 32), dtype=np.uint8),
        rng.integers(0, 10, test_n).astype(np.int64),
    )  # fmt: skip


def numpy_state(model) -> list[np.ndarray]:
    return [t.detach().cpu().numpy() for t in model.state_dict().values()]


def run_preset(args, strategy: str, dataset: Dataset, budget: Budget, device, runs: int) -> dict:
    """The preset's rounds for `strategy` (fedavg or maskedoptim) until the budget share ends."""
    config = preset_config(args)
    options = DeviceOptions.from_config(config)
    options.apply_globals()
    num_clients = 20 if args.quick else 100
    federation = build_federation(DataSettings.from_config(config), num_clients, dataset)
    clients = [ClientData.from_federation(federation, p, device) for p in range(num_clients)]
    pipeline = pipeline_for("cifar10")
    torch.manual_seed(config.seed)
    model = options.prepare_model(build_model(preset_model(args), 10).to(device))
    keys = list(model.state_dict())
    test_x = torch.as_tensor(dataset.test_inputs).to(device)
    test_y = torch.as_tensor(dataset.test_labels).to(device)
    sampled = config.clients_sampled(num_clients)
    loss = "logit-adjusted" if strategy == "maskedoptim" else "ce"
    training = LocalTraining(config.local_epochs, config.batch_size, config.lr, config.momentum,
                             config.weight_decay, local_loss=loss)  # fmt: skip
    masked = MaskedSettings()
    warmup, noisy, labels = 2, None, {}
    # with both strategies fedavg gets half of the share, maskedoptim what is left
    rounds, stop_at = [], budget.left() / runs if strategy == "fedavg" else budget.left()
    last_round = 3 if args.quick else config.num_rounds  # quick: a fixed, testable count
    started = time.monotonic()
    torch.cuda.reset_peak_memory_stats() if device.type == "cuda" else None
    images = 0
    for server_round in range(1, last_round + 1):
        spent = time.monotonic() - started
        per_round = spent / len(rounds) if rounds else 0.0
        if rounds and not args.quick and spent + 2 * per_round > stop_at:
            break
        stage = {"train": 0.0, "aggregate": 0.0, "evaluate": 0.0, "detect": 0.0}
        # strategies.sampling.sample_partitions's draw (that module imports Flower)
        rng = seeding.numpy_rng(config.seed, seeding.CLIENT_SAMPLING, server_round)
        chosen = sorted(int(p) for p in rng.choice(num_clients, size=sampled, replace=False))
        global_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        uploads, weights = [], []
        synchronize(device)
        t0 = time.perf_counter()
        for partition in chosen:
            load_weights(model, global_state)
            generator = seeding.torch_generator(config.seed, seeding.LOCAL_SHUFFLE, server_round,
                                                partition)  # fmt: skip
            data = clients[partition]
            if noisy is not None and partition in noisy:
                if partition not in labels:
                    labels[partition] = init_label_logits(data.observed_labels, 10,
                                                          masked.label_scale)  # fmt: skip
                result = masked_train_locally(model, data, pipeline, training, masked,
                                              labels[partition], generator, options)  # fmt: skip
                labels[partition] = result.label_logits
                uploads.append([t.detach().cpu().numpy() for t in result.upload_state.values()])
            else:
                train_locally(model, data, pipeline, training, generator, options)
                uploads.append(numpy_state(model))
            weights.append(len(data))
            images += len(data) // config.batch_size * config.batch_size * config.local_epochs
        synchronize(device)
        stage["train"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if strategy == "maskedoptim":
            aggregated = geometric_median_per_tensor(uploads)
        else:
            aggregated = weighted_mean(uploads, weights)
        load_weights(model, {k: torch.as_tensor(v) for k, v in zip(keys, aggregated, strict=True)})
        synchronize(device)
        stage["aggregate"] = time.perf_counter() - t0
        if strategy == "maskedoptim" and server_round == warmup:
            t0 = time.perf_counter()
            losses = []
            for data in clients:
                means, _, _ = per_class_loss(model, data, pipeline, torch.Generator(), 32)
                losses.append(means.numpy())  # NaN for classes a client does not hold
            noisy = set(split_noisy_clients(np.array(losses), num_fits=config.gmm_fits).noisy)
            stage["detect"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = evaluate_model(model, test_x, test_y, pipeline, config.eval_batch_size, options)
        stage["evaluate"] = time.perf_counter() - t0
        rounds.append({"round": server_round, "test_accuracy": round(result.accuracy, 4),
                       **{k: round(v, 3) for k, v in stage.items()}})  # fmt: skip
        print(json.dumps({"strategy": strategy, **rounds[-1]}), flush=True)
    # round 1 pays lazy inits and autotuning; the detection round its one-off query
    steady = [r for r in rounds if r["round"] > 1 and not r["detect"]] or rounds
    per_round = float(np.mean([r["train"] + r["aggregate"] + r["evaluate"] for r in steady]))
    train = float(np.mean([r["train"] for r in steady]))
    detect = sum(r["detect"] for r in rounds)
    return {
        "strategy": strategy,
        "model": preset_model(args),
        "rounds_run": len(rounds),
        "flagged_noisy": len(noisy) if noisy is not None else None,
        "seconds_per_round": round(per_round, 3),
        "train_seconds_per_round": round(train, 3),
        "train_images_per_s": round(images / sum(r["train"] for r in rounds), 1),
        "projected_120_rounds_training_minutes": round(120 * train / 60, 2),
        "projected_120_rounds_minutes": round((120 * per_round + detect) / 60, 2),
        "peak_gpu_memory_gib": (
            round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None
        ),
        "rounds": rounds,
    }


def at_once(args, device: torch.device, budget: Budget) -> list[dict]:
    """The preset's client core (ResNet-18, E = 5 on a 500-image client) with N clients training
    at the same time, each in its own thread with its own model."""
    samples = 128 if args.quick else 500
    settings = LocalTraining(1 if args.quick else 5, 64, 0.01, 0.9, 5e-4)
    options = DeviceOptions(args.precision, args.channels_last, args.cudnn_benchmark,
                            args.cuda_graphs)  # fmt: skip
    options.apply_globals()
    data = synthetic_client(samples, device)
    images = settings.local_epochs * (samples // 64) * 64
    rows, last = [], 0.0
    for count in (1, 2, 4, 8):
        if budget.left() < 2.5 * last:  # twice the clients of the last measurement
            rows.append({"clients_at_once": count, "skipped": "budget"})
            continue
        started = time.monotonic()
        models = [options.prepare_model(build_model(preset_model(args), 10).to(device))
                  for _ in range(count)]  # fmt: skip
        pipeline = pipeline_for("cifar10")

        def one(model, pipeline=pipeline) -> None:
            train_locally(model, data, pipeline, settings, torch.Generator(), options)

        def together(models=models) -> None:
            workers = [threading.Thread(target=one, args=(m,)) for m in models]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()

        together()  # warm-up
        seconds = timed(together, device)
        last = time.monotonic() - started
        rows.append({"clients_at_once": count, "seconds": round(seconds, 3),
                     "images_per_s": round(count * images / seconds, 1)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def git_commit() -> str:
    """HEAD, and whether the files differ from it: a copy of a working tree (the device tool's)
    can carry an older HEAD than its files."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT, timeout=10).stdout.strip()  # fmt: skip
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, cwd=ROOT, timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    if not head:
        return "unknown (no git)"
    return f"{head} with changes to tracked files" if changed.stdout.strip() else head


GRAPH_TEST = "test_cuda_graphs_train_as_the_eager_loop"


def cuda_tests(args) -> dict:
    """The `cuda` tests; the CUDA-graph test apart, since the later stages use CUDA graphs only
    where it passes (a failed recording must not cost them their figures)."""
    report = {}
    for name, selection in (("others", f"not {GRAPH_TEST}"), ("cuda_graphs", GRAPH_TEST)):
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-k", selection, "-p",
             "no:cacheprovider", "tests/common/test_acceleration.py",
             "tests/data/test_transforms.py"],
            capture_output=True, text=True, cwd=ROOT, timeout=180,
        )  # fmt: skip
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        report[name] = {"exit_code": done.returncode, "output_tail": tail}
    if report["cuda_graphs"]["exit_code"] != 0 and args.cuda_graphs:
        args.cuda_graphs = False
        report["note"] = "the CUDA-graph test failed: the later stages ran eagerly"
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="", help="CIFAR-10 in the official layout")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument(
        "--budget",
        type=float,
        default=330.0,
        help="seconds in all (330: a run and a rerun fit 15 device minutes)",
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--precision", default="bf16", help="of the same stages")
    for switch in ("--channels-last", "--cudnn-benchmark", "--cuda-graphs"):
        parser.add_argument(
            switch,
            action=argparse.BooleanOptionalAction,
            default=True,
            help="of the authors-loop, preset and at-once stages",
        )
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"comma-separated, of {', '.join(STAGES)} (a rerun measures what it needs)",
    )
    parser.add_argument(
        "--strategies",
        default="fedavg,maskedoptim",
        help="of the preset stage: fedavg, maskedoptim or both",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the CPU test)")
    args = parser.parse_args(argv)
    stages = [name for name in args.stages.split(",") if name]
    strategies = [name for name in args.strategies.split(",") if name]
    if not stages or set(stages) - set(STAGES):
        parser.error(f"--stages {args.stages!r}: allowed are {', '.join(STAGES)}")
    if not strategies or set(strategies) - {"fedavg", "maskedoptim"}:
        parser.error(f"--strategies {args.strategies!r}: allowed are fedavg, maskedoptim")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU here (torch.cuda.is_available() is False): bench/gpu_check.py "
              "measures the GPU path; run it on a GPU machine (--device cpu --quick checks its "
              "logic on a CPU)", file=sys.stderr)  # fmt: skip
        return 2
    device = torch.device(args.device)
    budget = Budget(args.budget)
    report: dict = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "data": args.data_dir or "synthetic (random images: accuracies are meaningless)",
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "commit": git_commit(),
    }

    def stage(name: str, fn: Callable[[], object]) -> None:
        started = time.monotonic()
        try:
            report[name] = fn()
        except Exception as err:  # one failing stage must not cost the others their turn
            report[name] = {"error": f"{type(err).__name__}: {err}"}
        report.setdefault("stage_seconds", {})[name] = round(time.monotonic() - started, 1)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"== {name} done in {report['stage_seconds'][name]} s", flush=True)

    if "cuda_tests" in stages and device.type == "cuda":
        stage("cuda_tests", lambda: cuda_tests(args))
    elif "cuda_tests" in stages:
        report["cuda_tests"] = {"skipped": "no CUDA device (--device cpu)"}
    share = budget.left()
    if "throughput" in stages:
        stage("throughput", lambda: throughput(args, device, Budget(0.22 * share)))
    if "authors_loop" in stages:
        stage("authors_loop", lambda: authors_loop(args, device, Budget(0.06 * share)))
    if "preset" in stages:
        dataset = preset_dataset(args)
        preset_budget = Budget(0.52 * share)
        runs = len(strategies)
        stage("preset", lambda: [run_preset(args, s, dataset, preset_budget, device, runs)
                                 for s in strategies])  # fmt: skip
    if "at_once" in stages:
        stage("at_once", lambda: at_once(args, device, Budget(budget.left())))
    shown = dict(report)
    if isinstance(report.get("preset"), list):  # the per-round rows are in the file
        shown["preset"] = [
            {k: v for k, v in run.items() if k != "rounds"} for run in report["preset"]
        ]
    print(json.dumps(shown, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
