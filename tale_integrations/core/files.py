"""Writing files so that a kill, or a second process, never leaves a half-written or mixed-up one.

- `atomic_write_bytes` / `atomic_write_text` / `atomic_write_json`: the data goes to a temporary
  file beside the target (a name no other process uses), is flushed and fsynced, then renamed over the target, and the
  folder is fsynced. A reader sees the old file or the new one, never a part.
- Temporaries are named ``.NAME.PID-HEX.tmp``; the next write of the same target removes those of
  writers that died (a kill between creating a temporary and renaming it), so kills leave no litter.
- `atomic_directory`: the same for a folder (a checkpoint, a trained adapter): build it under a
  temporary name, and it is renamed into place only when the block ends without an error.
- `FileLock`: an exclusive lock held by one process at a time (``fcntl.flock`` on a lock file named
  after the locked path's absolute location, kept in the cache folder's ``locks/`` so the user's
  folders hold only their files; the system releases it when the process dies, so a killed run never
  leaves a stale lock). The lock file names its holder, so the second process's error can say who.
- `cache_dir`: the project's cache folder.

POSIX systems lock; where ``fcntl`` does not exist the lock is a no-op.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import RunLockedError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FileLock", "atomic_directory", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "cache_dir",
    "fsync_dir", "is_temporary",
]


def cache_dir() -> Path:
    """The project's cache folder: ``$TALE_CACHE_DIR``, else ``$XDG_CACHE_HOME/tale-integrations``,
    else ``~/.cache/tale-integrations``."""
    explicit = os.environ.get("TALE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "tale-integrations"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename into it) to disk, where the system allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but is not ours
        return True
    return True


def is_temporary(entry: str | os.PathLike[str]) -> bool:
    """Whether a folder entry is one of this module's temporaries (``.NAME.PID-HEX.tmp``)."""
    name = Path(entry).name
    return name.startswith(".") and name.endswith(".tmp")


def _temporary(target: Path) -> Path:
    """A fresh temporary name beside ``target``, tagged with this process's id; first removes the
    temporaries of ``target`` left by processes that died while writing it (a kill)."""
    for entry in target.parent.glob(f".{glob.escape(target.name)}.*-*.tmp"):
        pid = entry.name[len(target.name) + 2 :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
    return target.parent / f".{target.name}.{os.getpid()}-{os.urandom(6).hex()}.tmp"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace ``path`` with ``data`` in one step; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # os.open with 0o666, not mkstemp: mkstemp's mode 0600 would stay with the file once renamed
    tmp = _temporary(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) in one step; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """`atomic_write_text` of ``obj`` as JSON (UTF-8, non-ASCII kept, a final newline)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; when the block ends without an error, it
    replaces ``target`` (an existing one is removed first); on an error it is deleted.

    Between the removal of an old ``target`` and the rename a kill leaves no ``target`` at all,
    never a half-written one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # mkdir, not mkdtemp: mkdtemp's mode 0700 would stay with the folder once renamed into place
    staging = _temporary(target)
    staging.mkdir()
    try:
        yield staging
        for root, _, files in os.walk(staging):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    os.fsync(f.fileno())
            fsync_dir(root)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


class FileLock:
    """An exclusive lock on ``path`` across processes (a lock file in ``cache_dir()/locks/``, named after
    the absolute path).

    Args:
        path: What the lock protects (a results file, a run folder's manifest, a model folder).
        wait: False: fail at once if another process holds it; True: wait for it; a number: wait at
            most that many seconds.
        what: How the error names the protected thing (default: the path).

    Raises (on `acquire` / entering the ``with`` block):
        RunLockedError: another process holds the lock (its pid and command line in the message).
    """

    def __init__(self, path: str | os.PathLike[str], *, wait: bool | float = False, what: str | None = None) -> None:
        self.path = Path(path)
        where = hashlib.sha1(str(self.path.resolve()).encode("utf-8")).hexdigest()[:16]
        self.lock_path = cache_dir() / "locks" / f"{where}-{self.path.name}.lock"
        self.wait = wait
        self.what = what or str(self.path)
        self._fd: int | None = None

    def _holder(self) -> str:
        try:
            info = json.loads(self.lock_path.read_text(encoding="utf-8") or "{}")
            return f"pid {info['pid']} ({info['command']}, since {info['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def acquire(self) -> FileLock:
        """Take the lock (see the class docstring); returns self."""
        if self._fd is not None:
            raise RuntimeError(f"{self.what}: this FileLock is already held")
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            deadline = None if self.wait is True else time.monotonic() + float(self.wait or 0)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() >= deadline:
                        os.close(fd)
                        waited = f" after waiting {float(self.wait):g} s" if self.wait else ""
                        raise RunLockedError(
                            f"{self.what} is being written by {self._holder()}{waited}; wait for it to finish "
                            "(or pass --wait), or write to another path"
                        ) from None
                    time.sleep(0.05)
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv)[:200] or "python",
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode(), 0)
        return self

    def release(self) -> None:
        """Give the lock up (the lock file stays; it is empty until the next holder writes itself in)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor releases the flock

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()
