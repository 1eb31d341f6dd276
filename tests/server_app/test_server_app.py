"""server_app/app.py: the ServerApp's own wait for replies (PromptGrid)."""

from __future__ import annotations

from types import SimpleNamespace

from server_app.app import PromptGrid


class SlowGrid:
    """Replies to message i become available at pull number i + 1; counts the pulls."""

    def __init__(self) -> None:
        self.pulls = 0
        self.pushed: list[str] = []

    def push_messages(self, messages):
        self.pushed = [f"m{i}" for i, _ in enumerate(messages)]
        return list(self.pushed)

    def pull_messages(self, ids):
        self.pulls += 1
        ready = [i for i in sorted(ids) if int(i[1:]) < self.pulls]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ready]

    def get_node_ids(self):
        return [7, 8]


def test_replies_are_collected_until_all_have_arrived():
    slow = SlowGrid()
    replies = PromptGrid(slow, poll_seconds=0.0).send_and_receive(["a", "b", "c"], timeout=10)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert slow.pulls == 3  # stops as soon as the last one is in
    assert PromptGrid(slow).get_node_ids() == [7, 8]  # everything else is the Grid's


def test_the_wait_ends_at_the_timeout_with_what_arrived():
    slow = SlowGrid()
    replies = PromptGrid(slow, poll_seconds=0.05).send_and_receive(["a"] * 1000, timeout=0.2)
    assert 1 <= len(replies) < 1000
