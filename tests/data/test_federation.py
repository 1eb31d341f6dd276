"""Tests for data/federation.py and ClientData.from_federation, on scikit-learn's digits."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from data.client_data import ClientData
from data.datasets import load_dataset
from data.federation import DataSettings, build_federation, own_data_federation

NUM_CLIENTS = 10
SETTINGS = DataSettings(
    dataset="digits",
    data_dir="",
    download=False,
    cifar10n_labels="worse",
    partition="dirichlet",
    dirichlet_alpha=1.0,
    dirichlet_min_size=40,
    shards_per_client=5,
    noise_type="symmetric",
    noise_rate="0.0,0.6",
    noise_groups="",
    seed=1,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", None)


@pytest.fixture(scope="module")
def federation(digits):
    return build_federation(SETTINGS, NUM_CLIENTS, digits)


def test_same_settings_give_the_same_federation(digits, federation):
    again = build_federation(SETTINGS, NUM_CLIENTS, digits)
    assert again.num_clients == NUM_CLIENTS
    for a, b in zip(federation.client_indices, again.client_indices, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(federation.observed_labels, again.observed_labels)
    np.testing.assert_array_equal(federation.noise_rates, again.noise_rates)
    assert federation.noise_kinds == again.noise_kinds


def test_another_seed_gives_another_federation(digits, federation):
    other = build_federation(dataclasses.replace(SETTINGS, seed=2), NUM_CLIENTS, digits)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(federation.client_indices, other.client_indices, strict=True)
    )
    assert not np.array_equal(federation.observed_labels, other.observed_labels)


def test_clients_are_disjoint_and_hold_the_training_split(digits, federation):
    every = np.concatenate(federation.client_indices)
    assert len(np.unique(every)) == len(every)
    assert every.min() >= 0 and every.max() < len(digits.train_labels)
    # the Dirichlet partition assigns every sample, with at least min_size per client
    assert len(every) == len(digits.train_labels)
    assert min(len(i) for i in federation.client_indices) >= SETTINGS.dirichlet_min_size


def test_partition_is_on_clean_labels_only(digits):
    """Changing the noise does not move samples between clients."""
    clean = build_federation(dataclasses.replace(SETTINGS, noise_type="none"), NUM_CLIENTS, digits)
    noisy = build_federation(SETTINGS, NUM_CLIENTS, digits)
    for a, b in zip(clean.client_indices, noisy.client_indices, strict=True):
        np.testing.assert_array_equal(a, b)


def test_realised_noise_rates_follow_the_ramp(digits, federation):
    low, high = 0.0, 0.6
    assert federation.noise_kinds == ("symmetric",) * NUM_CLIENTS
    for j, indices in enumerate(federation.client_indices):
        n = len(indices)
        rate = low + j * (high - low) / NUM_CLIENTS  # 0.06 * j
        expected = math.floor(n * rate) / n
        assert federation.noise_rates[j] == pytest.approx(expected, abs=1e-12)
        wrong = federation.observed_labels[indices] != digits.train_clean_labels[indices]
        assert federation.noise_rates[j] == pytest.approx(wrong.mean(), abs=1e-12)
    assert federation.noise_rates[0] == 0.0
    assert federation.noise_rates[-1] > 0.5


def test_observed_labels_are_valid_classes(digits, federation):
    assert federation.observed_labels.dtype == np.int64
    assert federation.observed_labels.min() >= 0
    assert federation.observed_labels.max() < digits.num_classes


def test_no_noise_leaves_the_labels_clean(digits):
    fed = build_federation(dataclasses.replace(SETTINGS, noise_type="none"), NUM_CLIENTS, digits)
    np.testing.assert_array_equal(fed.observed_labels, digits.train_clean_labels)
    assert fed.noise_kinds == ("clean",) * NUM_CLIENTS
    assert (fed.noise_rates == 0).all()


def test_building_does_not_modify_the_dataset(digits):
    labels = digits.train_labels.copy()
    build_federation(SETTINGS, NUM_CLIENTS, digits)
    np.testing.assert_array_equal(digits.train_labels, labels)
    np.testing.assert_array_equal(digits.train_clean_labels, labels)


def test_client_data_from_federation(digits, federation):
    for pid in (0, NUM_CLIENTS - 1):
        data = ClientData.from_federation(federation, pid, torch.device("cpu"))
        indices = federation.client_indices[pid]
        n = len(indices)
        assert data.partition_id == pid
        assert len(data) == n
        assert data.inputs.device.type == "cpu"
        assert data.observed_labels.device.type == "cpu"
        assert data.inputs.shape == (n, 1, 8, 8)
        assert data.inputs.dtype == torch.uint8
        assert data.observed_labels.shape == (n,) and data.clean_labels.shape == (n,)
        assert data.observed_labels.dtype == torch.int64
        np.testing.assert_array_equal(data.inputs.numpy(), digits.train_inputs[indices])
        np.testing.assert_array_equal(
            data.observed_labels.numpy(), federation.observed_labels[indices]
        )
        np.testing.assert_array_equal(data.clean_labels.numpy(), digits.train_clean_labels[indices])
        assert data.num_classes == 10
        prior = data.class_prior()
        assert prior.shape == (10,)
        assert float(prior.sum()) == pytest.approx(1.0)
        expected = np.bincount(federation.observed_labels[indices], minlength=10) / n
        np.testing.assert_allclose(prior.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("pid", [-1, NUM_CLIENTS, NUM_CLIENTS + 5])
def test_out_of_range_partition_id_raises(federation, pid):
    with pytest.raises(ValueError, match=f"partition-id {pid}"):
        ClientData.from_federation(federation, pid, torch.device("cpu"))


# --- a SuperNode with its own data (node-config data-dir) ---------------------------------------


def own_copy(dataset, indices):
    """A dataset holding only the samples `indices` (as a client's own folder would)."""
    return dataclasses.replace(
        dataset,
        train_inputs=dataset.train_inputs[indices],
        train_labels=dataset.train_labels[indices],
        train_clean_labels=dataset.train_clean_labels[indices],
    )


@pytest.mark.parametrize("client", [0, 7])
def test_own_data_gets_the_noise_the_carved_client_would_get(digits, federation, client):
    indices = federation.client_indices[client]
    own = own_data_federation(SETTINGS, NUM_CLIENTS, client, own_copy(digits, indices))
    np.testing.assert_array_equal(own.observed_labels, federation.observed_labels[indices])
    assert own.noise_rates[client] == federation.noise_rates[client]
    assert [len(i) for i in own.client_indices] == [
        len(indices) if c == client else 0 for c in range(NUM_CLIENTS)
    ]
    data = ClientData.from_federation(own, client, torch.device("cpu"))
    assert torch.equal(data.inputs, torch.as_tensor(digits.train_inputs[indices]))


def test_own_data_keeps_its_labels_without_planned_noise(digits):
    settings = dataclasses.replace(SETTINGS, noise_type="none")
    own = own_data_federation(settings, NUM_CLIENTS, 3, own_copy(digits, np.arange(50)))
    np.testing.assert_array_equal(own.observed_labels, digits.train_labels[:50])
    assert own.noise_rates[3] == 0.0


def test_own_data_needs_a_partition_id_in_range(digits):
    with pytest.raises(ValueError, match="partition-id 10 is outside 0..9"):
        own_data_federation(SETTINGS, NUM_CLIENTS, 10, own_copy(digits, np.arange(5)))
