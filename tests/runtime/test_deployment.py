"""The deployment runtime on localhost: deploy_local.py starts a SuperLink and SuperNodes as
separate processes (insecure, or with TLS and SuperNode authentication), runs MaskedOptim through
them and stops everything it started."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from launch.deploy import LocalDeployment
from launch.overrides import parse_overrides
from launch.preflight import resolve_run_config
from leftovers import leftover_processes

ROOT = Path(__file__).resolve().parents[2]

# One pytest-xdist worker runs these one after another (`make test` uses two workers).
pytestmark = pytest.mark.xdist_group("deployment")

# Two clients on digits, the second 80 % noisy; detection right after round 1.
TWO_CLIENTS = [
    "warmup-rounds=1", "clients-per-round=2", "partition=iid", "noise-type=mixed",
    "noise-groups='clean:1;symmetric:1:0.8,0.8'",
]  # fmt: skip


def rounds_written(metrics_csv: Path) -> int:
    if not metrics_csv.is_file():
        return 0
    return max(0, len(metrics_csv.read_text().strip().splitlines()) - 2)  # header, round 0


def test_a_supernode_killed_mid_run_comes_back_with_its_labels(tmp_path):
    """Insecure deployment, 2 SuperNodes; after round 2 the noisy client's SuperNode is killed
    (SIGKILL, as in a crash) and started again. The run completes, and the client's label state
    came back from its state-dir: its own count of masked rounds equals the number of masked
    replies the server received (a fresh start would have restarted the count)."""
    out, rounds = tmp_path / "out", 4
    mapping = resolve_run_config(
        parse_overrides(
            set_items=[
                *TWO_CLIENTS,
                f"num-rounds={rounds}",
                f"out-dir='{out}'",
                "run-name='restarted'",
            ]
        )
    )
    results = out / "restarted"
    with LocalDeployment(tmp_path / "deploy", num_supernodes=2) as deployment:
        deployment.start_superlink()
        for index in range(2):
            deployment.start_supernode(index)
        deployment.submit(mapping)
        deadline = time.monotonic() + 600
        while rounds_written(results / "metrics.csv") < 2:
            assert time.monotonic() < deadline, deployment.log_text("superlink")[-3000:]
            time.sleep(0.5)
        deployment.stop_supernode(1)
        deployment.start_supernode(1)
        run_id, status = deployment.wait()
        logs = {name: deployment.log_text(name) for name in ("superlink", "supernode-1")}
    assert status == "finished:completed", logs["superlink"][-3000:]
    run = tmp_path / "deploy"
    for home in ("superlink", "supernode-0", "supernode-1", "cli"):
        assert leftover_processes(run / home) == {}, home
    assert "running on http://" in logs["superlink"]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == rounds
    report = json.loads((results / "detection.json").read_text())
    assert report["detection"]["flagged_noisy"] == [1]  # the 80 %-noisy client
    received = report["masked_replies_received"]["1"]
    assert received >= 2  # at least one masked round after the restart
    assert report["label_correction_per_client"]["1"]["masked_rounds"] == received
    assert "client state 'masked-labels' restored from" in logs["supernode-1"]
    # The labels live under the node's state-dir, keyed by run and partition, one file per
    # round's version (client_app.state): the newest holds the count.
    versions = (run / "state" / "supernode-1").glob(
        f"run-{run_id}/partition-1/masked-labels.round-*.npz"
    )
    state_file = max(versions, key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    with np.load(state_file) as stored:
        assert int(stored["masked-rounds"]) == received
        assert stored["label-logits"].shape[1] == 10
    assert not (run / "state" / "supernode-0").exists()  # the clean client keeps no labels


def test_maskedoptim_runs_over_tls_with_supernode_authentication(tmp_path):
    workdir, out, rounds = tmp_path / "deploy", tmp_path / "out", 2
    settings = [*TWO_CLIENTS, f"num-rounds={rounds}", f"out-dir='{out}'", "run-name='deployed'"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy_local.py"), "--num-supernodes", "2",
         "--workdir", str(workdir), "--tls", *(f"--set={s}" for s in settings)],
        capture_output=True, text=True, timeout=1500, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = workdir / "deployed"
    for home in ("superlink", "supernode-0", "supernode-1", "cli"):
        assert leftover_processes(run / home) == {}, home
    summary = json.loads((out / "deployed" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == rounds
    report = json.loads((out / "deployed" / "detection.json").read_text())
    assert report["detection"]["flagged_noisy"] == [1]
    assert report["masked_messages_sent"] == {"1": rounds - 1}
    assert len(list((run / "state" / "supernode-1").glob("run-*/partition-1/*.npz"))) == 1
    assert "running on https://" in (run / "logs" / "superlink.log").read_text()
    assert "maskedoptim: finished" in (run / "logs" / "serverapp.log").read_text()
    registered = (run / "logs" / "flwr-register.log").read_text()
    assert registered.count("registered successfully") == 2


def test_a_bad_value_fails_before_anything_starts(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy_local.py"), "--workdir", str(tmp_path / "d"),
         "--set", "noise-rate='0.0,1.5'"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "1.5" in done.stderr
    assert not (tmp_path / "d").exists()
