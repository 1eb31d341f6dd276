"""Processes a run starts, found and stopped through Linux's /proc, and the machine's resources.

Flower detaches its processes into new sessions, so they are found by a token in their
environment (and by session), not by process group.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_marked_processes(token: str, children: list[subprocess.Popen]) -> None:
    """SIGTERM, then SIGKILL after 10 s, every process of the run, until none is left (10 s more).

    A process of the run carries its token in its environment, or shares a session with one
    that does: Flower detaches its processes into new sessions, and Ray's agents, once their
    raylet is gone, can show an environment without the token while they exit."""
    sessions: set[int] = set()
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        signalled: set[int] = set()
        empty_scans = 0
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            for child in children:
                child.poll()  # reap our direct children
            alive = processes_with_token(token)
            alive |= {child.pid for child in children if child.returncode is None}
            sessions |= {process_status(pid)[3] for pid in alive} - {os.getsid(0), -1}
            alive |= processes_in_sessions(sessions)
            # Two empty scans in a row: a process being started can briefly show no environment.
            empty_scans = 0 if alive else empty_scans + 1
            if empty_scans == 2:
                return
            # Processes can still be started while the others stop (Ray starting a worker,
            # an app process): each newcomer gets the signal too.
            for pid in alive - signalled:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
                signalled.add(pid)
            time.sleep(0.2)


def process_status(pid: int) -> tuple[str, int, int, int]:
    """(state, parent, process group, session) of a process from /proc; ('X', -1, -1, -1) when
    it is gone."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return "X", -1, -1, -1
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def processes_in_sessions(sessions: set[int]) -> set[int]:
    """Live processes (zombies excluded) whose session is one of these."""
    found = set()
    for entry in Path("/proc").glob("[0-9]*"):
        state, _, _, session = process_status(int(entry.name))
        if session in sessions and state not in ("Z", "X"):
            found.add(int(entry.name))
    found.discard(os.getpid())
    return found


def processes_with_token(token: str) -> set[int]:
    """Live processes started by the run with this token."""
    return processes_with_environment("MASKEDOPTIM_RUN_TOKEN", token)


def processes_with_environment(name: str, value: str) -> set[int]:
    """Live processes whose environment holds name=value (read from Linux's /proc)."""
    marker = f"{name}={value}".encode()
    found = set()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                if process_status(int(entry.name))[0] not in ("Z", "X"):  # zombies are dead
                    found.add(int(entry.name))
        except (OSError, ValueError):
            continue
    found.discard(os.getpid())
    return found


def available_cpus() -> int:
    return len(os.sched_getaffinity(0))


def available_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def stop_on_terminate(signum, frame) -> None:
    """SIGTERM (`kill`, a container stop, a background job) unwinds like Ctrl-C, so the
    SuperLink and every process it started are stopped on the way out."""
    raise KeyboardInterrupt
