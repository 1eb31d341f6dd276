"""Summarise finished runs per strategy: mean ± std over seeds of the headline figures.

Reads the run folders given (or every run folder under a results root) and prints the
comparison table of launch.comparison (the one `simulation.py --strategies ...` writes):

    .venv/bin/python bench/summarise.py results/bench/paper-lenet-*-r120
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch.comparison import load_run, markdown_table, strategy_rows  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders or a results root")
    args = parser.parse_args()
    folders = []
    for path in args.runs:
        folders += [path] if (path / "summary.json").is_file() else sorted(path.glob("*/"))
    records = [load_run(folder) for folder in folders]
    completed = [r for r in records if r is not None and r.status == "completed"]
    print(markdown_table(strategy_rows(completed)), end="")


if __name__ == "__main__":
    main()
