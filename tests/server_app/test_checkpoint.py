"""server_app/checkpoint.py: checkpoints are written atomically, the newest two kept; a damaged
one is refused, naming the file, and the one before it used."""

from __future__ import annotations

import numpy as np
import pytest

from common.config import app_defaults
from server_app.checkpoint import (
    CheckpointError,
    config_differences,
    described_differences,
    latest_checkpoint,
    read_checkpoint,
    write_checkpoint,
)


def payload(value: float) -> dict:
    return {"arrays": {"w": np.full(3, value, np.float32)}, "rows": [{"round": 1}]}


def test_the_newest_two_are_kept_and_read_back(tmp_path):
    for server_round in (2, 4, 6):
        write_checkpoint(tmp_path, server_round, payload(server_round))
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["round-00004.ckpt", "round-00006.ckpt"]  # no temporary file left
    checkpoint, refused = latest_checkpoint(tmp_path)
    assert checkpoint.round == 6 and refused == []
    assert checkpoint.payload["arrays"]["w"].tolist() == [6.0, 6.0, 6.0]


@pytest.mark.parametrize("damage", ["truncate", "flip", "header"])
def test_a_damaged_checkpoint_is_refused_and_the_previous_one_used(tmp_path, damage):
    write_checkpoint(tmp_path, 2, payload(2))
    newest = write_checkpoint(tmp_path, 4, payload(4))
    data = newest.read_bytes()
    if damage == "truncate":  # a write cut short
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # one byte changed on disk
        newest.write_bytes(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    else:
        newest.write_bytes(b"something else\n" + data)
    checkpoint, refused = latest_checkpoint(tmp_path)
    assert checkpoint.round == 2
    assert len(refused) == 1 and "round-00004.ckpt" in refused[0]
    with pytest.raises(CheckpointError, match="round-00004.ckpt"):
        read_checkpoint(newest)


def test_without_a_usable_checkpoint_the_error_says_why(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint files"):
        latest_checkpoint(tmp_path)
    write_checkpoint(tmp_path, 2, payload(2)).write_bytes(b"")
    with pytest.raises(CheckpointError, match="bad header"):
        latest_checkpoint(tmp_path)


def test_config_differences_ignore_where_things_live():
    stored = {**app_defaults(), "lr": 0.1}
    wanted = {**stored, "out-dir": "/elsewhere", "resume": True, "client-state-dir": "/x"}
    assert config_differences(stored, wanted) == []
    assert config_differences(stored, {**wanted, "lr": 0.2, "seed": 9}) == ["lr", "seed"]
    older = {k: v for k, v in stored.items() if k != "attack"}  # made before the key existed
    assert config_differences(older, wanted) == []
    assert config_differences(older, {**wanted, "attack": "ipm"}) == ["attack"]
    assert described_differences(stored, ["lr", "seed"]) == [
        "lr (0.1 there)",
        f"seed ({app_defaults()['seed']!r} there)",
    ]
    assert described_differences(older, ["attack"]) == [
        f"attack ({app_defaults()['attack']!r} there)"
    ]
