"""Tests for server_app/results.py: the files a run writes while it goes."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from launch.report import conclude
from server_app.results import METRIC_COLUMNS, RunResults, summarise


def row(server_round: int, accuracy: float, f1: float | None = None) -> dict:
    return {
        "round": server_round,
        "test_accuracy": accuracy,
        "test_loss": 1.0 - accuracy,
        "test_macro_precision": accuracy,
        "test_macro_recall": accuracy,
        "test_macro_f1": accuracy if f1 is None else f1,
        "train_loss": float("nan") if server_round == 0 else 0.5 / server_round,
        "clients": 0 if server_round == 0 else 5,
    }


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def read_json(path):
    return json.loads(path.read_text())


# --- summarise ---------------------------------------------------------------------------------


def test_summarise_last10_excludes_round_zero_and_older_rounds():
    accuracies = [0.99] + [i / 100 for i in range(1, 16)]  # round 0 is high on purpose
    rows = [row(r, a) for r, a in enumerate(accuracies)]
    summary = summarise(rows, 30.0, "completed")
    last10 = [i / 100 for i in range(6, 16)]  # rounds 6..15
    assert summary["last10_mean_accuracy"] == pytest.approx(100 * sum(last10) / 10)
    assert summary["last10_mean_macro_f1"] == pytest.approx(100 * sum(last10) / 10)
    assert summary["final_accuracy"] == pytest.approx(15.0)
    assert summary["final_macro_f1"] == pytest.approx(15.0)
    assert summary["best_accuracy"] == pytest.approx(15.0)  # not round 0's 99 %
    assert summary["best_round"] == 15
    assert summary["rounds_completed"] == 15
    assert summary["status"] == "completed"
    assert summary["wall_seconds"] == 30.0
    assert summary["seconds_per_round"] == pytest.approx(2.0)


def test_summarise_fewer_than_ten_rounds_uses_all_trained_rounds():
    rows = [row(0, 0.1), row(1, 0.5), row(2, 0.8), row(3, 0.6)]
    summary = summarise(rows, 3.0, "running")
    assert summary["last10_mean_accuracy"] == pytest.approx(100 * (0.5 + 0.8 + 0.6) / 3)
    assert summary["best_accuracy"] == pytest.approx(80.0)
    assert summary["best_round"] == 2
    assert summary["final_accuracy"] == pytest.approx(60.0)
    assert summary["rounds_completed"] == 3


def test_summarise_macro_f1_is_its_own_column():
    rows = [row(1, 0.5, f1=0.2), row(2, 0.7, f1=0.4)]
    summary = summarise(rows, 1.0, "completed")
    assert summary["last10_mean_macro_f1"] == pytest.approx(30.0)
    assert summary["final_macro_f1"] == pytest.approx(40.0)
    assert summary["last10_mean_accuracy"] == pytest.approx(60.0)


def test_summarise_without_trained_rounds():
    summary = summarise([row(0, 0.1)], 1.0, "failed")
    assert summary["rounds_completed"] == 0
    assert summary["status"] == "failed"
    assert "final_accuracy" not in summary


# --- RunResults --------------------------------------------------------------------------------


def test_run_results_write_the_files_as_the_run_goes(tmp_path):
    directory = tmp_path / "out" / "run-1"
    config = {"strategy": "fedavg", "seed": 3, "noise-rate": "0.0,0.6"}
    results = RunResults.create(directory, "fedavg on digits", config)

    assert read_json(directory / "config.json") == config
    assert read_csv(directory / "metrics.csv") == [list(METRIC_COLUMNS)]
    assert read_json(directory / "summary.json")["status"] == "running"

    accuracies = [0.1, 0.4, 0.55, 0.6]
    for server_round, accuracy in enumerate(accuracies):
        results.add_round(row(server_round, accuracy))
        lines = read_csv(directory / "metrics.csv")
        assert lines[0] == list(METRIC_COLUMNS)
        assert len(lines) == server_round + 2  # header + one row per round so far
        written = dict(zip(METRIC_COLUMNS, lines[-1], strict=True))
        assert int(written["round"]) == server_round
        assert float(written["test_accuracy"]) == pytest.approx(accuracy)
        assert float(written["test_loss"]) == pytest.approx(1.0 - accuracy)
        assert int(written["clients"]) == (0 if server_round == 0 else 5)
        assert float(written["round_seconds"]) >= 0
        assert float(written["elapsed_seconds"]) >= 0
        if server_round == 0:
            assert written["train_loss"] == "nan"  # NaN is a value; an empty cell is "n/a"
        else:
            assert float(written["train_loss"]) == pytest.approx(0.5 / server_round, rel=1e-5)
        summary = read_json(directory / "summary.json")
        assert summary["status"] == "running"
        assert summary["rounds_completed"] == server_round
        if server_round:
            assert summary["final_accuracy"] == pytest.approx(100 * accuracy)

    summary = results.finish("completed")
    on_disk = read_json(directory / "summary.json")
    assert on_disk["status"] == summary["status"] == "completed"
    assert on_disk["rounds_completed"] == 3
    assert on_disk["final_accuracy"] == pytest.approx(60.0)
    assert on_disk["best_round"] == 3
    assert on_disk["last10_mean_accuracy"] == pytest.approx(100 * (0.4 + 0.55 + 0.6) / 3)
    assert "error" not in on_disk
    assert len(read_csv(directory / "metrics.csv")) == 1 + len(accuracies)


def test_elapsed_seconds_grow(tmp_path):
    results = RunResults.create(tmp_path, "t", {})
    for server_round in range(3):
        results.add_round(row(server_round, 0.5))
    elapsed = [
        float(r[METRIC_COLUMNS.index("elapsed_seconds")])
        for r in read_csv(tmp_path / "metrics.csv")[1:]
    ]
    assert elapsed == sorted(elapsed)


def test_failed_run_records_the_error(tmp_path):
    results = RunResults.create(tmp_path / "run", "t", {"seed": 1})
    results.add_round(row(0, 0.1))
    results.add_round(row(1, 0.3))
    summary = results.finish("failed", error="RuntimeError: 1 client(s) failed")
    on_disk = read_json(tmp_path / "run" / "summary.json")
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["status"] == "failed"
    assert on_disk["error"] == "RuntimeError: 1 client(s) failed"
    assert on_disk["rounds_completed"] == 1
    assert on_disk["final_accuracy"] == pytest.approx(30.0)


def test_accuracy_plot_after_finish(tmp_path):
    results = RunResults.create(tmp_path, "digits", {})
    for server_round in (1, 2, 3):  # no round is a multiple of 10: only finish plots
        results.add_round(row(server_round, 0.2 * server_round))
    results.finish("completed")
    plot = tmp_path / "accuracy.png"
    assert plot.exists()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically, no leftovers


def test_no_leftover_temporary_files(tmp_path):
    results = RunResults.create(tmp_path, "t", {"a": 1})
    results.add_round(row(1, 0.5))
    results.finish("completed")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["accuracy.png", "config.json", "metrics.csv", "summary.json"]


def test_json_files_are_strict_and_say_what_was_not_finite(tmp_path):
    from server_app.results import _write_json

    _write_json(tmp_path / "s.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": 2.5})
    text = (tmp_path / "s.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    written = json.loads(text)
    assert written["a"] is None and written["b"] == [1.0, None] and written["c"] == 2.5
    assert written["nonfinite_values"] == {"a": "nan", "b[1]": "inf"}
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    ("problem", "status"),
    [
        ("flwr run exit 0, run 7 status finished:stopped", "interrupted"),
        ("flwr run exit 0, run 7 status finished:failed", "failed"),
        ("interrupted (Ctrl-C or SIGTERM)", "interrupted"),
    ],
)
def test_a_run_left_running_gets_its_true_status_from_the_launcher(tmp_path, problem, status):
    results = RunResults.create(tmp_path / "run", "t", {"run_config": {}})
    (tmp_path / "run" / "summary.tmp").write_text("half")  # a write that was cut off
    assert conclude(tmp_path / "run", problem, None, verbose=False) == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == status and summary["error"] == problem
    assert not list((tmp_path / "run").glob("*.tmp*"))
    results.finish("completed")  # a status the ServerApp wrote is kept
    assert conclude(tmp_path / "run", problem, None, verbose=False) == 1
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"


def test_a_run_failing_while_the_user_stops_it_reads_as_interrupted(tmp_path):
    """A client killed by the launcher's stop can make the ServerApp write `failed` first."""
    import json

    from server_app.results import mark_ended

    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"status": "failed", "error": "RuntimeError: actor died"}))
    assert not mark_ended(tmp_path, "interrupted", "stopped")  # a real failure is kept
    assert mark_ended(tmp_path, "interrupted", "stopped", stopped_by_user=True)
    after = json.loads(summary.read_text())
    assert after["status"] == "interrupted" and after["error"] == "stopped"
    assert after["error_while_stopping"] == "RuntimeError: actor died"
    summary.write_text(json.dumps({"status": "completed"}))
    assert not mark_ended(tmp_path, "interrupted", "stopped", stopped_by_user=True)


# --- the run folder's writer lock -------------------------------------------------------------


def hold_lock_in_a_child(directory):
    """A child process that takes the folder's lock and waits; returns it once it holds it."""
    import subprocess
    import sys
    import time

    code = (
        "import sys, time; from pathlib import Path; sys.path.insert(0, sys.argv[2]);"
        "from server_app.results import lock_run; lock_run(Path(sys.argv[1]));"
        "print('held', flush=True); time.sleep(60)"
    )
    root = str(Path(__file__).resolve().parents[2])
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(directory), root], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "held"
    time.sleep(0.05)
    return child


def test_a_live_writer_is_seen_and_a_dead_one_is_not(tmp_path):
    from server_app.results import RunLocked, lock_run, run_is_live

    assert run_is_live(tmp_path) is None  # no lock file: no writer
    child = hold_lock_in_a_child(tmp_path)
    try:
        assert run_is_live(tmp_path) == str(child.pid)
        with pytest.raises(RunLocked, match=f"pid {child.pid}"):
            lock_run(tmp_path)
    finally:
        child.kill()  # SIGKILL: the kernel releases the lock
        child.wait()
    assert run_is_live(tmp_path) is None
    os.close(lock_run(tmp_path))


def test_resume_refuses_a_run_that_is_still_going(tmp_path):
    from common.errors import ConfigError
    from launch.resume import resume_mapping

    child = hold_lock_in_a_child(tmp_path)
    try:
        with pytest.raises(ConfigError, match=f"the run is still going \\(process {child.pid}"):
            resume_mapping(tmp_path, {}, None)
    finally:
        child.kill()
        child.wait()
