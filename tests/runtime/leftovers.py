"""What a run left behind, described well enough to tell which part of Flower or Ray it was."""

from __future__ import annotations

from pathlib import Path

from launch.processes import process_status, processes_with_environment


def leftover_processes(flwr_home: Path) -> dict[int, str]:
    """Live processes started with this FLWR_HOME: pid -> state, run token or not, command."""
    found = {}
    for pid in processes_with_environment("FLWR_HOME", str(flwr_home)):
        proc = Path("/proc") / str(pid)
        try:
            name = (proc / "stat").read_text().split(" (", 1)[1].rsplit(")", 1)[0]
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:300]
            tokened = b"MASKEDOPTIM_RUN_TOKEN=" in (proc / "environ").read_bytes()
        except OSError:
            continue  # it ended while we looked
        state, parent, _, session = process_status(pid)
        found[pid] = (
            f"{name} (state {state}, parent {parent}, session {session}), "
            f"{'with' if tokened else 'WITHOUT'} run token: {command}"
        )
    return found
