"""The ServerApp: validate the config, learn who the clients are, run the strategy, evaluate the
global model on the test set after every round and write the results as the run goes."""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from common import seeding
from common.acceleration import DeviceOptions, load_weights
from common.attacks import AttackSettings
from common.config import RunConfig
from common.errors import ConfigError
from common.evaluation import evaluate_model, resolve_device
from data.federation import cached_dataset
from data.own_data import OwnDataSpec
from data.transforms import config_pipeline
from models import build_model, check_model_fits, load_pretrained
from server_app.checkpoint import (
    Checkpoint,
    config_differences,
    latest_checkpoint,
    write_checkpoint,
)
from server_app.checks import check_run_config, pretrained_weights_path
from server_app.results import (
    RUNTIME_KEY,
    RunResults,
    code_version,
    default_run_name,
    library_versions,
)
from strategies.aggregation import is_finite_model
from strategies.maskedoptim import UNKNOWN_TRUTH, LabelExport, truth_known
from strategies.registry import build_strategy
from strategies.sampling import ClientRoster, ask_whoami, roster_from_whoami

app = ServerApp()

NO_TEST_SET = (
    "no test set (dataset without test-dir): the global model is not evaluated centrally; "
    "set fraction-evaluate > 0 for federated evaluation on the clients' own data"
)
CLIENT_WAIT_SECONDS = 600.0
REPLY_POLL_SECONDS = 0.2


class PromptGrid:
    """The Grid, but waiting for replies in steps of REPLY_POLL_SECONDS.

    In deployment, Flower 1.41's HttpGrid (what a ServerApp gets from `flwr run` against a
    SuperLink) looks for replies every 3 s, so every exchange of a round ends on average 1.5 s
    after its last reply arrived (simulation rounds do not wait like this). Pulling is one cheap
    call to the SuperLink.
    """

    def __init__(self, grid: Grid, poll_seconds: float = REPLY_POLL_SECONDS) -> None:
        self._grid = grid
        self.poll_seconds = poll_seconds

    def send_and_receive(self, messages, *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        if not messages:  # a round restored from a checkpoint sends nothing
            return []
        waiting = set(self._grid.push_messages(messages))
        deadline = time.monotonic() + (timeout if timeout is not None else 0.0)
        replies: list[Message] = []
        while timeout is None or time.monotonic() < deadline:
            arrived = list(self._grid.pull_messages(waiting))
            replies.extend(arrived)
            waiting.difference_update(m.metadata.reply_to_message_id for m in arrived)
            if not waiting:
                break
            time.sleep(self.poll_seconds)
        return replies

    def __getattr__(self, name: str):
        return getattr(self._grid, name)


def discover_clients(grid: Grid, wait_seconds: float = CLIENT_WAIT_SECONDS) -> ClientRoster:
    """Ask every connected node who it is until all partitions have answered (or time out)."""
    answers: dict[int, dict[str, float]] = {}
    deadline = time.monotonic() + wait_seconds
    while True:
        new_nodes = [n for n in grid.get_node_ids() if n not in answers]
        if new_nodes:
            found, failures = ask_whoami(grid, new_nodes, wait_seconds)
            if failures:  # before the run starts, a client that cannot answer stops it
                node, reason = next(iter(failures.items()))
                raise RuntimeError(f"the client on node {node} failed: {reason}")
            answers.update(found)
        expected = {int(a["num-partitions"]) for a in answers.values()}
        if len(expected) == 1 and len(answers) >= expected.pop():
            return roster_from_whoami(answers)
        if len(expected) > 1 or time.monotonic() > deadline:
            return roster_from_whoami(answers)  # raises with what is inconsistent or missing
        time.sleep(1.0)


def initial_model(config: RunConfig, dataset, purpose: int = seeding.MODEL_INIT):
    """The global model's seeded initialisation (torch's global RNG is left untouched); another
    seeding `purpose` gives another network (Co-teaching's second, seeding.PEER_INIT)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seeding.numpy_rng(config.seed, purpose).integers(2**62)))
        model = build_model(
            config.model,
            dataset.num_classes,
            vocab_size=dataset.vocab_size,
            pad_index=dataset.pad_index,
        )
    weights = pretrained_weights_path(config)
    if weights is not None:  # ImageNet features; the new head keeps its seeded init
        load_pretrained(model, weights)
    return model


class StrategyView(Protocol):
    """What the ServerApp reads from a strategy (strategies.base.SeededStrategy provides it;
    Flower's `start` runs the rounds)."""

    clients_per_round: int
    last_sampled: list[int]  # partitions trained in the last round
    last_uploads: int  # their replies
    last_nonfinite: list[int]  # partitions whose upload held NaN or inf (dropped)
    last_train_metrics: MetricRecord | None  # Flower's average of the train replies' metrics
    attack: AttackSettings  # the run's malicious clients (common.attacks)
    last_attackers: int  # uploads from attackers in the last round

    def start(self, *, grid, initial_arrays, num_rounds, evaluate_fn): ...

    def round_diagnostics(self) -> dict[str, Any]:
        """The strategy's own metrics.csv columns for the round just evaluated."""
        ...

    def final_report(self) -> dict[str, Any] | None:
        """detection.json's content, or None for a strategy that detects nothing."""
        ...


def with_attackers(report: dict[str, Any] | None, attack: AttackSettings):
    """detection.json's content with, under an attack, which attackers the detection flagged
    (`attack`: the attackers, the flagged ones, and how many honest clients were flagged)."""
    if report is None or attack.attack == "none":
        return report
    flagged = set((report.get("detection") or {}).get("flagged_noisy") or [])
    attackers = set(attack.attackers)
    return {
        **report,
        "attack": {
            "attack": attack.attack,
            "attackers": sorted(attackers),
            "attackers_flagged": sorted(attackers & flagged),
            "honest_flagged": sorted(flagged - attackers),
        },
    }


def resumed_checkpoint(config: RunConfig, run_dir: Path, num_clients: int) -> Checkpoint:
    """The newest good checkpoint of `run_dir` (server_app.checkpoint; a damaged newer one is
    refused with a warning), checked against this run's config and federation size: a resume
    must compute what the killed run computed (ConfigError naming what differs)."""
    if not config.run_name:
        raise ConfigError("resume=true needs run-name: the folder inside out-dir to continue")
    checkpoint, refused = latest_checkpoint(run_dir)
    for problem in refused:
        log(WARNING, "checkpoint refused: %s; the previous one is used", problem)
    differences = config_differences(checkpoint.payload["run_config"], config.to_mapping())
    if checkpoint.payload["num_clients"] != num_clients:
        differences.append(f"the number of clients ({checkpoint.payload['num_clients']} there)")
    if differences:
        raise ConfigError(
            f"cannot resume {run_dir}: this run differs from the checkpointed one in "
            f"{', '.join(differences)}"
        )
    return checkpoint


class RunDiverged(RuntimeError):
    """The global model became non-finite, or every upload of a round did (on-divergence)."""


@dataclass
class DivergenceWatch:
    first: str | None = None  # the first divergence seen (with on-divergence='continue')


def divergence(
    server_round: int, arrays: ArrayRecord, test_loss: float, dropped: int, uploads: int
) -> str | None:
    """Why round `server_round`'s global model counts as diverged, or None: its weights hold
    NaN or inf, its test loss is not finite, or every client's upload held NaN or inf (the
    round kept the previous model, so training stopped making progress)."""
    if not is_finite_model([array.numpy() for array in arrays.values()]):
        return f"round {server_round}: the global model's weights hold NaN or inf"
    if not math.isfinite(test_loss):
        return f"round {server_round}: the global model's test loss is {test_loss}"
    if uploads and dropped == uploads:
        return (
            f"round {server_round}: every upload ({dropped} of {uploads}) held NaN or inf, so "
            "the clients' training diverged (try a lower lr)"
        )
    return None


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig.from_mapping(context.run_config)  # bad values stop here, before any work
    check_run_config(config)
    grid = PromptGrid(grid)
    device = resolve_device(config.device)
    dataset = cached_dataset(
        config.dataset,
        config.data_dir,
        config.download,
        config.cifar10n_labels,
        OwnDataSpec.from_config(config),
    )
    check_model_fits(config.model, dataset.input_kind, dataset.input_shape)
    roster = discover_clients(grid)
    strategy: StrategyView = build_strategy(config, roster)
    log(INFO, "%s: %d clients per round (clients-per-round=%s, %d clients)", config.strategy,
        strategy.clients_per_round, config.clients_per_round, roster.num_clients)  # fmt: skip
    own = sorted(type(strategy.params).keys())  # its own keys, so a log shows what it ran with
    if own:
        values = config.to_mapping()
        log(INFO, "%s: %s", config.strategy, ", ".join(f"{key}={values[key]!r}" for key in own))

    run_name = config.run_name or default_run_name(config.strategy, config.dataset, config.seed)
    run_dir = Path(config.out_dir).expanduser().resolve() / run_name
    checkpoint = resumed_checkpoint(config, run_dir, roster.num_clients) if config.resume else None
    title = f"{config.strategy} on {config.dataset} (seed {config.seed})"
    if checkpoint is None:
        results = RunResults.create(
            run_dir,
            title=title,
            config={
                "run_config": config.to_mapping(),
                "run_name": run_name,
                "seed": config.seed,
                "versions": library_versions(),
                "code_version": code_version(),
                "server_device": str(device),
                # which runtime ran it: simulation.py --resume goes on with the same
                "runtime": context.node_config.get(RUNTIME_KEY, "flower"),
                "num_clients": roster.num_clients,
                "clients_per_round": strategy.clients_per_round,
                "client_examples": roster.examples_of_partition,
                "attack": strategy.attack.record(),
                "client_true_noise_rates": (
                    roster.true_noise_rates
                    if truth_known(roster.true_noise_rates)
                    else {"available": False, "reason": UNKNOWN_TRUTH}
                ),
                "central_evaluation": (
                    {"available": True, "test_samples": len(dataset.test_labels)}
                    if len(dataset.test_labels)
                    else {"available": False, "reason": NO_TEST_SET}
                ),
            },
        )
    else:
        strategy.restore_state(checkpoint.payload["strategy"], checkpoint.round)
        results = RunResults.resume(
            run_dir,
            title,
            rows=checkpoint.payload["rows"],
            elapsed_seconds=checkpoint.payload["elapsed_seconds"],
            note={"after_round": checkpoint.round, "checkpoint": checkpoint.path.name,
                  "code_version": code_version()},
        )  # fmt: skip
        log(INFO, "%s: resumed after round %d from %s", config.strategy, checkpoint.round,
            checkpoint.path)  # fmt: skip
    log(INFO, "%s: results go to %s", config.strategy, results.directory)
    if hasattr(strategy, "label_export"):  # clients that learn labels write them here
        strategy.label_export = LabelExport(str(results.directory), config.labels_every)
    if not len(dataset.test_labels):
        log(WARNING, "%s", NO_TEST_SET)

    options = DeviceOptions.from_config(config)
    options.apply_globals()
    model = options.prepare_model(initial_model(config, dataset).to(device))
    test_inputs = torch.as_tensor(dataset.test_inputs[:]).to(device)
    test_labels = torch.as_tensor(dataset.test_labels).to(device)
    pipeline = config_pipeline(config)

    def diagnostics() -> dict:
        """The strategy's own per-round columns (MaskedOptim: detection, label correction)."""
        columns = strategy.round_diagnostics()
        if columns and not results.has("detection.json"):
            results.write_json("detection.json", with_attackers(strategy.final_report(), attack))
        return columns

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if checkpoint is not None and server_round <= checkpoint.round:
            return None  # restored from the checkpoint (its rows are in metrics.csv)
        load_weights(model, arrays.to_torch_state_dict())
        result = None
        if len(test_labels):
            result = evaluate_model(
                model, test_inputs, test_labels, pipeline, config.eval_batch_size, options
            )
        train = strategy.last_train_metrics if server_round > 0 else None
        dropped = len(strategy.last_nonfinite) if server_round > 0 else 0
        test = {}
        if result is not None:
            test = {
                "test_accuracy": result.accuracy,
                "test_loss": result.loss,
                "test_macro_precision": result.macro_precision,
                "test_macro_recall": result.macro_recall,
                "test_macro_f1": result.macro_f1,
            }
        local = strategy.last_evaluate_metrics if server_round > 0 else None
        if local and "local-accuracy" in local:  # federated evaluation (fraction-evaluate)
            test["local_accuracy"] = float(local["local-accuracy"])
        results.add_round(
            {
                "round": server_round,
                **test,
                "train_loss": float(train["train-loss"]) if train else None,
                "clients": len(strategy.last_sampled) if server_round > 0 else 0,
                "nonfinite_uploads": dropped,
                "attackers": strategy.last_attackers if attacked and server_round > 0 else None,
                # mean over the round's clients (Flower averages metrics by num-examples)
                "client_train_seconds": float(train["train-seconds"]) if train else None,
                **diagnostics(),
            }
        )
        loss = result.loss if result is not None else 0.0  # no test set: weights and uploads
        problem = divergence(server_round, arrays, loss, dropped, strategy.last_uploads)
        if problem and watch.first is None:
            watch.first = problem
            if config.on_divergence == "stop":
                raise RunDiverged(problem)
            log(WARNING, "%s (on-divergence='continue': the run goes on)", problem)
        every = config.checkpoint_every
        if every and server_round % every == 0 and server_round < config.num_rounds:
            write_checkpoint(
                run_dir,
                server_round,
                {
                    "run_config": config.to_mapping(),
                    "num_clients": roster.num_clients,
                    "arrays": {key: array.numpy() for key, array in arrays.items()},
                    "strategy": strategy.checkpoint_state(),
                    "rows": results.rows,
                    "elapsed_seconds": results.elapsed(),
                    "diverged": watch.first,
                },
            )
        return MetricRecord(result.as_metrics("test-") if result is not None else {})

    attack = strategy.attack
    attacked = attack.attack != "none"
    watch = DivergenceWatch()
    initial_arrays = ArrayRecord(model.state_dict())
    if getattr(strategy, "needs_peer_model", False) and checkpoint is None:
        # Co-teaching's second network, built here once: the clients' threads share torch's
        # global RNG, so a seeded build on each client would race with the others'
        peer = initial_model(config, dataset, seeding.PEER_INIT)
        strategy.peer_model = {k: v.detach().cpu().numpy() for k, v in peer.state_dict().items()}
    if checkpoint is not None:  # the global model after the checkpoint's round
        watch.first = checkpoint.payload["diverged"]
        initial_arrays = ArrayRecord(
            array_dict={
                k: Array(np.array(v, order="C")) for k, v in checkpoint.payload["arrays"].items()
            }
        )
    try:
        strategy.start(
            grid=grid,
            initial_arrays=initial_arrays,
            num_rounds=config.num_rounds,
            evaluate_fn=evaluate_global,
        )
    except BaseException as err:
        status = {RunDiverged: "diverged", KeyboardInterrupt: "interrupted"}.get(
            type(err), "failed"
        )
        try:  # what detection found so far; never hide the run's own error
            report = with_attackers(strategy.final_report(), attack)
            if report is not None:
                results.write_json("detection.json", report)
        except Exception as report_error:
            log(WARNING, "detection.json not written: %s", report_error)
        reason = {
            "diverged": str(err),
            "interrupted": "interrupted (Ctrl-C or SIGTERM)",
        }.get(status) or traceback.format_exception_only(err)
        try:
            results.finish(status, error="".join(reason).strip() or type(err).__name__)
        except OSError as write_error:  # e.g. the disk is full: the launcher marks it
            log(WARNING, "summary.json not updated: %s", write_error)
        raise
    if hasattr(strategy, "export_labels"):  # the corrected labels at the end of the run
        strategy.export_labels(config.num_rounds)
    report = with_attackers(strategy.final_report(), attack)
    if report is not None:
        results.write_json("detection.json", report)
    extra = {"diverged": watch.first} if watch.first else {}
    summary = results.finish("completed", **extra)
    log(INFO, "%s: finished: %s", config.strategy, summary)
