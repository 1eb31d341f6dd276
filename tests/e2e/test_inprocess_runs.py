"""End to end in one process (`--runtime inprocess`: the same ServerApp and ClientApp, no Ray or
SuperLink): the comparison runner's table and resumption, MaskedOptim's detection, persistent
labels and masked training, and the noisy-label baselines. tests/runtime/ checks that Flower's
runtime computes the same numbers.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def launch(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `simulation.py --runtime inprocess ...` as a user would."""
    return subprocess.run(
        [sys.executable, str(ROOT / "simulation.py"), "--runtime", "inprocess", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )


# Three clean clients and three with 70 % symmetric noise; every client trains every round, so
# MaskedOptim's flagged clients go through several masked rounds after a 3-round warm-up.
SIX_CLIENTS_THREE_NOISY = (
    "--num-clients", "6", "--set", "num-rounds=7", "--set", "warmup-rounds=3",
    "--set", "clients-per-round=6", "--set", "local-epochs=2", "--set", "partition=iid",
    "--set", "noise-type=mixed", "--set", "noise-groups='clean:3;symmetric:3:0.7,0.7'",
)  # fmt: skip


def test_the_comparison_runner_writes_a_table_and_resumes(tmp_path):
    """fedavg and maskedoptim, seeds 1 and 2: the table, the plot, the resumption, the refusal
    of a folder made with other settings; and, in the maskedoptim runs, detection, persistent
    labels and masked training for flagged clients only."""
    out = tmp_path / "cmp"
    sweep = (
        "--strategies", "fedavg,maskedoptim", "--seeds", "1,2", *SIX_CLIENTS_THREE_NOISY,
        "--out", str(out),
    )  # fmt: skip
    done = launch(tmp_path, *sweep, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[4/4] maskedoptim seed 2: done" in done.stdout
    runs = {}
    for strategy in ("fedavg", "maskedoptim"):
        for seed in (1, 2):
            summary = json.loads((out / f"{strategy}-seed{seed}" / "summary.json").read_text())
            assert summary["status"] == "completed" and summary["rounds_completed"] == 7
            assert (out / f"{strategy}-seed{seed}" / "flower.log").stat().st_size > 0
            runs[strategy, seed] = summary["last10_mean_accuracy"]
    # the log states the strategy's own keys as the run used them
    assert "maskedoptim: " in (log := (out / "maskedoptim-seed1" / "flower.log").read_text())
    assert "warmup-rounds=3" in log and "noisy-threshold=0.1" in log
    with open(out / "comparison.csv") as handle:
        table = {row["strategy"]: row for row in csv.DictReader(handle)}
    assert list(table) == ["fedavg", "maskedoptim"]
    for strategy, row in table.items():
        assert row["seeds"] == "1,2"
        expected = (runs[strategy, 1] + runs[strategy, 2]) / 2
        assert float(row["last10_accuracy_mean"]) == pytest.approx(expected, abs=1e-3)
    # The same seed gives both strategies the same clients: the partitions and noise match.
    configs = [json.loads((out / f"{s}-seed1" / "config.json").read_text()) for s in table]
    assert configs[0]["client_true_noise_rates"] == configs[1]["client_true_noise_rates"]
    assert configs[0]["runtime"] == "inprocess"  # simulation.py --resume goes on with it
    assert "| maskedoptim | 1,2 |" in (out / "comparison.md").read_text()
    assert (out / "accuracy.png").stat().st_size > 1000
    for seed in (1, 2):
        check_maskedoptim_run(out / f"maskedoptim-seed{seed}")

    again = launch(tmp_path, *sweep)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("already complete, skipped") == 4
    assert "started" not in again.stdout

    changed = launch(tmp_path, *sweep, "--set", "lr=0.5")
    assert changed.returncode == 2
    assert "differs in: lr" in changed.stderr


def check_maskedoptim_run(run_dir: Path) -> None:
    """The three 70 %-noisy clients (partitions 3-5) are flagged after round 3 and only they get
    masked training; their label logits persist and improve on the observed labels."""
    report = json.loads((run_dir / "detection.json").read_text())
    detection = report["detection"]
    assert detection["round"] == 3
    assert detection["flagged_noisy"] == [3, 4, 5]
    assert detection["quality"]["precision"] == 1.0 and detection["quality"]["recall"] == 1.0

    # Only flagged clients were sent masked training: rounds 4..7 for each of them.
    assert report["masked_messages_sent"] == {"3": 4, "4": 4, "5": 4}
    per_client = report["label_correction_per_client"]
    for partition in ("3", "4", "5"):
        # The label logits persisted in context.state: their round counter reached 4.
        assert per_client[partition]["masked_rounds"] == 4
        assert per_client[partition]["observed_accuracy"] == pytest.approx(0.3, abs=0.01)
        # Correction makes the labels clearly better than the observed ones.
        assert per_client[partition]["corrected_accuracy"] > 0.35

    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert all(r["detected_noisy"] == "" for r in rows[:3])
    assert all(int(r["detected_noisy"]) == 3 for r in rows[3:])
    corrected = [float(r["label_acc_corrected"]) for r in rows[3:]]
    assert corrected[0] == pytest.approx(float(rows[3]["label_acc_observed"]))  # not yet trained
    assert len(set(corrected[1:])) > 1  # the labels change from one masked round to the next
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["label_acc_corrected"] > summary["label_acc_observed"]


def test_the_weak_model_variant_detects_distils_and_swaps_unlikely_labels(tmp_path):
    """Issue 22's keys together: robust-score detection, FedNoRo's distillation for the flagged
    clients, and their labels swapped where the global model finds them unlikely; the swapped
    labels are tracked, better than the observed ones, and exported. (With two groups of
    clients, noisy-components=3 would split the clean group: strategies.detection's tests.)"""
    out = tmp_path / "run"
    done = launch(
        tmp_path, *SIX_CLIENTS_THREE_NOISY, "--set", "noisy-detector='robust-score'",
        "--set", "noisy-training='la-distill'",
        "--set", "distill-relabel-below=0.1", "--set", "run-name='weak'", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "weak" / "detection.json").read_text())
    assert report["detection"]["flagged_noisy"] == [3, 4, 5]
    per_client = report["label_correction_per_client"]
    for partition in ("3", "4", "5"):
        assert per_client[partition]["masked_rounds"] == 4  # the store's count, rounds 4..7
        assert per_client[partition]["observed_accuracy"] == pytest.approx(0.3, abs=0.01)
        assert per_client[partition]["corrected_accuracy"] > 0.5
    exported = report["corrected_labels_files"]
    assert sorted(exported) == ["3", "4", "5"]
    assert all(e["labels_changed"] > 0 and e["round"] == 7 for e in exported.values())


def test_the_weak_model_variant_file_falls_back_to_the_authors_method_on_a_strong_model(
    tmp_path,
):
    """configs/variants/maskedoptim-weak-model.toml on digits: the clean clients report how
    often the warm-up model predicts their labels (above the file's 0.7 here), so the run goes
    on as the authors' method: their split, masked training with learnt labels."""
    out = tmp_path / "run"
    variant = str(ROOT / "configs" / "variants" / "maskedoptim-weak-model.toml")
    done = launch(
        tmp_path, *SIX_CLIENTS_THREE_NOISY, "--config", variant,
        "--set", "run-name='strong'", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "strong" / "detection.json").read_text())
    detection = report["detection"]
    assert detection["strong_model"] and detection["model_agreement"] > 0.7
    assert detection["detector"] == "per-class-gmm" and detection["mild"] == []
    assert detection["flagged_noisy"] == [3, 4, 5]
    for partition in ("3", "4", "5"):
        assert report["label_correction_per_client"][partition]["masked_rounds"] == 4
    assert "model at detection           strong: the authors' method" in done.stdout


def test_the_noisy_label_baselines_run_end_to_end(tmp_path):
    """fedelc and fednoro detect the three 70 %-noisy clients after a 2-round warm-up; fedelc
    corrects their labels; symmetric-ce trains like FedAvg with its own loss; fedcorr runs its
    two pre-processing iterations, fine-tuning and usual training, and relabels."""
    out = tmp_path / "cmp"
    done = launch(
        tmp_path,
        "--strategies", "fedelc,fednoro,symmetric-ce,fedcorr", "--seeds", "1",
        "--num-clients", "6", "--set", "num-rounds=4", "--set", "baseline-warmup-rounds=2",
        "--set", "fedcorr-iterations=2", "--set", "fedcorr-finetune-rounds=1",
        "--set", "clients-per-round=6", "--set", "partition=iid", "--set", "noise-type=mixed",
        "--set", "noise-groups='clean:3;symmetric:3:0.7,0.7'", "--out", str(out),
        timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in ("fedelc", "fednoro"):
        report = json.loads((out / f"{name}-seed1" / "detection.json").read_text())
        assert report["detection"]["round"] == 2
        assert report["detection"]["flagged_noisy"] == [3, 4, 5]
        assert report["masked_messages_sent"] == {"3": 2, "4": 2, "5": 2}
    fedelc = json.loads((out / "fedelc-seed1" / "detection.json").read_text())
    labels = fedelc["label_correction"]
    assert labels["label_acc_corrected"] > labels["label_acc_observed"]
    fednoro = json.loads((out / "fednoro-seed1" / "detection.json").read_text())
    assert fednoro["label_correction"] == {}  # FedNoRo keeps the observed labels
    assert not (out / "symmetric-ce-seed1" / "detection.json").exists()
    fedcorr = json.loads((out / "fedcorr-seed1" / "detection.json").read_text())
    assert fedcorr["detection"]["round"] == 2  # the end of the second pre-processing iteration
    assert fedcorr["detection"]["flagged_noisy"] == [3, 4, 5]  # by their LID
    relabelled = fedcorr["label_correction"]
    assert relabelled["label_acc_corrected"] > relabelled["label_acc_observed"] + 0.2
    with open(out / "comparison.csv") as handle:
        assert [row["strategy"] for row in csv.DictReader(handle)] == [
            "fedelc",
            "fednoro",
            "symmetric-ce",
            "fedcorr",
        ]
