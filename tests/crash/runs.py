"""Starting ``tale`` runs for the crash harness and reading what they report (see driver.py):
a fork server (the heavy imports done once, a fork per run) or a fresh interpreter per run.

A `Handle` is one started run: the lines it reports (``start``, ``ev``, ``exit``), a wait for a
given line or for its end, and signals (SIGKILL, or SIGSTOP / SIGCONT to pause it).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

DRIVER = Path(__file__).with_name("driver.py")
#: Seconds a single run may take before the harness gives up on it.
RUN_TIMEOUT = 180.0


def run_env(cache: Path) -> dict[str, str]:
    """The runs' environment: one intra-op thread (the models are tiny, and on a busy machine thread
    hand-offs dominate; every run, the reference included, uses the same, so results stay
    comparable), and ``cache`` as the project's cache folder, where the run locks live."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "TALE_CACHE_DIR": str(cache)}


class _Pipe:
    """Lines from a pipe, read without blocking longer than asked."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buffer, self.eof = fd, b"", False

    def read(self, timeout: float) -> list[str]:
        if self.eof:
            return []
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if ready:
            chunk = os.read(self.fd, 65536)
            self.eof = not chunk
            self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [line.decode("utf-8", "replace") for line in lines]


class Handle:
    """One started run: its pid, the lines it reports (``start``, ``ev``, then ``exit PID CODE``;
    see driver.py) and, once it ended, its exit code (-9 after a SIGKILL)."""

    def __init__(self, pid: int, read: Callable[[float], list[str]]) -> None:
        self.pid, self._read, self.code = pid, read, None

    def read(self, timeout: float) -> list[str]:
        lines = self._read(timeout)
        for line in lines:
            if line.startswith("exit "):
                self.code = int(line.split()[2])
        return lines

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> str | None:
        """The first line matching ``predicate`` (None if the run ended or ``timeout`` passed first)."""
        deadline = time.monotonic() + timeout
        while self.code is None and time.monotonic() < deadline:
            for line in self.read(deadline - time.monotonic()):
                if predicate(line):
                    return line
        return None

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        """Wait until the run ends; its exit code (it is killed after ``timeout``)."""
        self.wait_for(lambda line: False, timeout)
        if self.code is None:
            self.kill()
            self.wait_for(lambda line: False, 30)
            raise TimeoutError(f"run {self.pid} ran over {timeout:.0f} s; killed")
        return self.code

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass


class ForkServer:
    """``driver.py serve``: heavy imports once, one fork per run (runs may overlap)."""

    def __init__(self, log: Path, env: dict[str, str]) -> None:
        self.env, self.log = env, open(log, "ab")
        self.process = subprocess.Popen([sys.executable, str(DRIVER), "serve"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.log, cwd=str(DRIVER.parent), env=env)
        self.pipe = _Pipe(self.process.stdout.fileno())
        self.queues: dict[int, list[str]] = {}
        self.started: list[int] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not self.pipe.eof:
            if "ready" in self.pipe.read(deadline - time.monotonic()):
                return
        raise RuntimeError(f"the fork server did not start; see {log}")

    def _pump(self, timeout: float) -> None:
        """Read what the server and its runs wrote, sorting it by run."""
        if self.pipe.eof:
            raise RuntimeError(f"the fork server died; see {self.log.name}")
        for line in self.pipe.read(timeout):
            kind, _, rest = line.partition(" ")
            pid = int(rest.split(" ", 1)[0])
            if kind == "pid":
                self.started.append(pid)
            else:
                self.queues.setdefault(pid, []).append(line)

    def _read_for(self, pid: int, timeout: float) -> list[str]:
        if not self.queues.get(pid):
            self._pump(timeout)
        return self.queues.pop(pid, [])

    def start(self, argv: list[str], watch: Path, log: Path, kill_before: int | None = None) -> Handle:
        request = json.dumps({"argv": argv, "watch": str(watch), "log": str(log), "kill_before": kill_before}) + "\n"
        self.process.stdin.write(request.encode())
        self.process.stdin.flush()
        deadline = time.monotonic() + 60
        while not self.started and time.monotonic() < deadline:
            self._pump(deadline - time.monotonic())
        if not self.started:
            raise RuntimeError("the fork server started no run")
        pid = self.started.pop(0)
        return Handle(pid, lambda timeout: self._read_for(pid, timeout))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class FreshStarter:
    """One new interpreter per run (``driver.py run``)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def start(self, argv: list[str], watch: Path, log: Path, kill_before: int | None = None) -> Handle:
        request = json.dumps({"argv": argv, "watch": str(watch), "kill_before": kill_before})
        with open(log, "ab") as err:
            process = subprocess.Popen([sys.executable, str(DRIVER), "run", request],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                       cwd=str(DRIVER.parent), env=self.env)
        pipe = _Pipe(process.stdout.fileno())

        def read(timeout: float) -> list[str]:
            lines = pipe.read(timeout)
            if pipe.eof and not process.stdout.closed:
                process.stdout.close()
                lines.append(f"exit {process.pid} {process.wait()}")
            return lines

        return Handle(process.pid, read)

    def close(self) -> None:
        pass
