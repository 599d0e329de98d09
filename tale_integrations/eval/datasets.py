"""Evaluation datasets: GSM8K, GSM8K-Zero, MathBench and any JSONL with a field mapping.

A dataset is read from a path, from the shared data folder by name (``gsm8k``, ``gsm8k-zero``,
``mathbench-arithmetic``, ``mathbench-middle``; the folder is ``$TALE_DATA_DIR``, else
``../shared/data`` beside the project), or from the Hugging Face hub (``hub:openai/gsm8k:main:test``,
needs the ``datasets`` package and a connection). Every example gets a stable id, the dataset name
and its line number (``gsm8k-zero:17``), so a resumed run recognises what it has done. A malformed
line never stops a run: it is skipped, counted and reported with its line number and the reason.
"""

from __future__ import annotations

import enum
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.answers import AnswerKind, gsm8k_gold, gsm8k_zero_gold, normalize_number
from ..core.prompts import PromptStyle, QuestionFormat

__all__ = [
    "BUILTIN_DATASETS",
    "AnswerFormat",
    "Dataset",
    "DatasetError",
    "Example",
    "FieldMap",
    "MalformedLine",
    "data_dir",
    "load_dataset",
]

_LETTERS = "ABCDEFGHIJ"
_SPLITS = {"test", "train", "dev", "val", "validation", "data"}


class DatasetError(ValueError):
    """A dataset cannot be read (unknown name, missing file, bad field mapping, hub unavailable)."""


class AnswerFormat(enum.StrEnum):
    """How the gold answer is written in the data."""

    #: A number or numeric string (GSM8K-Zero floats, MathBench cloze strings).
    NUMERIC = "numeric"
    #: GSM8K's worked solution ending with ``#### <number>``.
    GSM8K = "gsm8k"
    #: A choice letter (``"B"``) or a 0-based option index (``1``); needs an options field.
    CHOICE = "choice"


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldMap:
    """Which JSON fields hold the question, the gold answer and the options, and how to read the gold.

    Attributes:
        question: Field of the question text. Default ``"question"``.
        answer: Field of the gold answer. Default ``"answer"``.
        options: Field of the options list (multiple choice), or None for cloze questions.
        answer_format: `AnswerFormat` of the gold. Default ``"numeric"``.
    """

    question: str = "question"
    answer: str = "answer"
    options: str | None = None
    answer_format: AnswerFormat | str = AnswerFormat.NUMERIC

    def __post_init__(self) -> None:
        for name in ("question", "answer"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise DatasetError(f"FieldMap.{name} must be a non-empty field name")
        try:
            object.__setattr__(self, "answer_format", AnswerFormat(self.answer_format))
        except ValueError:
            allowed = ", ".join(f.value for f in AnswerFormat)
            raise DatasetError(f"answer format must be one of {allowed}, got {self.answer_format!r}") from None
        if self.answer_format is AnswerFormat.CHOICE and not self.options:
            raise DatasetError("answer format 'choice' needs an options field (options=FIELD)")

    @classmethod
    def parse(cls, text: str) -> FieldMap:
        """Read ``"question=problem,answer=target,options=choices,format=choice"`` (any subset)."""
        keys = {"question": "question", "answer": "answer", "options": "options", "format": "answer_format",
                "answer_format": "answer_format", "kind": "answer_format"}
        values: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in keys or not value.strip():
                raise DatasetError(
                    f"bad field mapping {part!r}: write KEY=VALUE pairs separated by commas, with KEY one of "
                    "question, answer, options, format (numeric | gsm8k | choice)"
                )
            values[keys[key.strip()]] = value.strip()
        return cls(**values)

    @property
    def kind(self) -> AnswerKind:
        """The answer kind used to check a model's output."""
        return AnswerKind.CHOICE if self.answer_format is AnswerFormat.CHOICE else AnswerKind.NUMERIC

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        return {"question": self.question, "answer": self.answer, "options": self.options,
                "answer_format": str(self.answer_format)}


@dataclass(frozen=True, slots=True)
class _Builtin:
    path: str
    fields: FieldMap
    hub: str
    cloze: bool = False


#: The datasets known by name: file under the data folder, field mapping, and a hub equivalent.
BUILTIN_DATASETS: dict[str, _Builtin] = {
    "gsm8k": _Builtin("gsm8k/test.jsonl", FieldMap(answer_format=AnswerFormat.GSM8K), "hub:openai/gsm8k:main:test"),
    "gsm8k-zero": _Builtin("gsm8k_zero/test.jsonl", FieldMap(), ""),
    "mathbench-arithmetic": _Builtin("mathbench/arithmetic_cloze_en.jsonl", FieldMap(), "", cloze=True),
    "mathbench-middle": _Builtin(
        "mathbench/middle_single_choice_en.jsonl", FieldMap(options="options", answer_format=AnswerFormat.CHOICE), ""
    ),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Example:
    """One question of a dataset.

    Attributes:
        id: Stable id: the dataset name and the 1-based line (or hub row) number, ``"gsm8k:12"``.
        question: The question text.
        gold: The gold answer, normalised (a number string, or a letter for multiple choice).
        kind: `AnswerKind` used to check answers.
        options: The options, for multiple choice.
        line: The 1-based line (or row) number in the source.
    """

    id: str
    question: str
    gold: str
    kind: AnswerKind
    options: tuple[str, ...] | None = None
    line: int = 0

    @property
    def format(self) -> QuestionFormat:
        """The prompt format for this example."""
        return QuestionFormat.MULTIPLE_CHOICE if self.kind is AnswerKind.CHOICE else QuestionFormat.GSM8K


@dataclass(frozen=True, slots=True, kw_only=True)
class MalformedLine:
    """A line that was skipped: its 1-based number and why."""

    line: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        return {"line": self.line, "reason": self.reason}


@dataclass(frozen=True, slots=True, kw_only=True)
class Dataset:
    """A loaded dataset.

    Attributes:
        name: Short name, used in ids, result file names and reports.
        source: Where it was read from (a path or a hub spec).
        fields: The `FieldMap` used.
        examples: The valid examples, in file order.
        malformed: The lines skipped, with reasons.
        cloze: Numeric questions the reference scripts ask with their cloze prompt (MathBench
            arithmetic); paper mode does too, the default mode asks them like GSM8K.
    """

    name: str
    source: str
    fields: FieldMap
    examples: tuple[Example, ...]
    malformed: tuple[MalformedLine, ...] = field(default=())
    cloze: bool = False

    @property
    def format(self) -> QuestionFormat:
        """The prompt format of the dataset's questions (default mode)."""
        return QuestionFormat.MULTIPLE_CHOICE if self.fields.kind is AnswerKind.CHOICE else QuestionFormat.GSM8K

    def prompt_format(self, style: PromptStyle | str = PromptStyle.DEFAULT) -> QuestionFormat:
        """The prompt format in a `PromptStyle`: ``cloze`` for cloze datasets in paper mode, else `format`."""
        if self.cloze and PromptStyle(style) is PromptStyle.PAPER:
            return QuestionFormat.CLOZE
        return self.format

    def __len__(self) -> int:
        return len(self.examples)

    def describe_malformed(self, limit: int = 5) -> str | None:
        """A one-paragraph warning about skipped lines, or None when there are none."""
        if not self.malformed:
            return None
        shown = "; ".join(f"line {m.line}: {m.reason}" for m in self.malformed[:limit])
        more = f"; and {len(self.malformed) - limit} more" if len(self.malformed) > limit else ""
        return f"{self.name}: skipped {len(self.malformed)} malformed line(s) of {self.source} ({shown}{more})"

    def to_dict(self) -> dict[str, Any]:
        """Summary (not the examples): name, source, field map, sizes and the malformed lines."""
        return {"name": self.name, "source": self.source, "fields": self.fields.to_dict(),
                "examples": len(self.examples), "malformed": [m.to_dict() for m in self.malformed]}


def data_dir() -> Path:
    """The shared data folder: ``$TALE_DATA_DIR``, else ``../shared/data`` relative to the project root."""
    explicit = os.environ.get("TALE_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()


def _gold(value: Any, fmt: AnswerFormat, options: tuple[str, ...] | None) -> str:
    if fmt is AnswerFormat.GSM8K:
        if not isinstance(value, str):
            raise ValueError(
                f"the GSM8K answer must be a string ending with '#### <number>', got {type(value).__name__}"
            )
        return gsm8k_gold(value)
    if fmt is AnswerFormat.CHOICE:
        n = len(options or ())
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < n:
                raise ValueError(f"the answer index {value} is outside the {n} options")
            return _LETTERS[value]
        letter = value.strip().upper() if isinstance(value, str) else None
        if not letter or len(letter) != 1 or letter not in _LETTERS[:n]:
            raise ValueError(f"the answer must be one of the letters {_LETTERS[:n]!r} (or an index), got {value!r}")
        return letter
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"the answer must be a number or a string, got {type(value).__name__}")
    gold = gsm8k_zero_gold(value) if not isinstance(value, str) else normalize_number(value)
    if not gold:
        raise ValueError("the answer is empty")
    return gold


def _example(row: Any, number: int, name: str, fields: FieldMap) -> Example:
    """Build one example from a decoded row; raises ValueError with the reason when malformed."""
    if not isinstance(row, Mapping):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    question = row.get(fields.question)
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"field {fields.question!r} is missing or not a non-empty string")
    if fields.answer not in row or row[fields.answer] is None:
        raise ValueError(f"field {fields.answer!r} is missing")
    options = None
    if fields.options is not None:
        raw = row.get(fields.options)
        if (not isinstance(raw, list) or not 2 <= len(raw) <= len(_LETTERS)
                or not all(isinstance(o, str | int | float) and not isinstance(o, bool) for o in raw)):
            raise ValueError(f"field {fields.options!r} must be a list of 2 to {len(_LETTERS)} options")
        options = tuple(str(o) for o in raw)
    try:
        gold = _gold(row[fields.answer], fields.answer_format, options)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad answer in field {fields.answer!r}: {exc}") from None
    return Example(id=f"{name}:{number}", question=question, gold=gold, kind=fields.kind, options=options, line=number)


def _collect(rows: Iterable[tuple[int, Any, str | None]], name: str, fields: FieldMap, limit: int | None,
             source: str, cloze: bool = False) -> Dataset:
    examples: list[Example] = []
    malformed: list[MalformedLine] = []
    for number, row, error in rows:
        if limit is not None and len(examples) >= limit:
            break
        if error is None:
            try:
                examples.append(_example(row, number, name, fields))
                continue
            except ValueError as exc:
                error = str(exc)
        malformed.append(MalformedLine(line=number, reason=error))
    return Dataset(name=name, source=source, fields=fields, examples=tuple(examples), malformed=tuple(malformed),
                   cloze=cloze)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue  # blank lines (a trailing newline) are not data
            try:
                yield number, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield number, None, f"not valid JSON ({exc.msg} at column {exc.colno})"


def _hub_rows(spec: str) -> tuple[str, Iterator[tuple[int, Any, str | None]]]:
    parts = spec.removeprefix("hub:").split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise DatasetError(
            f"bad hub dataset {spec!r}: write hub:OWNER/NAME:SPLIT or hub:OWNER/NAME:CONFIG:SPLIT, "
            "e.g. hub:openai/gsm8k:main:test"
        )
    repo, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else tuple(parts)
    try:
        import datasets as hf_datasets
    except ImportError:
        raise DatasetError(
            f"reading {spec!r} from the Hugging Face hub needs the 'datasets' package: pip install datasets "
            "(or download the JSONL file and pass its path)"
        ) from None
    try:
        table = hf_datasets.load_dataset(repo, config, split=split)
    except Exception as exc:  # offline, unknown repo, unknown split: the library raises many types
        raise DatasetError(
            f"could not load {spec!r} from the Hugging Face hub ({type(exc).__name__}: {exc}); check the name "
            "and your connection, or download the JSONL file and pass its path (or set TALE_DATA_DIR)"
        ) from exc
    return f"{repo.rsplit('/', 1)[-1]}-{split}", ((i, row, None) for i, row in enumerate(table, start=1))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "dataset"


def load_dataset(
    spec: str,
    *,
    fields: FieldMap | str | None = None,
    limit: int | None = None,
    name: str | None = None,
    root: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Load a dataset by name, path or hub spec.

    Args:
        spec: A built-in name (`BUILTIN_DATASETS`), a JSONL path, or ``hub:OWNER/NAME[:CONFIG]:SPLIT``.
        fields: `FieldMap` (or its text form ``"question=q,answer=a"``) for a path or hub spec; built-in
            names bring their own. Default: ``question`` / ``answer``, numeric; a hub or file name
            containing ``gsm8k`` (but not ``zero``) defaults to the GSM8K answer format.
        limit: Keep the first ``limit`` valid examples (malformed lines before them are still reported).
        name: Name for ids and reports; default the built-in name or the file's stem.
        root: The data folder for built-in names (default `data_dir`).

    Raises:
        DatasetError: unknown name, missing file, bad mapping, or the hub is unavailable.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DatasetError("dataset must be a name, a JSONL path or hub:OWNER/NAME:SPLIT")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DatasetError(f"limit must be a positive int, got {limit!r}")
    if isinstance(fields, str):
        fields = FieldMap.parse(fields)
    spec = spec.strip()
    if spec in BUILTIN_DATASETS:
        builtin = BUILTIN_DATASETS[spec]
        folder = Path(root) if root is not None else data_dir()
        path = folder / builtin.path
        if not path.is_file():
            raise DatasetError(
                f"dataset {spec!r} not found at {path}; set TALE_DATA_DIR to the folder holding {builtin.path}"
                + (f", or use {builtin.hub}" if builtin.hub else "")
            )
        rows: Iterable[tuple[int, Any, str | None]] = _jsonl_rows(path)
        return _collect(rows, name or spec, fields or builtin.fields, limit, str(path), builtin.cloze)
    guess = FieldMap(answer_format=AnswerFormat.GSM8K) if "gsm8k" in spec.lower() and "zero" not in spec.lower() \
        else FieldMap()
    if spec.startswith("hub:"):
        default_name, rows = _hub_rows(spec)
        return _collect(rows, name or _slug(default_name), fields or guess, limit, spec)
    path = Path(spec).expanduser()
    if not path.is_file():
        known = ", ".join(BUILTIN_DATASETS)
        raise DatasetError(f"dataset {spec!r} is neither a file nor a known name ({known}) nor hub:OWNER/NAME:SPLIT")
    stem = path.stem if path.stem.lower() not in _SPLITS else f"{path.parent.name}-{path.stem}"
    return _collect(_jsonl_rows(path), name or _slug(stem), fields or guess, limit, str(path))
