"""Tiny data files in the official layouts, for the tests (no network): CIFAR-10's pickles,
CIFAR-10-N's label file, a client's own CIFAR-10 batches, AG News CSVs."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import torch

from data.datasets import CIFAR10N_LABEL_KEYS

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
