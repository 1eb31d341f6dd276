"""The app's ServerApp and ClientApp in one Python process: no Ray, no SuperLink.

`python simulation.py --runtime inprocess ...` runs a run (or a comparison) this way. The server's
messages go to `client_app.app.app` called directly, one client after another, each with its own
node Context kept for the whole run (so MaskedOptim's label logits persist as they do under
Flower), and every message crosses a protobuf round trip as it would between processes. The
strategy, the client code and the results files are the ones of a Flower run.

What it is for: a machine where Ray cannot be installed (the GPU benchmark machine, whose size
limit Ray's wheel exceeds), stepping through a run in a debugger, and speed on a small machine
(no Ray daemons, no SuperLink polling). Clients run as Ray would run them: `concurrent_clients`
at once (threads of this process; torch releases the GIL while it computes), each computing with
`client_threads` CPU threads, as a Ray actor given that many CPUs does (Ray sets OMP_NUM_THREADS
to them). With the same thread count, a run gives the same numbers as under Flower's runtime (CPU
kernels sum in an order that depends on the thread count; every client draws its randomness from
its own generators, so the order in which clients run does not matter). Replies come back in the
order of the messages. The server's own work (test evaluation, aggregation) keeps torch's default.
"""

from __future__ import annotations

import logging
import threading
import traceback
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context, Message, RecordDict
from flwr.app.error import Error
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.logger import FLOWER_LOGGER
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from launch.report import conclude
from server_app.results import RUNTIME_KEY

RUN_ID = 1
FIRST_NODE_ID = 1001  # any ids other than the SuperLink's


RESOURCE_KEYS = ("client-resources-num-cpus", "client-resources-num-gpus")


def crossed(message: Message) -> Message:
    """The message as the other side would receive it (serialised and parsed back)."""
    return message_from_proto(message_to_proto(message))


def client_resources(settings: dict[str, Any], cpus: int, gpus: int) -> tuple[int, int]:
    """(CPU threads per client, clients at once) for Flower federation settings (as parsed by
    common.overrides.parse_federation_config, e.g. {"client-resources-num-cpus": 1.0,
    "client-resources-num-gpus": 0.5}) on a machine with `cpus` CPUs and `gpus` GPUs, as Ray's
    backend derives them: min(cpus / num-cpus, gpus / num-gpus) actors (at least one), each with
    num-cpus threads; init-args-num-cpus / -num-gpus cap the machine's counts, as they cap Ray's.
    Without either client-resources key, Flower's Ray backend gives each client 2 CPUs; with
    only num-gpus, num-cpus is 1. Raises ValueError for a GPU share on a machine without GPU and
    for the Ray-only keys, which have no meaning here (nothing typed is silently ignored)."""
    ray_only = sorted(set(settings) - {*RESOURCE_KEYS, "init-args-num-cpus", "init-args-num-gpus"})
    if ray_only:
        raise ValueError(
            f"--federation-config {ray_only[0]} is a setting of Ray's runtime; it has no effect "
            "with --runtime inprocess (leave it out)"
        )
    cpus = min(cpus, settings.get("init-args-num-cpus", cpus))
    gpus = min(gpus, settings.get("init-args-num-gpus", gpus))
    unset_cpus = 1.0 if any(key in settings for key in RESOURCE_KEYS) else 2.0
    num_cpus = float(settings.get("client-resources-num-cpus", unset_cpus))
    num_gpus = float(settings.get("client-resources-num-gpus", 0.0))
    if num_cpus <= 0:
        raise ValueError(f"client-resources-num-cpus={num_cpus:g}: it must be above 0")
    if num_gpus < 0:
        raise ValueError(f"client-resources-num-gpus={num_gpus:g}: it must be 0 or more")
    if num_gpus > 0 and gpus == 0:
        raise ValueError(f"client-resources-num-gpus={num_gpus:g}, but this machine has no GPU")
    at_once = int(cpus // num_cpus)
    if num_gpus > 0:
        at_once = min(at_once, int(gpus // num_gpus))
    return max(1, int(num_cpus)), max(1, at_once)


def check_cuda_graphs_at_once(run_config: dict[str, Any], at_once: int, gpus: int) -> None:
    """Refuse `cuda-graphs` with several clients training at once in threads on a GPU (ValueError):
    not yet measured to work. On the H200 of 2026-11-29 eight threads recording at once crashed
    (recording has been serialised since, untried on a GPU), and one client at a time with CUDA
    graphs trained ResNet-18 at 22,000 images/s, above four eager clients together (4,300):
    docs/benchmarks.md §6."""
    on_gpu = gpus > 0 and run_config.get("device", "auto") != "cpu"
    if run_config.get("cuda-graphs") and on_gpu and at_once > 1:
        raise ValueError(
            f"cuda-graphs=true with {at_once} clients at once on the GPU (threads of the "
            "in-process runtime) is not measured to work yet; train one at a time with "
            "--federation-config "
            '"client-resources-num-gpus=1", or leave cuda-graphs off'
        )


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process, one Context per node."""

    def __init__(
        self,
        client_app,
        num_partitions: int,
        run_config: dict[str, Any],
        client_threads: int = 1,
        concurrent_clients: int = 1,
    ) -> None:
        if client_threads < 1 or concurrent_clients < 1:
            raise ValueError(
                f"client_threads={client_threads} and concurrent_clients={concurrent_clients}: "
                "each must be at least 1"
            )
        self.client_app = client_app
        self.client_threads = client_threads
        self.concurrent_clients = concurrent_clients
        self._run = Run.create_empty(RUN_ID)
        self.contexts = {
            FIRST_NODE_ID + partition: Context(
                run_id=RUN_ID,
                node_id=FIRST_NODE_ID + partition,
                node_config={"partition-id": partition, "num-partitions": num_partitions},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for partition in range(num_partitions)
        }
        self.replies: dict[str, Message] = {}
        # Kept for the run: a client's model is one per thread (client_app.app.ThreadModels).
        self._pool: ThreadPoolExecutor | None = None
        # Whose messages Message() makes in this process: the server's, as in a ServerApp process.
        TaskIdentity.task_id, TaskIdentity.run_id = 1, RUN_ID
        TaskIdentity.node_id = SUPERLINK_NODE_ID

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Handle every message now, up to `concurrent_clients` nodes at once (a node's own
        messages one after another, in order); the replies wait for pull_messages."""
        messages = list(messages)
        by_node: dict[int, list[Message]] = {}
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            by_node.setdefault(message.metadata.dst_node_id, []).append(message)

        def handle_node(node_messages: list[Message]) -> list[Message]:
            torch.set_num_threads(self.client_threads)  # this thread's kernels, as a Ray actor's
            return [self.handle(crossed(m)) for m in node_messages]

        server_threads = torch.get_num_threads()
        torch.set_num_threads(self.client_threads)
        try:
            if self.concurrent_clients == 1:
                answered = [handle_node(group) for group in by_node.values()]
            else:
                answered = list(self._workers().map(handle_node, by_node.values()))
        finally:
            torch.set_num_threads(server_threads)
        for group, replies in zip(by_node.values(), answered, strict=True):
            for message, reply in zip(group, replies, strict=True):
                self.replies[message.metadata.message_id] = reply
        return [message.metadata.message_id for message in messages]

    def handle(self, message: Message) -> Message:
        node = message.metadata.dst_node_id
        if node not in self.contexts:
            error = Error(code=ErrorCode.NODE_UNAVAILABLE, reason=f"no node {node}")
            reply = Message(error, reply_to=message)
            reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
        else:
            try:
                reply = self.client_app(message, self.contexts[node])
            except Exception as err:  # as Flower does: the server gets an error reply
                FLOWER_LOGGER.error("node %d's ClientApp raised:\n%s", node, traceback.format_exc())
                reason = f"{type(err)}:<'{err}'>"
                error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason)
                reply = Message(error, reply_to=message)
        reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
        return crossed(reply)

    def _workers(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrent_clients, thread_name_prefix="client")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(m) for m in message_ids if m in self.replies]

    def send_and_receive(self, messages, *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


@contextmanager
def flower_log_to(log_file: Path | None, quiet: bool):
    """Send Flower's log (the ServerApp's and the clients') to `log_file`, or keep it on the
    terminal (only warnings and errors when `quiet`)."""
    console = list(FLOWER_LOGGER.handlers)
    levels = [handler.level for handler in console]
    file_handler = None
    if log_file is not None:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s: %(message)s"))
        FLOWER_LOGGER.addHandler(file_handler)
    shown = logging.CRITICAL + 1 if log_file else logging.WARNING if quiet else logging.INFO
    for handler in console:
        handler.setLevel(shown)
    try:
        yield
    finally:
        for handler, level in zip(console, levels, strict=True):
            handler.setLevel(level)
        if file_handler is not None:
            FLOWER_LOGGER.removeHandler(file_handler)
            file_handler.close()


def forget_cached_clients() -> None:
    """Drop the client side's per-process caches (data on the device, models), so a sweep
    of runs in one process holds only the current run's."""
    from client_app import app as client_module

    client_module._local_client.cache_clear()
    client_module._process_shared.cache_clear()


def run_inprocess(
    mapping: dict[str, Any],
    num_clients: int,
    *,
    client_threads: int = 1,
    concurrent_clients: int = 1,
    stream: bool = True,
    log_file: Path | None = None,
    on_poll: Callable[[], None] | None = None,
) -> str:
    """Run the ServerApp with `mapping` as its run config against `num_clients` in-process
    clients; return "" when it ran to the end, else what stopped it."""
    from client_app.app import app as client_app
    from server_app.app import app as server_app

    grid = InProcessGrid(client_app, num_clients, mapping, client_threads, concurrent_clients)
    context = Context(
        run_id=RUN_ID,
        node_id=SUPERLINK_NODE_ID,
        node_config={RUNTIME_KEY: "inprocess"},  # recorded in config.json: --resume reuses it
        state=RecordDict(),
        run_config=dict(mapping),
    )
    finished = threading.Event()

    def poll() -> None:
        while not finished.wait(1.0):
            on_poll()

    poller = threading.Thread(target=poll, daemon=True) if on_poll is not None else None
    with flower_log_to(log_file, quiet=not stream):
        if poller is not None:
            poller.start()
        try:
            server_app(grid, context)
            return ""
        except Exception as err:
            if type(err).__name__ == "RunDiverged":  # the run's own verdict, not a bug
                FLOWER_LOGGER.error("ServerApp: the run diverged: %s", err)
                return str(err)
            FLOWER_LOGGER.error("ServerApp failed:\n%s", traceback.format_exc())
            return "".join(traceback.format_exception_only(err)).strip()
        finally:
            finished.set()
            grid.close()
            if poller is not None:
                poller.join()
            forget_cached_clients()


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
    """`launch.superlink.run_simulation`'s contract with the in-process runtime: no Ray, no
    SuperLink; `concurrent_clients` at once, each with `client_threads` CPU threads."""
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
