"""The comparison sweep: every (strategy, seed) run one after another, resumable, with progress
lines and the comparison files (launch.comparison) rewritten as runs finish.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launch.preflight import preflight, resolve_run_config
from launch.report import format_duration
from launch.resume import can_resume
from server_app.results import read_json, read_summary


def rounds_done(results_dir: Path) -> tuple[int, float]:
    """(trained rounds so far, the run's elapsed seconds at the last of them), from the
    summary.json that the run rewrites after every round (server_app.results)."""
    summary = read_summary(results_dir) or {}
    return int(summary.get("rounds_completed", 0)), float(summary.get("wall_seconds", 0.0))


class SweepProgress:
    """Progress lines for a comparison sweep: which run, which round, elapsed, estimate left."""

    def __init__(self, num_rounds: int, interval: float = 15.0) -> None:
        self.num_rounds, self.interval = num_rounds, interval
        self.run_seconds: list[float] = []  # wall time of the runs finished in this sweep

    def start(self, label: str, results_dir: Path, runs_after: int) -> None:
        self.label, self.results_dir, self.runs_after = label, results_dir, runs_after
        self.started = time.monotonic()
        self.last_shown = (-1, 0.0)

    def estimate_left(self, done: int, round_seconds: float) -> float:
        """Seconds left in the sweep, NaN while there is nothing to go on (no round of this run
        and no finished run): a run not yet measured counts as long as the finished ones."""
        elapsed = time.monotonic() - self.started
        per_run = (
            sum(self.run_seconds) / len(self.run_seconds) if self.run_seconds else float("nan")
        )
        if done:
            this_run = (self.num_rounds - done) * round_seconds
            if per_run != per_run:
                per_run = elapsed + this_run
        else:
            this_run = per_run  # the round-0 line: the whole run is still ahead
        return this_run + self.runs_after * per_run

    def poll(self) -> None:
        done, run_elapsed = rounds_done(self.results_dir)
        now = time.monotonic()
        shown_round, shown_at = self.last_shown
        if done == shown_round or (now - shown_at < self.interval and done < self.num_rounds):
            return
        self.last_shown = (done, now)
        left = self.estimate_left(done, run_elapsed / done if done else 0.0)
        estimate = "" if left != left else f", about {format_duration(left)} left in the sweep"
        print(
            f"{self.label}: round {done}/{self.num_rounds}, "
            f"{format_duration(now - self.started)} elapsed{estimate}",
            flush=True,
        )

    def finish(self) -> float:
        seconds = time.monotonic() - self.started
        self.run_seconds.append(seconds)
        return seconds


def stored_config_differences(results_dir: Path, mapping: dict[str, Any], num_clients: int):
    """The run-config keys (and client count) in which a stored run differs from `mapping`, each
    with its stored value ("lr (0.01 there)"); keys that the run's strategy does not read are not
    compared (strategies.registry)."""
    from common.config import RunConfig
    from server_app.checkpoint import config_differences, described_differences
    from strategies.registry import key_matters

    stored = read_json(results_dir, "config.json")
    if stored is None:
        return []  # nothing usable there: the run will be redone
    wanted = RunConfig.from_mapping(mapping).to_mapping()
    stored_config = stored.get("run_config", {})
    keys = config_differences(stored_config, wanted)
    differences = described_differences(
        stored_config, [key for key in keys if key_matters(key, wanted["strategy"])]
    )
    if stored.get("num_clients") != num_clients:
        differences.append(f"--num-clients ({stored.get('num_clients')} there)")
    return differences


@dataclass(frozen=True)
class ComparisonEntry:
    """One row of a comparison: a strategy by its name, or a variant file's keys (`strategy`
    among them) under the file's stem, so that e.g. a MaskedOptim variant sits beside
    `maskedoptim` in one table."""

    label: str
    keys: dict[str, Any]
    file: str = ""  # a variant's, as given to --strategies


def comparison_entries(items: Iterable[str], typed: dict[str, Any]) -> list[ComparisonEntry]:
    """`--strategies` items as entries: a name is a strategy (checked with the rest of the
    config), a path ending in .toml a variant file (launch.overrides.read_variant). ConfigError
    when a variant's stem is a strategy's name or another entry's, or when it sets a key that
    was also typed on the command line (`typed`, key -> value: one of the two would be dropped),
    or when a typed strategy is not every entry's."""
    from common.config import ConfigError, config_error
    from launch.overrides import nearest, read_variant
    from strategies.registry import STRATEGY_NAMES

    entries, problems = [], []  # every item's problem, in one message
    for item in items:
        if not item.lower().endswith(".toml"):
            if item not in STRATEGY_NAMES:
                near = nearest(item, STRATEGY_NAMES)
                hint = f"; did you mean {item}.toml?" if Path(f"{item}.toml").is_file() else ""
                hint = hint or (f"; did you mean '{near}'?" if near else "")
                problems.append(
                    f"--strategies {item!r} is neither a strategy nor a variant file (a path "
                    f"ending in .toml){hint}; strategies: {', '.join(STRATEGY_NAMES)}"
                )
                continue
            entries.append(ComparisonEntry(item, {"strategy": item}))
            continue
        try:
            keys, label = read_variant(item), Path(item).stem
        except ConfigError as err:
            problems.append(str(err))
            continue
        if label in STRATEGY_NAMES:
            problems.append(
                f"--strategies {item}: a variant's row is named by its file's stem, and "
                f"'{label}' is a strategy's name; rename the file"
            )
        both = sorted(set(typed) & set(keys) - {"strategy"})
        if both:
            problems.append(
                f"--strategies {item} sets {', '.join(both)}, also given on the command line "
                "(--set / --run-config); give it in one place"
            )
        entries.append(ComparisonEntry(label, keys, item))
    if "strategy" in typed and any(e.keys["strategy"] != typed["strategy"] for e in entries):
        problems.append(
            f"--strategies names the strategies of a comparison; strategy="
            f"'{typed['strategy']}' given with --set or --run-config would be dropped: leave it out"
        )
    labels = [entry.label for entry in entries]
    for label in dict.fromkeys(labels):
        if labels.count(label) > 1:
            problems.append(
                f"--strategies: two entries named '{label}' (a variant is named by its file's stem)"
            )
    if problems:
        raise config_error(problems)
    return entries


def common_problems(overrides: dict[str, Any], where: dict[str, Any]) -> list[str]:
    """The problems of the keys every run of a comparison shares (no variant's keys)."""
    from common.config import ConfigError, problems_of

    try:
        resolve_run_config(overrides | where)
    except ConfigError as err:
        return problems_of(err)
    return []


def plan_comparison(
    overrides: dict[str, Any],
    entries: list[ComparisonEntry],
    seeds: list[int],
    out: Path,
    num_clients: int,
) -> list[dict[str, Any]]:
    """Every (seed, entry) run's validated config, seed by seed (so an interrupted sweep has
    whole seeds to compare); a variant's keys go over `overrides`. Raises
    ConfigError/DatasetNotFoundError before anything runs."""
    from common.config import ConfigError, config_error, problems_of
    from launch.comparison import run_folder_name
    from strategies.registry import UNREAD_KEY_END, strategy_keys

    plans, problems = [], []  # every run's problems, in one message
    for seed in seeds:
        for entry in entries:
            where = {
                "seed": seed,
                "out-dir": str(out),
                "run-name": run_folder_name(entry.label, seed),
            }
            try:
                plans.append(resolve_run_config(overrides | entry.keys | where))
            except ConfigError as err:
                for problem in problems_of(err):
                    if entry.file and problem not in common_problems(overrides, where):
                        problem = f"--strategies {entry.file}: {problem}"  # the variant's own
                    if problem not in problems:
                        problems.append(problem)
    if problems:
        raise config_error(problems)
    # The runs whose strategy reads a strategy's own key typed for the sweep are checked first:
    # a bad value of `fedrn-alpha` is named by fedrn's check, and the same refusal as "a key
    # that strategy='fedavg' does not read" (from every other run) is left out.
    readers = strategy_keys()
    typed_own = [key for key in overrides if key in readers]
    first = [p for p in plans if any(p["strategy"] in readers[key] for key in typed_own)]
    problems: list[str] = []  # every run's, in one message
    for mapping in first + [p for p in plans if p not in first]:
        try:
            preflight(mapping, num_clients)
        except ConfigError as err:
            problems += [p for p in problems_of(err) if p not in problems]
    own = [p for p in problems if not p.endswith(UNREAD_KEY_END)]
    named = set(own)
    for problem in problems:  # an unread key's refusal once, and not where its reader names it
        base = problem.split(" (a key of ")[0]
        if problem.endswith(UNREAD_KEY_END) and not any(n.endswith(base) for n in named):
            # no run reads it (a reader's own check would have named it): say so, not one run's
            readers = problem.split(" (a key of ")[1].split(", which this run")[0]
            own.append(f"{base} (a key of {readers}, which no run of this comparison reads)")
            named.add(base)
    problems = own
    if problems:
        raise config_error(problems)
    for mapping in plans:
        differences = stored_config_differences(out / mapping["run-name"], mapping, num_clients)
        if differences:
            raise ConfigError(
                f"{out / mapping['run-name']} holds a run made with other settings "
                f"(differs in: {', '.join(differences)}); give another --out or remove it"
            )
    return plans


def run_comparison(
    plans: list[dict[str, Any]],
    labels: list[str],
    out: Path,
    num_clients: int,
    runner: Callable[..., int],
    title: str,
) -> int:
    """Run the planned runs one after another (each with `runner`: run_simulation or
    run_in_this_process), skipping the complete ones; rewrite the
    comparison files after each; stop at the first failed run (exit 1, its log shown)."""
    import shutil

    from launch.comparison import folder_label, is_complete, load_run, write_comparison

    num_rounds = int(plans[0]["num-rounds"])
    progress = SweepProgress(num_rounds)
    command = " ".join(["python", "simulation.py", *sys.argv[1:]])
    preamble = f"Made by `{command}` ({num_clients} clients, {num_rounds} rounds)."

    def refresh() -> None:
        records = [load_run(out / plan["run-name"]) for plan in plans]
        finished = [r for r in records if is_complete(r, num_rounds)]
        if finished:
            write_comparison(out, finished, labels, title, preamble)

    refresh()  # a resumed sweep shows what it already has
    for index, mapping in enumerate(plans, 1):
        name = folder_label(mapping["run-name"], mapping["seed"])
        label = f"[{index}/{len(plans)}] {name} seed {mapping['seed']}"
        results_dir = out / mapping["run-name"]
        if is_complete(load_run(results_dir), num_rounds):
            print(f"{label}: already complete, skipped", flush=True)
            continue
        after = can_resume(results_dir, mapping, num_clients) if results_dir.exists() else None
        if after is not None:
            print(f"{label}: an incomplete earlier attempt is there; resuming it after round "
                  f"{after} (its checkpoint)")  # fmt: skip
            mapping = {**mapping, "resume": True}
        elif results_dir.exists():
            print(f"{label}: an incomplete earlier attempt is there; running it again")
            shutil.rmtree(results_dir)
        results_dir.mkdir(parents=True, exist_ok=True)
        progress.start(label, results_dir, runs_after=len(plans) - index)
        print(f"{label}: started (log: {results_dir / 'flower.log'})", flush=True)
        code = runner(
            mapping,
            num_clients,
            log_file=results_dir / "flower.log",
            on_poll=progress.poll,
            verbose=False,
        )
        seconds = progress.finish()
        refresh()
        if code != 0:
            log_lines = (results_dir / "flower.log").read_text(errors="replace").splitlines()
            print(f"{label}: FAILED; the last lines of its log:", file=sys.stderr)
            print("\n".join(log_lines[-60:]), file=sys.stderr)
            return code
        record = load_run(results_dir)
        print(
            f"{label}: done in {format_duration(seconds)}: last-{record.last_rounds} "
            f"accuracy {record.figures['last10_accuracy']:.2f} %",
            flush=True,
        )
    print(f"\nComparison ({out}):\n")
    print((out / "comparison.md").read_text())
    return 0
