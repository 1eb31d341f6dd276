"""bench/aggregation_cost.py: it times every rule on seeded uploads and prints their digests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "aggregation_cost.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def table_rows(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("| ") and "---" not in line]


def test_a_small_model_gives_a_row_per_rule_and_the_same_digests_each_time():
    first = run("--model", "digitsnet", "--clients", "3", "--repeats", "1")
    assert first.returncode == 0, first.stderr
    rows = table_rows(first.stdout)
    assert len(rows) == 3 and "geometric median" in rows[2]
    digests = [row.split("|")[3].strip() for row in rows[1:]]
    again = run("--model", "digitsnet", "--clients", "3", "--repeats", "1")
    assert [row.split("|")[3].strip() for row in table_rows(again.stdout)[1:]] == digests


def test_a_bad_count_is_refused():
    done = run("--clients", "0")
    assert done.returncode == 2 and "--clients" in done.stderr
