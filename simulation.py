"""Run the app in Flower's simulation runtime, safely, and fail loudly when the run fails.

One run:

    python simulation.py [--run-config FILE.toml | --run-config "key=value ..."]... \
                         [--set key=value]... [--num-clients N] [--federation-config "..."]

A comparison (every strategy with every seed, one run after another, on the same federation and
the same seeded client sampling for a seed), with a table and a plot:

    python simulation.py --config configs/paper-cifar10-lenet.toml --set data-dir=/data/cifar10 \
                         --strategies fedavg,rfa,maskedoptim --seeds 1,2,3 --num-clients 100 \
                         [--out results/cmp-paper]

An item of `--strategies` that ends in .toml is a variant file (a strategy and the keys it
changes, e.g. configs/variants/maskedoptim-weak-model.toml): its runs sit beside the plain
strategies' in the table, named by the file's stem.

It writes `<out>/<strategy>-seed<seed>/` per run (with the run's log, `flower.log`) and, as runs
finish, `comparison.csv`, `comparison.md`, `runs.csv` and `accuracy.png` (launch.comparison).
Running it again skips the runs that are complete, so an interrupted sweep resumes; a folder
holding a run made with other settings stops it before anything runs. A failed run stops the sweep
(exit 1) and shows the end of its log.

This file is the command line only; the work is in the `launch` package (overrides, preflight,
superlink, inprocess, sweep, report, processes). What it does for every run, and why:
- reads every argument or refuses it, and runs the pre-flight (launch.preflight: config, data
  files, federation, out-dir), so a bad value fails in a second with a message naming it,
  before anything starts (exit 2; `--check` stops there with exit 0);
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
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def comma_list(text: str, kind: type = str) -> list:
    """`text`'s comma-separated items as `kind`; argparse refuses (exit 2) naming every item
    that is not a `kind`, an empty list, or an item given twice."""
    values, bad = [], []
    for item in filter(None, (item.strip() for item in text.split(","))):
        try:
            values.append(kind(item))
        except ValueError:
            bad.append(repr(item))
    if bad:
        message = f"{', '.join(bad)} in {text!r}: a comma-separated list of {kind.__name__}"
        raise argparse.ArgumentTypeError(message)
    if not values:
        raise argparse.ArgumentTypeError("an empty list")
    repeated = [str(value) for value in dict.fromkeys(values) if values.count(value) > 1]
    if repeated:
        # Refused rather than dropped: a repeat is a typo for another item more often than not.
        message = f"{', '.join(repeated)} given more than once in {text!r}; name each once"
        raise argparse.ArgumentTypeError(message)
    return values


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
        "--num-clients",
        type=int,
        default=None,
        help="simulated clients (num-supernodes); default: the preset's [federation] "
        "num-clients, else 10",
    )
    parser.add_argument(
        "--federation-config",
        default="client-resources-num-cpus=1 client-resources-num-gpus=0",
        help='Flower federation settings, e.g. "client-resources-num-gpus=0.25"',
    )
    parser.add_argument(
        "--strategies",
        type=comma_list,
        help="compare: run each of these strategies (comma-separated) for every seed; an "
        "item ending in .toml is a variant file (strategy= and the keys it changes, e.g. "
        "configs/variants/maskedoptim-weak-model.toml), its row named by the file's stem",
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
        help="flower (default): Flower's simulation runtime (a SuperLink, Ray); inprocess: the "
        "same ServerApp and ClientApp in this one process, without Ray or a SuperLink (for a "
        "machine without Ray, a debugger, or speed on a small machine); as Ray would, it runs "
        "CPUs / client-resources-num-cpus clients at once (of --federation-config), each with "
        "client-resources-num-cpus threads. --resume goes on with the runtime that made the run "
        "unless this is given",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the killed run in RUN_DIR from its newest good checkpoint (written every "
        "checkpoint-every rounds), with its stored config; it ends with the numbers an "
        "uninterrupted run gives. Other options must agree with the stored run",
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
        default=ROOT / ".flwr",
        help="Flower's home for this run: config, SuperLink logs, installed app (default .flwr)",
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from launch.processes import stop_on_terminate

    signal.signal(signal.SIGTERM, stop_on_terminate)  # `kill` stops everything, as Ctrl-C does
    if args.ray_address:
        os.environ["RAY_ADDRESS"] = args.ray_address  # read by flower_environment
    from common.config import config_error, problems_of
    from common.errors import ConfigError
    from data.datasets import DatasetNotFoundError
    from launch.inprocess import check_cuda_graphs_at_once, client_resources, run_in_this_process
    from launch.overrides import (
        chosen_keys,
        federation_text,
        parse_federation_config,
        preset_num_clients,
        typed_keys,
    )
    from launch.preflight import (
        command_line_overrides,
        note_unread_keys,
        preflight,
        resolve_run_config,
    )
    from launch.processes import available_cpus, available_gpus
    from launch.resume import resume_mapping
    from launch.superlink import check_local_resources, run_simulation
    from launch.sweep import comparison_entries, plan_comparison, run_comparison
    from server_app.results import stored_runtime

    if args.runtime is None:  # a resumed run goes on as it was made
        args.runtime = stored_runtime(args.resume) if args.resume is not None else "flower"
    if args.runtime == "inprocess" and args.ray_address:
        print("error: --ray-address needs --runtime flower", file=sys.stderr)
        return 2
    try:
        stated = preset_num_clients(args.run_config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    typed_clients = args.num_clients
    if args.num_clients is None:
        args.num_clients = stated or 10
    elif stated and args.num_clients != stated:
        print(f"note: the preset is made for {stated} clients; running {args.num_clients} "
              "(--num-clients)", file=sys.stderr)  # fmt: skip
    if args.num_clients < 1:
        print(f"error: --num-clients={args.num_clients}: it must be at least 1", file=sys.stderr)
        return 2
    comparing = args.strategies is not None or args.seeds is not None
    if args.resume is not None and comparing:
        print("error: --resume continues one run; a comparison (--strategies/--seeds) resumes "
              "its incomplete runs by itself when run again", file=sys.stderr)  # fmt: skip
        return 2
    try:
        try:
            federation, problems = parse_federation_config(args.federation_config), []
        except ConfigError as err:
            federation, problems = {}, [str(err)]
        one_run = None if comparing or args.resume is not None else args.num_clients
        overrides = command_line_overrides(args.run_config, args.set, problems, one_run)
        typed_here = typed_keys(args.run_config, args.set)
        if args.seeds is not None and "seed" in typed_here:
            raise ConfigError(
                f"--seeds {','.join(map(str, args.seeds))} names the seeds of a comparison; "
                f"seed={overrides['seed']} given with --set or --run-config would be dropped: "
                "leave it out"
            )
        if "out-dir" in typed_here and (args.out is not None or comparing):
            raise ConfigError(
                f"out-dir={overrides['out-dir']!r} and "
                + (f"--out {args.out}" if args.out is not None else "a comparison's folder")
                + " both say where the results go: give --out only"
            )
        if comparing:
            preset = next((Path(i).stem for i in args.run_config if "=" not in i), "")
            out = (args.out or ROOT / "results" / f"cmp-{preset or 'default'}").resolve()
            typed = typed_keys(args.run_config, args.set) if args.strategies else set()
            typed = {key: overrides[key] for key in typed}
            entries, problems = [], []  # the --strategies items' and the config's at once
            if args.strategies:
                try:
                    entries = comparison_entries(args.strategies, typed)
                except ConfigError as err:
                    problems = problems_of(err)
            try:
                base = resolve_run_config(overrides)
            except ConfigError as err:
                problems += problems_of(err)
            if problems:
                raise config_error(problems)
            entries = entries or comparison_entries([base["strategy"]], typed)
            labels = [entry.label for entry in entries]
            plans = plan_comparison(
                overrides, entries, args.seeds or [base["seed"]], out, args.num_clients
            )
            chosen = chosen_keys(args.run_config, args.set)
            note_unread_keys(sorted({plan["strategy"] for plan in plans}), chosen)
        elif args.resume is not None:
            if args.out is not None:
                raise ConfigError("--out: a resumed run stays in its folder (--resume RUN_DIR)")
            mapping, args.num_clients, after = resume_mapping(
                args.resume, overrides, typed_clients or stated
            )
            preflight(mapping, args.num_clients)
            print(f"resuming {args.resume} after round {after} (its newest good checkpoint), "
                  f"--runtime {args.runtime}")  # fmt: skip
        else:
            if args.out is not None:
                overrides["out-dir"] = str(args.out)
            mapping = resolve_run_config(overrides, args.num_clients)
            preflight(mapping, args.num_clients)
            note_unread_keys([mapping["strategy"]], chosen_keys(args.run_config, args.set))
        if args.runtime == "inprocess":
            # as many at once as Ray would run; a bad value stops before any work
            threads, at_once = client_resources(federation, available_cpus(), available_gpus())
            check_cuda_graphs_at_once(base if comparing else mapping, at_once, available_gpus())
            runner = functools.partial(
                run_in_this_process, client_threads=threads, concurrent_clients=at_once
            )
        else:
            if not args.ray_address:  # a client Ray cannot place would stop the run
                check_local_resources(federation, available_cpus(), available_gpus())
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
            title = f"{preset or base['dataset']}: " + ", ".join(labels)
            return run_comparison(plans, labels, out, args.num_clients, runner, title)
        return runner(mapping, args.num_clients, stream=not args.quiet)
    except KeyboardInterrupt:
        stopped = "the SuperLink and its processes were" if args.runtime == "flower" else "the run"
        if comparing:
            how = "run the same command again to resume its incomplete runs"
        else:  # the launcher names every run (launch.preflight.resolve_run_config)
            run_dir = Path(mapping["out-dir"]).expanduser() / mapping["run-name"]
            how = f"resume it from its newest checkpoint: {sys.argv[0]} --resume {run_dir}"
        print(f"\ninterrupted: {stopped} stopped; {how}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
