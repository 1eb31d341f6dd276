"""The in-process Grid: replies as Flower's runtime gives them, state kept per node."""

from __future__ import annotations

import threading

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID

from client_app.app import ThreadModels
from launch.inprocess import InProcessGrid, check_cuda_graphs_at_once, client_resources
from launch.overrides import parse_federation_config

counter_app = ClientApp()


@counter_app.query()
def count(message: Message, context: Context) -> Message:
    """Counts this node's messages in context.state; fails on request."""
    if message.content["config"]["fail"]:
        raise ValueError("asked to fail")
    seen = context.state.get("seen", ConfigRecord({"n": 0}))
    seen["n"] = int(seen["n"]) + 1
    context.state["seen"] = seen
    reply = ConfigRecord({"n": seen["n"], "partition": context.node_config["partition-id"]})
    return Message(RecordDict({"reply": reply}), reply_to=message)


# Two nodes' handlers meet here: it only lets them through when they run at the same time.
meeting = threading.Barrier(2, timeout=10)


@counter_app.query("meet")
def meet(message: Message, context: Context) -> Message:
    meeting.wait()
    reply = ConfigRecord(
        {"partition": context.node_config["partition-id"], "threads": torch.get_num_threads()}
    )
    return Message(RecordDict({"reply": reply}), reply_to=message)


def ask(grid: InProcessGrid, node: int, fail: bool = False) -> Message:
    content = RecordDict({"config": ConfigRecord({"fail": fail})})
    (reply,) = grid.send_and_receive([Message(content, node, "query")])
    return reply


def test_each_node_keeps_its_own_state_and_partition():
    grid = InProcessGrid(counter_app, num_partitions=3, run_config={})
    first, second, *_ = grid.get_node_ids()
    assert len(list(grid.get_node_ids())) == 3
    replies = [ask(grid, first), ask(grid, first), ask(grid, second)]
    assert [r.content["reply"]["n"] for r in replies] == [1, 2, 1]
    assert [r.content["reply"]["partition"] for r in replies] == [0, 0, 1]
    assert all(r.metadata.src_node_id in (first, second) for r in replies)


def test_a_failing_client_and_an_unknown_node_give_error_replies():
    grid = InProcessGrid(counter_app, num_partitions=1, run_config={})
    (node,) = grid.get_node_ids()
    failed = ask(grid, node, fail=True)
    assert failed.has_error() and "asked to fail" in failed.error.reason
    assert failed.metadata.src_node_id == node
    missing = ask(grid, 99)
    # As the SuperLink answers for a node that is gone: the strategy drops such replies.
    assert missing.has_error() and missing.metadata.src_node_id == SUPERLINK_NODE_ID


def test_concurrent_clients_run_at_once_and_reply_in_message_order():
    grid = InProcessGrid(counter_app, 4, run_config={}, client_threads=1, concurrent_clients=2)
    try:
        nodes = list(grid.get_node_ids())
        meet_messages = [Message(RecordDict(), node, "query.meet") for node in reversed(nodes)]
        replies = list(grid.send_and_receive(meet_messages))
        assert not any(r.has_error() for r in replies), [r.error for r in replies if r.has_error()]
        assert [r.content["reply"]["partition"] for r in replies] == [3, 2, 1, 0]
        assert all(r.content["reply"]["threads"] == 1 for r in replies)  # the client's threads
        # Several messages to one node in one batch are handled one after another, in order.
        content = RecordDict({"config": ConfigRecord({"fail": False})})
        twice = [Message(content, nodes[0], "query"), Message(content, nodes[0], "query")]
        assert [r.content["reply"]["n"] for r in grid.send_and_receive(twice)] == [1, 2]
    finally:
        grid.close()


@pytest.mark.parametrize(
    ("federation_config", "cpus", "gpus", "expected"),
    [
        ("", 2, 0, (2, 1)),  # Flower's Ray backend's default: 2 CPUs a client
        ("client-resources-num-cpus=1 client-resources-num-gpus=0", 2, 0, (1, 2)),  # ours
        ("client-resources-num-cpus=2", 2, 0, (2, 1)),
        ("client-resources-num-cpus=4", 2, 0, (4, 1)),  # never fewer than one client
        ("client-resources-num-cpus=0.5", 2, 0, (1, 4)),
        ("client-resources-num-cpus=1 client-resources-num-gpus=0.25", 16, 1, (1, 4)),
        ("client-resources-num-cpus=8 client-resources-num-gpus=0.25", 16, 1, (8, 2)),
        ("client-resources-num-cpus=1 init-args-num-cpus=1", 2, 0, (1, 1)),  # Ray's cap
    ],
)
def test_client_resources_follow_rays_rule(federation_config, cpus, gpus, expected):
    assert client_resources(parse_federation_config(federation_config), cpus, gpus) == expected


@pytest.mark.parametrize(
    ("federation_config", "message"),
    [
        ("client-resources-num-cpus=0", "client-resources-num-cpus=0: it must be above 0"),
        ("client-resources-num-cpus=many", "client-resources-num-cpus=many is not a TOML value"),
        ("client-resources-num-cpus=1 verbose=true", "verbose is a setting of Ray's runtime"),
        ("num-supernodes=10", "num-supernodes is set by --num-clients"),
        ("client-resources-num-cpu=1", "did you mean 'client-resources-num-cpus'"),
        ("client-resources-num-cpus=1 stray", "'stray' is not key=value"),
        ("client-resources-num-gpus=-1", "client-resources-num-gpus=-1: it must be 0 or more"),
        ("client-resources-num-gpus=0.5", "this machine has no GPU"),
    ],
)
def test_bad_client_resources_are_refused(federation_config, message):
    with pytest.raises(ValueError, match=message):
        client_resources(parse_federation_config(federation_config), cpus=2, gpus=0)


@pytest.mark.parametrize(
    ("run_config", "at_once", "gpus", "refused"),
    [
        ({"cuda-graphs": True, "device": "auto"}, 8, 1, True),
        ({"cuda-graphs": True, "device": "cuda"}, 2, 1, True),
        ({"cuda-graphs": True, "device": "auto"}, 1, 1, False),  # one client at a time
        ({"cuda-graphs": True, "device": "cpu"}, 8, 1, False),  # a no-op off CUDA
        ({"cuda-graphs": True, "device": "auto"}, 8, 0, False),
        ({"cuda-graphs": False, "device": "auto"}, 8, 1, False),
    ],
)
def test_cuda_graphs_with_several_clients_at_once_on_a_gpu_are_refused(
    run_config, at_once, gpus, refused
):
    if refused:
        with pytest.raises(ValueError, match="client-resources-num-gpus=1"):
            check_cuda_graphs_at_once(run_config, at_once, gpus)
    else:
        check_cuda_graphs_at_once(run_config, at_once, gpus)


def test_each_thread_gets_its_own_model_and_keeps_it():
    models = ThreadModels(lambda: torch.nn.Linear(2, 2))
    seen = {}

    def use(name):
        seen[name] = (models.get(), models.get())

    threads = [threading.Thread(target=use, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen["a"][0] is seen["a"][1] and seen["b"][0] is seen["b"][1]
    assert seen["a"][0] is not seen["b"][0]
    assert models.get() is models.get()
