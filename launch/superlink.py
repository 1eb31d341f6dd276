"""Flower's simulation runtime, owned by the run: its own SuperLink on a free port, `flwr run`,
the run's status, and everything stopped at the end (see docs/deployment.md for Flower's traps
that this avoids).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.errors import ConfigError
from launch.processes import free_port, stop_marked_processes
from launch.report import conclude
from server_app.results import code_version

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FLWR_HOME = ROOT / ".flwr"
SUPERLINK_START_SECONDS = 60.0


def flower_environment(port: int, flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)  # the SuperLink spawns flower-superexec by name
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        MASKEDOPTIM_RUN_TOKEN=uuid.uuid4().hex,  # marks every process this run starts
        MASKEDOPTIM_CODE_VERSION=code_version(),  # the installed app copy has no .git
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
                with open(log_file, "a") as log:  # a resumed run adds to its log
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

        mark_ended(
            results_dir, "interrupted", "interrupted (Ctrl-C or SIGTERM)", stopped_by_user=True
        )
        raise
    problem = ""
    if returncode != 0 or status != "finished:completed":
        problem = f"flwr run exit {returncode}, run {run_id or '?'} status {status}"
    return conclude(results_dir, problem, log_file or flwr_home / "logs", verbose)


def check_local_resources(federation: dict, cpus: int, gpus: int) -> None:
    """ConfigError when Ray's own cluster on this machine could not run one client: it would
    wait for a GPU forever, or fail after start-up with an empty actor pool."""
    cpus = min(cpus, federation.get("init-args-num-cpus", cpus))
    gpus = min(gpus, federation.get("init-args-num-gpus", gpus))
    given = any(key.startswith("client-resources-") for key in federation)
    num_cpus = federation.get("client-resources-num-cpus", 1.0 if given else 2.0)
    gpu_share = federation.get("client-resources-num-gpus", 0)
    if gpu_share > 0 and gpus == 0:
        raise ConfigError(
            f"--federation-config client-resources-num-gpus={gpu_share:g}, but this machine has "
            "no GPU (give --ray-address for a cluster that has them)"
        )
    if num_cpus > cpus:
        raise ConfigError(
            f"--federation-config client-resources-num-cpus={num_cpus:g} is more than the "
            f"{cpus} CPUs Ray has here: no client could run (use at most {cpus}, or "
            "--ray-address for a cluster)"
        )
