"""Kill a resumable ``tale`` job at random moments until it completes, then compare its result with
an uninterrupted run of the same command.

A `Job` says which command to run, how to check the state a kill left on disk, and how to compare
a finished output with the uninterrupted one. `crash_test` first runs the command once in a fresh
interpreter (the reference), then once more as the killed runs will be started: forked from the
server in ``driver.py`` (``runs.py`` starts both kinds). That is the calibration (how long the job
runs, how many file writes it makes), and its result must equal the reference. Then it runs
episodes: a fresh output folder, the command started, killed with SIGKILL per the next `Plan`,
started again, ... until it exits by itself, then compared with the reference. After every kill
the state on disk is checked (`Job.check_partial`: what a resume will read must be whole and equal
to the reference's). Episodes follow each other until the job's number of kills is reached.

A plan is drawn from ``random.Random(seed)``: a third of the kills land at a uniform time between
the job's start (imports done) and the uninterrupted run's end, a third a few milliseconds after
the K-th file write the run reports, a third just before it (K uniform over the uninterrupted
run's writes), so that kills also land inside file writes, renames and checkpoint saves. Timing
varies from run to run, so a seed reproduces the schedule, not every timed kill to the
microsecond; a failure prints the seed, the plans and where each kill landed (the last write
before it).

Besides, every operation of the job's startup (the writes before its first record or checkpoint)
gets an episode of its own, killed just before that operation (`Plan` ``before``: the run kills
itself there, see driver.py), so the narrowest windows (between writing a temporary file and
renaming it) are always covered, and exactly reproducible.

``TALE_CRASH_KILLS`` multiplies every job's number of random kills (a longer soak),
``TALE_CRASH_SEED`` changes the seeds, ``TALE_CRASH_EVERY_WRITE=1`` kills before every write of the
job instead of its startup's only, ``TALE_CRASH_FRESH=1`` restarts each run in a fresh interpreter
instead of forking it from the server in ``driver.py``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crash.runs import RUN_TIMEOUT, FreshStarter

#: Kills land this long at most after the write they target.
EVENT_JITTER = 0.02


def kill_scale() -> float:
    """``TALE_CRASH_KILLS`` (default 1): a multiplier of every job's number of kills."""
    return float(os.environ.get("TALE_CRASH_KILLS", "1") or 1)


def base_seed() -> int:
    """``TALE_CRASH_SEED`` (default 0), added to each job's own seed."""
    return int(os.environ.get("TALE_CRASH_SEED", "0") or 0)


def every_write() -> bool:
    """``TALE_CRASH_EVERY_WRITE=1``: kill each job once before every write of its uninterrupted run
    (hundreds of episodes: a soak), not only before those of its startup."""
    return os.environ.get("TALE_CRASH_EVERY_WRITE", "") not in ("", "0")


def fresh_interpreters() -> bool:
    return os.environ.get("TALE_CRASH_FRESH", "") not in ("", "0")


# -- one run, maybe killed ---------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """When to kill a run: ``time`` (``delay`` s after its start), ``event`` (``jitter`` s after its
    ``event``-th reported write), ``before`` (the run kills itself just before its ``event``-th
    reported write: see driver.py) or ``none``."""

    kind: str
    delay: float = 0.0
    event: int = 0
    jitter: float = 0.0

    def __str__(self) -> str:
        if self.kind == "time":
            return f"kill {self.delay * 1000:.0f} ms after start"
        if self.kind == "event":
            return f"kill {self.jitter * 1000:.1f} ms after write #{self.event}"
        if self.kind == "before":
            return f"kill just before write #{self.event}"
        return "no kill"


@dataclass
class Outcome:
    """What one run did: its exit code, whether it was killed and when, the writes it reported."""

    plan: Plan
    code: int
    killed: bool
    duration: float
    kill_offset: float | None = None
    last_event: str | None = None
    since_write: float | None = None
    events: list[tuple[float, str]] = field(default_factory=list)
    state: str = ""

    def landed(self) -> str:
        if not self.killed:
            return f"exit {self.code} after {self.duration:.2f} s, {len(self.events)} writes"
        where = f"{self.last_event}" if self.last_event else "before any write"
        return f"killed at {self.kill_offset * 1000:.0f} ms, last write: {where}"


def run_once(starter: Any, argv: list[str], watch: Path, log: Path, plan: Plan) -> Outcome:
    """Start ``tale ARGV``, kill it per ``plan``, and wait until it is gone."""
    handle = starter.start(argv, watch, log, kill_before=plan.event if plan.kind == "before" else None)
    begun = time.monotonic()
    start: float | None = None
    kill_at: float | None = None
    killed_at: float | None = None
    events: list[tuple[float, str]] = []
    deadline = begun + RUN_TIMEOUT
    while handle.code is None:
        now = time.monotonic()
        if killed_at is None and kill_at is not None and now >= kill_at:
            handle.kill()
            killed_at = now
        if now >= deadline:
            handle.kill()
            handle.wait(30)
            raise TimeoutError(f"tale {' '.join(argv)} ran over {RUN_TIMEOUT:.0f} s; killed. Log: {log}")
        until = kill_at if kill_at is not None and killed_at is None else deadline
        for line in handle.read(until - now):
            kind, _, rest = line.partition(" ")
            fields = rest.split(" ", 3)
            if kind == "start":
                start = float(fields[1])
                if plan.kind == "time":
                    kill_at = start + plan.delay
            elif kind == "ev" and len(fields) == 4:
                events.append((float(fields[1]), f"{fields[3]} [{fields[2]}]"))
                if plan.kind == "event" and len(events) == plan.event:
                    kill_at = float(fields[1]) + plan.jitter
    origin = start if start is not None else begun
    if plan.kind == "before" and handle.code == -signal.SIGKILL and events:
        killed_at = events[-1][0]  # it died at its last report
    last = since = None
    if killed_at is not None and (before := [(t, name) for t, name in events if t <= killed_at]):
        since = killed_at - before[-1][0]
        last = f"{before[-1][1]} ({since * 1000:.1f} ms before)"
    return Outcome(plan=plan, code=handle.code, killed=killed_at is not None and handle.code == -signal.SIGKILL,
                   kill_offset=None if killed_at is None else killed_at - origin,
                   duration=time.monotonic() - origin, last_event=last, since_write=since,
                   events=[(t - origin, name) for t, name in events])


# -- the crash test ----------------------------------------------------------------------------


class Job:
    """A command to crash-test (subclasses fill in the methods)."""

    #: A short name for messages and seeds.
    name = "job"

    def argv(self, folder: Path) -> list[str]:
        """The command (after ``tale``) writing its output under ``folder``."""
        raise NotImplementedError

    def check_partial(self, folder: Path, reference: Path) -> str:
        """Check the state a kill left under ``folder``; return a short description of it.

        Raises AssertionError when the state breaks the resume promise (a lost, duplicated or
        altered record; a half-written checkpoint under its final name...).
        """
        raise NotImplementedError

    def progress(self, event: str) -> bool:
        """Whether a reported write (``PATH [KIND]``) is the job's first progress (a record, a
        checkpoint): the writes before it are its startup."""
        return False

    def compare(self, folder: Path, reference: Path) -> list[str]:
        """Compare a completed output with the reference; raise AssertionError on a difference.

        Returns notes: differences that are legitimate, or worth reporting without failing.
        """
        raise NotImplementedError


@dataclass
class Report:
    """The result of `crash_test`, printed by the tests."""

    job: str
    seed: int
    kills: int
    #: Of ``kills``: one before each operation of the job's startup (`Job.progress`).
    startup_kills: int
    episodes: int
    runs: int
    wall: float
    reference_seconds: float
    reference_writes: int
    kills_by_plan: dict[str, int]
    #: Kills that landed at most `EVENT_JITTER` after a reported write began (inside or just after it).
    kills_in_writes: int
    notes: list[str]
    history: list[str]

    def summary(self) -> str:
        plans = ", ".join(f"{n} {k}-planned" for k, n in sorted(self.kills_by_plan.items()))
        text = (f"crash {self.job}: seed {self.seed}: {self.kills} kills ({self.startup_kills} just before each "
                f"operation of its startup, then random: {plans}; {self.kills_in_writes} within "
                f"{EVENT_JITTER * 1000:.0f} ms of a write) over {self.episodes} episodes, {self.runs} runs, "
                f"{self.wall:.1f} s; the uninterrupted run took {self.reference_seconds:.2f} s and made "
                f"{self.reference_writes} writes; every episode matched it")
        return text + "".join(f"\n  note: {n}" for n in sorted(set(self.notes)))


def draw_plan(rng: random.Random, seconds: float, writes: int) -> Plan:
    """A kill at a uniform time of the uninterrupted run, just after one of its writes, or just before one."""
    draw = rng.random()
    if writes and draw < 2 / 3:
        event = rng.randint(1, writes)
        if draw < 1 / 3:
            return Plan("before", event=event)
        return Plan("event", event=event, jitter=rng.uniform(0.0, EVENT_JITTER))
    return Plan("time", delay=rng.uniform(0.0, seconds))


def crash_test(job: Job, *, root: Path, kills: int, seed: int, starter: Any, rerun: str = "") -> Report:
    """Kill ``job`` ``kills`` times over as many episodes as it takes, comparing each completed
    episode with an uninterrupted run in a fresh interpreter (see the module docstring).

    ``rerun`` (the command reproducing this test) is quoted in a failure's message, with the seed,
    every run's plan and where its kill landed, and the failing run's log.
    """
    began = time.monotonic()
    rng = random.Random(seed)
    history: list[str] = []
    notes: list[str] = []

    def fail(message: str, log: Path | None = None) -> None:
        tail = ""
        if log is not None and log.exists():
            tail = f"\n--- log of that run ({log}) ---\n" + log.read_text(errors="replace")[-4000:]
        raise AssertionError(f"crash test of `tale {job.name}`, seed {seed}: {message}\nrerun: {rerun}\n"
                             f"--- runs (plan -> where it landed -> state left) under {root} ---\n"
                             + "\n".join(history) + tail)

    reference = root / "reference"
    reference.mkdir(parents=True)
    ref_log = root / "reference.log"
    outcome = run_once(FreshStarter(starter.env), job.argv(reference), reference, ref_log, Plan("none"))
    history.append(f"reference (fresh interpreter): {outcome.landed()}")
    if outcome.code != 0:
        fail(f"the uninterrupted run exited with {outcome.code}", ref_log)
    if not isinstance(starter, FreshStarter):
        # Calibrate with the starter the kills use (a forked run skips the imports), and check that
        # it gives the fresh interpreter's result.
        calibration = root / "calibration"
        calibration.mkdir()
        log = root / "calibration.log"
        outcome = run_once(starter, job.argv(calibration), calibration, log, Plan("none"))
        history.append(f"calibration (uninterrupted): {outcome.landed()}")
        if outcome.code != 0:
            fail(f"the uninterrupted run exited with {outcome.code}", log)
        try:
            job.compare(calibration, reference)
        except AssertionError as exc:
            fail(f"an uninterrupted forked run differs from the fresh interpreter's: {exc}")
    seconds, writes = outcome.duration, len(outcome.events)

    counts = {"kills": 0, "startup": 0, "runs": 0, "episodes": 0, "in_writes": 0}
    plans: dict[str, int] = {}

    def episode(next_plan: Callable[[int], Plan]) -> None:
        """A fresh output folder; runs with ``next_plan(attempt)`` until one completes; compared."""
        counts["episodes"] += 1
        number = counts["episodes"]
        folder = root / f"episode-{number:02d}"
        folder.mkdir()
        for attempt in range(1, 10 * kills + 10):
            plan = next_plan(attempt)
            log = root / f"episode-{number:02d}-run-{attempt:02d}.log"
            outcome = run_once(starter, job.argv(folder), folder, log, plan)
            counts["runs"] += 1
            line = f"episode {number} run {attempt}: {plan} -> {outcome.landed()}"
            if outcome.killed:
                counts["kills"] += 1
                plans[plan.kind] = plans.get(plan.kind, 0) + 1
                counts["in_writes"] += outcome.since_write is not None and outcome.since_write <= EVENT_JITTER
                try:
                    outcome.state = job.check_partial(folder, reference)
                except AssertionError as exc:
                    history.append(line)
                    fail(f"after the kill of episode {number} run {attempt}: {exc}", log)
                history.append(f"{line} -> {outcome.state}")
                continue
            history.append(line)
            if outcome.code != 0:
                fail(f"episode {number} run {attempt} (a {'resume' if attempt > 1 else 'first run'}) exited "
                     f"with {outcome.code}", log)
            break
        else:
            fail(f"episode {number} never completed")
        try:
            notes.extend(job.compare(folder, reference))
        except AssertionError as exc:
            fail(f"episode {number}, completed after {attempt - 1} kill(s), differs from the uninterrupted run: {exc}")

    # Every operation before the job's first progress (a record, a checkpoint), or every one with
    # TALE_CRASH_EVERY_WRITE=1: one episode each, killed just before it. These windows are too
    # narrow for a kill timed from outside.
    startup = next((i for i, (_, name) in enumerate(outcome.events) if job.progress(name)), 0)
    if every_write():
        startup = len(outcome.events)
    for k in range(1, startup + 1):
        episode(lambda attempt, k=k: Plan("before", event=k) if attempt == 1 else Plan("none"))
    counts["startup"] = counts["kills"]
    plans.clear()  # from here on: the random kills' plans
    while counts["kills"] - counts["startup"] < kills:
        episode(lambda attempt: draw_plan(rng, seconds, writes) if counts["kills"] - counts["startup"] < kills
                else Plan("none"))
    return Report(job=job.name, seed=seed, kills=counts["kills"], startup_kills=counts["startup"],
                  episodes=counts["episodes"], runs=counts["runs"], wall=time.monotonic() - began,
                  reference_seconds=seconds, reference_writes=writes, kills_by_plan=plans,
                  kills_in_writes=counts["in_writes"], notes=notes, history=history)


# -- comparing record files --------------------------------------------------------------------


def read_records(path: Path, *, complete: bool) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """A record file's header and records, in file order.

    With ``complete`` every line must be whole JSON; otherwise a last line cut by a kill (no final
    newline) is ignored, as `core.records.RecordFile` does on resume.
    """
    raw = path.read_bytes()
    if not complete and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
    lines = raw.decode("utf-8").splitlines()
    if not lines:
        return None, []
    objects = []
    for n, line in enumerate(lines, start=1):
        try:
            objects.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise AssertionError(f"{path.name}, line {n} is not JSON ({exc}): {line[:200]!r}") from None
    first, *rest = objects
    if not isinstance(first, dict) or "header" not in first:
        raise AssertionError(f"{path.name}: the first line is not a header: {lines[0][:200]!r}")
    return first["header"], rest


def check_records(path: Path, reference: Path, *, complete: bool,
                  ignore: Callable[[dict[str, Any]], dict[str, Any]] = lambda r: r) -> int:
    """Check a record file against the reference one: the same header, no duplicated id, every
    record equal to the reference's record of its id (after ``ignore`` drops run-dependent fields),
    and with ``complete`` every id present. Returns the number of records."""
    header, records = read_records(path, complete=complete)
    ref_header, ref_records = read_records(reference, complete=True)
    if header is None:
        assert not complete, f"{path.name} is empty"
        return 0
    assert header == ref_header, f"{path.name}: header differs: {header} != {ref_header}"
    expected = {str(r["id"]): ignore(r) for r in ref_records}
    seen: dict[str, int] = {}
    for record in records:
        rid = str(record.get("id"))
        seen[rid] = seen.get(rid, 0) + 1
        assert rid in expected, f"{path.name}: record {rid!r} is not in the uninterrupted run"
        if ignore(record) != expected[rid]:
            diff = {k: (record.get(k), expected[rid].get(k)) for k in set(record) | set(expected[rid])
                    if ignore(record).get(k) != expected[rid].get(k)}
            raise AssertionError(f"{path.name}: record {rid!r} differs from the uninterrupted run's "
                                 f"(field: (this, uninterrupted)): {diff}")
    duplicated = sorted(r for r, n in seen.items() if n > 1)
    assert not duplicated, f"{path.name}: duplicated record ids {duplicated} (counts {[seen[r] for r in duplicated]})"
    if complete:
        lost = sorted(set(expected) - set(seen))
        assert not lost, f"{path.name}: records lost: {lost}"
    return len(records)
