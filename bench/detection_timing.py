"""When can MaskedOptim's warm-up model tell noisy clients from clean ones? (issue 22)

    .venv/bin/python bench/detection_timing.py --config configs/paper-cifar10-lenet.toml \
        --data-dir .data/cifar10 --seed 1 --rounds 90 --every 5 --out results/detection-timing

Runs MaskedOptim's warm-up (every sampled client trains with logit-adjusted CE; the geometric
median aggregates) for `--rounds` rounds, driven without Flower by the functions the ClientApp and
the strategy call, and every `--every` rounds does what detection asks of each client: the
global model in eval mode on the client's samples with the training transform, batches of
`class-loss-batch-size` in sample order (client_app.masked.per_class_loss). Per sample it keeps
the CE loss and the predicted class; with the observed and clean labels and the test accuracy
they go to `<out>/seed<S>.npz`. `--analyse` then scores detectors on every query round (the
authors' GMM on per-class losses, and the alternatives in strategies.detection), against the
clients' realised noise rates (noisy: rate > noisy-threshold), and writes `<out>/analysis.json`.
The server never sees the test set or the clean labels in a detector; they only score it here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from client_app.training import train_locally  # noqa: E402
from common import seeding  # noqa: E402
from common.acceleration import load_weights  # noqa: E402
from common.config import RunConfig, app_defaults  # noqa: E402
from common.evaluation import evaluate_model  # noqa: E402
from common.protocol import LocalTraining  # noqa: E402
from data.client_data import ClientData  # noqa: E402
from data.datasets import load_dataset  # noqa: E402
from data.federation import DataSettings, build_federation  # noqa: E402
from data.transforms import pipeline_for  # noqa: E402
from models import build_model  # noqa: E402
from strategies.aggregation import geometric_median_per_tensor  # noqa: E402
from strategies.detection import (  # noqa: E402
    agreement_of_votes,
    detection_quality,
    robust_client_score,
    split_by_score,
    split_noisy_clients,
)


def class_means(values, client, observed, num_clients: int, num_classes: int):
    """[N, C] mean of per-sample `values` over each client's samples of each observed class (NaN
    where it has none), and the [N, C] counts."""
    cell = client * num_classes + observed
    size = num_clients * num_classes
    counts = np.bincount(cell, minlength=size).reshape(num_clients, num_classes)
    sums = np.bincount(cell, weights=values, minlength=size).reshape(num_clients, num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan), counts


def detectors(loss, prediction, observed, client, num_classes):
    """The detectors compared, each from what a client can report about the global model."""
    n = int(client.max()) + 1
    losses, counts = class_means(loss.astype(np.float64), client, observed, n, num_classes)
    wrong = (prediction != observed).astype(np.float64)
    disagreement, _ = class_means(wrong, client, observed, n, num_classes)
    return {
        "authors": split_noisy_clients(losses),  # GMM on per-class losses, 9-seed vote
        "loss-score": split_by_score(robust_client_score(losses, counts)),
        # noisy-components: the lowest of 3 or 4 components clean
        "loss-score-k3": split_by_score(robust_client_score(losses, counts), components=3),
        "loss-score-k4": split_by_score(robust_client_score(losses, counts), components=4),
        # each class the client holds weighs alike: what the server can do without counts
        "loss-score-uniform": split_by_score(robust_client_score(losses, counts > 0)),
        "disagree-score": split_by_score(robust_client_score(disagreement, counts)),
    }


def client_pass(model, data: ClientData, pipeline, batch_size: int, generator):
    """Per-sample CE, predicted class and its probability of the global model, as
    per_class_loss sees them."""
    model.eval()
    losses, predictions, confidences = [], [], []
    with torch.no_grad():
        for idx in torch.arange(len(data)).split(batch_size):
            logits = model(pipeline.train_batch(data.inputs[idx], generator)).float()
            observed = data.observed_labels[idx]
            losses.append(F.cross_entropy(logits, observed, reduction="none"))
            top = F.softmax(logits, dim=1).max(dim=1)
            predictions.append(top.indices)
            confidences.append(top.values)
    model.train()
    return (torch.cat(losses).numpy(), torch.cat(predictions).numpy(),
            torch.cat(confidences).numpy())  # fmt: skip


def run(args) -> Path:
    preset = tomllib.loads(Path(args.config).read_text())
    num_clients = int(preset.pop("federation", {}).get("num-clients", 100))
    mapping = {**app_defaults(), **preset, "seed": args.seed, "device": "cpu"}
    config = RunConfig.from_mapping(mapping)
    dataset = load_dataset(config.dataset, args.data_dir)
    federation = build_federation(DataSettings.from_config(config), num_clients, dataset)
    clients = [ClientData.from_federation(federation, p, "cpu") for p in range(num_clients)]
    pipeline = pipeline_for(config.dataset)
    # the ServerApp's seeded initialisation (server_app.app.initial_model)
    torch.manual_seed(int(seeding.numpy_rng(config.seed, seeding.MODEL_INIT).integers(2**62)))
    model = build_model(config.model, dataset.num_classes)
    keys = list(model.state_dict())
    test_x, test_y = torch.as_tensor(dataset.test_inputs), torch.as_tensor(dataset.test_labels)
    training = LocalTraining(config.local_epochs, config.batch_size, config.lr, config.momentum,
                             config.weight_decay, local_loss="logit-adjusted")  # fmt: skip
    sampled = config.clients_sampled(num_clients)
    queries: dict[str, list] = {"round": [], "loss": [], "prediction": [], "confidence": [],
                                "test_accuracy": []}  # fmt: skip
    started = time.monotonic()
    for server_round in range(1, args.rounds + 1):
        rng = seeding.numpy_rng(config.seed, seeding.CLIENT_SAMPLING, server_round)
        chosen = sorted(int(p) for p in rng.choice(num_clients, size=sampled, replace=False))
        global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        uploads = []
        for partition in chosen:
            load_weights(model, global_state)
            generator = seeding.torch_generator(config.seed, seeding.LOCAL_SHUFFLE, server_round,
                                                partition)  # fmt: skip
            train_locally(model, clients[partition], pipeline, training, generator)
            uploads.append([t.detach().numpy().copy() for t in model.state_dict().values()])
        aggregated = geometric_median_per_tensor(uploads)
        load_weights(model, {k: torch.as_tensor(v) for k, v in zip(keys, aggregated, strict=True)})
        if server_round % args.every:
            continue
        accuracy = evaluate_model(model, test_x, test_y, pipeline, config.eval_batch_size).accuracy
        losses, predictions, confidences = [], [], []
        for data in clients:
            generator = seeding.torch_generator(config.seed, seeding.CLASS_LOSS, server_round,
                                                data.partition_id)  # fmt: skip
            loss, prediction, confidence = client_pass(
                model, data, pipeline, config.class_loss_batch_size, generator
            )
            losses.append(loss)
            predictions.append(prediction)
            confidences.append(confidence)
        queries["round"].append(server_round)
        queries["loss"].append(np.concatenate(losses).astype(np.float32))
        queries["prediction"].append(np.concatenate(predictions).astype(np.int16))
        queries["confidence"].append(np.concatenate(confidences).astype(np.float16))
        queries["test_accuracy"].append(accuracy)
        print(f"seed {args.seed} round {server_round}: test accuracy {accuracy:.4f} "
              f"({time.monotonic() - started:.0f} s)", flush=True)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"seed{args.seed}.npz"
    np.savez_compressed(
        path,
        rounds=np.array(queries["round"]),
        test_accuracy=np.array(queries["test_accuracy"]),
        loss=np.stack(queries["loss"]),
        prediction=np.stack(queries["prediction"]),
        confidence=np.stack(queries["confidence"]),
        client=np.concatenate([np.full(len(c), c.partition_id) for c in clients]),
        observed=np.concatenate([c.observed_labels.numpy() for c in clients]),
        clean=np.concatenate([c.clean_labels.numpy() for c in clients]),
        noise_rates=federation.noise_rates,
        num_classes=dataset.num_classes,
        noisy_threshold=config.noisy_threshold,
    )
    return path


CONFIDENCE_LEVELS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)


def prediction_accuracy(run, q: int, threshold: float) -> dict:
    """On the truly noisy clients' samples at query `q`: how often the observed label is right,
    and, per confidence level, the share of samples whose prediction is at least that confident
    and how often those predictions are right (the merge helps where they beat the labels)."""
    noisy = np.flatnonzero(run["noise_rates"] > threshold)
    samples = np.isin(run["client"], noisy)
    clean = run["clean"][samples]
    prediction = run["prediction"][q][samples]
    confidence = run["confidence"][q][samples].astype(np.float32)
    observed = run["observed"][samples]
    out = {"observed_correct": round(float((observed == clean).mean()), 3)}
    for level in CONFIDENCE_LEVELS:
        kept = confidence >= level
        if not kept.any():
            out[f">={level}"] = {"share": 0.0}
            continue
        out[f">={level}"] = {
            "share": round(float(kept.mean()), 3),
            "prediction_correct": round(float((prediction[kept] == clean[kept]).mean()), 3),
            "observed_correct": round(float((observed[kept] == clean[kept]).mean()), 3),
        }
    return out


RELABEL_LEVELS = (0.02, 0.05, 0.1, 0.2)


def relabel_effect(run, q: int, threshold: float) -> dict:
    """On the truly noisy clients' samples at query `q`: distill-relabel-below's swap
    (client_app.masked.relabel_unlikely) at each level, from the query's losses (the observed
    label's probability is exp(-loss); the client computes it with the eval transform, these
    with the training one). Per level: the share swapped, how often the swapped-in prediction
    and the observed label it replaced are right, and the label accuracy before and after."""
    noisy = np.flatnonzero(run["noise_rates"] > threshold)
    samples = np.isin(run["client"], noisy)
    clean = run["clean"][samples]
    observed = run["observed"][samples]
    prediction = run["prediction"][q][samples]
    given = np.exp(-run["loss"][q][samples].astype(np.float64))
    out = {"observed_correct": round(float((observed == clean).mean()), 3)}
    for level in RELABEL_LEVELS:
        swapped = given < level
        labels = np.where(swapped, prediction, observed)
        out[f"<{level}"] = {
            "share": round(float(swapped.mean()), 3),
            "prediction_correct": round(float((prediction[swapped] == clean[swapped]).mean()), 3)
            if swapped.any() else None,
            "observed_correct": round(float((observed[swapped] == clean[swapped]).mean()), 3)
            if swapped.any() else None,
            "accuracy_after": round(float((labels == clean).mean()), 3),
        }  # fmt: skip
    return out


def analyse(out: Path) -> dict:
    """Every detector on every query round of every seed in `out`: precision, recall, flagged
    and the GMM fits' agreement, with the round's test accuracy."""
    report: dict = {}
    for path in sorted(out.glob("seed*.npz")):
        run = np.load(path)
        rates = dict(enumerate(run["noise_rates"].tolist()))
        threshold = float(run["noisy_threshold"])
        rows = []
        for q, server_round in enumerate(run["rounds"].tolist()):
            row = {"round": server_round, "test_accuracy": float(run["test_accuracy"][q])}
            splits = detectors(run["loss"][q], run["prediction"][q], run["observed"],
                               run["client"], int(run["num_classes"]))  # fmt: skip
            for name, split in splits.items():
                quality = detection_quality(split.noisy, rates, threshold)
                row[name] = {"flagged": len(split.noisy),
                             "precision": round(quality["precision"], 3),
                             "recall": round(quality["recall"], 3),
                             "agreement": round(agreement_of_votes(split.votes), 3)}  # fmt: skip
            if "confidence" in run.files:  # the label merge's question (label-merge-confidence)
                row["predictions_on_noisy_clients"] = prediction_accuracy(run, q, threshold)
            row["relabel_on_noisy_clients"] = relabel_effect(run, q, threshold)
            rows.append(row)
        report[path.stem] = rows
    (out / "analysis.json").write_text(json.dumps(report, indent=1, allow_nan=False))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "paper-cifar10-lenet.toml"))
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=90)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "results" / "detection-timing"))
    parser.add_argument("--analyse", action="store_true", help="score the saved queries")
    args = parser.parse_args(argv)
    if args.analyse:
        report = analyse(Path(args.out))
        for seed, rows in report.items():
            for row in rows:
                cells = " | ".join(
                    f"{name} {v['flagged']} P{v['precision']} R{v['recall']} A{v['agreement']}"
                    for name, v in row.items() if isinstance(v, dict) and "flagged" in v
                )  # fmt: skip
                print(f"{seed} r{row['round']} acc {row['test_accuracy']:.3f} | {cells}")
        return 0
    print(f"wrote {run(args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
