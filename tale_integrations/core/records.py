"""Resumable JSONL record files: the one layer the search, the evaluation and the training data use.

A file starts with one header line (``{"header": {...}}``) describing the run; every further line
is one finished record with a unique ``id``. The promise: a kill, a second process or a damaged
line never loses a finished record, never duplicates one, and never stops a resume.

- **One writer per run.** `RecordFile` takes an exclusive lock (`core.files.FileLock`) before it
  reads the file and holds it until `close`: a second process on the same run gets
  `RunLockedError` naming the first one, or waits with ``wait=``. The system drops the lock when a
  process dies, so a killed run never blocks its own resume.
- **Atomic header.** A new file appears with its whole header line or not at all (written beside
  it and renamed into place).
- **Whole lines.** Each record is one ``write`` of the whole line on an append-only descriptor,
  then ``fsync``: a kill leaves the line whole or absent.
- **Tolerant, reported recovery.** `read_records` is the one reader. It keeps every good record and
  leaves out, with the line number and the reason, what it cannot use: a cut last line, invalid
  UTF-8, a line that is not JSON, a record without an id, a second header (another run's lines), a
  later copy of an id already read (the first copy is kept). `Recovery.describe` says what was
  dropped; writers repair a cut last line and report the rest.
- A header that differs from the new run's is refused (`RunMismatchError`), never mixed into it.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RunLockedError, RunMismatchError, TaleValueError
from .files import FileLock, atomic_write_text

__all__ = [
    "DroppedLine", "RecordFile", "RecordRead", "RecoveredFileWarning", "Recovery", "RunLockedError", "RunMismatchError",
    "diff_summary", "read_header", "read_records", "warn_recovered",
]


class RecoveredFileWarning(UserWarning):
    """A record file was read with lines left out (the message lists them and why)."""


@dataclass(frozen=True, slots=True)
class DroppedLine:
    """A line `read_records` left out: its 1-based number and why."""

    line: int
    reason: str


@dataclass(frozen=True, slots=True)
class Recovery:
    """What reading a record file left out. Empty when the file was whole."""

    path: Path
    dropped: tuple[DroppedLine, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.dropped)

    def describe(self) -> str:
        """``"F: 2 lines left out (line 5: invalid UTF-8; line 9: cut by a kill)"``, or "" when whole."""
        if not self.dropped:
            return ""
        shown = "; ".join(f"line {d.line}: {d.reason}" for d in self.dropped[:5])
        more = f"; and {len(self.dropped) - 5} more" if len(self.dropped) > 5 else ""
        n = len(self.dropped)
        return f"{self.path}: {n} line{'s' if n != 1 else ''} left out ({shown}{more})"


@dataclass(frozen=True, slots=True)
class RecordRead:
    """A record file as read: its header (None if it has none), its records by id (first copy of
    each id, in file order) and what was left out."""

    header: dict[str, Any] | None
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    recovery: Recovery = field(default_factory=lambda: Recovery(Path()))
    #: The file ends in a cut line (a kill while writing it); the line is among ``recovery.dropped``.
    cut_tail: bool = False


def _parse_header(first: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(first.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj["header"] if isinstance(obj, dict) and isinstance(obj.get("header"), dict) else None


def read_header(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The header of a record file (its first line), or None when the first line is not a whole header."""
    with open(path, "rb") as f:
        first = f.readline()
    return _parse_header(first) if first.endswith(b"\n") else None


def read_records(
    path: str | os.PathLike[str],
    *,
    kind: str | None = None,
    what: str = "record file of this tool",
    check: Callable[[dict[str, Any]], Any] | None = None,
) -> RecordRead:
    """Read a record file, keeping every usable record and reporting the rest (see the module docstring).

    Args:
        path: The file.
        kind: The header's ``kind`` the caller expects (``"tale-search"``, ``"tale-eval"``); another is an
            error naming both.
        what: How errors name the file the caller expects (``"search file"``).
        check: Called on each record; one that raises is left out with the error as its reason (a line of
            another schema).

    Raises:
        FileNotFoundError: no such file.
        TaleValueError: the file is empty, or its first line is not a whole header (a cut header is named
            as such: the run was killed while starting, and rerunning its command starts it again), or its
            header is of another ``kind``.
    """
    path = Path(path)
    raw = path.read_bytes()
    if not raw.strip():
        raise TaleValueError(f"{path} is empty: it holds no header line; run the command that writes it")
    lines = raw.split(b"\n")
    cut_tail = not raw.endswith(b"\n")
    if raw.endswith(b"\n"):
        lines.pop()  # the empty string after the final newline
    header = _parse_header(lines[0])
    if header is None:
        if len(lines) == 1 and cut_tail:
            raise TaleValueError(f"{path} has a cut header line (the run was killed while starting); rerun its "
                                 "command to start it again, or delete the file")
        raise TaleValueError(f"{path} is not a {what} (its first line is not a header)")
    if kind is not None and header.get("kind") != kind:
        raise TaleValueError(f"{path} is not a {what} (its header is of kind {header.get('kind')!r}, not {kind!r})")
    records: dict[str, dict[str, Any]] = {}
    dropped: list[DroppedLine] = []
    for n, line in enumerate(lines[1:], start=2):
        if cut_tail and n == len(lines):
            dropped.append(DroppedLine(n, "cut by a kill (no final newline)"))
            continue
        if not line.strip():
            continue
        reason = None
        try:
            obj = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            reason = "invalid UTF-8"
        except json.JSONDecodeError:
            reason = "not JSON"
        else:
            if not isinstance(obj, dict):
                reason = "not a JSON object"
            elif "header" in obj:
                reason = "a second header line (another run's lines)"
            elif "id" not in obj:
                reason = "a record without an id"
            elif str(obj["id"]) in records:
                reason = f"a second copy of id {str(obj['id'])!r} (the first is kept)"
            elif check is not None:
                try:
                    check(obj)
                except (ValueError, TypeError, KeyError) as exc:
                    reason = f"not a record of this file's kind ({exc})"
        if reason is None:
            records[str(obj["id"])] = obj
        else:
            dropped.append(DroppedLine(n, reason))
    return RecordRead(header=header, records=records, recovery=Recovery(path, tuple(dropped)), cut_tail=cut_tail)


def warn_recovered(recovery: Recovery) -> None:
    """Tell the user what a reader left out (`RecoveredFileWarning`), when it left anything out."""
    if recovery:
        warnings.warn(recovery.describe(), RecoveredFileWarning, stacklevel=3)


class RecordFile:
    """Append-only JSONL records with a run header, resume, and one writer at a time.

    Args:
        path: The JSONL file (created with its folder if missing).
        header: What identifies the run (model, settings...); must be JSON-serialisable.
        wait: Another process writing this run: False raises `RunLockedError` at once, True waits for
            it, a number waits at most that many seconds.

    Attributes:
        records: The finished records by id (read back and new).
        recovery: What opening the file left out (`Recovery`; falsy when the file was whole).

    Use it as a context manager, or call `close`, to give the lock up before the process ends.
    """

    def __init__(self, path: str | os.PathLike[str], header: Mapping[str, Any], *, wait: bool | float = False) -> None:
        self.path = Path(path)
        self.header = json.loads(json.dumps(dict(header)))  # normalised, and proves it serialises
        self.records: dict[str, dict[str, Any]] = {}
        self.recovery = Recovery(self.path)
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path} is a folder; pass a .jsonl file path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(self.path, wait=wait).acquire()
        self._fd: int | None = None
        try:
            self._open()
        except BaseException:
            self._lock.release()
            raise

    def _open(self) -> None:
        header_line = json.dumps({"header": self.header}, ensure_ascii=False) + "\n"
        raw = self.path.read_bytes() if self.path.exists() else b""
        if not raw.strip() or (b"\n" not in raw and _parse_header(raw) is None):
            # New, empty, or only a header cut while it was written: nothing finished yet, start afresh.
            atomic_write_text(self.path, header_line)
        else:
            try:
                read = read_records(self.path)
            except TaleValueError as exc:  # not a record file at all: refuse it, as a file of another run
                raise RunMismatchError(f"{exc}; pass a new path or delete it") from None
            if read.header != self.header:
                raise RunMismatchError(
                    f"{self.path} holds a different run ({diff_summary(read.header or {}, self.header)}); pass a "
                    "new path to start this run, or the same settings to resume that one"
                )
            if read.cut_tail:  # the last line was cut by a kill: its record was not finished
                with open(self.path, "r+b") as f:
                    f.truncate(raw.rfind(b"\n") + 1)
                    f.flush()
                    os.fsync(f.fileno())
            self.records = read.records
            self.recovery = read.recovery
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    @property
    def skipped_lines(self) -> int:
        """How many lines opening the file left out (see `recovery`)."""
        return len(self.recovery.dropped)

    def __contains__(self, record_id: str) -> bool:
        return record_id in self.records

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one finished record (it must have a new ``id``): one whole line, on disk when this returns."""
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        rid = str(record["id"])
        if rid in self.records:
            raise ValueError(f"record {rid!r} is already in {self.path}")
        data = (json.dumps(dict(record), ensure_ascii=False) + "\n").encode("utf-8")
        written = os.write(self._fd, data)
        if written != len(data):  # a full disk: cut what was written so the file stays whole lines
            os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
            raise OSError(f"{self.path}: wrote {written} of {len(data)} bytes (disk full?)")
        os.fsync(self._fd)
        self.records[rid] = dict(record)

    def close(self) -> None:
        """Stop writing and give the lock up."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._lock.release()

    def __enter__(self) -> RecordFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None or getattr(self, "_lock", None) is not None:
            self.close()


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def diff_summary(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """What changed between two run headers (or training identities), for a refusal message.

    Nested mappings are compared key by key (``policy.min_budget: 1 -> 2``); the first four changes
    are listed, then how many more.
    """
    a, b = _flatten(old), _flatten(new)
    changed = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    more = f"; and {len(changed) - 4} more" if len(changed) > 4 else ""
    return "; ".join(changed[:4]) + more or "the values differ"
