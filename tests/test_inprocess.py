"""The in-process Grid: replies as Flower's runtime gives them, state kept per node."""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID

from inprocess import InProcessGrid

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
