"""Results of one run, written while it goes, under `out-dir/<run-name>/`.

- `config.json`: the resolved run config, library versions, seed, federation facts (at start).
- `metrics.csv`: one row per round (round 0 = the initial model), appended and flushed each round.
- `summary.json`: final, best and last-10-round mean accuracy, wall time and status; rewritten
  every round, so an interrupted run still says how far it got. Its status is `running`, then
  one of `completed`, `failed`, `diverged`, `interrupted` (with `error`, the reason); the
  launchers set it when the ServerApp could not (killed, stopped by `flwr stop`): `mark_ended`.
  Every rate in it is a percentage (0-100, `rate_unit`); metrics.csv keeps fractions (0-1).

Files are strict JSON (no bare NaN: a non-finite number is written as null and listed under
`nonfinite_values` with what it was); metrics.csv writes NaN as `nan`, and an empty cell means
"not applicable".
- `accuracy.png`: test accuracy per round (every 10 rounds and at the end).
- `.writer.lock`: held (flock) by the process writing the run, from its start to `finish`
  (which removes it), and released by the kernel when that process dies; `--resume` refuses a
  folder whose lock is held (`run_is_live`), and a second writer cannot start.
- `detection.json` (MaskedOptim): the clients flagged noisy, the GMM votes, detection precision
  and recall against the true noise rates, label correction per client (written at detection and
  at the end).
"""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

METRIC_COLUMNS = (
    "round",
    "test_accuracy",
    "test_loss",
    "test_macro_precision",
    "test_macro_recall",
    "test_macro_f1",
    "local_accuracy",  # federated evaluation on the clients' data (fraction-evaluate > 0)
    "train_loss",
    "clients",
    "nonfinite_uploads",  # uploads dropped because they held NaN or inf
    "attackers",  # uploads from malicious clients in the round (with an attack)
    "client_train_seconds",
    # MaskedOptim only (empty before detection and for other strategies):
    "detected_noisy",
    "detect_precision",
    "detect_recall",
    "label_acc_observed",
    "label_acc_corrected",
    "label_f1_observed",
    "label_f1_corrected",
    "label_precision_corrected",
    "label_recall_corrected",
    "labels_changed",  # labels the flagged clients' correction changed (no truth needed)
    "label_confidence",  # their mean confidence
    "round_seconds",
    "elapsed_seconds",
)
LAST_ROUNDS = 10  # the authors' headline statistic is the mean over the last 10 rounds


def default_run_name(strategy: str, dataset: str, seed: int) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{strategy}-{dataset}-seed{seed}-{stamp}"


CODE_VERSION_VARIABLE = "MASKEDOPTIM_CODE_VERSION"


APP_ROOT = Path(__file__).resolve().parents[1]


def code_version(checkout: Path = APP_ROOT) -> str:
    """The code a run was made with: the git commit of `checkout` ("+changes" when files
    differ from it), else what the launcher put in MASKEDOPTIM_CODE_VERSION (Flower's runtime
    runs an installed copy of the app without .git), else "unknown"."""
    import subprocess

    try:
        commit = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        changed = subprocess.run(
            ["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        return commit + ("+changes" if changed else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get(CODE_VERSION_VARIABLE) or "unknown"


def library_versions() -> dict[str, str]:
    import flwr
    import numpy
    import sklearn
    import torch

    return {
        "python": platform.python_version(),
        "flwr": flwr.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
    }


def summarise(rows: list[dict[str, Any]], wall_seconds: float, status: str) -> dict[str, Any]:
    """Final, best and mean-of-the-last-rounds test accuracy (in %) over the trained rounds.

    The mean runs over the last LAST_ROUNDS rounds, or over all of them in a shorter run:
    `last_rounds_averaged` says how many (the key keeps its name `last10_...`)."""
    trained = [r for r in rows if r["round"] >= 1]
    summary: dict[str, Any] = {
        "status": status,
        "rounds_completed": len(trained),
        "wall_seconds": round(wall_seconds, 2),
        "rate_unit": "percent",
    }
    if trained and "test_accuracy" not in trained[-1]:  # no test set (own data, no test-dir)
        summary["central_evaluation"] = "unavailable: no test set (test-dir)"
        local = [r for r in trained if r.get("local_accuracy") is not None]
        if local:
            last = local[-LAST_ROUNDS:]
            summary.update(
                final_local_accuracy=100 * local[-1]["local_accuracy"],
                last10_mean_local_accuracy=100 * sum(r["local_accuracy"] for r in last) / len(last),
            )
        summary["seconds_per_round"] = round(wall_seconds / len(trained), 3)
    elif trained:
        last = trained[-LAST_ROUNDS:]
        best = max(trained, key=lambda r: r["test_accuracy"])
        summary.update(
            final_accuracy=100 * trained[-1]["test_accuracy"],
            best_accuracy=100 * best["test_accuracy"],
            best_round=best["round"],
            last10_mean_accuracy=100 * sum(r["test_accuracy"] for r in last) / len(last),
            last10_mean_macro_f1=100 * sum(r["test_macro_f1"] for r in last) / len(last),
            last_rounds_averaged=len(last),
            final_macro_f1=100 * trained[-1]["test_macro_f1"],
            seconds_per_round=round(wall_seconds / len(trained), 3),
        )
        dropped = sum(r.get("nonfinite_uploads") or 0 for r in trained)
        if dropped:
            summary["nonfinite_uploads"] = dropped
    return summary


def plot_accuracy(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "test_accuracy" if "test_accuracy" in rows[-1] else "local_accuracy"
    points = [(r["round"], 100 * r[key]) for r in rows if r.get(key) is not None]
    if not points:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(*zip(*points, strict=True), marker=".")
    ax.set_xlabel("round")
    ax.set_ylabel(key.replace("_", " ") + " (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def strict_json(payload: Any) -> tuple[Any, dict[str, str]]:
    """`payload` with every non-finite float replaced by None, and {path: 'nan'/'inf'/'-inf'}
    of what was replaced (JSON has no NaN; Python's json would write a bare NaN)."""
    replaced: dict[str, str] = {}

    def clean(value: Any, path: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            replaced[path] = repr(value)
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    return clean(payload, ""), replaced


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write strict JSON atomically: readers never see a half-written file, and a failed write
    (a full disk) leaves no temporary file behind."""
    cleaned, replaced = strict_json(payload)
    if replaced:
        cleaned["nonfinite_values"] = {**cleaned.get("nonfinite_values", {}), **replaced}
    text = json.dumps(cleaned, indent=2, default=str, allow_nan=False) + "\n"
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        # A full disk has no room for a second copy: truncating the file in place frees its
        # blocks, so the (small) new text still fits. Raises if even that fails.
        tmp.unlink(missing_ok=True)
        path.write_text(text)
    finally:
        tmp.unlink(missing_ok=True)


def mark_ended(directory: Path, status: str, reason: str, stopped_by_user: bool = False) -> bool:
    """Set the status of a run whose ServerApp could not (it was killed, or stopped by
    `flwr stop`): summary.json's `running` becomes `status` with `reason` as its error, and
    temporary files left by an interrupted write are removed. A status the ServerApp already
    wrote is kept, except that with `stopped_by_user` (Ctrl-C or SIGTERM to the launcher) a
    `failed` becomes `status`: while the launcher stops the runtime, a client can die before
    the ServerApp hears of the stop (Ray: "the actor died unexpectedly"), and the run then
    reads as failed in a race; the ServerApp's error is kept as `error_while_stopping`.
    Returns whether summary.json was changed."""
    for leftover in directory.glob("*.tmp*"):
        leftover.unlink(missing_ok=True)
    try:
        summary = json.loads((directory / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if stopped_by_user and summary.get("status") == "failed":
        summary["error_while_stopping"] = summary.get("error", "")
    elif summary.get("status") != "running":
        return False
    summary.update(status=status, error=reason)
    try:
        _write_json(directory / "summary.json", summary)
    except OSError:
        return False
    return True


LOCK_NAME = ".writer.lock"


class RunLocked(RuntimeError):
    """Another process is writing the run folder; `holder` is its pid as it wrote it."""

    def __init__(self, directory: Path, holder: str) -> None:
        super().__init__(
            f"{directory}: another process (pid {holder}) is still writing this run; stop it "
            "before running or resuming it here"
        )
        self.holder = holder


def lock_run(directory: Path) -> int:
    """An exclusive flock on `directory/.writer.lock` (its file descriptor, to keep open while
    writing; the kernel releases it when the process dies, even by SIGKILL). Raises RunLocked
    when another process holds it."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunLocked(directory, holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def run_is_live(directory: Path) -> str | None:
    """The pid (as written) of the process still writing `directory`, or None."""
    if not (directory / LOCK_NAME).exists():
        return None  # a run from before the lock existed, or none
    try:
        os.close(lock_run(directory))
    except RunLocked as locked:
        return locked.holder
    return None


@dataclass
class RunResults:
    directory: Path
    title: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    last_round_end: float = field(default_factory=time.monotonic)
    lock: int | None = None  # the run folder's lock (lock_run), released by `finish`

    @classmethod
    def create(cls, directory: Path, title: str, config: dict[str, Any]) -> RunResults:
        directory.mkdir(parents=True, exist_ok=True)
        lock = lock_run(directory)
        _write_json(directory / "config.json", config)
        with open(directory / "metrics.csv", "w", newline="") as handle:
            csv.writer(handle).writerow(METRIC_COLUMNS)
        results = cls(directory=directory, title=title, lock=lock)
        _write_json(directory / "summary.json", summarise([], 0.0, "running"))
        return results

    @classmethod
    def resume(
        cls,
        directory: Path,
        title: str,
        rows: list[dict[str, Any]],
        elapsed_seconds: float,
        note: dict[str, Any],
    ) -> RunResults:
        """Continue a run folder from a checkpoint: metrics.csv holds exactly the checkpoint's
        `rows` again (a killed run may have written later ones), the clock goes on from
        `elapsed_seconds`, and config.json lists the resume under `resumed`."""
        lock = lock_run(directory)
        config = read_json(directory, "config.json") or {}
        config["resumed"] = [*config.get("resumed", []), note]
        _write_json(directory / "config.json", config)

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(METRIC_COLUMNS)
                for row in rows:
                    writer.writerow([_cell(row.get(c)) for c in METRIC_COLUMNS])

        tmp = directory / ".metrics.csv.tmp"
        write(tmp)
        os.replace(tmp, directory / "metrics.csv")
        now = time.monotonic()
        results = cls(directory=directory, title=title, rows=list(rows),
                      started=now - elapsed_seconds, last_round_end=now, lock=lock)  # fmt: skip
        _write_json(directory / "summary.json", results.summary("running"))
        return results

    def elapsed(self) -> float:
        """Seconds since the run started (resumes included, the time it was dead excluded)."""
        return time.monotonic() - self.started

    def add_round(self, row: dict[str, Any]) -> None:
        now = time.monotonic()
        row = {
            **row,
            "round_seconds": round(now - self.last_round_end, 3),
            "elapsed_seconds": round(now - self.started, 3),
        }
        self.last_round_end = now
        self.rows.append(row)
        with open(self.directory / "metrics.csv", "a", newline="") as handle:
            csv.writer(handle).writerow([_cell(row.get(c)) for c in METRIC_COLUMNS])
        _write_json(self.directory / "summary.json", self.summary("running"))
        if row["round"] % 10 == 0:
            plot_accuracy(self.rows, self.directory / "accuracy.png", self.title)

    def has(self, name: str) -> bool:
        return (self.directory / name).exists()

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        _write_json(self.directory / name, payload)

    def summary(self, status: str) -> dict[str, Any]:
        return summarise(self.rows, time.monotonic() - self.started, status)

    def finish(self, status: str, error: str = "", diverged: str = "") -> dict[str, Any]:
        """Write the final summary.json with `status` (completed, failed, diverged,
        interrupted) and `error`, its reason; `diverged` notes a divergence that the run was
        told to go on after (on-divergence='continue'). Releases the folder's lock."""
        try:
            return self._write_final(status, error, diverged)
        finally:
            if self.lock is not None:  # the file goes with it: a finished run keeps no lock
                (self.directory / LOCK_NAME).unlink(missing_ok=True)
                os.close(self.lock)
                self.lock = None

    def _write_final(self, status: str, error: str, diverged: str) -> dict[str, Any]:
        summary = self.summary(status)
        if error:
            summary["error"] = error
        if diverged:
            summary["diverged"] = diverged
        last = self.rows[-1] if self.rows else {}
        if last.get("label_acc_corrected") is not None:
            summary.update(
                {
                    key: 100 * last[key]
                    for key in METRIC_COLUMNS
                    if key.startswith("label_") and key != "label_confidence"
                }
            )
        for key in ("detect_precision", "detect_recall", "label_confidence"):
            if last.get(key) is not None:
                summary[key] = 100 * last[key]
        if last.get("labels_changed") is not None:
            summary["labels_changed"] = int(last["labels_changed"])
        _write_json(self.directory / "summary.json", summary)
        if self.rows:
            plot_accuracy(self.rows, self.directory / "accuracy.png", self.title)
        return summary


# The ServerApp's node-config key naming the runtime that runs it ("inprocess" where
# launch.inprocess sets it; Flower's runtimes set none: "flower"), recorded in config.json
RUNTIME_KEY = "runtime"


def stored_runtime(directory: Path) -> str:
    """The runtime that made the run in `directory` (config.json's `runtime`): "inprocess" or
    "flower" (also for a folder without it, made before it was recorded, or without a run)."""
    return (read_json(directory, "config.json") or {}).get("runtime", "flower")


def read_json(directory: Path, name: str) -> dict[str, Any] | None:
    """A results file of a run folder as written above (summary.json, detection.json,
    config.json), or None when it is missing or unreadable: the one reader of the schema."""
    try:
        return json.loads((directory / name).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_summary(directory: Path) -> dict[str, Any] | None:
    """summary.json: `status`, `rounds_completed`, `wall_seconds`, `rate_unit`, and once a
    round is done `final_accuracy`, `best_accuracy`, `best_round`, `last10_mean_accuracy`,
    `last10_mean_macro_f1`, `last_rounds_averaged`, `final_macro_f1`, `seconds_per_round`
    (rates in %); `error`, `diverged`, `nonfinite_uploads`, `nonfinite_values` when they apply;
    the label-correction and detection rates of a detecting strategy."""
    return read_json(directory, "summary.json")


def read_detection(directory: Path) -> dict[str, Any] | None:
    """detection.json of a detecting strategy: `detection` (round, flagged_noisy, quality
    with precision/recall as fractions, ...), `label_correction`, `label_correction_per_client`
    and the strategy's message counts."""
    return read_json(directory, "detection.json")


def _cell(value: Any) -> Any:
    """A metrics.csv cell: numbers to 6 significant digits, NaN as `nan` (it is a value: the
    loss of a diverged model), None (not applicable) as an empty cell."""
    if isinstance(value, float):
        return f"{value:.6g}"  # nan, inf and -inf come out as such
    return "" if value is None else value
