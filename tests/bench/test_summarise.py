"""bench/summarise.py: the comparison table and plot of finished runs, from their folders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fakedata import fake_run

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "summarise.py"


def test_it_prints_the_table_and_writes_the_plot_of_every_run_under_a_root(tmp_path):
    for strategy, seed, last in (("fedavg", 1, 0.5), ("fedavg", 2, 0.6), ("rfa", 1, 0.4)):
        fake_run(tmp_path / "runs", strategy, seed, [0.1, last])
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
