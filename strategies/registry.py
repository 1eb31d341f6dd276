"""Every strategy, from its own declaration (strategies.base): the `strategy` names, the checks
before a run, the strategy built for a run, which run-config keys matter for which strategy,
and the strategy table of docs/configuration.md.

A new strategy is one class in one module (plus its client code if it trains differently),
added to `STRATEGIES` below; docs/adding-a-strategy.md walks through it.
"""

from __future__ import annotations

import dataclasses
import difflib
import re

from common.attacks import AttackSettings, check_attack
from common.config import RunConfig, app_defaults, config_error, config_with
from common.errors import ConfigError
from common.protocol import LocalTraining
from models import MODEL_INPUTS
from strategies.base import SeededStrategy
from strategies.fedcorr import FedCorr
from strategies.feddiv import Feddiv
from strategies.fedrn import Fedrn
from strategies.flower import (
    SeededBulyan,
    SeededFedAvg,
    SeededFedMedian,
    SeededFedProx,
    SeededFedTrimmedAvg,
    SeededKrum,
    SeededMultiKrum,
)
from strategies.maskedoptim import FedElc, FedNoRo, MaskedOptim
from strategies.rules import (
    Clipping,
    Coteaching,
    CoteachingPlus,
    DivideMix,
    FedExpStrategy,
    Fedlsr,
    JointOptim,
    KrumFnbenchStrategy,
    MedianTorch,
    Rfa,
    Robustfl,
    Selfie,
    SymmetricCe,
    TrimmedMeanFnbenchStrategy,
)
from strategies.sampling import ClientRoster

STRATEGIES: tuple[type[SeededStrategy], ...] = (
    SeededFedAvg,
    SeededFedProx,
    SeededFedMedian,
    SeededFedTrimmedAvg,
    SeededKrum,
    SeededMultiKrum,
    SeededBulyan,
    MaskedOptim,
    Rfa,
    MedianTorch,
    TrimmedMeanFnbenchStrategy,
    KrumFnbenchStrategy,
    FedExpStrategy,
    Clipping,
    JointOptim,
    Selfie,
    Coteaching,
    CoteachingPlus,
    DivideMix,
    Robustfl,
    Fedrn,
    Fedlsr,
    SymmetricCe,
    FedElc,
    FedNoRo,
    FedCorr,
    Feddiv,
)
BY_NAME: dict[str, type[SeededStrategy]] = {name: cls for cls in STRATEGIES for name in cls.names}
STRATEGY_NAMES = tuple(BY_NAME)


def strategy_class(name: str) -> type[SeededStrategy]:
    """The class declared for `strategy = name`; ConfigError listing the names otherwise."""
    if name not in BY_NAME:
        near = difflib.get_close_matches(name, STRATEGY_NAMES, n=1)
        guess = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(
            f"strategy='{name}' is not known{guess}; allowed: {', '.join(STRATEGY_NAMES)}"
        )
    return BY_NAME[name]


def check_strategy_settings(config: RunConfig, num_clients: int) -> None:
    """Reject a strategy name or settings the strategy cannot run with, before any training:
    one ConfigError naming every problem (common.config.config_error)."""
    problems = strategy_settings_problems(config, num_clients)
    if problems:
        raise config_error(problems)


def strategy_settings_problems(config: RunConfig, num_clients: int) -> list[str]:
    """Every problem check_strategy_settings names (ConfigError for an unknown strategy name:
    that is the run config's own problem, server_app.checks)."""
    cls = strategy_class(config.strategy)
    problems = []
    kind = MODEL_INPUTS[config.model][0] if config.model in MODEL_INPUTS else None
    if kind is not None and kind not in cls.input_kinds:  # (an unknown model: its own problem)
        problems.append(
            f"strategy='{config.strategy}' needs {' or '.join(cls.input_kinds)} inputs; "
            f"model='{config.model}' takes {kind}"
        )
    try:
        check_attack(config, num_clients)
    except ConfigError as err:
        problems.append(str(err))
    try:
        sampled = config.clients_sampled(num_clients)
    except ConfigError as err:  # named with the strategy's problems, checked as with them all
        problems.append(str(err))
        sampled = num_clients
    context = dict(sampled=sampled, num_clients=num_clients, num_rounds=config.num_rounds)
    for message in params_problems(cls.Params.from_config(config), context):
        if not message.startswith(f"strategy='{config.strategy}'"):  # whose check it is
            message = f"strategy='{config.strategy}': {message}"  # (a comparison runs several)
        problems.append(message)
    problems += keys_of_other_strategies_problems(config, context)
    return problems


LONG_RUN = 2**31  # num-rounds that fits every warm-up: the other keys' checks run past them


def params_problems(params, context: dict) -> list[str]:
    """Every problem `params.check(**context)` finds, not only its first (a check stops at
    its first; a user should see them all): see problems_one_by_one. Run again as if the run
    were long enough for every warm-up, so that a warm-up longer than the run, which setting
    it back to its default may not cure, hides none of the other keys' problems."""
    problems = problems_one_by_one(params, context)
    long_run = problems_one_by_one(params, dict(context, num_rounds=LONG_RUN))
    return problems + [  # not one that quotes the stand-in num-rounds: its key is named above
        message for message in long_run
        if message not in problems and f"num-rounds={LONG_RUN}" not in message
    ]  # fmt: skip


def problems_one_by_one(params, context: dict) -> list[str]:
    """After each refusal of `params.check(**context)` the key it names (its message starts
    "key=" or "key:") is set back to its default (valid, tests/common/test_config.py) and the
    check runs again, until it passes or names a key it cannot set back. A later message that
    names a key set back is left out: it would quote a value the user did not give."""
    defaults = config_with()
    problems, reset = [], set()
    while True:
        try:
            params.check(**context)
            return problems
        except ConfigError as err:
            message = str(err)
            field = re.split("[=:]", message, maxsplit=1)[0].replace("-", "_")
            if field in reset:  # its default does not pass either: that message is enough
                return problems
            if not any(f"{name.replace('_', '-')}=" in message for name in reset):
                problems.append(message)  # (one naming a default set back would mislead)
            if field not in {f.name for f in dataclasses.fields(params)}:
                return problems
            reset.add(field)
            params = dataclasses.replace(params, **{field: getattr(defaults, field)})


UNREAD_KEY_END = ", does not read)"  # ends the refusal of a key another strategy reads


def keys_of_other_strategies_problems(config: RunConfig, context: dict) -> list[str]:
    """A key that only other strategies read, set away from its default, is still checked by
    them: a bad value is refused, not silently ignored (`strategy='fedavg'` with
    `fedrn-neighbours=-1`). Only problems about such keys count (a message starts "key=").

    They are checked as if the run were long enough for every warm-up: how a stage start fits
    num-rounds matters only to a strategy that runs, and otherwise a default warm-up (30 rounds)
    longer than a short run would fail first and hide the changed key's error."""
    context = dict(context, num_rounds=LONG_RUN)
    readers = strategy_keys()
    defaults = app_defaults()
    mapping = config.to_mapping()
    own = strategy_class(config.strategy).Params.keys()
    changed = {
        key for key, value in mapping.items()
        if key in defaults and value != defaults[key] and key not in own
    }  # fmt: skip
    problems = []
    for other in STRATEGIES:
        keys = other.Params.keys() & changed
        if not keys:
            continue
        for message in params_problems(other.Params.from_config(config), context):
            key = message.split("=", 1)[0]
            if key not in keys:
                continue
            named = (
                f"{message} (a key of {', '.join(sorted(readers[key]))}, which this run, "
                f"strategy='{config.strategy}'{UNREAD_KEY_END}"
            )
            if named not in problems:  # two readers: one message
                problems.append(named)
    return problems


def build_strategy(config: RunConfig, roster: ClientRoster) -> SeededStrategy:
    """The strategy named by `config.strategy`, sampling over `roster`'s partitions."""
    check_strategy_settings(config, roster.num_clients)
    cls = strategy_class(config.strategy)
    return cls(
        cls.Params.from_config(config),
        roster=roster,
        seed=config.seed,
        clients_per_round=config.clients_sampled(roster.num_clients),
        evaluate_clients=round(config.fraction_evaluate * roster.num_clients),
        num_rounds=config.num_rounds,
        attack=AttackSettings.from_config(config, roster.num_clients),
        training=LocalTraining(
            local_epochs=config.local_epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            local_loss=config.local_loss,
        ),
    )


def strategy_keys() -> dict[str, frozenset[str]]:
    """Run-config key -> the strategies that read it, for the keys only some strategies read."""
    readers: dict[str, set[str]] = {}
    for name, cls in BY_NAME.items():
        for key in cls.Params.keys():
            readers.setdefault(key, set()).add(name)
    return {key: frozenset(names) for key, names in sorted(readers.items())}


def key_matters(key: str, strategy: str) -> bool:
    """Whether `strategy` reads run-config `key` (a key that no strategy declares is common to
    all: data, model, training). A stored run of another strategy stays comparable when a key
    it does not read changes (the comparison runner's resume check)."""
    return strategy in strategy_keys().get(key, frozenset({strategy}))


def strategy_table() -> str:
    """The Markdown table of docs/configuration.md's strategies section."""
    lines = ["| `strategy` | what it is | its own keys |", "| --- | --- | --- |"]
    for name, cls in BY_NAME.items():
        keys = ", ".join(f"`{key}`" for key in sorted(cls.Params.keys())) or "none"
        lines.append(f"| `{name}` | {cls.description} | {keys} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m strategies.registry: print the docs table
    print(strategy_table(), end="")
