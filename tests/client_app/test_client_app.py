"""client_app/app.py: what a SuperNode's node-config decides (which client, which data)."""

from __future__ import annotations

import pytest
from flwr.app import Context, RecordDict

from client_app.app import local_client
from common.config import app_defaults
from fakedata import write_own_cifar


def context(node_config: dict, **run_config) -> Context:
    # data-dir in the run config is the server's copy (its test split); a client with its own
    # data never reads it
    config = app_defaults() | {"device": "cpu", "data-dir": "/server/only"} | run_config
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(),
                   run_config=config)  # fmt: skip


def test_a_client_with_its_own_data_dir_trains_on_all_of_it(tmp_path):
    x, y = write_own_cifar(tmp_path, sizes=(6, 5))
    node = {"partition-id": 2, "num-partitions": 4, "data-dir": str(tmp_path)}
    run = {"dataset": "cifar10", "model": "lenet", "noise-type": "none", "batch-size": 8}
    client = local_client(context(node, **run))
    assert client.data.partition_id == 2 and len(client.data) == 11
    assert client.data.inputs.shape == (11, 3, 32, 32)
    assert client.data.observed_labels.tolist() == y.tolist()
    assert client.noise_rate == 0.0


def test_a_client_with_its_own_data_gets_its_planned_noise(tmp_path):
    write_own_cifar(tmp_path, sizes=(200,))
    node = {"partition-id": 3, "num-partitions": 4, "data-dir": str(tmp_path)}
    run = {"dataset": "cifar10", "model": "lenet", "noise-rate": "0.0,0.6", "seed": 7}
    client = local_client(context(node, **run))
    assert 0.3 < client.noise_rate <= 0.6  # the last of 4 clients on a 0.0-0.6 ramp


def test_a_node_config_without_its_client_is_refused():
    with pytest.raises(ValueError, match="needs partition-id and num-partitions"):
        local_client(context({"data-dir": "/data"}))


def test_a_client_with_its_own_data_too_small_for_one_batch_is_refused(tmp_path):
    write_own_cifar(tmp_path, sizes=(6, 5))
    node = {"partition-id": 1, "num-partitions": 2, "data-dir": str(tmp_path)}
    run = {"dataset": "cifar10", "model": "lenet", "noise-type": "none", "batch-size": 16}
    with pytest.raises(ValueError, match="client 1 holds 11 samples, fewer than batch-size=16"):
        local_client(context(node, **run))
