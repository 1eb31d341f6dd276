"""A run killed with SIGKILL mid-way and resumed with `simulation.py --resume RUN_DIR` (in
process) ends with the per-round numbers of an uninterrupted run: MaskedOptim with its detection
before and after the kill, Joint Optimization's client state, Co-teaching's second network, and
FedAvg through the comparison runner; a damaged newest checkpoint is refused and the one
before it used; a resume that would compute something else is refused."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMING = {"round_seconds", "elapsed_seconds", "client_train_seconds"}
SETTINGS = (
    "--runtime", "inprocess", "--quiet", "--num-clients", "6", "--set", "num-rounds=10",
    "--set", "clients-per-round=4", "--set", "warmup-rounds=3", "--set", "run-name=r",
)  # fmt: skip


def simulation(cwd: Path, *args: str, **popen) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "simulation.py"), *args]
    return subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def finished(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    return output


def numbers(run: Path) -> list[dict[str, str]]:
    """metrics.csv without the columns that measure time."""
    with open(run / "metrics.csv") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(handle)]


def killed_after(
    cwd: Path, out: Path, rounds: int, *sets: str, run_name: str = "r", args=SETTINGS
) -> None:
    """Start the run and SIGKILL it as soon as metrics.csv holds `rounds` rounds after round 0."""
    process = simulation(cwd, *args, "--out", str(out), *sets)
    metrics = out / run_name / "metrics.csv"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= rounds + 2:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    summary = json.loads((out / run_name / "summary.json").read_text())
    assert summary["status"] == "running"  # nothing could mark it: it was killed


@pytest.mark.parametrize(
    "strategy, every, kill_after",
    [
        ("maskedoptim", 1, 1),
        ("maskedoptim", 2, 7),
        ("joint-optim", 2, 5),
        ("coteaching", 2, 5),
    ],
    ids=[
        "maskedoptim-detection-after-the-kill",
        "maskedoptim-detection-before",
        "joint-optim-soft-labels",
        "coteaching-second-network",
    ],
)
def test_a_killed_run_resumes_to_the_numbers_of_an_uninterrupted_one(
    tmp_path, strategy, every, kill_after
):
    sets = ("--set", f"strategy={strategy}", "--set", f"checkpoint-every={every}",
            "--set", "label-warmup-rounds=2")  # fmt: skip
    finished(simulation(tmp_path, *SETTINGS, "--out", str(tmp_path / "whole"), *sets))
    killed_after(tmp_path, tmp_path / "killed", kill_after, *sets)
    run = tmp_path / "killed" / "r"
    if strategy == "maskedoptim" and every == 2:  # the newest checkpoint is damaged on disk
        newest = max((run / "checkpoints").glob("round-*.ckpt"))
        newest.write_bytes(newest.read_bytes()[:100])
    output = finished(simulation(tmp_path, "--resume", str(run)))  # the runtime it was made with
    assert "resuming" in output and "--runtime inprocess" in output
    if strategy == "maskedoptim" and every == 2:
        assert f"{newest.name}: damaged or partly written" in output
    whole = tmp_path / "whole" / "r"
    assert numbers(run) == numbers(whole)
    resumed = json.loads((run / "config.json").read_text())["resumed"]
    assert len(resumed) == 1 and resumed[0]["after_round"] <= kill_after + 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 10
    if strategy == "maskedoptim":
        reports = [json.loads((r / "detection.json").read_text()) for r in (run, whole)]
        for key in ("detection", "label_correction", "label_correction_per_client",
                    "masked_messages_sent", "masked_replies_received"):  # fmt: skip
            assert reports[0][key] == reports[1][key], key
        detected = reports[0]["detection"]["round"]
        after = resumed[0]["after_round"]
        assert (detected > after) if every == 1 else (detected <= after)


def test_a_resume_that_differs_from_the_stored_run_is_refused(tmp_path):
    killed_after(tmp_path, tmp_path / "killed", 3, "--set", "checkpoint-every=2")
    run = tmp_path / "killed" / "r"
    refused = simulation(tmp_path, "--runtime", "inprocess", "--resume", str(run),
                         "--set", "lr=0.5", "--num-clients", "7")  # fmt: skip
    output, _ = refused.communicate(timeout=120)
    assert refused.returncode == 2
    assert "differs from the stored run in lr (0.05 there), --num-clients (6 there)" in output
    nothing = simulation(tmp_path, "--resume", str(tmp_path))
    output, _ = nothing.communicate(timeout=120)
    assert nothing.returncode == 2 and "not a run folder" in output


def test_the_comparison_runner_resumes_a_killed_run_from_its_checkpoint(tmp_path):
    sweep = (
        "--runtime", "inprocess", "--quiet", "--num-clients", "6", "--set", "num-rounds=10",
        "--set", "clients-per-round=4", "--set", "checkpoint-every=2",
        "--strategies", "fedavg", "--seeds", "1",
    )  # fmt: skip
    killed_after(tmp_path, tmp_path / "cmp", 5, run_name="fedavg-seed1", args=sweep)
    again = simulation(tmp_path, *sweep, "--out", str(tmp_path / "cmp"))
    output = finished(again)
    assert "an incomplete earlier attempt is there; resuming it after round" in output
    whole = simulation(tmp_path, *sweep, "--out", str(tmp_path / "whole"))
    finished(whole)
    assert numbers(tmp_path / "cmp" / "fedavg-seed1") == numbers(
        tmp_path / "whole" / "fedavg-seed1"
    )
