"""Users' own data deployed on localhost: `deploy_local.py --client-data` starts one SuperNode per
client folder or CSV file, as a user would run it; the second client's labels carry noise the
test injected (so the product does not know the truth), MaskedOptim flags it, and its
corrected-labels CSV, written in its state-dir, is more accurate than its observed labels."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fakedata import (
    DIGIT_NAMES,
    TOPIC_WORDS,
    digits_split,
    inject_noise,
    text_rows,
    write_image_folder,
    write_text_csv,
)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.xdist_group("deployment")

# Both clients train every round; detection right after round 2.
SHORT_RUN = (
    "--set", "num-rounds=6", "--set", "warmup-rounds=2", "--set", "clients-per-round=1.0",
    "--set", "noise-type=none", "--set", "run-name='own'",
)  # fmt: skip


def deploy(tmp_path: Path, clients: list[Path], *keys: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy_local.py"),
         *(arg for path in clients for arg in ("--client-data", str(path))),
         *SHORT_RUN, *keys, "--set", f"out-dir='{tmp_path / 'out'}'",
         "--workdir", str(tmp_path / "deploy")],
        capture_output=True, text=True, timeout=1200, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def noisy_client_corrections(tmp_path: Path, truth: dict[str, str]) -> tuple[float, float]:
    """The flagged client is the noisy one, its CSV is in its own state-dir, and the server got
    only counts; returns its (observed, corrected) label accuracy against `truth`."""
    run = tmp_path / "out" / "own"
    report = json.loads((run / "detection.json").read_text())
    assert report["detection"]["flagged_noisy"] == [1]
    assert report["detection"]["quality"]["available"] is False
    files = list((tmp_path / "deploy").glob("own/state/supernode-1/run-*/partition-1/*.csv"))
    assert len(files) == 1 and not list(
        (tmp_path / "deploy").glob("own/state/supernode-0/**/*.csv")
    )
    entry = report["corrected_labels_files"]["1"]
    assert entry["file"] == str(files[0]) and "observed_accuracy" not in entry
    assert not (run / "clients").exists()  # nothing per sample on the server's side
    rows = list(csv.DictReader(open(files[0], encoding="utf-8")))
    assert entry["samples"] == len(rows) == len(truth)
    assert entry["labels_changed"] == sum(r["suspected_mislabelled"] == "1" for r in rows) > 0
    observed = float(np.mean([r["observed_label"] == truth[r["sample_id"]] for r in rows]))
    corrected = float(np.mean([r["corrected_label"] == truth[r["sample_id"]] for r in rows]))
    summary = json.loads((run / "summary.json").read_text())
    print(f"noisy client: label accuracy {observed:.3f} -> {corrected:.3f}; "
          f"{summary['seconds_per_round']} s per round")  # fmt: skip
    return observed, corrected


def test_two_supernodes_with_their_own_image_folders(tmp_path):
    x_train, y_train, x_test, y_test = digits_split()
    half = len(y_train) // 2
    write_image_folder(tmp_path / "client-0", x_train[:half], y_train[:half])
    noisy = inject_noise(y_train[half:], 0.4, 10, seed=3)
    paths = write_image_folder(tmp_path / "client-1", x_train[half:], noisy)
    write_image_folder(tmp_path / "test", x_test, y_test)
    truth = {p: DIGIT_NAMES[int(y)] for p, y in zip(paths, y_train[half:], strict=True)}
    done = deploy(
        tmp_path, [tmp_path / "client-0", tmp_path / "client-1"],
        "--set", "dataset=imagefolder", "--set", "model=digitsnet", "--set", "image-size=8",
        "--set", "image-channels=1", "--set", f"classes='{','.join(DIGIT_NAMES)}'",
        "--set", f"test-dir='{tmp_path / 'test'}'",
    )  # fmt: skip
    observed, corrected = noisy_client_corrections(tmp_path, truth)
    assert corrected > observed + 0.1
    assert "detection precision/recall   unavailable" in done.stdout


def test_two_supernodes_with_their_own_csv_files(tmp_path):
    texts, labels = text_rows(1200, seed=3)
    topics = list(TOPIC_WORDS)
    write_text_csv(tmp_path / "client-0.csv", texts[:600], labels[:600])
    write_text_csv(tmp_path / "client-1.csv", texts[600:], inject_noise(labels[600:], 0.5, 4, 5))
    test_texts, test_labels = text_rows(200, seed=4)
    write_text_csv(tmp_path / "test.csv", test_texts, test_labels)
    vocab = subprocess.run(
        [sys.executable, "-m", "data.own_data", "vocab", str(tmp_path / "client-0.csv"),
         "--text-column", "review", "--label-column", "topic", "--out", str(tmp_path / "v.txt")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert vocab.returncode == 0, vocab.stderr
    truth = {str(row): topics[int(y)] for row, y in enumerate(labels[600:], start=1)}
    deploy(
        tmp_path, [tmp_path / "client-0.csv", tmp_path / "client-1.csv"],
        "--set", "dataset='csv-text'", "--set", "model=fasttext",
        "--set", "text-column=review", "--set", "label-column=topic",
        "--set", f"classes='{','.join(topics)}'", "--set", f"vocab-file='{tmp_path / 'v.txt'}'",
        "--set", f"test-dir='{tmp_path / 'test.csv'}'",
    )  # fmt: skip
    observed, corrected = noisy_client_corrections(tmp_path, truth)
    assert corrected > observed
