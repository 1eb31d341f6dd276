"""The app as a user runs it: `python simulation.py ...` through Flower's simulation runtime.

Each run gets its own FLWR_HOME (a temp dir) and its own SuperLink port, and must leave no
process behind.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from leftovers import leftover_processes
from simulation import flower_environment

ROOT = Path(__file__).resolve().parents[1]


def launch(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run simulation.py with its own FLWR_HOME; check that it left no process behind."""
    home = tmp_path / "flwr"
    done = subprocess.run(
        [sys.executable, str(ROOT / "simulation.py"), "--flwr-home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )
    assert leftover_processes(home) == {}
    return done


def test_demo_run_completes_and_writes_results(tmp_path):
    out = tmp_path / "results"
    done = launch(
        tmp_path,
        "--num-clients",
        "4",
        "--quiet",
        "--run-config",
        f"num-rounds=2 warmup-rounds=1 clients-per-round=2 fraction-evaluate=0.5 "
        f"out-dir='{out}' run-name='e2e'",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = out / "e2e"
    assert f"Results: {run_dir}" in done.stdout

    config = json.loads((run_dir / "config.json").read_text())
    assert config["run_config"]["num-rounds"] == 2
    assert config["num_clients"] == 4
    assert config["versions"]["flwr"] == "1.41.0"
    assert len(config["client_true_noise_rates"]) == 4

    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    assert all(0.0 <= float(r["test_accuracy"]) <= 1.0 for r in rows)
    assert all(int(r["clients"]) == 2 for r in rows[1:])
    assert float(rows[-1]["train_loss"]) > 0
    # Two rounds of SGD on digits must beat chance (10 classes) clearly.
    assert float(rows[-1]["test_accuracy"]) > 0.3

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["rounds_completed"] == 2
    assert summary["last10_mean_accuracy"] == pytest.approx(
        100 * (float(rows[1]["test_accuracy"]) + float(rows[2]["test_accuracy"])) / 2, abs=1e-3
    )
    assert (run_dir / "accuracy.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("strategy='fedsgd'", "strategy='fedsgd' is not known; allowed: fedavg"),
        ("noise-rate='0.0,1.5'", "1.5"),
        ("dataset='cifar10' data-dir='/nonexistent/cifar'", "/nonexistent/cifar"),
        ("no-such-key=1", "unknown run-config key 'no-such-key'"),
    ],
)
def test_bad_values_fail_fast_with_a_clear_message(tmp_path, override, message):
    done = launch(tmp_path, "--run-config", override, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "flwr" / "logs").exists()  # nothing was started


# Three clean clients and three with 70 % symmetric noise; every client trains every round, so
# MaskedOptim's flagged clients go through several masked rounds after a 3-round warm-up.
SIX_CLIENTS_THREE_NOISY = (
    "--num-clients", "6", "--set", "num-rounds=7", "--set", "warmup-rounds=3",
    "--set", "clients-per-round=6", "--set", "local-epochs=2", "--set", "partition=iid",
    "--set", "noise-type=mixed", "--set", "noise-groups='clean:3;symmetric:3:0.7,0.7'",
)  # fmt: skip


def test_the_comparison_runner_writes_a_table_and_resumes(tmp_path):
    """fedavg and maskedoptim, seeds 1 and 2: the table, the plot, the resumption; and, in the
    maskedoptim runs, detection, persistent labels and masked training for flagged clients only
    (one sweep checks both, as each Flower launch costs about a minute)."""
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

    # Without Ray or a SuperLink (--runtime inprocess), the same app computes the same run.
    in_process = tmp_path / "in-process"
    done = launch(
        tmp_path, "--runtime", "inprocess", "--strategies", "maskedoptim", "--seeds", "1",
        *SIX_CLIENTS_THREE_NOISY, "--out", str(in_process),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check_maskedoptim_run(in_process / "maskedoptim-seed1")
    flower_rows, own_rows = (
        list(csv.DictReader((folder / "maskedoptim-seed1" / "metrics.csv").open()))
        for folder in (out, in_process)
    )
    assert [r["test_accuracy"] for r in own_rows] == [r["test_accuracy"] for r in flower_rows]
    assert [r["label_acc_corrected"] for r in own_rows] == [
        r["label_acc_corrected"] for r in flower_rows
    ]
    for own, flower in zip(own_rows, flower_rows, strict=True):
        assert float(own["test_loss"]) == pytest.approx(float(flower["test_loss"]), rel=1e-4)


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


def test_a_failed_run_fails_the_command_shows_its_log_and_cleans_up(tmp_path):
    # lr=1e6 makes every client's training diverge in round 1: the run fails after the
    # SuperLink started, and `flwr run` itself would exit 0. (launch() checks that no process
    # is left behind.)
    diverging = ("--num-clients", "3", "--set", "num-rounds=2", "--set", "clients-per-round=2",
                 "--set", "strategy=fedavg", "--set", "lr=1e6")  # fmt: skip
    done = launch(
        tmp_path, "--strategies", "fedavg", "--seeds", "1", *diverging,
        "--out", str(tmp_path / "c"),
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "the run did not complete (status diverged: round 1: every upload" in done.stderr
    assert "finished:failed" in done.stderr
    assert "[1/1] fedavg seed 1: FAILED; the last lines of its log:" in done.stderr
    summary = json.loads((tmp_path / "c" / "fedavg-seed1" / "summary.json").read_text())
    assert summary["status"] == "diverged"

    quiet = launch(tmp_path, "--quiet", *diverging, "--out", str(tmp_path / "q"))
    assert quiet.returncode == 1
    assert "status diverged: round 1: every upload" in quiet.stderr  # even with --quiet

    one_process = launch(
        tmp_path, "--runtime", "inprocess", "--quiet", *diverging, "--out", str(tmp_path / "p"),
    )  # fmt: skip
    assert one_process.returncode == 1
    assert "status diverged: round 1: every upload" in one_process.stderr


def test_the_noisy_label_baselines_run_in_flower(tmp_path):
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


def test_sigterm_stops_a_run_and_everything_it_started(tmp_path):
    import signal
    import time

    home, out = tmp_path / "flwr", tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "simulation.py"), "--flwr-home", str(home), "--quiet",
         "--num-clients", "3", "--run-config",
         f"num-rounds=500 clients-per-round=2 out-dir='{out}' run-name='long'"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    metrics = out / "long" / "metrics.csv"
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) > 2):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "interrupted" in stderr
    assert leftover_processes(home) == {}
    summary = json.loads((out / "long" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["error"]  # no longer "running"
    assert not list((out / "long").glob("*.tmp*"))


def test_a_run_starts_its_own_ray_unless_a_cluster_is_named(tmp_path, monkeypatch):
    """Ray joins any cluster started on the machine with `ray start` by itself; our runs do that
    only when asked (--ray-address, or RAY_ADDRESS in the environment)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert flower_environment(1234, tmp_path)["RAY_ADDRESS"] == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert flower_environment(1234, tmp_path)["RAY_ADDRESS"] == "10.0.0.5:6379"
