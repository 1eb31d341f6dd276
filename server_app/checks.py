"""Every owner's check of its own run-config settings, in one call: the data's (data.settings),
the model's name (models), the strategy's name (strategies.registry). common.config checks only
what is common (types, ranges, the choices it owns). The ServerApp and the launchers' pre-flight
call this before anything runs."""

from __future__ import annotations

from common.config import RunConfig
from data.settings import check_data_settings, choice
from models import MODEL_NAMES
from strategies.registry import strategy_class


def check_run_config(config: RunConfig) -> None:
    """Raise common.errors.ConfigError for the first setting its owner does not allow."""
    strategy_class(config.strategy)
    check_data_settings(config)
    choice("model", config.model, MODEL_NAMES)
