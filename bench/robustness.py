"""Robustness sweep: every aggregation strategy under every attack, one comparison per attack,
and the table of docs/robustness.md.

For each attack it runs the comparison runner (`simulation.py --strategies ... --seeds ...
--set attack=A --out OUT/A`, in process), which skips complete runs, so an interrupted sweep
resumes; then it writes OUT/robustness.md and OUT/robustness.csv: last-10 test accuracy (mean ±
std over seeds) per strategy and attack, and, for the strategies that flag clients, how many
attackers and honest clients they flagged.

    .venv/bin/python bench/robustness.py --seeds 1 --out results/robust-digits
    .venv/bin/python bench/robustness.py --table-only --out results/robust-digits

Any `--set KEY=VALUE` goes to every run (after the preset).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.attacks import ATTACKS  # noqa: E402
from launch.comparison import load_run  # noqa: E402

AGGREGATORS = (
    "fedavg,fedmedian,fedtrimmedavg,krum,multikrum,bulyan,rfa,median-torch,"
    "trimmedmean-fnbench,krum-fnbench,maskedoptim,fednoro,fedelc"
)


def sweep(args: argparse.Namespace) -> int:
    for attack in args.attacks:
        command = [
            sys.executable, str(ROOT / "simulation.py"), "--config", str(args.config),
            "--set", f"attack={attack}", *(x for s in args.set for x in ("--set", s)),
            "--strategies", ",".join(args.strategies), "--seeds", ",".join(map(str, args.seeds)),
            "--runtime", "inprocess", "--quiet", "--out", str(args.out / attack),
        ]  # fmt: skip
        print(f"== attack {attack}: {' '.join(command[1:])}", flush=True)
        code = subprocess.run(command, cwd=ROOT).returncode
        if code != 0:
            print(f"attack {attack}: the comparison runner exited {code}", file=sys.stderr)
            return code
        write_tables(args.out, args.attacks, args.strategies)
    return 0


def _cell(values: list[float]) -> str:
    if not values:
        return ""
    mean = statistics.mean(values)
    spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{mean:.2f}{spread}" + (f" ({len(values)})" if len(values) != 1 else "")


def collect(out: Path, attacks: list[str], strategies: list[str]):
    """{(strategy, attack): [run records]} of the completed runs found under out/<attack>/."""
    found: dict[tuple[str, str], list] = {}
    for attack in attacks:
        for folder in sorted((out / attack).glob("*-seed*/")):
            record = load_run(folder)
            if record is None or record.status != "completed" or record.strategy not in strategies:
                continue
            found.setdefault((record.strategy, attack), []).append((record, folder))
    return found


def write_tables(out: Path, attacks: list[str], strategies: list[str]) -> None:
    """robustness.md and robustness.csv from the runs under `out`."""
    found = collect(out, attacks, strategies)
    lines = [
        "Last-10 test accuracy (%), mean ± std over seeds (the number of seeds in brackets "
        "where it is not 1; * = a run diverged and went on).",
        "",
        "| strategy | " + " | ".join(attacks) + " |",
        "|" + " --- |" * (len(attacks) + 1),
    ]
    rows = []
    for strategy in strategies:
        cells = []
        for attack in attacks:
            runs = found.get((strategy, attack), [])
            values = [r.figures["last10_accuracy"] for r, _ in runs]
            values = [v for v in values if v is not None]
            diverged = any(
                json.loads((f / "summary.json").read_text()).get("diverged") for _, f in runs
            )
            cells.append(_cell(values) + (" *" if diverged else ""))
            rows.append(
                {
                    "strategy": strategy,
                    "attack": attack,
                    "seeds": len(values),
                    "last10_accuracy_mean": statistics.mean(values) if values else "",
                    "last10_accuracy_std": statistics.stdev(values) if len(values) > 1 else "",
                    "diverged": int(diverged),
                }
            )
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    flagged = ["", "Clients flagged by detection (mean over seeds): attackers flagged / "
               "attackers, then honest clients flagged.", "",
               "| strategy | " + " | ".join(attacks) + " |",
               "|" + " --- |" * (len(attacks) + 1)]  # fmt: skip
    any_flagged = False
    for strategy in strategies:
        cells = []
        for attack in attacks:
            reports = []
            for _, folder in found.get((strategy, attack), []):
                path = folder / "detection.json"
                if path.is_file():
                    reports.append(json.loads(path.read_text()))
            if not reports:
                cells.append("")
                continue
            any_flagged = True
            honest, caught, total = [], [], []
            for report in reports:
                flags = set((report.get("detection") or {}).get("flagged_noisy") or [])
                attack_info = report.get("attack") or {"attackers": [], "attackers_flagged": []}
                caught.append(len(attack_info["attackers_flagged"]))
                total.append(len(attack_info["attackers"]))
                honest.append(len(flags - set(attack_info["attackers"])))
            cells.append(
                f"{statistics.mean(caught):.1f} / {statistics.mean(total):.0f}, "
                f"{statistics.mean(honest):.1f}"
                if any(total)
                else f"-, {statistics.mean(honest):.1f}"
            )
        if any(cells):
            flagged.append(f"| {strategy} | " + " | ".join(cells) + " |")
    text = "\n".join(lines + (flagged if any_flagged else [])) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.md").write_text(text)
    with open(out / "robustness.csv", "w", newline="") as handle:
        columns = ["strategy", "attack", "seeds", "last10_accuracy_mean", "last10_accuracy_std",
                   "diverged"]  # fmt: skip
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    print(text, end="")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=ROOT / "configs/robustness-digits.toml")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated")
    parser.add_argument("--strategies", default=AGGREGATORS, help="comma-separated")
    parser.add_argument("--seeds", default="1", help="comma-separated")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=ROOT / "results/robust-digits")
    parser.add_argument("--table-only", action="store_true", help="only rewrite the tables")
    args = parser.parse_args(argv)
    args.attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = [a for a in args.attacks if a not in ATTACKS]
    if unknown:
        print(f"error: --attacks: {', '.join(unknown)} not known; allowed: "
              f"{', '.join(ATTACKS)}", file=sys.stderr)  # fmt: skip
        return 2
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        print(f"error: --seeds={args.seeds!r}: a comma-separated list of integers",
              file=sys.stderr)  # fmt: skip
        return 2
    args.out = args.out.resolve()
    if args.table_only:
        write_tables(args.out, args.attacks, args.strategies)
        return 0
    return sweep(args)


if __name__ == "__main__":
    sys.exit(main())
