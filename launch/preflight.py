"""The run config a launcher resolves from what the user typed, and the pre-flight: every check
that needs no runtime, done once, before anything starts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any


def command_line_overrides(
    run_config_items: list[str],
    set_items: list[str],
    problems: list[str] | None = None,
    num_clients: int | None = None,
) -> dict[str, Any]:
    """The keys typed on the command line (launch.overrides.read_overrides); when any item is
    unreadable, or `problems` (the launcher's own, e.g. --federation-config's) is not empty,
    one ConfigError that names those and what resolve_run_config(..., num_clients) finds in
    the readable keys."""
    from common.config import config_error, problems_of
    from common.errors import ConfigError
    from launch.overrides import read_overrides

    overrides, unreadable, unread = read_overrides(run_config_items, set_items)
    found = list(problems or []) + unreadable
    if found:
        try:
            resolve_run_config(overrides, num_clients, unread)
        except ConfigError as err:
            found += problems_of(err)
        raise config_error(found)
    return overrides


def resolve_run_config(
    overrides: dict[str, Any], num_clients: int | None = None, unread: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Defaults + overrides, validated; paths made absolute; a run name chosen if none; with
    checkpoints, the simulated clients' state folder inside the run's (client-state-dir).
    With `num_clients` (one run's federation size), the strategy's settings are checked too,
    so that one ConfigError names their problems with the others'. `unread`: keys typed but
    not readable (their own problem is named already): no message quotes their defaults, and
    with `strategy` among them no strategy's check runs."""
    from common.config import RunConfig, app_defaults, config_error
    from launch.overrides import unknown_key_message
    from server_app.checks import run_config_problems
    from server_app.results import default_run_name
    from strategies.registry import BY_NAME

    defaults = app_defaults()
    unknown = set(overrides) - set(defaults)
    problems = []  # every mistake in one message: unknown keys, then the values
    if unknown:
        problems.append(
            unknown_key_message(unknown, defaults, "run-config key", "docs/configuration.md")
        )
    mapping = {**defaults, **{k: v for k, v in overrides.items() if k not in unknown}}
    for key in (
        "out-dir",
        "data-dir",
        "test-dir",
        "classes-file",
        "vocab-file",
        "client-state-dir",
    ):
        if isinstance(mapping[key], str) and mapping[key]:
            mapping[key] = str(Path(mapping[key]).expanduser().resolve())
    config, value_problems, unparsed = RunConfig.parsed(mapping)
    unparsed = set(unparsed) | set(unread)
    problems += value_problems
    problems += [  # each owner's names too (data, model, strategy), but not the stand-ins'
        problem for problem in run_config_problems(config)
        if not any(problem.startswith((f"{key}=", f"{key}:")) for key in unparsed)
    ]  # fmt: skip
    if num_clients is not None and config.strategy in BY_NAME and "strategy" not in unparsed:
        problems += strategy_problems_left(config, num_clients, problems, unparsed)
    if problems:
        raise config_error(problems)
    if not config.run_name:
        mapping["run-name"] = default_run_name(config.strategy, config.dataset, config.seed)
    if config.checkpoint_every and not config.client_state_dir:
        # simulated clients keep their state in the run's folder, so a resume finds it
        mapping["client-state-dir"] = str(
            Path(mapping["out-dir"]) / mapping["run-name"] / "client-state"
        )
    return mapping


def strategy_problems_left(config, num_clients: int, problems: list[str], unparsed) -> list[str]:
    """The strategy's problems (strategies.registry.strategy_settings_problems) that name no key
    already named in `problems` or standing in for an unparsed value (a message would quote a
    value the user did not give)."""
    from strategies.registry import strategy_settings_problems

    named = {re.match(r"[a-z0-9-]*", problem).group() for problem in problems} - {""}
    skip = named | set(unparsed)
    return [
        problem for problem in strategy_settings_problems(config, num_clients)
        if not any(re.search(rf"(?<![\w-]){re.escape(key)}=", problem) for key in skip)
    ]  # fmt: skip


def preflight(
    mapping: dict[str, Any], num_clients: int, client_data: list[Path] | None = None
) -> None:
    """Everything that can be checked before a runtime starts, each failure one message naming
    the key, file or value (ConfigError / ValueError / DatasetNotFoundError): the strategy's
    settings, every data file the run reads (loaded, so a truncated file is found here), the
    federation (partition and noise, built as every client will build it), that every client
    can take a training step, and that out-dir can be written. In this process the loaded
    dataset and federation are cached, so the in-process runtime does not load them again."""
    from common.config import RunConfig
    from data.datasets import check_data_files
    from data.federation import DataSettings, cached_federation, check_client_sizes
    from models import check_model_fits
    from server_app.checks import check_pretrained_weights
    from strategies.registry import check_strategy_settings

    config = RunConfig.from_mapping(mapping)
    check_strategy_settings(config, num_clients)
    settings = DataSettings.from_config(config)
    check_data_files(
        config.dataset, config.data_dir or None, download=config.download, own=settings.own
    )
    if client_data:  # each client reads its own folder or file, as its SuperNode will
        sizes, dataset = check_own_client_data(config, settings, client_data)
    else:
        note_synthetic_noise(settings)
        federation = cached_federation(settings, num_clients)
        dataset = federation.dataset
        sizes = [len(indices) for indices in federation.client_indices]
    check_model_fits(config.model, dataset.input_kind, dataset.input_shape)
    check_client_sizes(sizes, config.batch_size)
    check_pretrained_weights(config)
    check_writable(Path(config.out_dir), "out-dir")
    check_device(config.device)


def check_own_client_data(config, settings, folders: list[Path]):
    """Load every client's own data as its SuperNode will (data.datasets.load_own_training_data):
    (their sizes, the first one's Dataset). ValueError naming the client's folder otherwise."""
    from data.datasets import OWN_DATA_DATASETS, load_own_training_data
    from data.federation import check_own_labels_kept

    if config.dataset not in OWN_DATA_DATASETS:
        raise ValueError(
            f"--client-data needs a dataset a client can bring: dataset = "
            f"{', '.join(OWN_DATA_DATASETS)} (got dataset='{config.dataset}'); e.g. "
            "--set dataset=imagefolder"
        )
    check_own_labels_kept(settings)
    sizes, first = [], None
    for index, folder in enumerate(folders):
        try:
            own = load_own_training_data(
                config.dataset, folder, cifar10n_labels=config.cifar10n_labels, own=settings.own
            )
        except (ValueError, FileNotFoundError) as err:
            raise ValueError(f"client {index} (--client-data {folder}): {err}") from None
        sizes.append(len(own.train_labels))
        first = first or own
    return sizes, first


def note_synthetic_noise(settings) -> None:
    """Say it when a simulation on a user's own folder or file adds synthetic noise (the
    default noise-type does): a measurement, in which the given labels count as the truth."""
    import sys

    from data.own_data import OWN_FORMATS

    if settings.dataset in OWN_FORMATS and settings.noise_type != "none":
        print(
            f"note: noise-type='{settings.noise_type}' (noise-rate='{settings.noise_rate}') adds "
            f"synthetic noise to the {settings.dataset} labels, which then count as the truth; "
            "set noise-type='none' to train on your labels as they are",
            file=sys.stderr,
        )


def note_unread_keys(strategies: list[str], keys: set[str]) -> None:
    """Say it when keys chosen for the run (launch.overrides.chosen_keys) are read by none of
    `strategies` (the run's, or a comparison's): e.g. a MaskedOptim variant file with `--set
    strategy=fedavg`. Their values are still checked (strategies.registry), so this is a note,
    not an error: they change nothing in these runs."""
    import sys

    from strategies.registry import strategy_keys

    readers = strategy_keys()
    unread = sorted(k for k in keys if k in readers and not readers[k] & set(strategies))
    if unread:
        which = "strategy" if len(strategies) == 1 else "strategies"
        print(
            f"note: {', '.join(unread)}: not read by {which} {', '.join(strategies)} "
            f"({'a key' if len(unread) == 1 else 'keys'} of "
            f"{', '.join(sorted(set().union(*(readers[k] for k in unread))))}); "
            f"{'it changes' if len(unread) == 1 else 'they change'} nothing here",
            file=sys.stderr,
        )


def check_device(name: str) -> None:
    """ConfigError when the `device` key asks for a GPU this machine does not have."""
    from common.config import ConfigError
    from common.evaluation import resolve_device

    try:
        resolve_device(name)
    except RuntimeError as err:
        raise ConfigError(f"{err}; use device='auto' or 'cpu'") from None


def check_writable(folder: Path, key: str) -> None:
    """Write a file in `folder`, creating it for the probe; ConfigError naming `key` if it cannot.
    The folders made for the probe are removed again (while empty): a `--check` leaves no trace,
    and a run makes its folders itself."""
    from common.config import ConfigError

    folder = folder.expanduser().absolute()
    made = [f for f in (folder, *folder.parents) if not f.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{key}={str(folder)!r} cannot be written: {err.strerror}") from None
    finally:
        for path in made:
            try:
                path.rmdir()
            except FileNotFoundError:
                continue  # the mkdir stopped above it
            except OSError:
                break  # not empty: something else writes there now
