"""A local deployment: a SuperLink and N SuperNodes as separate processes on this machine, as
they would run on separate hosts (with TLS and SuperNode authentication when asked), every
process stopped at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from launch.processes import free_port, processes_with_environment, stop_marked_processes
from launch.superlink import ROOT, run_status, wait_for_run
from server_app.results import code_version

START_SECONDS = 60.0


def make_certificates(folder: Path, num_supernodes: int, hosts=("localhost", "127.0.0.1")) -> None:
    """A CA, a server certificate signed by it (SANs: `hosts`), and one ECDSA P-384 key pair per
    SuperNode in OpenSSH format (what `flwr supernode register` and `--auth-supernode-private-key`
    read): `ca.crt`, `server.pem`, `server.key`, `client-<i>`, `client-<i>.pub`."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key, issuer, issuer_key, extensions):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(issuer_key, hashes.SHA384())

    def private_pem(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "maskedoptim local CA")])
    ca = certificate(
        "maskedoptim local CA", ca_key, ca_name, ca_key,
        [(x509.BasicConstraints(ca=True, path_length=None), True)],
    )  # fmt: skip
    server_key = ec.generate_private_key(ec.SECP384R1())
    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server = certificate(
        hosts[0], server_key, ca_name, ca_key,
        [
            (x509.SubjectAlternativeName(names), False),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
    )  # fmt: skip
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(private_pem(server_key))
    for index in range(num_supernodes):
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        (folder / f"client-{index}").write_bytes(private)
        (folder / f"client-{index}").chmod(0o600)
        (folder / f"client-{index}.pub").write_bytes(public + b"\n")


class LocalDeployment:
    """A SuperLink and SuperNodes on localhost, all marked with one token so that they (and the
    processes they spawn) can be found and stopped together."""

    def __init__(
        self,
        workdir: Path,
        num_supernodes: int,
        tls: bool = False,
        client_data: list[Path] | None = None,
    ) -> None:
        self.workdir = workdir.resolve()
        self.num_supernodes = num_supernodes
        self.client_data = list(client_data or [])  # SuperNode i's own data-dir, if any
        self.tls = tls
        self.certs = self.workdir / "certs"
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
            MASKEDOPTIM_CODE_VERSION=code_version(),
            FLWR_HOME=str(flwr_home),
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            FLWR_TELEMETRY_ENABLED="0",
            FLWR_DISABLE_UPDATE_CHECK="1",
            PYTHONUNBUFFERED="1",
        )
        return env

    def _start(
        self, name: str, command: list[str], flwr_home: Path, extra_env: dict | None = None
    ) -> None:
        flwr_home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "a") as log:
            self.processes[name] = subprocess.Popen(
                command,
                cwd=flwr_home,  # also the ClientApp's working directory: not the checkout
                env=self.environment(flwr_home) | (extra_env or {}),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_superlink(self) -> None:
        bin_dir = Path(sys.executable).parent
        home = self.workdir / "superlink"
        security = ["--insecure"]
        if self.tls:
            make_certificates(self.certs, self.num_supernodes)
            security = [
                "--ssl-ca-certfile", str(self.certs / "ca.crt"),
                "--ssl-certfile", str(self.certs / "server.pem"),
                "--ssl-keyfile", str(self.certs / "server.key"),
                "--enable-supernode-auth",
            ]  # fmt: skip
        command = [
            str(bin_dir / "flower-superlink"), *security,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--database", str(home / "superlink.db"),
            "--disable-runtime-dependency-installation",
        ]  # fmt: skip
        self._start("superlink", command, home)
        self.cli_home.mkdir(parents=True, exist_ok=True)
        trust = f'root-certificates = "{self.certs / "ca.crt"}"' if self.tls else "insecure = true"
        (self.cli_home / "config.toml").write_text(
            '[superlink]\ndefault = "local-deployment"\n\n[superlink.local-deployment]\n'
            f'address = "127.0.0.1:{self.port}"\n{trust}\n'
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
        if self.client_data:
            node_config += f" data-dir='{self.client_data[index]}'"
        security = ["--insecure"]
        if self.tls:
            security = [
                "--root-certificates", str(self.certs / "ca.crt"),
                "--auth-supernode-private-key", str(self.certs / f"client-{index}"),
            ]  # fmt: skip
        command = [
            str(Path(sys.executable).parent / "flower-supernode"), *security,
            "--superlink", f"127.0.0.1:{self.port}",
            "--node-config", node_config,
            "--port", str(self.supernode_ports[index]),
        ]  # fmt: skip
        self._start(
            f"supernode-{index}", command, self.workdir / f"supernode-{index}",
            extra_env={"OMP_NUM_THREADS": str(self.client_threads())},
        )  # fmt: skip

    def client_threads(self) -> int:
        """CPU threads per ClientApp (OMP_NUM_THREADS, which torch follows): the SuperNodes share
        this machine's cores, and more threads than cores slow every one of them down (see
        docs/deployment.md for what it measured)."""
        if os.environ.get("OMP_NUM_THREADS"):
            return int(os.environ["OMP_NUM_THREADS"])
        return max(1, (os.cpu_count() or 1) // self.num_supernodes)

    def register_supernodes(self) -> None:
        """With node authentication the SuperLink accepts only registered public keys."""
        flwr = str(Path(sys.executable).parent / "flwr")
        for index in range(self.num_supernodes):
            with open(self.logs / "flwr-register.log", "a") as log:
                subprocess.run(
                    [flwr, "supernode", "register", str(self.certs / f"client-{index}.pub"),
                     "local-deployment", "--name", f"client-{index}"],
                    cwd=self.cli_home, env=self.environment(self.cli_home),
                    stdout=log, stderr=subprocess.STDOUT, check=True,
                )  # fmt: skip

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

    def save_run_log(self, run_id: str) -> None:
        """Keep the run's log (the ServerApp's output, which the SuperLink's log does not hold)
        as `<logs>/serverapp.log`, from `flwr log <run id> --show`."""
        if not run_id:
            return
        with open(self.logs / "serverapp.log", "w") as log:
            subprocess.run(
                [str(Path(sys.executable).parent / "flwr"), "log", run_id, "local-deployment",
                 "--show"],
                cwd=self.cli_home, env=self.environment(self.cli_home),
                stdout=log, stderr=subprocess.STDOUT, check=False, timeout=120,
            )  # fmt: skip

    def log_text(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def stop(self) -> None:
        """Stop every process started here (they may have detached: found by the token)."""
        stop_marked_processes(self.token, list(self.processes.values()))
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
