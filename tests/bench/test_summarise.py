"""bench/summarise.py: the comparison table and plot of finished runs, from their folders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fakedata import fake_run

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "summarise.py"


def three_runs(root: Path) -> None:
    """fedavg seeds 1 and 2 (last-10 accuracy 50 and 60 %), rfa seed 1 (40 %)."""
    for strategy, seed, last in (("fedavg", 1, 0.5), ("fedavg", 2, 0.6), ("rfa", 1, 0.4)):
        fake_run(root, strategy, seed, [0.1, last])


def test_it_prints_the_table_and_writes_the_plot_of_every_run_under_a_root(tmp_path):
    three_runs(tmp_path / "runs")
    plot = tmp_path / "plot.png"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "runs"), "--plot", str(plot)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| fedavg | 1,2 | 55.00 ± 7.07 |" in done.stdout
    assert "| rfa | 1 | 40.00 |" in done.stdout
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_no_completed_run_is_an_error(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "no completed run" in done.stderr


def test_kept_records_give_the_same_table_without_checkpoints(tmp_path):
    three_runs(tmp_path / "runs")
    (tmp_path / "runs" / "rfa-seed1" / "checkpoints").mkdir()
    kept = tmp_path / "kept"
    first = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "runs"), "--keep", str(kept)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert f"records of 3 runs kept in {kept}" in first.stderr
    assert sorted(p.name for p in kept.iterdir()) == ["fedavg-seed1", "fedavg-seed2", "rfa-seed1"]
    assert not (kept / "rfa-seed1" / "checkpoints").exists()
    again = subprocess.run([sys.executable, str(SCRIPT), str(kept)],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert again.returncode == 0 and again.stdout == first.stdout


def test_runs_of_different_lengths_are_warned_about(tmp_path):
    three_runs(tmp_path / "runs")
    fake_run(tmp_path / "runs", "krum", 1, [0.1, 0.2, 0.3])
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0
    assert "warning: these runs differ in length (1, 2 rounds)" in done.stderr
