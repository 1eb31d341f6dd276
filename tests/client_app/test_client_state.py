"""client_app/state.py: a client's state survives a SuperNode restart through its state-dir, and
a resumed run reads the version of the round it resumes after."""

from __future__ import annotations

import numpy as np
from flwr.app import Context, RecordDict

from client_app.state import ClientStateStore


def context(run_id: int, node_config: dict, run_config: dict | None = None) -> Context:
    """A SuperNode's context as a fresh process sees it: empty state."""
    return Context(
        run_id=run_id,
        node_id=5,
        node_config=node_config,
        state=RecordDict(),
        run_config=run_config or {},
    )


def test_the_state_file_brings_labels_back_after_a_restart(tmp_path):
    node = {"state-dir": str(tmp_path), "partition-id": 3}
    logits = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    running = context(7, node)
    ClientStateStore(running, "masked-labels", 3, server_round=4).save(
        {"label-logits": logits, "masked-rounds": np.array(2)}
    )
    from_state = ClientStateStore(running, "masked-labels", 3, server_round=5).load()
    assert from_state["masked-rounds"].shape == () and int(from_state["masked-rounds"]) == 2
    folder = tmp_path / "run-7" / "partition-3"
    assert [p.name for p in folder.iterdir()] == ["masked-labels.round-4.npz"]  # no temp file

    restarted = context(7, node)
    loaded = ClientStateStore(restarted, "masked-labels", 3, server_round=5).load()
    np.testing.assert_array_equal(loaded["label-logits"], logits)
    assert loaded["masked-rounds"].shape == () and int(loaded["masked-rounds"]) == 2
    assert "masked-labels" in restarted.state  # cached for the next message

    assert ClientStateStore(context(8, node), "masked-labels", 3, 5).load() is None  # another run
    assert ClientStateStore(context(7, node), "masked-labels", 4, 5).load() is None  # other client


def test_without_a_folder_the_state_lives_in_context_only(tmp_path):
    ctx = context(7, {"partition-id": 0})
    store = ClientStateStore(ctx, "fedcorr", 0, server_round=1)
    store.save({"labels": np.arange(5)})
    np.testing.assert_array_equal(store.load()["labels"], np.arange(5))  # after its own save
    assert ClientStateStore(context(7, {"partition-id": 0}), "fedcorr", 0, 2).load() is None
    assert list(tmp_path.iterdir()) == []


def test_a_message_reads_the_versions_made_before_it():
    ctx = context(1, {})
    ClientStateStore(ctx, "x", 0, server_round=3).save({"a": np.zeros(2)})
    assert ClientStateStore(ctx, "x", 0, server_round=3).load() is None  # training in round 3
    assert ClientStateStore(ctx, "x", 0, 3, after_training=True).load() is not None  # a query
    assert ClientStateStore(ctx, "x", 0, server_round=4).load() is not None


def test_a_resumed_run_reads_the_version_of_its_checkpoint_round(tmp_path):
    """Checkpoints every 5 rounds; the killed run saved rounds 3, 6, 8 and 12. Resumed after
    round 10, a training message of round 11 reads round 8's version, though round 12's exists."""
    run = {"client-state-dir": str(tmp_path / "client-state"), "checkpoint-every": 5}
    killed = context(1, {}, run)
    for saved in (3, 6, 8, 12):
        ClientStateStore(killed, "x", 0, server_round=saved).save({"a": np.array(saved)})
    resumed = context(2, {}, run)  # a new run id, an empty context.state
    assert int(ClientStateStore(resumed, "x", 0, server_round=11).load()["a"]) == 8
    # Saving round 11 removes round 12's leftover of the killed attempt. A round-11 save must
    # serve resumes from checkpoints 10 and 5: the newest version at or before 5 (round 3)
    # and everything after it stay.
    ClientStateStore(resumed, "x", 0, server_round=11).save({"a": np.array(11)})
    folder = tmp_path / "client-state" / "partition-0"
    assert sorted(p.name for p in folder.iterdir()) == [
        "x.round-11.npz",
        "x.round-3.npz",
        "x.round-6.npz",
        "x.round-8.npz",
    ]


def test_without_checkpoints_only_the_newest_version_is_kept(tmp_path):
    node = {"state-dir": str(tmp_path)}
    ClientStateStore(context(1, node), "x", 0, server_round=1).save({"a": np.zeros(3)})
    ClientStateStore(context(1, node), "x", 0, server_round=2).save({"a": np.ones(3)})
    loaded = ClientStateStore(context(1, node), "x", 0, server_round=3).load()
    np.testing.assert_array_equal(loaded["a"], 1.0)
    assert [p.name for p in (tmp_path / "run-1" / "partition-0").iterdir()] == ["x.round-2.npz"]
