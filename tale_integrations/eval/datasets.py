"""Evaluation datasets: GSM8K, GSM8K-Zero, MathBench and any JSONL with a field mapping.

A dataset is read from a path, from the shared data folder by a name of the registry in
`tale_integrations.core.datasets` (``gsm8k``, the test split, ``gsm8k-train``, ``gsm8k-zero``,
``mathbench-arithmetic``, ``mathbench-middle``; the folder is ``$TALE_DATA_DIR``, else
``../shared/data``), or from the Hugging Face hub (``hub:openai/gsm8k:main:test``, needs the
``datasets`` package and a connection). Every example gets a stable id, the dataset name
and its line number (``gsm8k-zero:17``), so a resumed run recognises what it has done. A malformed
line never stops a run: it is skipped, counted and reported with its line number and the reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.answers import AnswerKind
from ..core.checks import check_positive_int
from ..core.datasets import DATASETS, AnswerFormat, DatasetSpec, data_dir, locate, parse_gold, slug
from ..core.errors import DatasetError
from ..core.prompts import OPTION_LETTERS, PromptStyle, QuestionFormat

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

_SPLITS = {"test", "train", "dev", "val", "validation", "data"}


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

    @classmethod
    def of(cls, spec: DatasetSpec) -> FieldMap:
        """The field mapping of a registry dataset."""
        return cls(options=spec.options, answer_format=spec.answer_format)

    @property
    def kind(self) -> AnswerKind:
        """The answer kind used to check a model's output."""
        return AnswerKind.CHOICE if self.answer_format is AnswerFormat.CHOICE else AnswerKind.NUMERIC

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        return {"question": self.question, "answer": self.answer, "options": self.options,
                "answer_format": str(self.answer_format)}


#: The named datasets: `tale_integrations.core.datasets.DATASETS`, under its older name here.
BUILTIN_DATASETS = DATASETS


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
        if (not isinstance(raw, list) or not 2 <= len(raw) <= len(OPTION_LETTERS)
                or not all(isinstance(o, str | int | float) and not isinstance(o, bool) for o in raw)):
            raise ValueError(f"field {fields.options!r} must be a list of 2 to {len(OPTION_LETTERS)} options")
        options = tuple(str(o) for o in raw)
    try:
        gold = parse_gold(row[fields.answer], fields.answer_format, options)
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
        spec: A registry name (`tale_integrations.core.datasets.DATASETS`, or an alias such as
            ``gsm8k-test``), a JSONL path, or ``hub:OWNER/NAME[:CONFIG]:SPLIT``.
        fields: `FieldMap` (or its text form ``"question=q,answer=a"``) for a path or hub spec; registry
            names bring their own. Default: ``question`` / ``answer``, numeric; a hub or file name
            containing ``gsm8k`` (but not ``zero``) defaults to the GSM8K answer format.
        limit: Keep the first ``limit`` valid examples (malformed lines before them are still reported).
        name: Name for ids and reports; default the registry name (an alias gives the name it stands
            for) or the file's stem.
        root: The data folder for registry names (default `data_dir`).

    Raises:
        DatasetError: unknown name, missing file (a `DatasetNotFoundError`), bad mapping, or the hub is
            unavailable.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DatasetError("dataset must be a name, a JSONL path or hub:OWNER/NAME:SPLIT")
    check_positive_int("limit", limit, optional=True, error=DatasetError)
    if isinstance(fields, str):
        fields = FieldMap.parse(fields)
    spec = spec.strip()
    guess = FieldMap(answer_format=AnswerFormat.GSM8K) if "gsm8k" in spec.lower() and "zero" not in spec.lower() \
        else FieldMap()
    if spec.startswith("hub:"):
        default_name, rows = _hub_rows(spec)
        return _collect(rows, name or slug(default_name, "dataset"), fields or guess, limit, spec)
    registered, path = locate(spec, root, other="an existing JSONL file nor hub:OWNER/NAME[:CONFIG]:SPLIT")
    if registered is not None:
        return _collect(_jsonl_rows(path), name or registered.name, fields or FieldMap.of(registered), limit,
                        str(path), registered.cloze)
    stem = path.stem if path.stem.lower() not in _SPLITS else f"{path.parent.name}-{path.stem}"
    return _collect(_jsonl_rows(path), name or slug(stem, "dataset"), fields or guess, limit, str(path))
