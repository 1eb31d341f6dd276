"""Every strategy's numbers, pinned: the per-round test accuracy and loss of a short fixed run
(digits, 10 clients, seed 1, 8 rounds, warm-ups of 3 rounds so that every method's later stage
runs too, FedCorr shortened, in process) must equal the recorded ones to the last written
digit. Moving code must not change a number; an
intended change is its own commit that re-records the fixture and says why:

    .venv/bin/python tests/test_numbers.py --record
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "numbers.json"
SETTINGS = (
    "--num-clients", "10", "--runtime", "inprocess", "--quiet",
    "--set", "seed=1", "--set", "num-rounds=8", "--set", "clients-per-round=5",
    "--set", "warmup-rounds=3", "--set", "baseline-warmup-rounds=3",
    "--set", "fedcorr-iterations=2", "--set", "fedcorr-finetune-rounds=2",
    "--set", "label-warmup-rounds=3", "--set", "disagreement-start-round=3",
    "--set", "robustfl-pseudo-rounds=3",
    "--federation-config", "client-resources-num-cpus=1",
)  # fmt: skip
STRATEGIES = json.loads(FIXTURE.read_text()) if FIXTURE.is_file() else {}


def run_numbers(strategy: str, out: Path) -> dict[str, list[str]]:
    """The strategy's per-round test accuracy and loss, as metrics.csv writes them."""
    sys.path.insert(0, str(ROOT))
    import simulation

    code = simulation.main(
        [
            *SETTINGS,
            "--set",
            f"strategy={strategy}",
            "--set",
            f"out-dir={out}",
            "--set",
            "run-name=r",
        ]  # fmt: skip
    )
    assert code == 0, f"{strategy} exited {code}"
    with open(out / "r" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    return {key: [row[key] for row in rows] for key in ("test_accuracy", "test_loss")}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_computes_the_recorded_numbers(strategy, tmp_path):
    assert run_numbers(strategy, tmp_path) == STRATEGIES[strategy]


def test_the_fixture_covers_every_strategy():
    from strategies.registry import STRATEGY_NAMES

    assert sorted(STRATEGIES) == sorted(STRATEGY_NAMES)


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    import signal
    import tempfile

    sys.path.insert(0, str(ROOT))
    from strategies.registry import STRATEGY_NAMES

    recorded = {}
    for name in STRATEGY_NAMES:
        with tempfile.TemporaryDirectory() as folder:
            recorded[name] = run_numbers(name, Path(folder))
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        print(name, recorded[name]["test_accuracy"][-1], flush=True)
    FIXTURE.write_text(json.dumps(recorded, indent=1) + "\n")
