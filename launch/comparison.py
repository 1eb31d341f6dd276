"""Side by side: the figures of finished runs, per strategy, as mean ± std over seeds.

A comparison sweep (`simulation.py --strategies ... --seeds ...`) keeps each run in
`<out>/<strategy>-seed<seed>/` (the files of server_app.results; a variant file's runs in
`<out>/<file stem>-seed<seed>/`, their rows named by the stem) and, after every run, rewrites:

- `runs.csv`: one row per finished run (strategy, seed and its headline figures);
- `comparison.csv` / `comparison.md`: one row per strategy, mean and std over its seeds of the
  last-10-round accuracy, best, final, last-10 macro-F1, wall time, seconds per round, and, for the
  strategies that detect noisy clients, detection and label-correction figures (both CSV files
  say in `last_rounds_averaged` how many rounds the last10_* figures averaged: fewer than 10 in
  shorter runs, as the Markdown table's header says);
- `accuracy.png`: test accuracy per round, the mean over seeds with a ±1 std band, a line per
  strategy.

Nothing here knows about Flower or torch: it reads the run folders' JSON and CSV files.
"""

from __future__ import annotations

import csv
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server_app.results import read_detection, read_json, read_summary

# (column, label in comparison.md, scale applied for display) for the per-run figures.
FIGURES = (
    ("last10_accuracy", "last-10 acc (%)", 1.0),
    ("best_accuracy", "best (%)", 1.0),
    ("final_accuracy", "final (%)", 1.0),
    ("last10_macro_f1", "last-10 macro-F1 (%)", 1.0),
    ("wall_minutes", "minutes in rounds", 1.0),
    ("seconds_per_round", "s/round", 1.0),
)
# Only for strategies that flag noisy clients (detection.json).
# Every rate is a percentage (0-100) in runs.csv, comparison.csv and comparison.md.
DETECTION_FIGURES = (
    ("flagged", "flagged", 1.0),
    ("detect_precision", "det. precision (%)", 1.0),
    ("detect_recall", "det. recall (%)", 1.0),
    ("true_rate_flagged", "true rate flagged (%)", 1.0),
    ("true_rate_clean", "true rate clean (%)", 1.0),
    ("label_acc_before", "label acc before (%)", 1.0),
    ("label_acc_after", "label acc after (%)", 1.0),
    ("label_f1_after", "label macro-F1 after (%)", 1.0),
    ("attackers_flagged", "attackers flagged", 1.0),  # under an attack (detection.json)
)


def run_folder_name(label: str, seed: int) -> str:
    """`<label>-seed<seed>`: the label is the strategy's name, or a variant file's stem."""
    return f"{label}-seed{seed}"


def folder_label(folder_name: str, seed: int) -> str | None:
    """The label in a folder named by run_folder_name for this seed, else None."""
    label, sep, number = folder_name.rpartition("-seed")
    return label if sep and label and number == str(seed) else None


@dataclass(frozen=True)
class RunRecord:
    """The figures of one finished run, read back from its folder. `label` names its row: the
    strategy, or in a comparison with a variant file (launch.sweep), the file's stem."""

    strategy: str
    seed: int
    status: str
    rounds_completed: int
    figures: dict[str, float | None]
    accuracy_per_round: dict[int, float] = field(default_factory=dict)  # round -> %
    label: str = ""
    last_rounds: int = 10  # rounds in the "last-10" means (fewer in a run shorter than 10)

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.strategy)


def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _percent(fraction: Any) -> float | None:
    """A rate of detection.json (a fraction) as a percentage, the unit of every rate in
    runs.csv and comparison.csv (and summary.json)."""
    number = _number(fraction)
    return None if number is None else 100 * number


# The files of a run folder (server_app.results) that load_run reads: a copy of these alone
# (no checkpoints, labels or logs; 10-30 KB a run) is enough to summarise and plot the run.
RECORD_FILES = ("config.json", "summary.json", "metrics.csv", "detection.json")


def load_run(directory: Path) -> RunRecord | None:
    """The run in `directory`, or None when its config or summary is missing or unreadable.
    Reads RECORD_FILES only."""
    config, summary = read_json(directory, "config.json"), read_summary(directory)
    if config is None or summary is None:
        return None
    figures: dict[str, float | None] = {
        "last10_accuracy": _number(summary.get("last10_mean_accuracy")),
        "best_accuracy": _number(summary.get("best_accuracy")),
        "final_accuracy": _number(summary.get("final_accuracy")),
        "last10_macro_f1": _number(summary.get("last10_mean_macro_f1")),
        "wall_minutes": _number(summary.get("wall_seconds", 0.0)) / 60,
        "seconds_per_round": _number(summary.get("seconds_per_round")),
    }
    report = read_detection(directory)
    if report is not None:
        quality = (report.get("detection") or {}).get("quality") or {}
        labels = report.get("label_correction") or {}
        flagged = (report.get("detection") or {}).get("flagged_noisy")
        figures.update(
            # the flagged list: known also where the truth is not (then no quality figures)
            flagged=float(len(flagged)) if flagged is not None else _number(quality.get("flagged")),
            detect_precision=_percent(quality.get("precision")),
            detect_recall=_percent(quality.get("recall")),
            true_rate_flagged=_percent(quality.get("mean_true_rate_flagged")),
            true_rate_clean=_percent(quality.get("mean_true_rate_clean")),
            label_acc_before=_percent(labels.get("label_acc_observed")),
            label_acc_after=_percent(labels.get("label_acc_corrected")),
            label_f1_after=_percent(labels.get("label_f1_corrected")),
        )
        attack = report.get("attack")
        if attack is not None:
            figures["attackers_flagged"] = float(len(attack.get("attackers_flagged", [])))
    accuracy: dict[int, float] = {}
    try:
        with open(directory / "metrics.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("test_accuracy"):
                    accuracy[int(row["round"])] = 100 * float(row["test_accuracy"])
    except OSError:
        pass
    seed = int(config["seed"])
    return RunRecord(
        strategy=str(config["run_config"]["strategy"]),
        label=folder_label(directory.name, seed) or "",
        seed=seed,
        status=str(summary.get("status", "unknown")),
        rounds_completed=int(summary.get("rounds_completed", 0)),
        figures=figures,
        accuracy_per_round=accuracy,
        last_rounds=int(summary.get("last_rounds_averaged", 10)),
    )


def is_complete(record: RunRecord | None, num_rounds: int) -> bool:
    return (
        record is not None
        and record.status == "completed"
        and record.rounds_completed == num_rounds
    )


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the known values (std None below two values)."""
    known = [v for v in values if v is not None]
    if not known:
        return None, None
    return statistics.mean(known), (statistics.stdev(known) if len(known) > 1 else None)


def strategy_rows(records: list[RunRecord], order: list[str] | None = None) -> list[dict]:
    """One row per strategy (per label: a variant's rows apart from its strategy's): its seeds
    and mean/std of every figure (keys `<figure>_mean/_std`), and `last_rounds`: the numbers
    of rounds its runs' last-10 means averaged (10, or fewer in shorter runs)."""
    by_strategy: dict[str, list[RunRecord]] = {}
    for record in sorted(records, key=lambda r: r.seed):
        by_strategy.setdefault(record.label, []).append(record)
    names = [s for s in (order or []) if s in by_strategy]
    names += sorted(set(by_strategy) - set(names))
    rows = []
    for name in names:
        runs = by_strategy[name]
        row: dict[str, Any] = {"strategy": name, "seeds": ",".join(str(r.seed) for r in runs)}
        row["last_rounds"] = sorted({r.last_rounds for r in runs})
        for key, _, _ in FIGURES + DETECTION_FIGURES:
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([r.figures.get(key) for r in runs])
        rows.append(row)
    return rows


def _shown(mean: float | None, std: float | None, scale: float) -> str:
    if mean is None:
        return ""
    return f"{scale * mean:.2f}" + ("" if std is None else f" ± {scale * std:.2f}")


def last_rounds_label(rows: list[dict]) -> str:
    """The name of the last-10 columns: "last-10", or the rounds the means really averaged
    where runs were shorter than 10 rounds ("last-5"; "last-5/10" for a mix)."""
    counts = sorted({n for row in rows for n in row.get("last_rounds", [10])}) or [10]
    return "last-" + "/".join(str(n) for n in counts)


def markdown_table(rows: list[dict]) -> str:
    """comparison.md's table; each detection column only when some strategy has it. The
    last-10 columns name the rounds averaged when runs were shorter (last_rounds_label)."""
    figures = list(FIGURES)
    figures += [
        f for f in DETECTION_FIGURES if any(r.get(f"{f[0]}_mean") is not None for r in rows)
    ]
    last = last_rounds_label(rows)
    lines = [
        "| strategy | seeds | "
        + " | ".join(label.replace("last-10", last) for _, label, _ in figures)
        + " |",
        "|" + " --- |" * (len(figures) + 2),
    ]
    for row in rows:
        cells = [_shown(row[f"{k}_mean"], row[f"{k}_std"], scale) for k, _, scale in figures]
        lines.append(f"| {row['strategy']} | {row['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _replace(path: Path, write) -> None:
    """Write through a temporary file so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({c: _cell(row.get(c)) for c in columns})

    _replace(path, write)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return round(value, 4) if isinstance(value, float) else value


METHOD, REFERENCE = "maskedoptim", "fedavg"  # always highlighted in the comparison plot
HIGHLIGHTED = 5  # in colour: those two where present, then the best others by last-10 accuracy


def highlighted(rows: list[dict]) -> list[str]:
    """The HIGHLIGHTED strategies of strategy_rows' `rows` drawn in colour: METHOD and REFERENCE
    where present, then the others by last-10 accuracy, best first."""
    ranked = sorted(
        (r for r in rows if r["last10_accuracy_mean"] is not None),
        key=lambda r: -r["last10_accuracy_mean"],
    )
    others = [r["strategy"] for r in ranked if r["strategy"] not in (METHOD, REFERENCE)]
    fixed = [s for s in (METHOD, REFERENCE) if any(r["strategy"] == s for r in rows)]
    return fixed + others[: HIGHLIGHTED - len(fixed)]


def plot_comparison(records: list[RunRecord], path: Path, title: str, order: list[str]) -> None:
    """Two panels. Left: test accuracy per round, the mean over seeds (±1 std band) of
    HIGHLIGHTED strategies in colour (the method and FedAvg where present, then the best others
    by last-10 accuracy); every other strategy a thin grey line (a chart of 16 overlapping
    coloured lines was unreadable). Right: every strategy's last-10 accuracy, mean ± std over
    seeds, sorted, as a dot plot; a strategy with fewer seeds than the most says how many."""
    import matplotlib

    matplotlib.use("Agg")
    import textwrap

    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    rows = strategy_rows(records, order)
    ranked = sorted(
        (r for r in rows if r["last10_accuracy_mean"] is not None),
        key=lambda r: -r["last10_accuracy_mean"],
    )
    colours = dict(zip(highlighted(rows), plt.get_cmap("tab10").colors, strict=False))
    fig, (curves, bars) = plt.subplots(
        1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1.6, 1]}
    )
    for row in sorted(rows, key=lambda r: r["strategy"] in colours):  # highlighted on top
        runs = [r for r in records if r.label == row["strategy"]]
        rounds = sorted(set.intersection(*(set(r.accuracy_per_round) for r in runs)))
        if not rounds:
            continue
        values = np.array([[r.accuracy_per_round[t] for t in rounds] for r in runs])
        mean = values.mean(axis=0)
        colour = colours.get(row["strategy"])
        if colour is None:
            curves.plot(rounds, mean, color="0.75", linewidth=0.8)
            continue
        seeds = f"{len(runs)} seed{'s' if len(runs) > 1 else ''}"
        width = 2.2 if row["strategy"] == METHOD else 1.4
        curves.plot(rounds, mean, color=colour, linewidth=width,
                    label=f"{row['strategy']} ({seeds})")  # fmt: skip
        if len(runs) > 1:
            std = values.std(axis=0, ddof=1)
            curves.fill_between(rounds, mean - std, mean + std, color=colour, alpha=0.18)
    if len(colours) < len(rows):
        curves.plot([], [], color="0.75", linewidth=0.8, label="other strategies")
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.set_xlabel("round")
    curves.set_ylabel("test accuracy (%)")
    curves.grid(alpha=0.3)
    curves.legend(fontsize="small", loc="lower right")
    shown = list(reversed(ranked))
    positions = np.arange(len(shown))
    # a dot plot, not bars: its axis need not start at 0 to be read right (a bar's length
    # would claim a zero baseline that the zoomed axis does not have)
    for position, r in zip(positions, shown, strict=True):
        bars.errorbar(
            r["last10_accuracy_mean"],
            position,
            xerr=r["last10_accuracy_std"] or 0.0,
            fmt="o",
            color=colours.get(r["strategy"], "0.5"),
            capsize=3,
        )
    counts = [len(str(r["seeds"]).split(",")) for r in shown]
    names = [
        r["strategy"] + ("" if n == max(counts) else f" ({n} seed{'s' if n > 1 else ''})")
        for r, n in zip(shown, counts, strict=True)
    ]
    bars.set_yticks(positions, names, fontsize="small")
    if shown:
        low = min(r["last10_accuracy_mean"] - (r["last10_accuracy_std"] or 0) for r in shown)
        high = max(r["last10_accuracy_mean"] + (r["last10_accuracy_std"] or 0) for r in shown)
        margin = max(1.0, 0.1 * (high - low))
        bars.set_xlim(max(0.0, low - margin), min(100.0, high + margin))
    bars.set_xlabel(f"{last_rounds_label(rows)} test accuracy (%), mean ± std over seeds")
    bars.grid(axis="x", alpha=0.3)
    fig.suptitle(textwrap.fill(title, 120), fontsize="medium")
    fig.tight_layout()
    _replace(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def _position(order: list[str], strategy: str) -> tuple[int, str]:
    return (order.index(strategy) if strategy in order else len(order), strategy)


def write_comparison(
    out: Path, records: list[RunRecord], order: list[str], title: str, preamble: str = ""
) -> None:
    """runs.csv, comparison.csv, comparison.md and accuracy.png in `out` from `records`."""
    out.mkdir(parents=True, exist_ok=True)
    # last_rounds_averaged: the rounds the last10_* figures averaged (fewer than 10 in short runs)
    run_columns = ["strategy", "seed", "rounds_completed", "last_rounds_averaged"]
    run_columns += [k for k, _, _ in FIGURES + DETECTION_FIGURES]
    runs = [
        {"strategy": r.label, "seed": r.seed, "rounds_completed": r.rounds_completed,
         "last_rounds_averaged": r.last_rounds} | r.figures
        for r in sorted(records, key=lambda r: (_position(order, r.label), r.seed))
    ]  # fmt: skip
    _write_csv(out / "runs.csv", runs, run_columns)
    rows = strategy_rows(records, order)
    columns = ["strategy", "seeds", "last_rounds_averaged"] + [
        f"{key}_{stat}" for key, _, _ in FIGURES + DETECTION_FIGURES for stat in ("mean", "std")
    ]
    averaged = [
        row | {"last_rounds_averaged": "/".join(map(str, row["last_rounds"]))} for row in rows
    ]
    _write_csv(out / "comparison.csv", averaged, columns)
    text = f"# {title}\n\n{preamble}\n\n" if preamble else f"# {title}\n\n"
    _replace(out / "comparison.md", lambda tmp: tmp.write_text(text + markdown_table(rows)))
    plot_comparison(records, out / "accuracy.png", title, order)
