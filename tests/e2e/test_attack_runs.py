"""Malicious clients end to end in one process: every attack runs, is recorded in config.json
and metrics.csv, and changes what the federation learns; MaskedOptim's detection is reported
against label-flipping attackers (docs/robustness.md)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Six clients, all trained every round, two of them attackers (round(0.34 * 6) = 2).
OPTIONS = ("--num-clients", "6", "--runtime", "inprocess", "--quiet",
           "--federation-config", "client-resources-num-cpus=1")  # fmt: skip
SETS = {"num-rounds": "3", "clients-per-round": "6", "partition": "iid",
        "noise-rate": "'0.0,0.0'", "attack-fraction": "0.34"}  # fmt: skip


def run(out: Path, *sets: str) -> tuple[dict, list[dict]]:
    sys.path.insert(0, str(ROOT))
    import simulation

    keys = SETS | {"out-dir": str(out), "run-name": "r"} | dict(i.split("=", 1) for i in sets)
    args = [*OPTIONS, *(x for key, value in keys.items() for x in ("--set", f"{key}={value}"))]
    assert simulation.main(args) == 0
    config = json.loads((out / "r" / "config.json").read_text())
    with open(out / "r" / "metrics.csv") as handle:
        return config, list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    return run(tmp_path_factory.mktemp("none"), "strategy=fedavg")


@pytest.mark.parametrize("attack", ["sign-flip", "gaussian", "alie", "ipm", "label-flip"])
def test_every_attack_runs_is_recorded_and_changes_the_model(attack, tmp_path, honest):
    config, rows = run(
        tmp_path, "strategy=fedavg", f"attack={attack}", "attack-scale=4", "attack-epsilon=2"
    )
    record = config["attack"]
    assert record["attack"] == attack and len(record["attackers"]) == 2
    where = "server" if attack in ("alie", "ipm") else "client"
    assert record["simulated_at"] == where
    assert [row["attackers"] for row in rows] == ["", "2", "2", "2"]
    if attack == "label-flip":  # the attackers' labels are all wrong: their true rate shows it
        rates = config["client_true_noise_rates"]
        assert sorted(p for p, r in rates.items() if r > 0.5) == [
            str(p) for p in record["attackers"]
        ]
    honest_config, honest_rows = honest
    assert honest_config["attack"] == {"attack": "none"}
    assert all(row["attackers"] == "" for row in honest_rows)
    assert rows[0]["test_accuracy"] == honest_rows[0]["test_accuracy"]  # the same start
    assert rows[-1]["test_accuracy"] != honest_rows[-1]["test_accuracy"]


def test_maskedoptim_reports_which_attackers_it_flagged(tmp_path):
    _, rows = run(
        tmp_path, "strategy=maskedoptim", "attack=label-flip", "warmup-rounds=2", "num-rounds=4"
    )
    report = json.loads((tmp_path / "r" / "detection.json").read_text())
    attack = report["attack"]
    flagged = set(report["detection"]["flagged_noisy"])
    assert set(attack["attackers_flagged"]) == flagged & set(attack["attackers"])
    assert set(attack["honest_flagged"]) == flagged - set(attack["attackers"])
    assert set(attack["attackers_flagged"]) == set(attack["attackers"])  # all wrong: found
