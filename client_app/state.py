"""A client's state across rounds: in Flower's `context.state` and, when the SuperNode has a
`state-dir` in its node-config, also in a file there, so that it survives a SuperNode restart.

`context.state` lives as long as the SuperNode process (and travels with every message); a
restarted SuperNode starts with it empty. The file copy is keyed by run and partition,
`<state-dir>/run-<run id>/partition-<id>/<name>.npz`, and written atomically (a temporary file
renamed over the old one), so a crash mid-write leaves the previous version intact.
"""

from __future__ import annotations

import os
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context
from flwr.common import log


class ClientStateStore:
    """One named group of arrays of one client (e.g. MaskedOptim's label logits)."""

    def __init__(self, context: Context, name: str, partition_id: int) -> None:
        self.state, self.name = context.state, name
        state_dir = str(context.node_config.get("state-dir", "") or "")
        self.file = (
            Path(state_dir) / f"run-{context.run_id}" / f"partition-{partition_id}" / f"{name}.npz"
            if state_dir
            else None
        )

    def load(self) -> dict[str, np.ndarray] | None:
        """The stored arrays: from context.state, else from the state file (then cached in
        context.state), else None."""
        if self.name in self.state:
            return {key: array.numpy() for key, array in self.state[self.name].items()}
        if self.file is not None and self.file.is_file():
            with np.load(self.file) as stored:
                arrays = {key: stored[key] for key in stored.files}
            self.state[self.name] = _record(arrays)
            log(INFO, "client state %r restored from %s", self.name, self.file)
            return arrays
        return None

    def save(self, arrays: dict[str, np.ndarray]) -> None:
        self.state[self.name] = _record(arrays)
        if self.file is None:
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.file.with_name(f".{self.file.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.file)


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    # np.array(order="C") keeps 0-d arrays 0-d (np.ascontiguousarray would make them 1-d).
    return ArrayRecord(array_dict={k: Array(np.array(v, order="C")) for k, v in arrays.items()})
