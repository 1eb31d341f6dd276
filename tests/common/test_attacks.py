"""Each attack's formula on tiny arrays, against values computed by hand (common.attacks)."""

from __future__ import annotations

import numpy as np
import pytest

from common.attacks import (
    alie,
    alie_z_max,
    attacker_set,
    flip_labels,
    gaussian_update,
    ipm,
    sign_flip,
)

HONEST = [np.array([1.0, 2.0], dtype=np.float32), np.array([3.0, 6.0], dtype=np.float32)]


def test_sign_flip_negates_and_scales():
    assert sign_flip(np.array([1.0, -2.0]), 3.0).tolist() == [-3.0, 6.0]
    with pytest.raises(ValueError, match="scale must be >= 0"):
        sign_flip(np.zeros(2), -1.0)


def test_alie_z_max_follows_baruch_et_al():
    # n = 10, f = 2: s = floor(6) - 2 = 4, z = Phi^-1(0.6) = 0.253347
    assert alie_z_max(10, 2) == pytest.approx(0.253347, abs=1e-6)
    # n = 100, f = 20: s = 51 - 20 = 31, z = Phi^-1(0.69) = 0.495850
    assert alie_z_max(100, 20) == pytest.approx(0.495850, abs=1e-6)
    with pytest.raises(ValueError, match="0 < attackers < clients"):
        alie_z_max(10, 0)


def test_alie_is_mean_plus_z_std_per_coordinate():
    # mean [2, 4], population std [1, 2]; z(10, 2) = 0.253347
    out = alie(HONEST, 10, 2)
    assert out.dtype == np.float32
    assert out == pytest.approx([2 + 0.253347, 4 + 2 * 0.253347], abs=1e-5)


def test_ipm_is_minus_epsilon_times_the_honest_mean():
    assert ipm(HONEST, 0.5).tolist() == [-1.0, -2.0]
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        ipm(HONEST, -1)


def test_gaussian_update_has_its_moments_and_seed():
    draw = gaussian_update((20_000,), 1.0, 2.0, np.random.default_rng(0))
    assert draw.dtype == np.float32 and abs(draw.mean() - 1.0) < 0.05 and abs(draw.std() - 2) < 0.05
    assert np.array_equal(draw, gaussian_update((20_000,), 1.0, 2.0, np.random.default_rng(0)))


def test_label_flip_maps_y_to_c_minus_1_minus_y():
    assert flip_labels(np.array([0, 3, 9]), 10).tolist() == [9, 6, 0]
    with pytest.raises(ValueError, match="labels must lie in"):
        flip_labels(np.array([10]), 10)


def test_the_attackers_are_a_seeded_subset_of_the_given_fraction():
    first = attacker_set(50, 0.2, np.random.default_rng(7))
    assert len(first) == 10 and first == attacker_set(50, 0.2, np.random.default_rng(7))
    assert (
        all(0 <= c < 50 for c in first) and attacker_set(50, 0.0, np.random.default_rng(7)) == set()
    )
    with pytest.raises(ValueError, match="fraction must be in"):
        attacker_set(10, 1.5, np.random.default_rng(0))
