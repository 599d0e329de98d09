"""The process side of the crash harness: runs one ``tale`` command and reports its file writes.

Two ways to start a run, both ending in ``tale_integrations.cli.main(argv)`` (what the ``tale``
command runs):

- ``python driver.py run REQUEST``: a fresh interpreter for one run (slow: importing torch and
  transformers takes seconds); REQUEST is JSON: ``{"argv", "watch", "kill_before"}`` (see
  `run_command`).
- ``python driver.py serve``: a fork server. It imports the heavy modules once, then reads one JSON
  request per line on stdin (the same, plus ``"log"``) and forks a child per request, so a
  restart after a kill costs a fork instead of an interpreter start. A child has imported modules
  only (no model loaded, no file of the run opened): what it finds on disk is all it knows, as
  for a fresh process. Runs may overlap (two writers on one run). The server writes ``pid PID``
  when it starts a run and ``exit PID CODE`` when the run ended (CODE is -9 after a SIGKILL).

A run writes on the report channel (the server's stdout, or the fresh interpreter's) ``start PID
T`` once the imports are done, then ``ev PID T KIND PATH`` for each file operation under the
watched folder (and under ``$TALE_CACHE_DIR``, where the run locks live): an open for writing, a
rename, a removal, a truncation, a new folder, seen by an audit hook (`sys.addaudithook`), and
each ``os.write``, ``os.fsync`` and ``os.ftruncate`` on such a file (no audit event covers these;
the record files append with them), reported by a wrapper just before it makes the call unchanged.
T is ``time.monotonic()``, one clock for every process of the machine. Writes done outside Python
(safetensors' Rust writer, torch's C++ one) are not seen; the events around them (the adapter's
config, the rename of a checkpoint) still mark those phases. With ``kill_before`` K the run
SIGKILLs itself just before its K-th reported operation (after reporting it): a kill exactly
between two file operations, which a kill timed from outside rarely hits. The run's own stdout and
stderr go to its log file.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
import traceback

#: Audit events that change the file system (``os.rename`` is also raised by ``os.replace``).
_CHANGES = {"os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate", "os.mkdir", "os.link",
            "os.symlink"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def preimport() -> None:
    """Import what the ``search``, ``eval`` and ``train`` commands import, before any fork."""
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # fork() in a process with threads
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401  (the eval report's plots)
    import torch  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    import tale_integrations.backends.hf  # noqa: F401
    import tale_integrations.cli  # noqa: F401
    import tale_integrations.eval.harness  # noqa: F401
    import tale_integrations.eval.report  # noqa: F401
    import tale_integrations.training.sft  # noqa: F401


def _path(value: object) -> str | None:
    if isinstance(value, bytes):
        return os.fsdecode(value)
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    return None


def _install_reporter(channel: int, watch: str, kill_before: int | None) -> None:
    """Report every file-system change under ``watch`` (and under ``$TALE_CACHE_DIR``, where the
    run locks live, as ``cache:PATH``) on ``channel`` (see the module docstring); with
    ``kill_before`` K, SIGKILL this process just before its K-th reported operation."""
    roots = [("", os.path.realpath(watch))]
    if os.environ.get("TALE_CACHE_DIR"):
        roots.append(("cache:", os.path.realpath(os.environ["TALE_CACHE_DIR"])))
    write = os.write
    busy = False
    count = 0

    def report(event: str, path: str | None) -> None:
        nonlocal busy, count
        if busy or path is None:
            return
        full = os.path.realpath(path)
        inside = [(prefix, root) for prefix, root in roots if full == root or full.startswith(root + os.sep)]
        if not inside:
            return
        prefix, root = inside[0]
        busy = True
        try:
            line = f"ev {os.getpid()} {time.monotonic():.6f} {event} {prefix}{os.path.relpath(full, root)}\n"
            write(channel, line.encode("utf-8", "replace"))
            count += 1
            if count == kill_before:  # hooks and wrappers run before the operation they report
                os.kill(os.getpid(), signal.SIGKILL)
        finally:
            busy = False

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            if not args or not isinstance(args[-1], int) or not args[-1] & _WRITE_FLAGS:
                return
        elif event not in _CHANGES:
            return
        report(event, _path(args[0]) if args else None)

    def on_fd(name: str, call):
        def wrapper(fd, *args):
            if isinstance(fd, int) and fd > 2 and fd != channel and not busy:
                try:
                    path = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    path = None
                report(name, path)
            return call(fd, *args)

        return wrapper

    sys.addaudithook(hook)
    os.write = on_fd("os.write", os.write)
    os.fsync = on_fd("os.fsync", os.fsync)
    os.ftruncate = on_fd("os.ftruncate", os.ftruncate)


def run_command(request: dict, channel: int) -> int:
    """Run ``tale ARGV`` in this process, reporting to ``channel``; returns the exit status.

    ``request``: ``argv``, ``watch`` (the folder whose writes are reported) and ``kill_before``
    (None, or K: die just before the K-th reported operation).
    """
    from tale_integrations.cli import main

    argv = request["argv"]
    sys.argv = ["tale", *argv]
    _install_reporter(channel, request["watch"], request.get("kill_before"))
    os.write(channel, f"start {os.getpid()} {time.monotonic():.6f}\n".encode())
    try:
        return int(main(argv) or 0)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _redirect(log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


def serve() -> None:
    """The fork server (see the module docstring); runs may overlap (two writers on one run)."""
    preimport()
    out = os.dup(1)
    os.dup2(2, 1)  # stray prints of the server go to its stderr, never into the report channel
    os.write(out, b"ready\n")
    pending, children, open_input = b"", set(), True
    while open_input or children:
        while children:  # reap the runs that ended
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            os.write(out, f"exit {pid} {os.waitstatus_to_exitcode(status)}\n".encode())
        if not open_input:
            time.sleep(0.005)
            continue
        ready, _, _ = select.select([0], [], [], 0.005 if children else None)
        if not ready:
            continue
        chunk = os.read(0, 65536)
        open_input = bool(chunk)
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if line.strip():
                children.add(_fork(json.loads(line), out))


def _fork(request: dict, out: int) -> int:
    pid = os.fork()
    if pid == 0:  # the child: never returns into the server's loop
        code = 70
        try:
            _redirect(request["log"])
            code = run_command(request, out)
        finally:
            os._exit(code)
    os.write(out, f"pid {pid}\n".encode())
    return pid


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        serve()
        return
    if sys.argv[1:2] != ["run"] or len(sys.argv) != 3:
        raise SystemExit("usage: driver.py serve | driver.py run REQUEST_JSON")
    preimport()
    channel = os.dup(1)
    os.dup2(2, 1)  # the run's stdout joins its stderr (the harness sends both to the log)
    os._exit(run_command(json.loads(sys.argv[2]), channel))


if __name__ == "__main__":
    main()
