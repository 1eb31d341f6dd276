"""Run the app with Flower's deployment runtime on this machine: a SuperLink and N SuperNodes as
separate processes, as they would run on separate hosts.

    python deploy_local.py [--num-supernodes 2 | --client-data PATH...] [--config FILE.toml] \
                           [--set key=value]... [--tls] [--workdir .deploy]

Every SuperNode is one client: its node-config gives `partition-id`, `num-partitions` (the shared
dataset is carved as in simulation) and a `state-dir`, under which noisy clients keep their
learnable labels so that they survive a SuperNode restart, and write their corrected labels.
With `--client-data PATH` once per client, SuperNode i reads the i-th path as its own data
(node-config `data-dir`) instead of carving the shared dataset (docs/own-data.md).
Each process gets its own port and FLWR_HOME under the work folder, logs go to
`<workdir>/logs/`, the run's results to `out-dir` as in simulation. With --tls, every link to
the SuperLink is encrypted and only registered SuperNodes are admitted: the script makes a CA,
a server certificate (SANs localhost, 127.0.0.1) and a key pair per SuperNode under
`<workdir>/certs/`, and registers the nodes.

The script validates the config first (exit 2), waits for the run, checks its final status (exit 1
when it failed, with the end of the run's log), and stops every process it started, also on
failure, Ctrl-C or SIGTERM (exit 130).
See docs/deployment.md for the same steps by hand and on several machines.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--num-supernodes", type=int, default=None, help="clients (SuperNodes); default 2"
    )
    parser.add_argument(
        "--client-data", action="append", type=Path, default=[], metavar="PATH",
        help="one client's own data (its SuperNode's node-config data-dir), repeated once per "
        "client: an image folder or CSV file for imagefolder / csv-text, CIFAR-10 batches for "
        "cifar10; the number of clients is then the number of these",
    )  # fmt: skip
    parser.add_argument(
        "--run-config", "--config", action="append", default=[], metavar="TOML_OR_KEYS",
        help='a preset file or "key=value ..."; repeatable, merged in order',
    )  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--tls", action="store_true",
        help="TLS on every link to the SuperLink and SuperNode authentication: generates a CA, "
        "a server certificate and one key pair per SuperNode, and registers the nodes",
    )  # fmt: skip
    parser.add_argument(
        "--workdir", type=Path, default=ROOT / ".deploy",
        help="ports' homes, logs and client state go here (default .deploy/<run-name>)",
    )  # fmt: skip
    parser.add_argument(
        "--check", action="store_true",
        help="check the config, data files, federation and out-dir, and exit 0 without running",
    )  # fmt: skip
    args = parser.parse_args(argv)
    from launch.processes import stop_on_terminate

    signal.signal(signal.SIGTERM, stop_on_terminate)
    from common.errors import ConfigError
    from data.datasets import DatasetNotFoundError
    from launch.deploy import LocalDeployment
    from launch.overrides import chosen_keys
    from launch.preflight import (
        check_writable,
        command_line_overrides,
        note_unread_keys,
        preflight,
        resolve_run_config,
    )
    from launch.report import print_summary
    from server_app.results import mark_ended

    client_data = [path.expanduser().resolve() for path in args.client_data]
    if client_data and args.num_supernodes not in (None, len(client_data)):
        print(f"error: --num-supernodes={args.num_supernodes} but {len(client_data)} "
              "--client-data paths: give one path per SuperNode (or leave out "
              "--num-supernodes)", file=sys.stderr)  # fmt: skip
        return 2
    if args.num_supernodes is None:  # a typed 0 is refused below, not replaced
        args.num_supernodes = len(client_data) or 2
    if args.num_supernodes < 1:
        print(f"error: --num-supernodes={args.num_supernodes}: at least 1", file=sys.stderr)
        return 2
    missing = [path for path in client_data if not path.exists()]
    if missing:
        print(f"error: --client-data {missing[0]}: no such file or folder", file=sys.stderr)
        return 2
    try:
        typed = command_line_overrides(args.run_config, args.set, num_clients=args.num_supernodes)
        mapping = resolve_run_config(typed, args.num_supernodes)
        preflight(mapping, args.num_supernodes, client_data)
        note_unread_keys([mapping["strategy"]], chosen_keys(args.run_config, args.set))
    except (ConfigError, DatasetNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        check_writable(args.workdir, "--workdir")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.check:
        print(f"check passed: the run of {args.num_supernodes} SuperNodes can start")
        return 0
    workdir = args.workdir / mapping["run-name"]
    results_dir = Path(mapping["out-dir"]) / mapping["run-name"]
    try:
        with LocalDeployment(
            workdir, args.num_supernodes, tls=args.tls, client_data=client_data
        ) as deployment:
            deployment.start_superlink()
            if args.tls:
                deployment.register_supernodes()
            for index in range(args.num_supernodes):
                deployment.start_supernode(index)
            security = "TLS + SuperNode authentication" if args.tls else "insecure"
            print(f"SuperLink on 127.0.0.1:{deployment.port} ({security}), "
                  f"{args.num_supernodes} SuperNodes; logs in {deployment.logs}",
                  flush=True)  # fmt: skip
            deployment.submit(mapping)
            run_id, status = deployment.wait()
            deployment.save_run_log(run_id)
    except KeyboardInterrupt:
        mark_ended(
            results_dir, "interrupted", "interrupted (Ctrl-C or SIGTERM)", stopped_by_user=True
        )
        print("\ninterrupted: every process started here was stopped", file=sys.stderr)
        return 130
    if status != "finished:completed":
        stopped = "interrupted" if status == "finished:stopped" else "failed"
        mark_ended(results_dir, stopped, f"run {run_id or '?'} status {status}")
    summary = print_summary(results_dir)
    if status != "finished:completed" or (summary or {}).get("status") != "completed":
        log = deployment.log_text("serverapp") or deployment.log_text("superlink")
        tail = "\n".join(log.splitlines()[-40:])
        print(f"{tail}\n\nerror: run {run_id or '?'} ended with status {status}; logs in "
              f"{deployment.logs}", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
