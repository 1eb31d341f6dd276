"""The ServerApp: validate the config, learn who the clients are, run the strategy, evaluate the
global model on the test set after every round and write the results as the run goes."""

from __future__ import annotations

import time
import traceback
from logging import INFO, WARNING
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from common import seeding
from common.config import RunConfig
from common.evaluation import evaluate_model, resolve_device
from data.federation import cached_dataset
from data.transforms import pipeline_for
from models import build_model, check_model_fits
from server_app.results import RunResults, default_run_name, library_versions
from strategies.registry import build_strategy
from strategies.sampling import ClientRoster, ask_whoami, roster_from_whoami

app = ServerApp()

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


def initial_model(config: RunConfig, dataset):
    """The global model's seeded initialisation (torch's global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seeding.numpy_rng(config.seed, seeding.MODEL_INIT).integers(2**62)))
        return build_model(
            config.model,
            dataset.num_classes,
            vocab_size=dataset.vocab_size,
            pad_index=dataset.pad_index,
        )


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig.from_mapping(context.run_config)  # bad values stop here, before any work
    grid = PromptGrid(grid)
    device = resolve_device(config.device)
    dataset = cached_dataset(
        config.dataset, config.data_dir, config.download, config.cifar10n_labels
    )
    check_model_fits(config.model, dataset.input_kind, dataset.input_shape)
    roster = discover_clients(grid)
    strategy = build_strategy(config, roster)
    warmup = getattr(strategy, "warmup_rounds", None)
    if warmup is not None and warmup >= config.num_rounds:
        log(
            WARNING,
            "%s: its warm-up (%d rounds) is not shorter than num-rounds=%d, so noisy-client "
            "detection never runs and every round is warm-up",
            config.strategy,
            warmup,
            config.num_rounds,
        )

    run_name = config.run_name or default_run_name(config.strategy, config.dataset, config.seed)
    results = RunResults.create(
        Path(config.out_dir).expanduser().resolve() / run_name,
        title=f"{config.strategy} on {config.dataset} (seed {config.seed})",
        config={
            "run_config": config.to_mapping(),
            "run_name": run_name,
            "seed": config.seed,
            "versions": library_versions(),
            "server_device": str(device),
            "num_clients": roster.num_clients,
            "clients_per_round": strategy.clients_per_round,
            "client_examples": roster.examples_of_partition,
            "client_true_noise_rates": roster.true_noise_rates,
        },
    )
    log(INFO, "maskedoptim: results go to %s", results.directory)

    model = initial_model(config, dataset).to(device)
    test_inputs = torch.as_tensor(dataset.test_inputs[:]).to(device)
    test_labels = torch.as_tensor(dataset.test_labels).to(device)
    pipeline = pipeline_for(config.dataset)

    def diagnostics() -> dict:
        """The strategy's own per-round columns (MaskedOptim: detection, label correction)."""
        if not hasattr(strategy, "round_diagnostics"):
            return {}
        columns = strategy.round_diagnostics()
        if columns and not results.has("detection.json"):
            results.write_json("detection.json", strategy.final_report())
        return columns

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        result = evaluate_model(model, test_inputs, test_labels, pipeline, config.eval_batch_size)
        train = strategy.last_train_metrics if server_round > 0 else None
        results.add_round(
            {
                "round": server_round,
                "test_accuracy": result.accuracy,
                "test_loss": result.loss,
                "test_macro_precision": result.macro_precision,
                "test_macro_recall": result.macro_recall,
                "test_macro_f1": result.macro_f1,
                "train_loss": float(train["train-loss"]) if train else None,
                "clients": len(strategy.last_sampled) if server_round > 0 else 0,
                # mean over the round's clients (Flower averages metrics by num-examples)
                "client_train_seconds": float(train["train-seconds"]) if train else None,
                **diagnostics(),
            }
        )
        return MetricRecord(result.as_metrics("test-"))

    initial_arrays = ArrayRecord(model.state_dict())
    try:
        strategy.start(
            grid=grid,
            initial_arrays=initial_arrays,
            num_rounds=config.num_rounds,
            evaluate_fn=evaluate_global,
        )
    except BaseException as err:
        results.finish("failed", error="".join(traceback.format_exception_only(err)).strip())
        raise
    if hasattr(strategy, "final_report"):
        results.write_json("detection.json", strategy.final_report())
    summary = results.finish("completed")
    log(INFO, "maskedoptim: finished: %s", summary)
