"""Each attack's formula on tiny arrays, against values computed by hand (common.attacks)."""

from __future__ import annotations

import numpy as np
import pytest

from common.attacks import (
    AttackSettings,
    alie,
    alie_z_max,
    attacked_keys,
    attacker_set,
    check_attack,
    flip_labels,
    gaussian_update,
    ipm,
    mimic_honest,
    poison_model,
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


def settings(attack: str, **changes) -> AttackSettings:
    values = dict(attack=attack, fraction=0.2, scale=2.0, mean=0.5, std=0.0, epsilon=0.5)
    return AttackSettings(**values | changes, attackers=frozenset({1}))


def test_attacked_keys_are_the_float_tensors_but_batchnorm_statistics():
    state = {
        "fc.weight": np.zeros(2, np.float32),
        "bn.weight": np.zeros(2, np.float32),
        "bn.running_mean": np.zeros(2, np.float32),
        "bn.running_var": np.ones(2, np.float32),
        "bn.num_batches_tracked": np.array(3, np.int64),
    }
    assert attacked_keys(state) == ["fc.weight", "bn.weight"]


def test_poison_model_flips_or_replaces_the_update_and_keeps_dtypes():
    received = {"w": np.array([1.0, 1.0], np.float32), "n": np.array(3, np.int64)}
    upload = {"w": np.array([2.0, 0.5], np.float32), "n": np.array(5, np.int64)}
    # sign-flip with scale 2: received - 2 * (upload - received) = [1 - 2, 1 + 1]
    flipped = poison_model(upload, received, ["w"], settings("sign-flip"), np.random.default_rng(0))
    assert flipped["w"].tolist() == [-1.0, 2.0] and flipped["w"].dtype == np.float32
    assert flipped["n"] == 5  # not in keys: honest
    # gaussian with std 0: received + mean
    noisy = poison_model(upload, received, ["w"], settings("gaussian"), np.random.default_rng(0))
    assert noisy["w"].tolist() == [1.5, 1.5]
    with pytest.raises(ValueError, match="does not poison"):
        poison_model(upload, received, ["w"], settings("alie"), np.random.default_rng(0))


def test_mimic_honest_is_alie_or_ipm_and_copes_with_an_attacker_majority():
    assert mimic_honest(settings("ipm"), HONEST, 3, 1).tolist() == [-1.0, -2.0]
    # n = 3, f = 1: s = floor(2.5) - 1 = 1, z = Phi^-1(2/3) = 0.430727
    z = 0.430727
    assert mimic_honest(settings("alie"), HONEST, 3, 1) == pytest.approx([2 + z, 4 + 2 * z], 1e-5)
    # n = 4, f = 3 (a majority): f is capped at floor(n/2 + 1) - 1 = 2, so s = 1, z = Phi^-1(3/4)
    z = 0.674490
    assert mimic_honest(settings("alie"), HONEST, 4, 3) == pytest.approx([2 + z, 4 + 2 * z], 1e-5)
    with pytest.raises(ValueError, match="no honest update"):
        mimic_honest(settings("alie"), [], 4, 3)


def test_the_settings_come_from_the_run_config_and_are_recorded():
    from common.config import config_with

    none = AttackSettings.from_config(config_with(attack="none"), 10)
    assert none.attackers == frozenset() and none.record() == {"attack": "none"}
    flip = AttackSettings.from_config(config_with(attack="sign-flip", attack_fraction=0.3), 10)
    assert len(flip.attackers) == 3 and flip.poisons_upload(min(flip.attackers))
    assert (
        flip.attackers
        == AttackSettings.from_config(
            config_with(attack="gaussian", attack_fraction=0.3), 10
        ).attackers
    )  # the same seed, the same attackers, whatever the attack
    assert flip.record() == {
        "attack": "sign-flip", "fraction": 0.3, "scale": 1.0, "simulated_at": "client",
        "attackers": sorted(flip.attackers),
    }  # fmt: skip
    other = AttackSettings.from_config(
        config_with(attack="sign-flip", attack_fraction=0.3, seed=2), 10
    )
    assert other.attackers != flip.attackers
    ipm_record = AttackSettings.from_config(config_with(attack="ipm"), 10).record()
    assert ipm_record["simulated_at"] == "server" and ipm_record["epsilon"] == 0.5


def test_an_attack_without_attackers_or_honest_clients_is_refused():
    from common.config import config_with
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="makes no attacker"):
        check_attack(config_with(attack="gaussian", attack_fraction=0.04), 10)
    with pytest.raises(ConfigError, match="at least one honest client"):
        check_attack(config_with(attack="alie", attack_fraction=1.0), 10)
    check_attack(config_with(attack="label-flip", attack_fraction=1.0), 10)  # allowed
    check_attack(config_with(attack="none", attack_fraction=0.0), 10)
    with pytest.raises(ConfigError, match="attack='poison' is not known"):
        config_with(attack="poison")
