"""Mid-run checkpoints: what a killed run needs to go on from its last completed round and end
with the numbers an uninterrupted run gives.

Every `checkpoint-every` rounds the ServerApp writes `<run dir>/checkpoints/round-<k>.ckpt`:
the global model after round k, the strategy's state (strategies.base.SeededStrategy.
checkpoint_state: detection result, label-correction records, FedCorr's LIDs, ...), the
metrics rows so far, the run's elapsed time and divergence note, and the run config it was made
with. Client sampling needs no state: it is a pure function of (seed, round). The clients' own
state (label logits, corrected labels) is kept by the clients, versioned by round
(client_app.state), so a resumed round k + 1 reads what they held after round k.

A file is one header line, `maskedoptim-checkpoint 1 <sha256 of the payload>`, then the payload
(a pickle). It is written to a temporary file, flushed to disk and renamed, so a kill leaves
either the old set or the new file complete; the newest two are kept. A file whose header or
checksum does not match (truncated, corrupted) is refused with a warning naming it, and the
previous good one is used. Only load checkpoints of your own runs: a pickle can run code.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = b"maskedoptim-checkpoint 1 "
KEEP = 2  # the newest two: if the newest is damaged, the one before it is used
NAME = re.compile(r"round-(\d+)\.ckpt")


class CheckpointError(ValueError):
    """No usable checkpoint (every file refused, or none there)."""


@dataclass(frozen=True)
class Checkpoint:
    round: int
    payload: dict[str, Any]
    path: Path


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def write_checkpoint(run_dir: Path, server_round: int, payload: dict[str, Any]) -> Path:
    """Write round `server_round`'s checkpoint atomically and keep the newest KEEP."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    body = pickle.dumps({"round": server_round, **payload}, protocol=pickle.HIGHEST_PROTOCOL)
    digest = hashlib.sha256(body).hexdigest().encode()
    path = folder / f"round-{server_round:05d}.ckpt"
    temporary = folder / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(temporary, "wb") as handle:
            handle.write(MAGIC + digest + b"\n" + body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    for old in sorted(_numbered(folder), reverse=True)[KEEP:]:
        old[1].unlink(missing_ok=True)
    return path


def _numbered(folder: Path) -> list[tuple[int, Path]]:
    found = []
    for path in folder.glob("round-*.ckpt"):
        match = NAME.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return found


def read_checkpoint(path: Path) -> Checkpoint:
    """One checkpoint file, checked; CheckpointError saying what is wrong with it."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror})") from None
    header, _, body = data.partition(b"\n")
    if not header.startswith(MAGIC):
        raise CheckpointError(f"{path}: not a checkpoint of this project (bad header)")
    if hashlib.sha256(body).hexdigest().encode() != header[len(MAGIC) :]:
        raise CheckpointError(f"{path}: damaged or partly written (checksum mismatch)")
    try:
        payload = pickle.loads(body)
    except Exception as err:  # a matching checksum makes this a version problem
        raise CheckpointError(f"{path}: cannot be loaded ({err})") from None
    return Checkpoint(round=int(payload.pop("round")), payload=payload, path=path)


def latest_checkpoint(run_dir: Path) -> tuple[Checkpoint, list[str]]:
    """The newest good checkpoint of a run, and a message for every newer one refused.
    CheckpointError when there is none."""
    folder = checkpoint_dir(run_dir)
    refused: list[str] = []
    for _, path in sorted(_numbered(folder) if folder.is_dir() else [], reverse=True):
        try:
            return read_checkpoint(path), refused
        except CheckpointError as err:
            refused.append(str(err))
    reasons = "; ".join(refused) or f"no checkpoint files in {folder}"
    raise CheckpointError(
        f"{run_dir} has no usable checkpoint ({reasons}); a run writes one every "
        "checkpoint-every rounds"
    )


# Where a run lives and how it is launched, not what it computes: a resume may change them.
NOT_COMPUTED = ("out-dir", "run-name", "data-dir", "resume", "client-state-dir", "checkpoint-every")


def config_differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The run-config keys whose value in `wanted` differs from the `stored` one (a key the
    stored config lacks, made before the key existed, counts as its default)."""
    from common.config import app_defaults

    defaults = app_defaults()
    return [
        key
        for key, value in wanted.items()
        if key not in NOT_COMPUTED and stored.get(key, defaults.get(key)) != value
    ]


def described_differences(stored: dict[str, Any], keys: list[str]) -> list[str]:
    """`keys` (from config_differences) each with its `stored` value, or its default where the
    stored config lacks it: ["lr (0.05 there)"], for the messages that refuse a resume."""
    from common.config import app_defaults

    defaults = app_defaults()
    return [f"{key} ({stored.get(key, defaults.get(key))!r} there)" for key in keys]
