"""The data owner's check of its run-config settings: dataset and its label file choice, the
partition, the label noise (kind, rate range, groups) and whether data-dir is needed.

Called once before a run by the ServerApp and the launchers (server_app.checks); the loaders
and the noise and partition functions raise their own errors when used directly.
"""

from __future__ import annotations

import difflib

from common.errors import ConfigError
from data.datasets import CIFAR10N_LABEL_KEYS, DATASET_NAMES
from data.noise import NOISE_TYPES, parse_noise_groups, parse_rate_range
from data.own_data import IMAGE_AUGMENTS, IMAGE_CHANNELS, OWN_FORMATS, OwnDataError, OwnDataSpec
from data.partition import PARTITION_NAMES

DATASETS_WITHOUT_FILES = ("digits",)
HUMAN_LABELLED = ("cifar10n", "clothing1m")


def choice(key: str, value: str, allowed) -> None:
    """ConfigError naming `key`, `value` and the allowed values when `value` is not one."""
    if value not in allowed:
        raise ConfigError(unknown_choice(key, value, allowed))


def unknown_choice(key: str, value: str, allowed) -> str:
    """ "key='value' is not known (did you mean 'x'?); allowed: ..." (the nearest by difflib)."""
    near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    guess = f" (did you mean '{near[0]}'?)" if near else ""
    return f"{key}='{value}' is not known{guess}; allowed: {', '.join(map(str, allowed))}"


def data_setting_problems(config) -> list[str]:
    """Every data setting of `config` that is not allowed, one message each: the names and the
    noise rate first, all of them; the settings that depend on those after, when they pass."""
    problems = []
    for key, value, allowed in (
        ("dataset", config.dataset, DATASET_NAMES),
        ("cifar10n-labels", config.cifar10n_labels, tuple(CIFAR10N_LABEL_KEYS)),
        ("partition", config.partition, PARTITION_NAMES),
        ("noise-type", config.noise_type, NOISE_TYPES),
        ("image-augment", config.image_augment, IMAGE_AUGMENTS),
    ):
        try:
            choice(key, value, allowed)
        except ConfigError as err:
            problems.append(str(err))
    if config.image_channels not in IMAGE_CHANNELS:
        problems.append(
            f"image-channels={config.image_channels} is not allowed; allowed: 1 (grayscale), "
            "3 (RGB)"
        )
    try:
        rates = parse_rate_range(config.noise_rate)
    except ValueError as err:
        problems.append(f"noise-rate: {err}")
    if problems:
        return problems
    try:
        check_dependent_data_settings(config, rates)
    except ConfigError as err:
        problems.append(str(err))
    return problems


def check_dependent_data_settings(config, rates) -> None:
    """The data settings that need valid names and noise rates (`rates`): ConfigError."""
    try:
        parse_noise_groups(config.noise_groups, None, rates)
    except ValueError as err:
        raise ConfigError(f"noise-groups='{config.noise_groups}': {err}") from err
    if (config.noise_type == "human") != (config.dataset in HUMAN_LABELLED):
        raise ConfigError(
            "noise-type='human' goes with the datasets whose labels are human-noisy "
            f"({', '.join(HUMAN_LABELLED)}), and only with them; got "
            f"noise-type='{config.noise_type}' with dataset='{config.dataset}'"
        )
    if config.dataset in OWN_FORMATS:
        try:
            OwnDataSpec.from_config(config).class_list()
        except OwnDataError as err:
            raise ConfigError(str(err)) from None
        return  # data-dir may be empty: deployed clients bring their own (data.own_data)
    if config.dataset not in DATASETS_WITHOUT_FILES and not config.data_dir:
        raise ConfigError(
            f"dataset='{config.dataset}' reads files: set data-dir to the folder that holds "
            "them (see docs/datasets.md)"
        )
