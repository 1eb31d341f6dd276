"""Tests for common/config.py: parsing and validating the Flower run config."""

from __future__ import annotations

import pytest

from common.config import (
    DEVICES,
    LOCAL_LOSSES,
    ConfigError,
    RunConfig,
    app_defaults,
    config_with,
)
from data.datasets import CIFAR10N_LABEL_KEYS, DATASET_NAMES
from data.federation import DataSettings
from data.noise import NOISE_TYPES, SYNTHETIC_KINDS, parse_rate_range
from data.partition import PARTITION_NAMES
from models import MODEL_NAMES
from server_app.checks import check_run_config


def mapping_with(**overrides):
    """The pyproject defaults (kebab-case) with some keys replaced."""
    mapping = app_defaults()
    for key, value in overrides.items():
        mapping[key.replace("_", "-")] = value
    return mapping


def error_of(**overrides) -> str:
    """The message of the first check (common.config's or an owner's) that refuses them."""
    with pytest.raises(ConfigError) as info:
        check_run_config(config_with(**overrides))
    return str(info.value)


# --- the defaults ----------------------------------------------------------------------------


def test_pyproject_defaults_are_valid():
    defaults = app_defaults()
    config = RunConfig.from_mapping(defaults)
    assert config.strategy == defaults["strategy"]
    assert config.dataset == "digits"
    assert config.model == "digitsnet"
    assert config.num_rounds == defaults["num-rounds"]
    low, high = parse_rate_range(config.noise_rate)
    assert 0.0 <= low < high <= 1.0  # the demo has clean and noisy clients
    # every run-config key of pyproject is a field, and every field has a default
    assert set(defaults) == set(config.to_mapping())


def test_to_mapping_round_trips():
    config = RunConfig.from_mapping(app_defaults())
    mapping = config.to_mapping()
    assert mapping == app_defaults()
    assert RunConfig.from_mapping(mapping) == config
    changed = config_with(strategy="krum", lr=0.01, noise_rate="0.1,0.2")
    assert RunConfig.from_mapping(changed.to_mapping()) == changed


def test_config_with_overrides_only_the_given_keys():
    base = config_with()
    config = config_with(strategy="fedprox", proximal_mu=0.5, num_rounds=3, noise_type="pairflip")
    assert config.strategy == "fedprox"
    assert config.proximal_mu == 0.5
    assert config.num_rounds == 3
    assert config.noise_type == "pairflip"
    assert config.lr == base.lr
    assert config.seed == base.seed
    assert config.clients_per_round == base.clients_per_round


def test_int_is_accepted_for_a_float_key():
    config = config_with(lr=1, momentum=0)
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.momentum == 0.0 and isinstance(config.momentum, float)


def test_data_settings_take_the_data_fields():
    config = config_with(seed=7, partition="iid", noise_rate="0.1,0.3")
    settings = DataSettings.from_config(config)
    assert settings.seed == 7
    assert settings.partition == "iid"
    assert settings.noise_rate == "0.1,0.3"
    assert settings.dataset == config.dataset
    assert settings == DataSettings.from_config(
        config_with(seed=7, partition="iid", noise_rate="0.1,0.3", lr=0.3)
    )


# --- bad values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "bad", "allowed"),
    [
        ("dataset", "mnist", DATASET_NAMES),
        ("model", "vgg16", MODEL_NAMES),
        ("partition", "pathological", PARTITION_NAMES),
        ("noise_type", "gaussian", NOISE_TYPES),
        ("device", "tpu", DEVICES),
        ("local_loss", "focal", LOCAL_LOSSES),
        ("cifar10n_labels", "best", tuple(CIFAR10N_LABEL_KEYS)),
    ],
)
def test_unknown_choice_names_key_value_and_allowed(key, bad, allowed):
    message = error_of(**{key: bad})
    assert key.replace("_", "-") in message
    assert bad in message
    for name in allowed:
        assert name in message


@pytest.mark.parametrize("text", ["0.0,1.5", "0.5,0.1", "abc"])
def test_bad_noise_rate(text):
    message = error_of(noise_rate=text)
    assert "noise-rate" in message
    assert text in message


def test_noise_rate_out_of_range_says_allowed_range():
    assert "[0, 1]" in error_of(noise_rate="0.0,1.5")


def test_noise_rate_reversed_says_which_is_larger():
    message = error_of(noise_rate="0.5,0.1")
    assert "0.5" in message and "0.1" in message


@pytest.mark.parametrize(
    ("key", "bad", "allowed"),
    [
        ("momentum", 1.5, "[0, 1]"),
        ("momentum", -0.1, "[0, 1]"),
        ("fraction_evaluate", 1.2, "[0, 1]"),
        ("compromised_rate", -0.5, "[0, 1]"),
        ("trimmed_beta", 0.5, "[0, 0.5)"),
        ("num_rounds", 0, "at least 1"),
        ("local_epochs", 0, "at least 1"),
        ("batch_size", -4, "at least 1"),
        ("clients_per_round", -1, "0 or more"),
        ("lr", -0.1, ">= 0"),
        ("dirichlet_alpha", 0.0, "> 0"),
    ],
)
def test_out_of_range_number_names_key_value_and_bound(key, bad, allowed):
    message = error_of(**{key: bad})
    assert f"{key.replace('_', '-')}={bad}" in message
    assert allowed in message


@pytest.mark.parametrize(
    ("key", "bad", "kind"),
    [
        ("num_rounds", "5", "int"),
        ("num_rounds", 2.0, "int"),
        ("num_rounds", True, "int"),
        ("lr", "0.1", "float"),
        ("lr", True, "float"),
        ("download", "yes", "bool"),
        ("strategy", 3, "str"),
    ],
)
def test_wrong_type_names_key_value_and_type(key, bad, kind):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping(mapping_with(**{key: bad}))
    message = str(info.value)
    assert f"{key.replace('_', '-')}={bad!r}" in message
    assert kind in message


def test_every_bad_value_is_named_in_one_error():
    """A user who typed several wrong values learns of all of them at once, not one per try."""
    message = error_of(seed=-1, lr=-0.5, momentum=2.0, device="tpu")
    assert message.startswith("4 problems in the run config:")
    for part in ("seed=-1", "lr=-0.5", "momentum=2.0", "device='tpu'"):
        assert f"\n  - {part}" in message


def test_a_key_with_two_faults_is_named_once():
    message = error_of(momentum=float("nan"), seed=-1)
    assert message.count("momentum=") == 1 and "finite" in message


def test_every_wrong_type_and_missing_key_is_named_in_one_error():
    mapping = mapping_with(num_rounds=1.5, batch_size="abc")
    del mapping["lr"]
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping(mapping)
    message = str(info.value)
    assert message.startswith("3 problems in the run config:")
    assert "num-rounds=1.5" in message and "batch-size='abc'" in message
    assert "missing key 'lr'" in message


def test_missing_key_is_named():
    mapping = app_defaults()
    del mapping["batch-size"]
    with pytest.raises(ConfigError, match="missing key 'batch-size'"):
        RunConfig.from_mapping(mapping)


def test_human_noise_needs_a_dataset_with_human_labels():
    message = error_of(noise_type="human")
    assert "noise-type='human'" in message
    assert "digits" in message
    assert "cifar10n" in message and "clothing1m" in message


def test_dataset_with_files_needs_data_dir():
    message = error_of(dataset="cifar10", model="resnet18", data_dir="")
    assert "dataset='cifar10'" in message
    assert "data-dir" in message


def test_negative_seed_is_rejected():
    """Every seeded stream (numpy SeedSequence) needs a seed >= 0; -1 must stop the run up front."""
    message = error_of(seed=-1)
    assert "seed=-1" in message


def test_malformed_noise_groups_are_rejected():
    """The kinds and counts of noise-groups can be checked before any client builds its data."""
    message = error_of(noise_type="mixed", noise_groups="gaussian:10")
    assert "noise-groups" in message
    assert "gaussian" in message
    for kind in SYNTHETIC_KINDS:
        assert kind in message


def test_well_formed_noise_groups_are_accepted():
    config = config_with(noise_type="mixed", noise_groups="symmetric:5:0.0,0.4;pairflip:5")
    assert config.noise_groups == "symmetric:5:0.0,0.4;pairflip:5"


def test_dataset_with_files_and_data_dir_is_accepted():
    config = config_with(dataset="cifar10", model="resnet18", data_dir="/some/where")
    assert config.dataset == "cifar10"
    assert config.data_dir == "/some/where"


# --- clients per round -----------------------------------------------------------------------


@pytest.mark.parametrize(("num_clients", "expected"), [(100, 10), (50, 5), (5, 1), (1, 1), (15, 1)])
def test_zero_clients_per_round_samples_ten_percent(num_clients, expected):
    assert config_with(clients_per_round=0).clients_sampled(num_clients) == expected


def test_explicit_clients_per_round_is_kept():
    config = config_with(clients_per_round=7)
    assert config.clients_sampled(100) == 7
    assert config.clients_sampled(7) == 7


def test_too_many_clients_per_round_is_an_error():
    with pytest.raises(ConfigError) as info:
        config_with(clients_per_round=12).clients_sampled(10)
    message = str(info.value)
    assert "clients-per-round=12" in message
    assert "10" in message


def test_strategy_specific_keys_name_real_keys_and_strategies():
    from strategies.registry import STRATEGY_NAMES, key_matters, strategy_keys

    defaults = app_defaults()
    for key, strategies in strategy_keys().items():
        assert key in defaults, key
        assert strategies <= set(STRATEGY_NAMES), key
    assert key_matters("lr", "fedavg") and key_matters("compromised-rate", "krum")
    assert not key_matters("compromised-rate", "fedavg")
    assert not key_matters("warmup-rounds", "fednoro") and key_matters("gmm-fits", "fednoro")


def test_an_unknown_strategy_names_every_known_one():
    from strategies.registry import STRATEGY_NAMES, check_strategy_settings

    with pytest.raises(ConfigError) as info:
        check_strategy_settings(config_with(strategy="fedsgd"), 10)
    assert "strategy='fedsgd' is not known" in str(info.value)
    assert all(name in str(info.value) for name in STRATEGY_NAMES)


def test_the_docs_strategy_table_is_the_registrys():
    from pathlib import Path

    from strategies.registry import strategy_table

    text = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    table = text.split("<!-- strategies table: begin -->\n")[1].split("<!-- strategies")[0]
    assert table == strategy_table(), "run python -m strategies.registry and paste its table"


def test_every_run_config_key_has_a_row_in_the_docs():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    keys_part = text.split("## Strategies")[0]
    missing = [key for key in app_defaults() if f"`{key}`" not in keys_part]
    assert missing == [], "describe these keys in docs/configuration.md"
