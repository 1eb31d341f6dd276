"""Tiny data files in the official layouts, for the tests (no network): CIFAR-10's pickles,
CIFAR-10-N's label file, a client's own CIFAR-10 batches, AG News CSVs; a finished run's folder."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import torch

from common.config import app_defaults
from data.datasets import CIFAR10N_LABEL_KEYS
from launch.comparison import run_folder_name
from server_app.results import RunResults

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer"] + [
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def write_fake_cifar(root: Path, per_batch: int = 3, n_test: int = 4, seed: int = 0):
    """Official python layout, a few random images per batch; returns (x_tr, y_tr, x_te, y_te)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch).tolist()
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"batch_label": b"x", b"labels": y, b"data": x}, f)
        xs.append(x)
        ys += y
    x_te = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    y_te = rng.integers(0, 10, n_test).tolist()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"labels": y_te, b"data": x_te}, f)
    with open(folder / "batches.meta", "wb") as f:
        meta = {b"label_names": [n.encode() for n in CIFAR_NAMES], b"num_vis": 3072}
        pickle.dump(meta, f)
    return np.concatenate(xs), np.asarray(ys), x_te, np.asarray(y_te)


def write_fake_human(path: Path, clean: np.ndarray, seed: int = 1):
    rng = np.random.default_rng(seed)
    labels = {"clean_label": clean.astype(np.int64)}
    for field in CIFAR10N_LABEL_KEYS.values():
        labels[field] = rng.integers(0, 10, len(clean)).astype(np.int64)
    torch.save(labels, path)
    return labels


AGNEWS_TRAIN = [
    ["3", "Wall St. Bears", "Short-sellers, Wall Street's dwindling band!"],
    ["1", "Peace talks", "Talks (again) in Geneva; no deal?"],
    ["2", "Cup final", "The cup final: wall of fans."],
    ["4", "New chip", 'Chip maker "fast" chip.'],
    ["2", "Cup", "cup cup"],
    ["1", "", ""],
]

AGNEWS_TEST = [["4", "Quantum chip", "unseen words here"], ["3", "Wall", "street"]]


def write_csv(path: Path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows(rows)


def write_own_cifar(root: Path, sizes=(4, 3), seed: int = 5):
    """A client's own folder: batches.meta and a data_batch per size, no test_batch."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for i, size in enumerate(sizes, start=1):
        x = rng.integers(0, 256, (size, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, size).tolist()
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"labels": y, b"data": x}, f)
        xs.append(x)
        ys += y
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in CIFAR_NAMES]}, f)
    return np.concatenate(xs).reshape(-1, 3, 32, 32), np.asarray(ys)


# --- Users' own data: image folders and CSV text with known injected noise ----------------------

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digits_split():
    """scikit-learn's digits as the product splits them: (train x, train y, test x, test y),
    images uint8 8x8 with values 0..16."""
    from data.datasets import load_dataset

    digits = load_dataset("digits", None)
    return (
        digits.train_inputs[:, 0],
        digits.train_labels,
        digits.test_inputs[:, 0],
        digits.test_labels,
    )


def inject_noise(labels: np.ndarray, rate: float, num_classes: int, seed: int) -> np.ndarray:
    """`labels` with a `rate` fraction changed to another class, uniformly (symmetric noise)."""
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    flip = rng.random(len(labels)) < rate
    noisy[flip] = (labels[flip] + rng.integers(1, num_classes, int(flip.sum()))) % num_classes
    return noisy


def write_image_folder(root: Path, images: np.ndarray, labels: np.ndarray, names=DIGIT_NAMES):
    """root/<class name>/<i>.png for uint8 8x8 digit images (values 0..16, saved as 0..255
    grayscale PNGs). Returns the relative paths in order, so a test can map the product's
    sample ids back to the truth it knows."""
    from PIL import Image

    paths = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        relative = f"{names[int(label)]}/img-{i:05d}.png"
        (root / names[int(label)]).mkdir(parents=True, exist_ok=True)
        Image.fromarray((image.astype(np.float64) * 255 / 16).astype(np.uint8), mode="L").save(
            root / relative
        )
        paths.append(relative)
    return paths


TOPIC_WORDS = {
    "sport": "goal match team league coach season score player cup win",
    "money": "bank market stock price profit shares trade economy rate fund",
    "science": "space research cell planet study data physics lab gene energy",
    "music": "song album band concert guitar singer tour record melody jazz",
}
COMMON_WORDS = "the a of and to in on with for new today week report says big".split()


def text_rows(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """`n` short synthetic texts, each mostly words of its topic: (texts, topic indices)."""
    rng = np.random.default_rng(seed)
    topics = list(TOPIC_WORDS)
    labels = rng.integers(0, len(topics), n)
    texts = []
    for label in labels:
        own = TOPIC_WORDS[topics[label]].split()
        words = list(rng.choice(own, 5)) + list(rng.choice(COMMON_WORDS, 4))
        rng.shuffle(words)
        texts.append(" ".join(words).capitalize() + ".")
    return texts, labels.astype(np.int64)


def write_text_csv(path: Path, texts, labels, names=tuple(TOPIC_WORDS)):
    """A CSV with columns review,topic (topic = class name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "topic"])
        for text, label in zip(texts, labels, strict=True):
            writer.writerow([text, names[int(label)]])


def fake_run(
    root: Path,
    strategy: str,
    seed: int,
    accuracies: list[float],
    detection: dict | None = None,
    label: str | None = None,
) -> Path:
    """A run folder written by the real results writer, with the given test accuracies (in the
    folder a comparison gives a variant file labelled `label`, if given)."""
    directory = root / run_folder_name(label or strategy, seed)
    config = {"run_config": {**app_defaults(), "strategy": strategy, "seed": seed}, "seed": seed}
    results = RunResults.create(directory, strategy, {**config, "num_clients": 10})
    for round_number, accuracy in enumerate(accuracies):
        results.add_round(
            {"round": round_number, "test_accuracy": accuracy, "test_macro_f1": accuracy / 2}
        )
    if detection is not None:
        results.write_json("detection.json", detection)
    results.finish("completed")
    return directory
