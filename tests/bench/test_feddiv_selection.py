"""bench/feddiv_selection.py: FedDiv's per-round selection, observed in a real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "feddiv_selection.py"
sys.path.insert(0, str(ROOT / "bench"))

from feddiv_selection import per_round  # noqa: E402


def record(kept, given, predicted, relabelled=0, noise=0.5):
    return {
        "samples": sum(given), "noise_level": noise, "kept": sum(kept), "kept_by_class": kept,
        "relabelled_kept": relabelled, "given_by_class": given, "predicted_by_class": predicted,
    }  # fmt: skip


def test_per_round_sums_each_round_s_clients():
    records = [
        record([3, 1], [5, 5], [6, 4], noise=0.2),
        record([5, 1], [4, 6], [8, 2], relabelled=2, noise=0.4),  # round 4
        record([0, 2], [5, 5], [1, 9]),  # round 5
        record([1, 1], [5, 5], [3, 7]),
    ]
    first, second = per_round(records, per_round_clients=2, first_round=4)
    assert first["round"] == 4 and first["top_kept_class"] == 0
    assert first["estimated_noise"] == pytest.approx(0.3)
    assert first["kept_share"] == pytest.approx(10 / 20)
    assert first["top_kept_class_share"] == pytest.approx(8 / 10)
    assert first["its_share_of_predictions"] == pytest.approx(14 / 20)
    assert first["its_share_of_given_labels"] == pytest.approx(9 / 20)
    assert first["relabelled_kept"] == 2
    assert second["round"] == 5 and second["top_kept_class"] == 1
    with pytest.raises(ValueError, match="3 selections for 2 clients"):
        per_round(records[:3], per_round_clients=2, first_round=4)


def run(*args, cwd):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_it_records_every_selection_of_a_feddiv_run(tmp_path):
    out = tmp_path / "runs"
    done = run(
        "--json", str(tmp_path / "selection.json"), "--out", str(out), "--num-clients", "4",
        "--set", "strategy=feddiv", "--set", "num-rounds=3", "--set", "baseline-warmup-rounds=1",
        "--set", "clients-per-round=2", "--set", "local-epochs=1",
        cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    stored = json.loads((tmp_path / "selection.json").read_text())
    assert [r["round"] for r in stored["rounds"]] == [2, 3]
    assert len(stored["clients"]) == 4  # 2 clients in each round after the warm-up
    assert Path(stored["run"]).parent == out
    summary = json.loads((Path(stored["run"]) / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert "| 2 |" in done.stdout and "| 3 |" in done.stdout


def test_another_strategy_is_refused_before_any_run(tmp_path):
    done = run("--json", str(tmp_path / "s.json"), "--out", str(tmp_path / "runs"), cwd=ROOT)
    assert done.returncode == 2
    assert "strategy='maskedoptim'" in done.stderr and "--set strategy=feddiv" in done.stderr
    assert not (tmp_path / "runs").exists()
