"""bench/gpu_check.py, the script for the first GPU lent: it refuses a machine without CUDA at
once, and its stages run end to end on the CPU at tiny sizes (`--device cpu --quick`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_cuda_it_exits_at_once_saying_why(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "r.json")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert "no CUDA GPU here" in done.stderr and not (tmp_path / "r.json").exists()


def test_every_stage_runs_on_the_cpu_at_tiny_sizes(tmp_path):
    out = tmp_path / "r.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--budget", "60",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert "error" not in json.dumps(report), report
    measured = [row for row in report["throughput"] if "core_vs_bare" in row]
    assert measured and all(row["core_images_per_s"] > 0 for row in measured)
    fedavg, masked = report["preset"]
    assert fedavg["strategy"] == "fedavg" and masked["strategy"] == "maskedoptim"
    for run in (fedavg, masked):  # --quick: 3 rounds each, whatever the budget
        assert run["rounds_run"] == 3 and run["projected_120_rounds_minutes"] > 0
        assert all(0 <= r["test_accuracy"] <= 1 for r in run["rounds"])
    assert masked["flagged_noisy"] is not None  # detection ran after round 2
    assert [r["detect"] > 0 for r in masked["rounds"]] == [False, True, False]
    assert set(report["stage_seconds"]) == {"throughput", "authors_loop", "preset", "at_once"}
    loops = report["authors_loop"]["rows"]
    assert [row["loop"].split(":")[0] for row in loops] == ["authors", "authors", "ours"]
    assert all(row["images_per_s"] > 0 for row in loops)
    assert report["authors_loop"]["ours_vs_authors"] > 0
    assert report["cuda_tests"] == {"skipped": "no CUDA device (--device cpu)"}
    assert report["arguments"]["quick"] is True and report["at_once"][0]["images_per_s"] > 0
