"""The deployment runtime on localhost: deploy_local.py starts a SuperLink and SuperNodes as
separate processes (insecure, or with TLS and SuperNode authentication), runs MaskedOptim through
them and stops everything it started."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulation import processes_with_environment

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("tls", "rounds"), [(False, 3), (True, 2)], ids=["insecure", "tls"])
def test_maskedoptim_runs_on_a_superlink_and_two_supernodes(tmp_path, tls, rounds):
    workdir, out = tmp_path / "deploy", tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy_local.py"), "--num-supernodes", "2",
         "--workdir", str(workdir), *(["--tls"] if tls else []),
         "--set", f"num-rounds={rounds}", "--set", "warmup-rounds=1",
         "--set", "clients-per-round=2", "--set", "partition=iid", "--set", "noise-type=mixed",
         "--set", "noise-groups='clean:1;symmetric:1:0.8,0.8'",
         "--set", f"out-dir='{out}'", "--set", "run-name='deployed'"],
        capture_output=True, text=True, timeout=1500, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = workdir / "deployed"
    for home in ("superlink", "supernode-0", "supernode-1", "cli"):
        assert processes_with_environment("FLWR_HOME", str(run / home)) == set(), home
    summary = json.loads((out / "deployed" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == rounds
    report = json.loads((out / "deployed" / "detection.json").read_text())
    assert report["detection"]["flagged_noisy"] == [1]  # the 80 %-noisy client
    assert report["masked_messages_sent"] == {"1": rounds - 1}
    # The noisy client's labels were kept under its node's state-dir, keyed by run and partition.
    state_files = list((run / "state" / "supernode-1").glob("run-*/partition-1/masked-labels.npz"))
    assert len(state_files) == 1
    assert not (run / "state" / "supernode-0").exists()  # the clean client keeps no labels
    superlink_log = (run / "logs" / "superlink.log").read_text()
    if tls:
        assert "running on https://" in superlink_log
        assert (run / "logs" / "flwr-register.log").read_text().count(
            "registered successfully"
        ) == 2
    else:
        assert "running on http://" in superlink_log


def test_a_bad_value_fails_before_anything_starts(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy_local.py"), "--workdir", str(tmp_path / "d"),
         "--set", "noise-rate='0.0,1.5'"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "1.5" in done.stderr
    assert not (tmp_path / "d").exists()
