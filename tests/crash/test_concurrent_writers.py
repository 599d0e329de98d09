"""Two processes on one search or evaluation run: the second is refused while the first writes
(`RunLockedError`), or with ``--wait`` waits for it; either way no record is lost or duplicated.

The first writer is paused (SIGSTOP) right after it wrote its first record, so it holds the run
while the second one starts, whatever the machine's speed; it is resumed (SIGCONT) afterwards.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from crash.harness import Plan, run_once
from crash.jobs import EvalJob, SearchJob, records_written
from crash.runs import Handle

pytestmark = pytest.mark.slow

JOBS = {"search": SearchJob, "eval": EvalJob}
LOCKED = ("RunLockedError", "is being written by")


def _event(line: str, kind: str, suffix: str) -> bool:
    fields = line.split(" ", 4)
    return fields[0] == "ev" and len(fields) == 5 and fields[3] == kind and fields[4].endswith(suffix)


def _reference(job, starter, root: Path) -> Path:
    reference = root / "reference"
    reference.mkdir()
    outcome = run_once(starter, job.argv(reference), reference, root / "reference.log", Plan("none"))
    assert outcome.code == 0, (root / "reference.log").read_text()
    return reference


def _first_writer_paused(job, starter, root: Path) -> tuple[Path, Path, Handle]:
    """The reference, the shared run's folder, and its first writer: paused (SIGSTOP) right after
    its first record, so it holds the run while a second writer starts."""
    reference = _reference(job, starter, root)
    folder = root / "shared"
    folder.mkdir()
    log = root / "first.log"
    first = starter.start(job.argv(folder), folder, log)
    deadline = time.monotonic() + 120
    while not records_written(job.record_files(folder)):
        first.read(0.005)
        if first.code is not None or time.monotonic() > deadline:
            first.wait(30)
            pytest.fail(f"the first writer ended (exit {first.code}) before writing a record:\n{log.read_text()}")
    first.kill(signal.SIGSTOP)
    return reference, folder, first


def _state(job, folder: Path, reference: Path) -> str:
    try:
        job.compare(folder, reference)
    except AssertionError as exc:
        return f"and the run now differs from an uninterrupted one: {exc}"
    return "though the run still equals an uninterrupted one"


@pytest.mark.parametrize("name", list(JOBS))
def test_a_second_writer_is_refused_while_the_first_writes(name, crash_inputs, starter, tmp_path):
    job = JOBS[name](crash_inputs)
    reference, folder, first = _first_writer_paused(job, starter, tmp_path)
    try:
        code = starter.start(job.argv(folder), folder, tmp_path / "second.log").wait(120)
    finally:
        first.kill(signal.SIGCONT)
    assert first.wait() == 0, (tmp_path / "first.log").read_text()
    log = (tmp_path / "second.log").read_text()
    refused = code != 0 and any(mark in log for mark in LOCKED)
    assert refused, (f"the second `tale {name}` on a run another process was writing was not refused with "
                     f"RunLockedError (exit {code}), {_state(job, folder, reference)}\n--- its log ---\n{log[-3000:]}")
    job.compare(folder, reference)


@pytest.mark.parametrize("name", list(JOBS))
def test_a_second_writer_with_wait_waits_then_finds_the_run_done(name, crash_inputs, starter, tmp_path):
    job = JOBS[name](crash_inputs)
    reference, folder, first = _first_writer_paused(job, starter, tmp_path)
    try:
        second = starter.start([*job.argv(folder), "--wait"], folder, tmp_path / "second.log")
        reached = second.wait_for(lambda line: _event(line, "open", ".lock"), 120)  # its run lock
        time.sleep(0.5)  # in its waiting loop by now
        second.read(0)
        waiting = reached is not None and second.code is None
    finally:
        first.kill(signal.SIGCONT)
    assert first.wait() == 0, (tmp_path / "first.log").read_text()
    code = second.wait()
    log = (tmp_path / "second.log").read_text()
    assert waiting, (f"the second `tale {name} --wait` did not wait for the lock of the run another process was "
                     f"writing (exit {second.code}), {_state(job, folder, reference)}\n--- its log ---\n{log[-3000:]}")
    assert code == 0, log[-3000:]
    job.compare(folder, reference)
