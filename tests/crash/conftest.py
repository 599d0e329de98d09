"""Fixtures of the crash tests: the jobs' inputs and the way runs are started (see harness.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def crash_inputs(tmp_path_factory) -> dict[str, Path]:
    """The tiny chooser model, the questions and the training search file (jobs.write_inputs)."""
    pytest.importorskip("transformers")
    from crash.jobs import write_inputs

    return write_inputs(tmp_path_factory.mktemp("crash-inputs"))


@pytest.fixture(scope="session")
def starter(tmp_path_factory):
    """Starts the runs (runs.py): the fork server of driver.py, or fresh interpreters with TALE_CRASH_FRESH=1."""
    from crash.harness import fresh_interpreters
    from crash.runs import ForkServer, FreshStarter, run_env

    folder = tmp_path_factory.mktemp("crash-server")
    env = run_env(folder / "cache")
    if fresh_interpreters():
        yield FreshStarter(env)
        return
    server = ForkServer(folder / "server.log", env)
    yield server
    server.close()
