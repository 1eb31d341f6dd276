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


def record(round_, partition, kept, given, predicted, relabelled=0, noise=0.5):
    return {
        "round": round_, "partition": partition, "samples": sum(given), "noise_level": noise,
        "kept": sum(kept), "kept_by_class": kept, "relabelled_kept": relabelled,
        "given_by_class": given, "predicted_by_class": predicted,
    }  # fmt: skip


def test_per_round_sums_each_round_s_clients():
    records = [
        record(5, 0, [0, 2], [5, 5], [1, 9]),
        record(4, 3, [3, 1], [5, 5], [6, 4], noise=0.2),
        record(5, 1, [1, 1], [5, 5], [3, 7]),
        record(4, 7, [5, 1], [4, 6], [8, 2], relabelled=2, noise=0.4),
    ]
    first, second = per_round(records)
    assert first["round"] == 4 and first["clients"] == 2 and first["top_kept_class"] == 0
    assert first["estimated_noise"] == pytest.approx(0.3)
    assert first["kept_share"] == pytest.approx(10 / 20)
    assert first["top_kept_class_share"] == pytest.approx(8 / 10)
    assert first["its_share_of_predictions"] == pytest.approx(14 / 20)
    assert first["its_share_of_given_labels"] == pytest.approx(9 / 20)
    assert first["relabelled_kept"] == 2
    assert second["round"] == 5 and second["top_kept_class"] == 1


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
    assert [(r["round"], r["partition"] in range(4)) for r in stored["clients"]] == [
        (2, True),
        (2, True),
        (3, True),
        (3, True),
    ]  # 2 clients in each round after the warm-up
    assert Path(stored["run"]).parent == out
    summary = json.loads((Path(stored["run"]) / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert "| 2 |" in done.stdout and "| 3 |" in done.stdout


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ([], ["strategy='maskedoptim'", "--set strategy=feddiv"]),
        (["--set", "strategy=feddiv", "--runtime", "flower"], ["--runtime", "one run"]),
        (["--set", "strategy=feddiv", "--check"], ["--check", "not an option"]),
        (["--set", "strategy=feddiv", "--set", "p-threshold=1.5"], ["p-threshold=1.5"]),
    ],
)
def test_what_it_cannot_do_is_refused_before_any_run(tmp_path, args, said):
    done = run("--json", str(tmp_path / "s.json"), "--out", str(tmp_path / "runs"), *args, cwd=ROOT)
    assert done.returncode == 2
    assert all(part in done.stderr for part in said), done.stderr
    assert not (tmp_path / "runs").exists()


def test_a_json_path_that_cannot_be_written_is_refused_before_any_run(tmp_path):
    (tmp_path / "file").write_text("")
    done = run("--json", str(tmp_path / "file" / "s.json"), "--set", "strategy=feddiv",
               "--out", str(tmp_path / "runs"), cwd=ROOT)  # fmt: skip
    assert (
        done.returncode == 2 and f"--json {tmp_path / 'file' / 's.json'}: its folder" in done.stderr
    )
    assert not (tmp_path / "runs").exists()
    done = run("--json", str(tmp_path), "--set", "strategy=feddiv",
               "--out", str(tmp_path / "runs"), cwd=ROOT)  # fmt: skip
    assert done.returncode == 2 and "is a folder" in done.stderr
    assert not (tmp_path / "runs").exists()
