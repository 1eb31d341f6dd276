"""Summarise finished runs per strategy: mean ± std over seeds of the headline figures.

Reads the run folders given (or every run folder under a results root) and prints the
comparison table of launch.comparison (the one `simulation.py --strategies ...` writes); with
--plot, also its comparison plot of those runs (the runner's own accuracy.png shows only the
strategies of its last command):

    .venv/bin/python bench/summarise.py results/bench/paper-lenet-*-r120
    .venv/bin/python bench/summarise.py results/cmp-paper-cifar10n-lenet \
        --plot docs/results-paper-cifar10n-lenet.png --title "CIFAR-10-N worse, LeNet"

With --keep DIR, the records of the completed runs (launch.comparison.RECORD_FILES: config,
summary, per-round metrics, detection; no checkpoints) are copied to DIR/<run folder name>/, so a
table can be printed again from them later (docs/runs/ holds those of docs/results.md):

    .venv/bin/python bench/summarise.py results/cmp-paper-agnews-mini-fasttext \
        --keep docs/runs/cmp-paper-agnews-mini-fasttext
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch.comparison import (  # noqa: E402
    RECORD_FILES,
    load_run,
    markdown_table,
    plot_comparison,
    strategy_rows,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders or a results root")
    parser.add_argument("--plot", type=Path, help="also write the comparison plot (PNG) here")
    parser.add_argument("--title", default="", help="the plot's title (default: the folders)")
    parser.add_argument(
        "--keep", type=Path, help="also copy the completed runs' records into this folder"
    )
    args = parser.parse_args()
    folders = []
    for path in args.runs:
        folders += [path] if (path / "summary.json").is_file() else sorted(path.glob("*/"))
    loaded = [(folder, load_run(folder)) for folder in folders]
    completed = [(f, r) for f, r in loaded if r is not None and r.status == "completed"]
    if not completed:
        print(f"error: no completed run in {', '.join(map(str, args.runs))}", file=sys.stderr)
        sys.exit(2)
    if args.keep is not None:
        for folder, _ in completed:
            if folder.resolve() == (args.keep / folder.name).resolve():
                continue  # summarising the kept copy itself
            (args.keep / folder.name).mkdir(parents=True, exist_ok=True)
            for name in RECORD_FILES:
                if (folder / name).is_file():
                    shutil.copyfile(folder / name, args.keep / folder.name / name)
        runs = f"{len(completed)} run" + ("s" if len(completed) != 1 else "")
        print(f"records of {runs} kept in {args.keep}", file=sys.stderr)
    completed = [record for _, record in completed]
    lengths = sorted({record.rounds_completed for record in completed})
    if len(lengths) > 1:
        print(
            f"warning: these runs differ in length ({', '.join(map(str, lengths))} rounds): "
            "rows that mix them are not comparable",
            file=sys.stderr,
        )
    print(markdown_table(strategy_rows(completed)), end="")
    if args.plot is not None:
        title = args.title or ", ".join(str(path) for path in args.runs)
        plot_comparison(completed, args.plot, title, order=[])
        print(f"plot: {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
