"""Run the app in Flower's simulation runtime, safely, and fail loudly when the run fails.

    python simulation.py [--run-config FILE.toml | --run-config "key=value ..."]... \
                         [--num-clients N] [--federation-config "key=value ..."]

What it does, and why (see ../shared/spec/flower.md):
- validates the run config here first (the same checks as the ServerApp), so a bad value fails
  in a second with a message naming it, before anything starts;
- uses its own FLWR_HOME inside the checkout (`.flwr/`), turns off runtime dependency
  installation (it would reach for the network), telemetry and update checks;
- starts its own SuperLink on a free port, from a neutral working directory (a SuperLink
  started elsewhere could make Ray run another checkout's code), and stops it, with everything
  it started, when the run ends, fails or is interrupted;
- `flwr run` exits 0 even when the run failed: this checks the run's status and exits 1;
- prints where the results went and a one-screen summary.
Several `--run-config` options merge left to right (a preset file, then single keys).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
DEFAULT_FLWR_HOME = ROOT / ".flwr"
SUPERLINK_START_SECONDS = 60.0


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Merge `--run-config` items: TOML files or "k=v k2='s'" strings (values in TOML syntax)."""
    from flwr.common.config import parse_config_args

    merged: dict[str, Any] = {}
    for item in items:
        if item.endswith(".toml"):
            path = Path(item).expanduser()
            if not path.is_file():
                raise SystemExit(f"error: run-config file not found: {item}")
            with open(path, "rb") as handle:
                merged.update(tomllib.load(handle))
        else:
            merged.update(parse_config_args([item]))
    return merged


def resolve_run_config(overrides: dict[str, Any]) -> dict[str, Any]:
    """Defaults + overrides, validated; paths made absolute; a run name chosen if none."""
    from common.config import ConfigError, RunConfig, app_defaults
    from server_app.results import default_run_name

    defaults = app_defaults()
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ConfigError(
            f"unknown run-config key(s) {', '.join(unknown)}; known keys: {', '.join(defaults)}"
        )
    mapping = {**defaults, **overrides}
    for key in ("out-dir", "data-dir"):
        if isinstance(mapping[key], str) and mapping[key]:
            mapping[key] = str(Path(mapping[key]).expanduser().resolve())
    config = RunConfig.from_mapping(mapping)
    if not config.run_name:
        mapping["run-name"] = default_run_name(config.strategy, config.dataset, config.seed)
    return mapping


def preflight(mapping: dict[str, Any], num_clients: int) -> None:
    """The checks that need no training: data files present, strategy settings possible."""
    from common.config import RunConfig
    from data.datasets import check_data_files
    from data.noise import client_noise_plan
    from strategies.registry import check_strategy_settings

    config = RunConfig.from_mapping(mapping)
    check_data_files(config.dataset, config.data_dir or None, download=config.download)
    check_strategy_settings(config, num_clients)
    client_noise_plan(config.noise_type, config.noise_range, num_clients, config.noise_groups)


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
        token = self.env["MASKEDOPTIM_RUN_TOKEN"]
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            pids = processes_with_token(token) | {self.process.pid}
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                self.process.poll()  # reap our direct child
                if not processes_with_token(token) and self.process.returncode is not None:
                    self.process = None
                    return
                time.sleep(0.2)
        self.process = None

    def __exit__(self, *exc_info) -> None:
        self.stop()


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
                stat = (entry / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":  # zombies are already dead
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


def wait_for_run(env: dict[str, str], poll_seconds: float = 2.0) -> tuple[str, str]:
    """Poll the SuperLink until its run has finished (`flwr run` returns at once without
    --stream, and a stream can end early)."""
    while True:
        run_id, status = run_status(env)
        if not run_id or status.startswith("finished") or status.startswith("unknown"):
            return run_id, status
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
        "last10_mean_accuracy": "mean of last 10 rounds (%)",
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
    if "error" in summary:
        print(f"  error: {summary['error']}")
    return summary


def run_simulation(
    mapping: dict[str, Any],
    num_clients: int,
    federation_config: str,
    stream: bool = True,
    flwr_home: Path = DEFAULT_FLWR_HOME,
) -> int:
    """Run one simulation with `mapping` as its run config; return the process exit code."""
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
    command += ["--federation-config", federation] + (["--stream"] if stream else [])
    with LocalSuperLink(port, env, flwr_home / "logs" / f"superlink-{port}.log"):
        launched = subprocess.run(command, env=env, cwd=flwr_home, check=False)
        run_id, status = wait_for_run(env) if launched.returncode == 0 else run_status(env)
    summary = print_summary(Path(mapping["out-dir"]) / run_name)
    completed = status == "finished:completed" and (summary or {}).get("status") == "completed"
    if launched.returncode != 0 or not completed:
        print(
            f"\nerror: the run did not complete (flwr run exit {launched.returncode}, "
            f"run {run_id or '?'} status {status}); SuperLink log in {flwr_home / 'logs'}",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--run-config",
        action="append",
        default=[],
        metavar="TOML_OR_KEYS",
        help='a preset file (configs/*.toml) or "key=value ..."; repeatable, merged in order',
    )
    parser.add_argument(
        "--num-clients", type=int, default=10, help="simulated clients (num-supernodes)"
    )
    parser.add_argument(
        "--federation-config",
        default="client-resources-num-cpus=1 client-resources-num-gpus=0",
        help='Flower federation settings, e.g. "client-resources-num-gpus=0.25"',
    )
    parser.add_argument("--quiet", action="store_true", help="do not stream the run's logs")
    parser.add_argument(
        "--flwr-home",
        type=Path,
        default=DEFAULT_FLWR_HOME,
        help="Flower's home for this run: config, SuperLink logs, installed app (default .flwr)",
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from common.config import ConfigError
    from data.datasets import DatasetNotFoundError

    if args.num_clients < 1:
        print(f"error: --num-clients={args.num_clients}: it must be at least 1", file=sys.stderr)
        return 2
    try:
        mapping = resolve_run_config(parse_overrides(args.run_config))
        preflight(mapping, args.num_clients)
    except (ConfigError, DatasetNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        return run_simulation(
            mapping,
            args.num_clients,
            args.federation_config,
            stream=not args.quiet,
            flwr_home=args.flwr_home.resolve(),
        )
    except KeyboardInterrupt:
        print("\ninterrupted: the SuperLink and its processes were stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
