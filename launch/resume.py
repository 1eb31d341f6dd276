"""Resuming a killed run from its newest good checkpoint (server_app.checkpoint), for
`simulation.py --resume RUN_DIR` and the comparison runner.

The run goes on with the config it was made with (its config.json), in the same folder; only
where things live may change (NOT_COMPUTED: out-dir, data-dir, ...). Anything the user typed
next to `--resume` must agree with the stored config, else the resume is refused naming the
keys (a resumed run that computed something else would not be the run it claims to be).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from common.errors import ConfigError
from server_app.checkpoint import (
    CheckpointError,
    config_differences,
    described_differences,
    latest_checkpoint,
)
from server_app.results import read_json, read_summary, run_is_live


def resume_mapping(
    run_dir: Path, overrides: dict[str, Any], num_clients: int | None
) -> tuple[dict[str, Any], int, int]:
    """(run config, clients, checkpoint round) to continue `run_dir` with; `overrides` and
    `num_clients` are what the user typed besides --resume (None: not given). ConfigError when
    the folder holds no run, the run is complete, it has no usable checkpoint, or what was typed
    differs from the stored config."""
    from launch.preflight import resolve_run_config

    run_dir = run_dir.expanduser().resolve()
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {run_dir}: no such folder")
    writer = run_is_live(run_dir)
    if writer is not None:
        raise ConfigError(
            f"--resume {run_dir}: the run is still going (process {writer} holds its lock): "
            "a launcher killed with SIGKILL leaves Flower's processes running. Wait for it, or "
            f"stop it (kill {writer}, or Ctrl-C in its terminal), then resume"
        )
    stored = read_json(run_dir, "config.json")
    if stored is None or "run_config" not in stored:
        raise ConfigError(f"--resume {run_dir}: not a run folder (no readable config.json there)")
    summary = read_summary(run_dir) or {}
    if summary.get("status") == "completed":
        raise ConfigError(f"--resume {run_dir}: the run is complete; there is nothing to resume")
    try:
        checkpoint, refused = latest_checkpoint(run_dir)
    except CheckpointError as err:
        raise ConfigError(f"--resume: {err}; run it again from the start instead") from None
    for problem in refused:
        print(f"warning: checkpoint refused: {problem}; the previous one is used", file=sys.stderr)
    stored_config = dict(stored["run_config"])
    typed = resolve_run_config({**stored_config, **overrides})
    differences = described_differences(stored_config, config_differences(stored_config, typed))
    stored_clients = int(stored["num_clients"])
    if num_clients is not None and num_clients != stored_clients:
        differences.append(f"--num-clients ({stored_clients} there)")
    if differences:
        raise ConfigError(
            f"--resume {run_dir}: what was given differs from the stored run in "
            f"{', '.join(differences)}; resume it as it was, or start a new run"
        )
    mapping = {
        **typed,
        "out-dir": str(run_dir.parent),
        "run-name": run_dir.name,
        "resume": True,
        "client-state-dir": str(run_dir / "client-state"),
    }
    return mapping, stored_clients, checkpoint.round


def can_resume(run_dir: Path, mapping: dict[str, Any], num_clients: int) -> int | None:
    """The round after which the comparison runner can resume the incomplete run in `run_dir`
    with `mapping` (its newest good checkpoint matches it), or None (it starts again)."""
    stored = read_json(run_dir, "config.json")
    try:
        checkpoint, _ = latest_checkpoint(run_dir)
    except CheckpointError:
        return None
    if stored is None or int(stored.get("num_clients", -1)) != num_clients:
        return None
    if checkpoint.payload.get("num_clients") != num_clients:
        return None
    if config_differences(checkpoint.payload["run_config"], mapping):
        return None
    return checkpoint.round
