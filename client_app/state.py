"""A client's state across rounds: in Flower's `context.state` and, where a folder is given, in
files there too, so that it survives a SuperNode restart and a resumed run.

`context.state` lives as long as the SuperNode process (and travels with every message); a
restarted SuperNode, or a run resumed from a checkpoint (server_app.checkpoint), starts with it
empty. The files go to:
- `<state-dir>/run-<run id>/partition-<id>/` when the SuperNode's node-config has a `state-dir`
  (deployment);
- `<client-state-dir>/partition-<id>/` when the run config's `client-state-dir` is set (the
  simulation launchers set it to `<run dir>/client-state` when the run writes checkpoints; its
  path holds no run id, so a resumed run, which has a new one, finds it).

Each save is a version, `<name>.round-<r>.npz`, r the server round it was made in, written
atomically (a temporary file renamed over the old one). A message of round t reads the newest
version made before it: a training message the newest of a round < t, a query sent after round
t's aggregation the newest of a round <= t. So a run resumed from its checkpoint after round k
reads what the client held after round k, even where the killed run had already saved a later
version. Versions that no checkpoint can need any more are deleted: with `checkpoint-every` N,
those before the newest one that precedes the second-last checkpoint boundary (the server keeps
two checkpoints, server_app.checkpoint), and, without checkpoints, all but the newest.
"""

from __future__ import annotations

import os
import re
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context
from flwr.common import log

ROUND_KEY = "__round__"  # the round a cached state was saved in (context.state)


class ClientStateStore:
    """One named group of arrays of one client (e.g. MaskedOptim's label logits), as seen by a
    message of `server_round`: a training message reads the state of earlier rounds, a query
    sent after the round's aggregation (`after_training`) that of this round too."""

    def __init__(
        self,
        context: Context,
        name: str,
        partition_id: int,
        server_round: int,
        after_training: bool = False,
    ) -> None:
        self.state, self.name = context.state, name
        self.server_round = server_round
        self.readable = server_round if after_training else server_round - 1
        node_dir = str(context.node_config.get("state-dir", "") or "")
        run_dir = str(context.run_config.get("client-state-dir", "") or "")
        self.folder: Path | None = None
        if node_dir:
            self.folder = Path(node_dir) / f"run-{context.run_id}" / f"partition-{partition_id}"
        elif run_dir:
            self.folder = Path(run_dir) / f"partition-{partition_id}"
        self.checkpoint_every = int(context.run_config.get("checkpoint-every", 0) or 0)

    def load(self) -> dict[str, np.ndarray] | None:
        """The newest readable version: from context.state, else from the files (then cached
        in context.state), else None."""
        if self.name in self.state:
            cached = {key: array.numpy() for key, array in self.state[self.name].items()}
            saved = int(cached.pop(ROUND_KEY, -1))
            if saved <= self.readable:
                return cached
        versions = [(r, p) for r, p in self.versions() if r <= self.readable]
        if not versions:
            return None
        saved, path = max(versions)
        with np.load(path) as stored:
            arrays = {key: stored[key] for key in stored.files}
        self.state[self.name] = _record(arrays, saved)
        log(INFO, "client state %r restored from %s (round %d)", self.name, path, saved)
        return arrays

    def save(self, arrays: dict[str, np.ndarray]) -> None:
        """Store `arrays` as this round's version (readable by this message from now on)."""
        self.state[self.name] = _record(arrays, self.server_round)
        self.readable = max(self.readable, self.server_round)
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.name}.round-{self.server_round}.npz"
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        self.prune()

    def versions(self) -> list[tuple[int, Path]]:
        """(round, file) of every stored version."""
        if self.folder is None or not self.folder.is_dir():
            return []
        pattern = re.compile(re.escape(self.name) + r"\.round-(\d+)\.npz")
        found = []
        for path in self.folder.iterdir():
            match = pattern.fullmatch(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return found

    def prune(self) -> None:
        """Delete the versions no resume can need: later than this round (left by a killed
        attempt that this resumed run is redoing), and those older than the newest one at or
        before the second-last checkpoint boundary (all but this one without checkpoints)."""
        t, every = self.server_round, self.checkpoint_every
        oldest_needed = t if every <= 0 else every * ((t - 1) // every) - every
        versions = self.versions()
        at_or_before = [r for r, _ in versions if r <= oldest_needed]
        keep_from = max(at_or_before) if at_or_before else 0
        for r, path in versions:
            if r > t or r < keep_from:
                path.unlink(missing_ok=True)


def _record(arrays: dict[str, np.ndarray], saved_round: int) -> ArrayRecord:
    # np.array(order="C") keeps 0-d arrays 0-d (np.ascontiguousarray would make them 1-d).
    record = {k: Array(np.array(v, order="C")) for k, v in arrays.items()}
    record[ROUND_KEY] = Array(np.array(saved_round, dtype=np.int64))
    return ArrayRecord(array_dict=record)
