"""Shared test set-up.

Two layers: the default one (`make test`: unit tests and end-to-end checks through the
in-process runtime) and the `runtime` layer (`make test-runtime`: everything under
tests/runtime/, which starts Flower's SuperLink, Ray or SuperNodes, or kills runs and resumes
them). `.ci/run` runs both.
Tests marked `cuda` need a GPU and import nothing of Flower (bench/gpu_check.py runs them).
"""

from __future__ import annotations

from pathlib import Path

import pytest

RUNTIME = Path(__file__).parent / "runtime"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "runtime: starts Flower's runtime (SuperLink, Ray, SuperNodes) or kills and resumes "
        "runs; slow",
    )
    config.addinivalue_line(
        "markers", "cuda: needs a CUDA GPU (skipped without one; bench/gpu_check.py runs them)"
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        if RUNTIME in Path(item.fspath).parents:
            item.add_marker(pytest.mark.runtime)


@pytest.fixture
def flower_task(monkeypatch):
    """Messages read the run id of the running task; pretend to be a ServerApp task."""
    # imported here: the CUDA tests run on a GPU machine without Flower (bench/gpu_check.py)
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
