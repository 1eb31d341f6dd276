"""Every owner's check of its own run-config settings, in one call: the data's (data.settings),
the model's name (models), the strategy's name (strategies.registry). common.config checks only
what is common (types, ranges, the choices it owns). The ServerApp and the launchers' pre-flight
call this before anything runs."""

from __future__ import annotations

from pathlib import Path

from common.config import RunConfig, config_error
from common.errors import ConfigError
from data.settings import choice, data_setting_problems
from models import MODEL_NAMES, PRETRAINED_MODELS
from strategies.registry import strategy_class


def check_run_config(config: RunConfig) -> None:
    """Raise common.errors.ConfigError naming every setting its owner does not allow."""
    problems = run_config_problems(config)
    if problems:
        raise config_error(problems)


def run_config_problems(config: RunConfig) -> list[str]:
    """Every setting of `config` its owner does not allow, one message each: the strategy's
    name, the data settings (data.settings), the model's name and its pretrained weights."""
    problems = []
    try:
        strategy_class(config.strategy)
    except ConfigError as err:
        problems.append(str(err))
    problems += data_setting_problems(config)
    try:
        choice("model", config.model, MODEL_NAMES)
    except ConfigError as err:
        problems.append(str(err))
    else:
        if config.pretrained_weights and config.model not in PRETRAINED_MODELS:
            problems.append(
                f"pretrained-weights is for model = {', '.join(PRETRAINED_MODELS)}, not "
                f"model='{config.model}'; leave it empty"
            )
    return problems


def pretrained_weights_path(config: RunConfig) -> Path | None:
    """The `pretrained-weights` file (a relative path is taken inside data-dir), or None."""
    if not config.pretrained_weights:
        return None
    path = Path(config.pretrained_weights).expanduser()
    return path if path.is_absolute() else Path(config.data_dir or ".") / path


def check_pretrained_weights(config: RunConfig) -> None:
    """ConfigError before any work when the weights file is missing or does not fit, offering
    training from scratch explicitly (nothing is downloaded)."""
    from models import build_model, load_pretrained

    path = pretrained_weights_path(config)
    if path is None:
        return
    if not path.is_file():
        raise ConfigError(
            f"pretrained-weights: no file '{path}'. Put torchvision's ImageNet ResNet-50 weights "
            "there (the state dict file resnet50-11ad3fa6.pth or resnet50-0676ba61.pth; nothing "
            "is downloaded here), or train from scratch explicitly with "
            "--set pretrained-weights=''"
        )
    try:
        load_pretrained(build_model(config.model, 2), path)
    except ValueError as err:
        raise ConfigError(str(err)) from None
