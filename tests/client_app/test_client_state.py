"""client_app/state.py: a client's state survives a SuperNode restart through its state-dir."""

from __future__ import annotations

import numpy as np
from flwr.app import Context, RecordDict

from client_app.state import ClientStateStore


def context(run_id: int, node_config: dict) -> Context:
    """A SuperNode's context as a fresh process sees it: empty state."""
    return Context(
        run_id=run_id, node_id=5, node_config=node_config, state=RecordDict(), run_config={}
    )


def test_the_state_file_brings_labels_back_after_a_restart(tmp_path):
    node = {"state-dir": str(tmp_path), "partition-id": 3}
    logits = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    running = context(7, node)
    ClientStateStore(running, "masked-labels", 3).save(
        {"label-logits": logits, "masked-rounds": np.array(2)}
    )
    from_state = ClientStateStore(running, "masked-labels", 3).load()  # the same process
    assert from_state["masked-rounds"].shape == () and int(from_state["masked-rounds"]) == 2
    assert (tmp_path / "run-7" / "partition-3" / "masked-labels.npz").is_file()
    assert [p.name for p in (tmp_path / "run-7" / "partition-3").iterdir()] == [
        "masked-labels.npz"
    ]  # no temporary file left behind

    restarted = context(7, node)
    loaded = ClientStateStore(restarted, "masked-labels", 3).load()
    np.testing.assert_array_equal(loaded["label-logits"], logits)
    assert loaded["masked-rounds"].shape == () and int(loaded["masked-rounds"]) == 2
    assert "masked-labels" in restarted.state  # cached for the next message

    assert ClientStateStore(context(8, node), "masked-labels", 3).load() is None  # another run
    assert ClientStateStore(context(7, node), "masked-labels", 4).load() is None  # another client


def test_without_a_state_dir_the_state_lives_in_context_only(tmp_path):
    ctx = context(7, {"partition-id": 0})
    store = ClientStateStore(ctx, "fedcorr", 0)
    store.save({"labels": np.arange(5)})
    np.testing.assert_array_equal(store.load()["labels"], np.arange(5))
    assert ClientStateStore(context(7, {"partition-id": 0}), "fedcorr", 0).load() is None
    assert list(tmp_path.iterdir()) == []


def test_saving_again_replaces_the_file(tmp_path):
    node = {"state-dir": str(tmp_path)}
    ClientStateStore(context(1, node), "x", 0).save({"a": np.zeros(3)})
    ClientStateStore(context(1, node), "x", 0).save({"a": np.ones(3)})
    np.testing.assert_array_equal(ClientStateStore(context(1, node), "x", 0).load()["a"], 1.0)
