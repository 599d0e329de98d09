"""Resumable JSONL result files, shared by the budget search and the evaluation harness.

A file starts with one header line (``{"header": {...}}``) describing the run; every further line
is one finished record with a unique ``id``. Records are appended and flushed to disk one by one,
so a killed run loses at most the line being written: on reopening, a truncated last line is cut
off, the ids already present are skipped, and a header that differs from the new run's is refused
rather than mixed into it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import RunMismatchError

__all__ = ["RecordFile", "RunMismatchError"]


class RecordFile:
    """Append-only JSONL records with a run header and resume.

    Args:
        path: The JSONL file (created with its folder if missing).
        header: What identifies the run (model, settings...); must be JSON-serialisable.
    """

    def __init__(self, path: str | os.PathLike[str], header: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.header = json.loads(json.dumps(dict(header)))  # normalised, and proves it serialises
        self.records: dict[str, dict[str, Any]] = {}
        self.skipped_lines = 0
        self._open()

    def _open(self) -> None:
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path} is a folder; pass a .jsonl file path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._write_line({"header": self.header}, mode="w")
            return
        raw = self.path.read_bytes()
        if not raw.endswith(b"\n"):
            # The last line was cut by a kill: drop it (its record was not finished).
            keep = raw.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(keep)
            raw = raw[:keep]
        lines = raw.decode("utf-8").splitlines()
        try:
            first = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            first = None
        if not isinstance(first, dict) or "header" not in first:
            raise RunMismatchError(
                f"{self.path} is not a results file of this tool (no header line); pass a new path or delete it"
            )
        if first["header"] != self.header:
            raise RunMismatchError(
                f"{self.path} holds a different run ({diff_summary(first['header'], self.header)}); pass a new path to "
                "start this run, or the same settings to resume that one"
            )
        for line in lines[1:]:
            try:
                record = json.loads(line)
                self.records[str(record["id"])] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                self.skipped_lines += 1

    def _write_line(self, obj: Any, *, mode: str = "a") -> None:
        with open(self.path, mode, encoding="utf-8") as f:
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def __contains__(self, record_id: str) -> bool:
        return record_id in self.records

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one finished record (it must have a new ``id``)."""
        rid = str(record["id"])
        if rid in self.records:
            raise ValueError(f"record {rid!r} is already in {self.path}")
        self._write_line(dict(record))
        self.records[rid] = dict(record)


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
