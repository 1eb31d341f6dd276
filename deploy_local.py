"""Run the app with Flower's deployment runtime on this machine: a SuperLink and N SuperNodes as
separate processes, as they would run on separate hosts.

    python deploy_local.py [--num-supernodes 2] [--config FILE.toml] [--set key=value]... \
                           [--workdir .deploy]

Every SuperNode is one client: its node-config gives `partition-id`, `num-partitions` (the shared
dataset is carved as in simulation) and a `state-dir`, under which noisy clients keep their
learnable labels so that they survive a SuperNode restart. Each process gets its own port and
FLWR_HOME under the work folder, logs go to `<workdir>/logs/`, the run's results to `out-dir`
as in simulation. The script validates the config first (exit 2), waits for the run, checks its
final status (exit 1 when it failed, with the end of the SuperLink's log), and stops every process
it started, also on failure, Ctrl-C or SIGTERM (exit 130).
See docs/deployment.md for the same steps by hand and on several machines.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from simulation import (
    ROOT,
    free_port,
    parse_overrides,
    parse_set_options,
    preflight,
    print_summary,
    processes_with_environment,
    resolve_run_config,
    run_status,
    stop_on_terminate,
    wait_for_run,
)

START_SECONDS = 60.0


class LocalDeployment:
    """A SuperLink and SuperNodes on localhost, all marked with one token so that they (and the
    processes they spawn) can be found and stopped together."""

    def __init__(self, workdir: Path, num_supernodes: int) -> None:
        self.workdir = workdir.resolve()
        self.num_supernodes = num_supernodes
        self.token = uuid.uuid4().hex
        self.port = free_port()
        self.supernode_ports = [free_port() for _ in range(num_supernodes)]
        self.logs = self.workdir / "logs"
        self.cli_home = self.workdir / "cli"
        self.processes: dict[str, subprocess.Popen] = {}

    def environment(self, flwr_home: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            MASKEDOPTIM_RUN_TOKEN=self.token,
            FLWR_HOME=str(flwr_home),
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            FLWR_TELEMETRY_ENABLED="0",
            FLWR_DISABLE_UPDATE_CHECK="1",
            PYTHONUNBUFFERED="1",
        )
        return env

    def _start(self, name: str, command: list[str], flwr_home: Path) -> None:
        flwr_home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "a") as log:
            self.processes[name] = subprocess.Popen(
                command,
                cwd=flwr_home,  # also the ClientApp's working directory: not the checkout
                env=self.environment(flwr_home),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_superlink(self) -> None:
        bin_dir = Path(sys.executable).parent
        home = self.workdir / "superlink"
        command = [
            str(bin_dir / "flower-superlink"), "--insecure",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--database", str(home / "superlink.db"),
            "--disable-runtime-dependency-installation",
        ]  # fmt: skip
        self._start("superlink", command, home)
        self.cli_home.mkdir(parents=True, exist_ok=True)
        (self.cli_home / "config.toml").write_text(
            '[superlink]\ndefault = "local-deployment"\n\n[superlink.local-deployment]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        deadline = time.monotonic() + START_SECONDS
        while "Uvicorn running" not in self.log_text("superlink"):
            if self.processes["superlink"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the SuperLink did not start; see {self.logs / 'superlink.log'}"
                )
            time.sleep(0.2)

    def state_dir(self, index: int) -> Path:
        return self.workdir / "state" / f"supernode-{index}"

    def start_supernode(self, index: int) -> None:
        node_config = (
            f"partition-id={index} num-partitions={self.num_supernodes} "
            f"state-dir='{self.state_dir(index)}'"
        )
        command = [
            str(Path(sys.executable).parent / "flower-supernode"), "--insecure",
            "--superlink", f"127.0.0.1:{self.port}",
            "--node-config", node_config,
            "--port", str(self.supernode_ports[index]),
        ]  # fmt: skip
        self._start(f"supernode-{index}", command, self.workdir / f"supernode-{index}")

    def stop_supernode(self, index: int) -> None:
        """Kill one SuperNode at once (as a crash would) with the processes it started."""
        process = self.processes.pop(f"supernode-{index}")
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        home = str(self.workdir / f"supernode-{index}")
        for pid in processes_with_environment("FLWR_HOME", home):
            _signal(pid, signal.SIGKILL)

    def submit(self, mapping: dict[str, Any]) -> None:
        """Start the app's run on the SuperLink (returns once the run is registered)."""
        config_file = self.workdir / "run-config.toml"
        config_file.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in mapping.items()))
        flwr = str(Path(sys.executable).parent / "flwr")
        with open(self.logs / "flwr-run.log", "a") as log:
            subprocess.run(
                [flwr, "run", str(ROOT), "local-deployment", "--run-config", str(config_file)],
                cwd=self.cli_home,
                env=self.environment(self.cli_home),
                stdout=log,
                stderr=subprocess.STDOUT,
                check=True,
            )

    def status(self) -> tuple[str, str]:
        return run_status(self.environment(self.cli_home))

    def wait(self, poll_seconds: float = 2.0) -> tuple[str, str]:
        return wait_for_run(self.environment(self.cli_home), poll_seconds)

    def log_text(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def stop(self) -> None:
        """Stop every process started here (they may have detached: found by the token)."""
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for pid in processes_with_environment("MASKEDOPTIM_RUN_TOKEN", self.token):
                _signal(pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                for process in self.processes.values():
                    process.poll()
                if not processes_with_environment("MASKEDOPTIM_RUN_TOKEN", self.token):
                    self.processes.clear()
                    return
                time.sleep(0.2)
        self.processes.clear()

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--num-supernodes", type=int, default=2, help="clients (SuperNodes)")
    parser.add_argument(
        "--run-config", "--config", action="append", default=[], metavar="TOML_OR_KEYS",
        help='a preset file or "key=value ..."; repeatable, merged in order',
    )  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--workdir", type=Path, default=ROOT / ".deploy",
        help="ports' homes, logs and client state go here (default .deploy/<run-name>)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, stop_on_terminate)
    from common.config import ConfigError
    from data.datasets import DatasetNotFoundError

    if args.num_supernodes < 1:
        print(f"error: --num-supernodes={args.num_supernodes}: at least 1", file=sys.stderr)
        return 2
    try:
        mapping = resolve_run_config(parse_overrides(args.run_config) | parse_set_options(args.set))
        preflight(mapping, args.num_supernodes)
    except (ConfigError, DatasetNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    workdir = args.workdir / mapping["run-name"]
    try:
        with LocalDeployment(workdir, args.num_supernodes) as deployment:
            deployment.start_superlink()
            for index in range(args.num_supernodes):
                deployment.start_supernode(index)
            print(f"SuperLink on 127.0.0.1:{deployment.port}, {args.num_supernodes} SuperNodes; "
                  f"logs in {deployment.logs}", flush=True)  # fmt: skip
            deployment.submit(mapping)
            run_id, status = deployment.wait()
    except KeyboardInterrupt:
        print("\ninterrupted: every process started here was stopped", file=sys.stderr)
        return 130
    summary = print_summary(Path(mapping["out-dir"]) / mapping["run-name"])
    if status != "finished:completed" or (summary or {}).get("status") != "completed":
        tail = "\n".join(deployment.log_text("superlink").splitlines()[-40:])
        print(f"{tail}\n\nerror: run {run_id or '?'} ended with status {status}; logs in "
              f"{deployment.logs}", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
