"""Users' own data end to end in one process (`--runtime inprocess`): an image folder and a CSV
text file carved into clients, MaskedOptim's corrected-labels CSV on the flagged clients checked
against the truth the test knows, and a run without ground truth that reports what it can.
tests/runtime/test_own_data_deployment.py does the same with one SuperNode per client folder.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from fakedata import (
    DIGIT_NAMES,
    TOPIC_WORDS,
    digits_split,
    text_rows,
    write_image_folder,
    write_text_csv,
)

ROOT = Path(__file__).resolve().parents[2]


def launch(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "simulation.py"), "--runtime", "inprocess", *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )


# Six clients, every one trained every round; clients 3-5 get 60 % symmetric noise from the
# product's own noise keys, so the labels in the folder are the truth the test compares with.
SIX_CLIENTS_THREE_NOISY = (
    "--num-clients", "6", "--set", "num-rounds=8", "--set", "warmup-rounds=4",
    "--set", "clients-per-round=6", "--set", "local-epochs=2", "--set", "partition=iid",
    "--set", "noise-type=mixed", "--set", "noise-groups='clean:3;symmetric:3:0.6,0.6'",
)  # fmt: skip
IMAGE_KEYS = (
    "--set", "dataset=imagefolder", "--set", "model=digitsnet", "--set", "image-size=8",
    "--set", "image-channels=1",
)  # fmt: skip


def corrected_label_files(run: Path) -> dict[int, list[dict[str, str]]]:
    files = sorted((run / "clients").glob("partition-*/corrected-labels.csv"))
    return {
        int(f.parent.name.split("-")[1]): list(csv.DictReader(open(f, encoding="utf-8")))
        for f in files
    }


def check_corrections(run: Path, truth: dict[str, str]) -> list[tuple[float, float]]:
    """Every flagged client wrote its CSV, with one row per sample; returns (observed, corrected)
    label accuracy per file against `truth` (sample id -> class name)."""
    report = json.loads((run / "detection.json").read_text())
    flagged = report["detection"]["flagged_noisy"]
    files = corrected_label_files(run)
    assert flagged and sorted(files) == sorted(flagged)
    accuracies = []
    for partition, rows in files.items():
        entry = report["corrected_labels_files"][str(partition)]
        assert entry["samples"] == len(rows) and entry["round"] == 8
        assert entry["labels_changed"] == sum(r["suspected_mislabelled"] == "1" for r in rows)
        assert all(0.0 <= float(r["confidence"]) <= 1.0 for r in rows)
        observed = np.mean([r["observed_label"] == truth[r["sample_id"]] for r in rows])
        corrected = np.mean([r["corrected_label"] == truth[r["sample_id"]] for r in rows])
        accuracies.append((float(observed), float(corrected)))
    print(f"{run.name}: label accuracy observed -> corrected, per flagged client: {accuracies}")
    return accuracies


def test_an_image_folder_gets_its_labels_corrected_in_simulation(tmp_path):
    x_train, y_train, x_test, y_test = digits_split()
    paths = write_image_folder(tmp_path / "train", x_train, y_train)
    write_image_folder(tmp_path / "test", x_test, y_test)
    truth = {path: DIGIT_NAMES[int(y)] for path, y in zip(paths, y_train, strict=True)}
    done = launch(
        tmp_path, *IMAGE_KEYS, *SIX_CLIENTS_THREE_NOISY,
        "--set", f"data-dir='{tmp_path / 'train'}'", "--set", f"test-dir='{tmp_path / 'test'}'",
        "--set", "labels-every=5", "--set", "run-name='own'", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp_path / "out" / "own"
    accuracies = check_corrections(run, truth)
    for observed, corrected in accuracies:
        assert corrected > observed + 0.1, accuracies
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_accuracy"] > 80 and summary["labels_changed"] > 0
    assert "corrected labels (CSV)" in done.stdout


def test_a_csv_text_file_gets_its_labels_corrected_in_simulation(tmp_path):
    texts, labels = text_rows(1200, seed=3)
    write_text_csv(tmp_path / "train.csv", texts, labels)
    test_texts, test_labels = text_rows(200, seed=4)
    write_text_csv(tmp_path / "test.csv", test_texts, test_labels)
    truth = {str(row): list(TOPIC_WORDS)[int(y)] for row, y in enumerate(labels, start=1)}
    done = launch(
        tmp_path, *SIX_CLIENTS_THREE_NOISY, "--set", "dataset='csv-text'",
        "--set", "model=fasttext", "--set", "text-column=review", "--set", "label-column=topic",
        "--set", f"data-dir='{tmp_path}'", "--set", f"test-dir='{tmp_path / 'test.csv'}'",
        "--set", "run-name='own'", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for observed, corrected in check_corrections(tmp_path / "out" / "own", truth):
        assert corrected > observed, (observed, corrected)


def test_without_ground_truth_the_figures_that_need_it_are_unavailable(tmp_path):
    """Own data, no synthetic noise, no test-dir: nothing the truth would be needed for is
    reported as a number (no NaN, None or 0 in its place), and what can be reported is."""
    x_train, y_train, _, _ = digits_split()
    write_image_folder(tmp_path / "train", x_train, y_train)
    done = launch(
        tmp_path, *IMAGE_KEYS, *SIX_CLIENTS_THREE_NOISY[:-4], "--set", "noise-type=none",
        "--set", "fraction-evaluate=0.5",
        "--set", f"data-dir='{tmp_path / 'train'}'", "--set", "run-name='blind'",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp_path / "out" / "blind"
    summary = json.loads((run / "summary.json").read_text())
    config = json.loads((run / "config.json").read_text())
    report = json.loads((run / "detection.json").read_text())
    for payload in (summary, config, report):
        assert "nonfinite_values" not in payload
    assert config["client_true_noise_rates"]["available"] is False
    assert config["central_evaluation"]["available"] is False
    assert report["detection"]["quality"]["available"] is False
    assert "clean labels are unknown" in report["detection"]["quality"]["reason"]
    assert "label_acc_observed" not in report["label_correction"]
    assert "detect_precision" not in summary and "final_accuracy" not in summary
    assert summary["final_local_accuracy"] > 50
    assert "detection precision/recall   unavailable" in done.stdout
    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert all(r["detect_precision"] == "" and r["test_accuracy"] == "" for r in rows)
    assert all(r["label_acc_observed"] == "" for r in rows)
