"""The app as a user runs it through Flower's runtime: `python simulation.py ...` with a SuperLink
and Ray (the `runtime` layer: `make test-runtime`).

Each run gets its own FLWR_HOME (a temp dir) and its own SuperLink port, and must leave no
process behind. What does not depend on the runtime (detection, label persistence, the
baselines' routing, the sweep's table and resumption) is checked in process, in
tests/e2e/test_inprocess_runs.py; here: the demo, a failed run's exit and clean-up, SIGTERM, and
one comparison that resumes and computes the in-process runtime's numbers.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from leftovers import leftover_processes

ROOT = Path(__file__).resolve().parents[2]


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
    assert config["runtime"] == "flower"
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


# Three clean clients and three with 70 % symmetric noise; every client trains every round, so
# MaskedOptim's flagged clients go through several masked rounds after a 3-round warm-up.
SIX_CLIENTS_THREE_NOISY = (
    "--num-clients", "6", "--set", "num-rounds=7", "--set", "warmup-rounds=3",
    "--set", "clients-per-round=6", "--set", "local-epochs=2", "--set", "partition=iid",
    "--set", "noise-type=mixed", "--set", "noise-groups='clean:3;symmetric:3:0.7,0.7'",
)  # fmt: skip


def test_a_comparison_under_flower_resumes_and_computes_the_in_process_numbers(tmp_path):
    """maskedoptim seed 1 under Flower's runtime: complete, skipped when run again, and every
    round's test accuracy and corrected-label accuracy the same as the in-process runtime's."""
    out = tmp_path / "cmp"
    sweep = ("--strategies", "maskedoptim", "--seeds", "1", *SIX_CLIENTS_THREE_NOISY,
             "--out", str(out))  # fmt: skip
    done = launch(tmp_path, *sweep, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[1/1] maskedoptim seed 1: done" in done.stdout
    assert (out / "maskedoptim-seed1" / "flower.log").stat().st_size > 0

    again = launch(tmp_path, *sweep)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already complete, skipped" in again.stdout and "started" not in again.stdout

    in_process = tmp_path / "in-process"
    done = launch(
        tmp_path, "--runtime", "inprocess", "--strategies", "maskedoptim", "--seeds", "1",
        *SIX_CLIENTS_THREE_NOISY, "--out", str(in_process),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
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
    detection = json.loads((out / "maskedoptim-seed1" / "detection.json").read_text())
    assert detection["detection"]["flagged_noisy"] == [3, 4, 5]


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


@pytest.mark.parametrize("strategy", ["fedavg", "maskedoptim"])
def test_a_run_stopped_under_flower_resumes_to_the_uninterrupted_numbers(tmp_path, strategy):
    """A run under Flower's runtime, stopped after round 4 (maskedoptim's detection came after
    round 3), resumed with --resume under Flower's runtime: every round's test accuracy (and
    maskedoptim's corrected-label accuracy and flagged count) equal an uninterrupted in-process
    run's."""
    import signal
    import time

    home, out = tmp_path / "flwr", tmp_path / "out"
    settings = (*SIX_CLIENTS_THREE_NOISY, "--set", "checkpoint-every=2", "--set", "run-name=r")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "simulation.py"), "--flwr-home", str(home), "--quiet",
         "--set", f"strategy={strategy}", *settings, "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    metrics = out / "r" / "metrics.csv"
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 6):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert process.returncode == 130
    assert json.loads((out / "r" / "summary.json").read_text())["status"] == "interrupted"

    resumed = launch(tmp_path, "--quiet", "--resume", str(out / "r"), timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    whole = launch(
        tmp_path, "--runtime", "inprocess", "--quiet", "--set", f"strategy={strategy}",
        *settings, "--out", str(tmp_path / "whole"),
    )  # fmt: skip
    assert whole.returncode == 0, whole.stderr[-3000:]
    rows = [list(csv.DictReader((folder / "r" / "metrics.csv").open()))
            for folder in (out, tmp_path / "whole")]  # fmt: skip
    for key in ("test_accuracy", "label_acc_corrected", "detected_noisy"):
        assert [r[key] for r in rows[0]] == [r[key] for r in rows[1]], key
    config = json.loads((out / "r" / "config.json").read_text())
    assert config["resumed"][0]["after_round"] in (2, 4, 6)  # 4 unless stopped mid-write
