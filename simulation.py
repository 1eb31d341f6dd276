"""Run the app in Flower's simulation runtime, safely, and fail loudly when the run fails.

One run:

    python simulation.py [--run-config FILE.toml | --run-config "key=value ..."]... \
                         [--set key=value]... [--num-clients N] [--federation-config "..."]

A comparison (every strategy with every seed, one run after another, on the same federation and
the same seeded client sampling for a seed), with a table and a plot:

    python simulation.py --config configs/paper-cifar10-lenet.toml --set data-dir=/data/cifar10 \
                         --strategies fedavg,rfa,maskedoptim --seeds 1,2,3 --num-clients 100 \
                         [--out results/cmp-paper]

It writes `<out>/<strategy>-seed<seed>/` per run (with the run's log, `flower.log`) and, as runs
finish, `comparison.csv`, `comparison.md`, `runs.csv` and `accuracy.png` (common.comparison).
Running it again skips the runs that are complete, so an interrupted sweep resumes; a folder
holding a run made with other settings stops it before anything runs. A failed run stops the sweep
(exit 1) and shows the end of its log.

What it does for every run, and why (see ../shared/spec/flower.md):
- validates the run config here first (the same checks as the ServerApp), so a bad value fails
  in a second with a message naming it, before anything starts (exit 2);
- uses its own FLWR_HOME inside the checkout (`.flwr/`), turns off runtime dependency
  installation (it would reach for the network), telemetry and update checks;
- starts its own SuperLink on a free port, from a neutral working directory (a SuperLink
  started elsewhere could make Ray run another checkout's code), and stops it, with everything
  it started, when the run ends, fails or is interrupted;
- starts its own Ray (RAY_ADDRESS=local), or, with `--ray-address`, runs the clients on an
  existing Ray cluster (docs/deployment.md, "A simulation on a Ray cluster");
- `flwr run` exits 0 even when the run failed: this checks the run's status and exits 1;
- prints where the results went and a one-screen summary.
Several `--run-config` options merge left to right (a preset file, then single keys), then `--set`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
DEFAULT_FLWR_HOME = ROOT / ".flwr"
SUPERLINK_START_SECONDS = 60.0


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Merge `--run-config` items (common.overrides: every item takes effect or is refused)."""
    from common.overrides import parse_run_config_items

    return parse_run_config_items(items)


def parse_set_options(items: list[str]) -> dict[str, Any]:
    """`--set key=value` items (common.overrides.parse_set_items)."""
    from common.overrides import parse_set_items

    return parse_set_items(items)


def resolve_run_config(overrides: dict[str, Any]) -> dict[str, Any]:
    """Defaults + overrides, validated; paths made absolute; a run name chosen if none."""
    from common.config import ConfigError, RunConfig, app_defaults
    from common.overrides import unknown_key_message
    from server_app.results import default_run_name

    defaults = app_defaults()
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise ConfigError(unknown_key_message(unknown, defaults, "run-config key"))
    mapping = {**defaults, **overrides}
    for key in ("out-dir", "data-dir"):
        if isinstance(mapping[key], str) and mapping[key]:
            mapping[key] = str(Path(mapping[key]).expanduser().resolve())
    config = RunConfig.from_mapping(mapping)
    if not config.run_name:
        mapping["run-name"] = default_run_name(config.strategy, config.dataset, config.seed)
    return mapping


def preflight(mapping: dict[str, Any], num_clients: int) -> None:
    """Everything that can be checked before a runtime starts, each failure one message naming
    the key, file or value (ConfigError / ValueError / DatasetNotFoundError): the strategy's
    settings, every data file the run reads (loaded, so a truncated file is found here), the
    federation (partition and noise, built as every client will build it), that every client
    can take a training step, and that out-dir can be written. In this process the loaded
    dataset and federation are cached, so the in-process runtime does not load them again."""
    from common.config import RunConfig
    from data.datasets import check_data_files
    from data.federation import DataSettings, cached_federation, check_client_sizes
    from models import check_model_fits
    from strategies.registry import check_strategy_settings

    config = RunConfig.from_mapping(mapping)
    check_strategy_settings(config, num_clients)
    check_data_files(config.dataset, config.data_dir or None, download=config.download)
    federation = cached_federation(DataSettings.from_config(config), num_clients)
    dataset = federation.dataset
    check_model_fits(config.model, dataset.input_kind, dataset.input_shape)
    check_client_sizes([len(indices) for indices in federation.client_indices], config.batch_size)
    check_writable(Path(config.out_dir), "out-dir")


def check_writable(folder: Path, key: str) -> None:
    """Create `folder` if needed and write a file there; ConfigError naming `key` if it cannot."""
    from common.config import ConfigError

    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{key}={str(folder)!r} cannot be written: {err.strerror}") from None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flower_environment(port: int, flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)  # the SuperLink spawns flower-superexec by name
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        MASKEDOPTIM_RUN_TOKEN=uuid.uuid4().hex,  # marks every process this run starts
        FLWR_HOME=str(flwr_home),
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(port),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_DEDUP_LOGS="0",
        # Ray joins a cluster started on this machine with `ray start` whenever it finds one;
        # "local" makes every run start its own Ray unless a cluster is asked for (--ray-address)
        RAY_ADDRESS=os.environ.get("RAY_ADDRESS") or "local",
        PYTHONUNBUFFERED="1",
    )
    return env


class LocalSuperLink:
    """A simulation SuperLink that belongs to this run: started here, stopped here."""

    def __init__(self, port: int, env: dict[str, str], log_file: Path) -> None:
        self.port, self.env, self.log_file = port, env, log_file
        self.home = Path(env["FLWR_HOME"])
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> LocalSuperLink:
        bin_dir = Path(sys.executable).parent
        command = [
            str(bin_dir / "flower-superlink"),
            "--insecure",
            "--simulation",
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
            "--log-file",
            str(self.log_file),
        ]
        neutral = self.home / "superlink-cwd"
        neutral.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            command,
            cwd=neutral,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: we can stop all it starts
        )
        deadline = time.monotonic() + SUPERLINK_START_SECONDS
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the SuperLink did not start; see {self.log_file}")
            time.sleep(0.2)
        return self

    def healthy(self) -> bool:
        import httpx

        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=0.5).is_success
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        """Stop the SuperLink and every process it started (they detach into new sessions,
        so they are found by the token in their environment, not by process group)."""
        if self.process is None:
            return
        stop_marked_processes(self.env["MASKEDOPTIM_RUN_TOKEN"], [self.process])
        self.process = None

    def __exit__(self, *exc_info) -> None:
        self.stop()


def stop_marked_processes(token: str, children: list[subprocess.Popen]) -> None:
    """SIGTERM, then SIGKILL after 10 s, every process of the run, until none is left (10 s more).

    A process of the run carries its token in its environment, or shares a session with one
    that does: Flower detaches its processes into new sessions, and Ray's agents, once their
    raylet is gone, can show an environment without the token while they exit."""
    sessions: set[int] = set()
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        signalled: set[int] = set()
        empty_scans = 0
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            for child in children:
                child.poll()  # reap our direct children
            alive = processes_with_token(token)
            alive |= {child.pid for child in children if child.returncode is None}
            sessions |= {process_status(pid)[3] for pid in alive} - {os.getsid(0), -1}
            alive |= processes_in_sessions(sessions)
            # Two empty scans in a row: a process being started can briefly show no environment.
            empty_scans = 0 if alive else empty_scans + 1
            if empty_scans == 2:
                return
            # Processes can still be started while the others stop (Ray starting a worker,
            # an app process): each newcomer gets the signal too.
            for pid in alive - signalled:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
                signalled.add(pid)
            time.sleep(0.2)


def process_status(pid: int) -> tuple[str, int, int, int]:
    """(state, parent, process group, session) of a process from /proc; ('X', -1, -1, -1) when
    it is gone."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return "X", -1, -1, -1
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def processes_in_sessions(sessions: set[int]) -> set[int]:
    """Live processes (zombies excluded) whose session is one of these."""
    found = set()
    for entry in Path("/proc").glob("[0-9]*"):
        state, _, _, session = process_status(int(entry.name))
        if session in sessions and state not in ("Z", "X"):
            found.add(int(entry.name))
    found.discard(os.getpid())
    return found


def processes_with_token(token: str) -> set[int]:
    """Live processes started by the run with this token."""
    return processes_with_environment("MASKEDOPTIM_RUN_TOKEN", token)


def processes_with_environment(name: str, value: str) -> set[int]:
    """Live processes whose environment holds name=value (read from Linux's /proc)."""
    marker = f"{name}={value}".encode()
    found = set()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                if process_status(int(entry.name))[0] not in ("Z", "X"):  # zombies are dead
                    found.add(int(entry.name))
        except (OSError, ValueError):
            continue
    found.discard(os.getpid())
    return found


def run_status(env: dict[str, str]) -> tuple[str, str]:
    """(run id, status) of the one run on our SuperLink, from `flwr list --format json`."""
    flwr = str(Path(sys.executable).parent / "flwr")
    listing = subprocess.run(
        [flwr, "list", "--format", "json"],
        env=env,
        cwd=env["FLWR_HOME"],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        runs = json.loads(listing.stdout)["runs"]
    except (json.JSONDecodeError, KeyError):
        return "", f"unknown (flwr list said: {listing.stdout.strip()} {listing.stderr.strip()})"
    if not runs:
        return "", "no run was registered"
    last = runs[-1]
    return str(last.get("run-id", "")), str(last.get("status", "unknown"))


def wait_for_run(
    env: dict[str, str], poll_seconds: float = 2.0, on_poll: Callable[[], None] | None = None
) -> tuple[str, str]:
    """Poll the SuperLink until its run has finished (`flwr run` returns at once without
    --stream, and a stream can end early)."""
    while True:
        run_id, status = run_status(env)
        if not run_id or status.startswith("finished") or status.startswith("unknown"):
            return run_id, status
        if on_poll is not None:
            on_poll()
        time.sleep(poll_seconds)


def print_summary(results_dir: Path) -> dict[str, Any] | None:
    summary_path = results_dir / "summary.json"
    print(f"\nResults: {results_dir}")
    if not summary_path.is_file():
        print("  (no summary.json was written)")
        return None
    summary = json.loads(summary_path.read_text())
    labels = {
        "status": "status",
        "rounds_completed": "rounds",
        "final_accuracy": "final test accuracy (%)",
        "best_accuracy": "best test accuracy (%)",
        "best_round": "best round",
        "last10_mean_accuracy": f"mean of last {summary.get('last_rounds_averaged', 10)} rounds",
        "final_macro_f1": "final macro-F1 (%)",
        "wall_seconds": "wall time (s)",
        "seconds_per_round": "seconds per round",
    }
    for key, label in labels.items():
        if key in summary:
            value = summary[key]
            shown = f"{value:.2f}" if isinstance(value, float) else value
            print(f"  {label:<28} {shown}")
    detection_path = results_dir / "detection.json"
    if detection_path.is_file():
        report = json.loads(detection_path.read_text())
        detection = report.get("detection") or {}
        quality = detection.get("quality", {})
        print(f"  {'flagged noisy clients':<28} {detection.get('flagged_noisy')}")
        print(
            f"  {'detection precision/recall':<28} {quality.get('precision', float('nan')):.2f}"
            f" / {quality.get('recall', float('nan')):.2f} (truly noisy: true rate > "
            f"{detection.get('noisy_threshold')})"
        )
        labels = report.get("label_correction") or {}
        if labels:
            print(
                f"  {'label accuracy, flagged (%)':<28} {100 * labels['label_acc_observed']:.2f}"
                f" observed -> {100 * labels['label_acc_corrected']:.2f} corrected "
                f"(macro-F1 {100 * labels['label_f1_corrected']:.2f})"
            )
    if summary.get("nonfinite_uploads"):
        print(f"  {'uploads dropped (NaN/inf)':<28} {summary['nonfinite_uploads']}")
    if summary.get("diverged"):
        print(f"  diverged, went on: {summary['diverged']}")
    if "error" in summary:
        print(f"  error: {summary['error']}")
    return summary


def conclude(results_dir: Path, problem: str, log_file: Path | None, verbose: bool = True) -> int:
    """A run's exit code (0 or 1) from its summary.json and what the runtime said (`problem`,
    "" when the runtime reports success). A summary still `running` after the runtime ended
    (the ServerApp was killed, or stopped by `flwr stop`) is marked `interrupted` or `failed`
    with the runtime's word; the summary is printed (`verbose`), and a run that did not
    complete says its status and reason, with the end of its log when the summary has none."""
    from server_app.results import mark_ended

    if problem:
        stopped = "stopped" in problem or "interrupted" in problem
        mark_ended(results_dir, "interrupted" if stopped else "failed", problem)
    summary = (print_summary(results_dir) if verbose else read_summary(results_dir)) or {}
    status = summary.get("status", "unknown (no summary.json)")
    if not problem and status == "completed":
        return 0
    error = summary.get("error", "")
    reason = "; ".join(p for p in (error, "" if error and error in problem else problem) if p)
    if not summary.get("error") and log_file is not None and log_file.is_file():
        tail = log_file.read_text(errors="replace").splitlines()[-30:]
        print("\n".join(tail), file=sys.stderr)
    where = f"; log in {log_file}" if log_file else ""
    print(f"\nerror: the run did not complete (status {status}: {reason}){where}", file=sys.stderr)
    return 1


def run_simulation(
    mapping: dict[str, Any],
    num_clients: int,
    federation_config: str,
    stream: bool = True,
    flwr_home: Path = DEFAULT_FLWR_HOME,
    log_file: Path | None = None,
    on_poll: Callable[[], None] | None = None,
    verbose: bool = True,
) -> int:
    """Run one simulation with `mapping` as its run config; return the process exit code.

    With `log_file`, the run's streamed log goes to that file instead of the terminal and
    `on_poll` is called about every second while the run goes (for progress lines)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    run_name = mapping["run-name"]
    config_file = flwr_home / "runs" / f"{run_name}.toml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(
        "".join(f"{key} = {json.dumps(value)}\n" for key, value in mapping.items())
    )
    port = free_port()
    env = flower_environment(port, flwr_home)
    (flwr_home / "logs").mkdir(exist_ok=True)
    federation = f"num-supernodes={num_clients} {federation_config}".strip()
    flwr = str(Path(sys.executable).parent / "flwr")
    command = [flwr, "run", str(ROOT), "local", "--run-config", str(config_file)]
    command += ["--federation-config", federation, "--stream"]
    results_dir = Path(mapping["out-dir"]) / run_name
    if not stream and log_file is None:  # quiet: the log goes to a file, shown if the run fails
        log_file = flwr_home / "logs" / f"run-{run_name}.log"
    try:
        with LocalSuperLink(port, env, flwr_home / "logs" / f"superlink-{port}.log"):
            if log_file is None:
                returncode = subprocess.run(command, env=env, cwd=flwr_home).returncode
            else:
                with open(log_file, "w") as log:
                    process = subprocess.Popen(
                        command, env=env, cwd=flwr_home, stdout=log, stderr=subprocess.STDOUT
                    )
                    while process.poll() is None:
                        if on_poll is not None:
                            on_poll()
                        time.sleep(1.0)
                    returncode = process.returncode
            run_id, status = (
                wait_for_run(env, on_poll=on_poll) if returncode == 0 else run_status(env)
            )
    except KeyboardInterrupt:
        from server_app.results import mark_ended

        mark_ended(results_dir, "interrupted", "interrupted (Ctrl-C or SIGTERM)")
        raise
    problem = ""
    if returncode != 0 or status != "finished:completed":
        problem = f"flwr run exit {returncode}, run {run_id or '?'} status {status}"
    return conclude(results_dir, problem, log_file or flwr_home / "logs", verbose)


def run_in_this_process(
    mapping: dict[str, Any],
    num_clients: int,
    client_threads: int = 1,
    concurrent_clients: int = 1,
    stream: bool = True,
    log_file: Path | None = None,
    on_poll: Callable[[], None] | None = None,
    verbose: bool = True,
) -> int:
    """`run_simulation`'s contract with the in-process runtime (inprocess.py): no Ray, no
    SuperLink; `concurrent_clients` at once, each with `client_threads` CPU threads."""
    from inprocess import run_inprocess

    failure = run_inprocess(
        mapping,
        num_clients,
        client_threads=client_threads,
        concurrent_clients=concurrent_clients,
        stream=stream,
        log_file=log_file,
        on_poll=on_poll,
    )
    results_dir = Path(mapping["out-dir"]) / mapping["run-name"]
    return conclude(results_dir, failure, log_file, verbose)


def available_cpus() -> int:
    return len(os.sched_getaffinity(0))


def available_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def read_summary(results_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((results_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def rounds_done(results_dir: Path) -> tuple[int, float]:
    """(trained rounds written so far, the run's elapsed seconds at the last of them)."""
    try:
        lines = (results_dir / "metrics.csv").read_text().splitlines()
    except OSError:
        return 0, 0.0
    trained = [line.split(",") for line in lines[1:] if line and not line.startswith("0,")]
    return len(trained), float(trained[-1][-1]) if trained else 0.0


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
        elapsed = time.monotonic() - self.started
        this_run = (self.num_rounds - done) * round_seconds if done else 0.0
        per_run = (
            sum(self.run_seconds) / len(self.run_seconds)
            if self.run_seconds
            else (elapsed + this_run if done else float("nan"))
        )
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
    """The run-config keys (and client count) in which a stored run differs from `mapping`;
    keys that the run's strategy does not read are not compared (common.config)."""
    from common.config import RunConfig, key_matters

    try:
        stored = json.loads((results_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return []  # nothing usable there: the run will be redone
    wanted = RunConfig.from_mapping(mapping).to_mapping()
    ignored = {"out-dir", "run-name", "data-dir"}  # where things live, not what is computed
    differences = [
        key
        for key, value in wanted.items()
        if key not in ignored
        and key_matters(key, wanted["strategy"])
        and stored.get("run_config", {}).get(key) != value
    ]
    if stored.get("num_clients") != num_clients:
        differences.append(f"--num-clients ({stored.get('num_clients')} there)")
    return differences


def plan_comparison(
    overrides: dict[str, Any], strategies: list[str], seeds: list[int], out: Path, num_clients: int
) -> list[dict[str, Any]]:
    """Every (seed, strategy) run's validated config, seed by seed (so an interrupted sweep has
    whole seeds to compare); raises ConfigError/DatasetNotFoundError before anything runs."""
    from common.comparison import run_folder_name
    from common.config import ConfigError

    plans = []
    for seed in seeds:
        for strategy in strategies:
            mapping = resolve_run_config(
                overrides
                | {
                    "strategy": strategy,
                    "seed": seed,
                    "out-dir": str(out),
                    "run-name": run_folder_name(strategy, seed),
                }
            )
            preflight(mapping, num_clients)
            differences = stored_config_differences(out / mapping["run-name"], mapping, num_clients)
            if differences:
                raise ConfigError(
                    f"{out / mapping['run-name']} holds a run made with other settings "
                    f"(differs in: {', '.join(differences)}); give another --out or remove it"
                )
            plans.append(mapping)
    return plans


def run_comparison(
    plans: list[dict[str, Any]],
    strategies: list[str],
    out: Path,
    num_clients: int,
    runner: Callable[..., int],
    title: str,
) -> int:
    """Run the planned runs one after another (each with `runner`: run_simulation or
    run_in_this_process), skipping the complete ones; rewrite the
    comparison files after each; stop at the first failed run (exit 1, its log shown)."""
    import shutil

    from common.comparison import is_complete, load_run, write_comparison

    num_rounds = int(plans[0]["num-rounds"])
    progress = SweepProgress(num_rounds)
    command = " ".join(["python", "simulation.py", *sys.argv[1:]])
    preamble = f"Made by `{command}` ({num_clients} clients, {num_rounds} rounds)."

    def refresh() -> None:
        records = [load_run(out / plan["run-name"]) for plan in plans]
        finished = [r for r in records if is_complete(r, num_rounds)]
        if finished:
            write_comparison(out, finished, strategies, title, preamble)

    refresh()  # a resumed sweep shows what it already has
    for index, mapping in enumerate(plans, 1):
        label = f"[{index}/{len(plans)}] {mapping['strategy']} seed {mapping['seed']}"
        results_dir = out / mapping["run-name"]
        if is_complete(load_run(results_dir), num_rounds):
            print(f"{label}: already complete, skipped", flush=True)
            continue
        if results_dir.exists():
            print(f"{label}: an incomplete earlier attempt is there; running it again")
            shutil.rmtree(results_dir)
        results_dir.mkdir(parents=True)
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
            f"{label}: done in {format_duration(seconds)}: last-10 accuracy "
            f"{record.figures['last10_accuracy']:.2f} %",
            flush=True,
        )
    print(f"\nComparison ({out}):\n")
    print((out / "comparison.md").read_text())
    return 0


def stop_on_terminate(signum, frame) -> None:
    """SIGTERM (`kill`, a container stop, a background job) unwinds like Ctrl-C, so the
    SuperLink and every process it started are stopped on the way out."""
    raise KeyboardInterrupt


def comma_list(text: str, kind: type = str) -> list:
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        values = [kind(item) for item in items]
    except ValueError:
        message = f"not a comma-separated list of {kind.__name__}: {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not values:
        raise argparse.ArgumentTypeError("an empty list")
    return list(dict.fromkeys(values))  # in order, without repeats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--run-config",
        "--config",
        action="append",
        default=[],
        metavar="TOML_OR_KEYS",
        help='a preset file (configs/*.toml) or "key=value ..."; repeatable, merged in order',
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one run-config key (applied after --run-config); repeatable",
    )
    parser.add_argument(
        "--num-clients", type=int, default=10, help="simulated clients (num-supernodes)"
    )
    parser.add_argument(
        "--federation-config",
        default="client-resources-num-cpus=1 client-resources-num-gpus=0",
        help='Flower federation settings, e.g. "client-resources-num-gpus=0.25"',
    )
    parser.add_argument(
        "--strategies",
        type=comma_list,
        help="compare: run each of these strategies (comma-separated) for every seed",
    )
    parser.add_argument(
        "--seeds",
        type=lambda text: comma_list(text, int),
        help="compare: run every strategy with each of these seeds (comma-separated)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="the results folder (a comparison's; default results/cmp-<preset name>); "
        "for one run, the same as out-dir",
    )
    parser.add_argument(
        "--ray-address",
        help="run the simulation on this existing Ray cluster (e.g. auto, or HOST:6379 of "
        "`ray start --head`); default: a Ray of its own (RAY_ADDRESS is honoured)",
    )
    parser.add_argument(
        "--runtime",
        choices=["flower", "inprocess"],
        default="flower",
        help="flower (default): Flower's simulation runtime (a SuperLink, Ray); inprocess: the "
        "same ServerApp and ClientApp in this one process, without Ray or a SuperLink (for a "
        "machine without Ray, a debugger, or speed on a small machine); as Ray would, it runs "
        "CPUs / client-resources-num-cpus clients at once (of --federation-config), each with "
        "client-resources-num-cpus threads",
    )
    parser.add_argument("--quiet", action="store_true", help="do not stream the run's logs")
    parser.add_argument(
        "--check",
        action="store_true",
        help="check everything the pre-flight checks (config, data files, federation, out-dir, "
        "resources) and exit 0 without running",
    )
    parser.add_argument(
        "--flwr-home",
        type=Path,
        default=DEFAULT_FLWR_HOME,
        help="Flower's home for this run: config, SuperLink logs, installed app (default .flwr)",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, stop_on_terminate)  # `kill` stops everything, as Ctrl-C does
    if args.ray_address:
        os.environ["RAY_ADDRESS"] = args.ray_address  # read by flower_environment
    sys.path.insert(0, str(ROOT))
    from common.config import ConfigError
    from common.overrides import federation_text, parse_federation_config
    from data.datasets import DatasetNotFoundError

    if args.runtime == "inprocess" and args.ray_address:
        print("error: --ray-address needs --runtime flower", file=sys.stderr)
        return 2
    if args.num_clients < 1:
        print(f"error: --num-clients={args.num_clients}: it must be at least 1", file=sys.stderr)
        return 2
    comparing = args.strategies is not None or args.seeds is not None
    try:
        federation = parse_federation_config(args.federation_config)
        overrides = parse_overrides(args.run_config) | parse_set_options(args.set)
        if comparing:
            preset = next((Path(i).stem for i in args.run_config if "=" not in i), "")
            out = (args.out or ROOT / "results" / f"cmp-{preset or 'default'}").resolve()
            base = resolve_run_config(overrides)
            strategies = args.strategies or [base["strategy"]]
            plans = plan_comparison(
                overrides, strategies, args.seeds or [base["seed"]], out, args.num_clients
            )
        else:
            if args.out is not None:
                overrides["out-dir"] = str(args.out)
            mapping = resolve_run_config(overrides)
            preflight(mapping, args.num_clients)
        if args.runtime == "inprocess":
            from inprocess import client_resources

            # as many at once as Ray would run; a bad value stops before any work
            threads, at_once = client_resources(federation, available_cpus(), available_gpus())
            runner = functools.partial(
                run_in_this_process, client_threads=threads, concurrent_clients=at_once
            )
        else:
            gpu_share = federation.get("client-resources-num-gpus", 0)
            if gpu_share > 0 and not args.ray_address and available_gpus() == 0:
                raise ConfigError(  # Ray would wait for a GPU forever
                    f"--federation-config client-resources-num-gpus={gpu_share:g}, but this "
                    "machine has no GPU (give --ray-address for a cluster that has them)"
                )
            runner = functools.partial(
                run_simulation,
                federation_config=federation_text(federation),
                flwr_home=args.flwr_home.resolve(),
            )
    except (ConfigError, DatasetNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.check:
        runs = len(plans) if comparing else 1
        print(f"check passed: {runs} run(s) of {args.num_clients} clients can start")
        return 0
    try:
        if comparing:
            title = f"{preset or base['dataset']}: " + ", ".join(strategies)
            return run_comparison(plans, strategies, out, args.num_clients, runner, title)
        return runner(mapping, args.num_clients, stream=not args.quiet)
    except KeyboardInterrupt:
        stopped = "the SuperLink and its processes were" if args.runtime == "flower" else "run"
        print(f"\ninterrupted: the {stopped} stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
