"""The named datasets, one registry for evaluation and TALE-PT training.

Each name means one file, and so one split, wherever it is used: ``gsm8k`` is GSM8K's test split,
``gsm8k-train`` its train split, for ``tale eval`` and the training tools alike. One exception is
kept for older commands: ``tale search`` and ``tale train`` read ``gsm8k`` as the train split, as
they did before this registry (``TRAINING_ALIASES`` in ``training/data.py``). A `DatasetSpec`
says where the file lies under the data folder, which split it is and how its gold answers are
written. The data folder is found by `data_dir` alone (``$TALE_DATA_DIR``, else ``../shared/data``),
gold answers are read by `parse_gold` alone, and `locate` turns a name or a JSONL path into a file
with one wording for the two ways that fails (an unknown name, a missing file).

Standard library only (plus the core's answer helpers): the eval and training packages both
import it, and neither imports the other's loaders for it.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from .answers import gsm8k_gold, gsm8k_zero_gold, normalize_number
from .errors import DatasetError, DatasetNotFoundError
from .prompts import OPTION_LETTERS

__all__ = [
    "ALIASES", "DATASETS", "DATA_DIR_HELP", "AnswerFormat", "DatasetNotFoundError", "DatasetSpec", "data_dir",
    "find_dataset", "get_dataset", "known_names", "locate", "parse_gold", "slug",
]

_PROJECT = Path(__file__).resolve().parents[2]

#: The ``--data-dir`` option's help, worded once for every command that reads named datasets.
DATA_DIR_HELP = "folder of the named datasets (default $TALE_DATA_DIR, else ../shared/data)"


class AnswerFormat(enum.StrEnum):
    """How the gold answer is written in the data."""

    #: A number or numeric string (GSM8K-Zero floats, MathBench cloze strings).
    NUMERIC = "numeric"
    #: GSM8K's worked solution ending with ``#### <number>``.
    GSM8K = "gsm8k"
    #: A choice letter (``"B"``) or a 0-based option index (``1``); needs an options field.
    CHOICE = "choice"


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetSpec:
    """One named dataset.

    Attributes:
        name: The registry name (``"gsm8k"``); also the dataset's name in ids and result files.
        path: The file, relative to the data folder (``"gsm8k/test.jsonl"``).
        split: Which split of the source the file is: ``"train"`` or ``"test"``.
        answer_format: How the ``answer`` field is written (`AnswerFormat`).
        options: The field holding the options list (multiple choice), or None.
        cloze: Numeric questions the reference scripts ask with their cloze prompt (MathBench arithmetic).
        hub: The same split on the Hugging Face hub (``hub:OWNER/NAME:CONFIG:SPLIT``), or ``""``.
    """

    name: str
    path: str
    split: Literal["train", "test"]
    answer_format: AnswerFormat = AnswerFormat.NUMERIC
    options: str | None = None
    cloze: bool = False
    hub: str = ""

    def __post_init__(self) -> None:
        if self.split not in ("train", "test"):
            raise ValueError(f"DatasetSpec.split must be 'train' or 'test', got {self.split!r}")
        object.__setattr__(self, "answer_format", AnswerFormat(self.answer_format))
        if (self.answer_format is AnswerFormat.CHOICE) != (self.options is not None):
            raise ValueError(f"dataset {self.name!r}: an options field goes with the 'choice' answer format only")

    def file(self, root: str | os.PathLike[str] | None = None) -> Path:
        """The file under ``root`` (default `data_dir`)."""
        return data_dir(root) / self.path

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        return {"name": self.name, "path": self.path, "split": self.split, "answer_format": str(self.answer_format),
                "options": self.options, "cloze": self.cloze, "hub": self.hub}


#: Every named dataset, by name.
DATASETS: Mapping[str, DatasetSpec] = MappingProxyType({spec.name: spec for spec in (
    DatasetSpec(name="gsm8k", path="gsm8k/test.jsonl", split="test", answer_format=AnswerFormat.GSM8K,
                hub="hub:openai/gsm8k:main:test"),
    DatasetSpec(name="gsm8k-train", path="gsm8k/train.jsonl", split="train", answer_format=AnswerFormat.GSM8K,
                hub="hub:openai/gsm8k:main:train"),
    DatasetSpec(name="gsm8k-zero", path="gsm8k_zero/test.jsonl", split="test"),
    DatasetSpec(name="mathbench-arithmetic", path="mathbench/arithmetic_cloze_en.jsonl", split="test", cloze=True),
    DatasetSpec(name="mathbench-middle", path="mathbench/middle_single_choice_en.jsonl", split="test",
                answer_format=AnswerFormat.CHOICE, options="options"),
)})

#: Other spellings of registry names, each meaning the same split everywhere.
ALIASES: Mapping[str, str] = MappingProxyType({"gsm8k-test": "gsm8k"})


def known_names() -> str:
    """The names for messages and help texts: ``"gsm8k, gsm8k-train, ...; gsm8k-test = gsm8k"``."""
    return "; ".join([", ".join(DATASETS), *(f"{alias} = {name}" for alias, name in ALIASES.items())])


def find_dataset(name: str) -> DatasetSpec | None:
    """The `DatasetSpec` of a registry name or alias, or None when ``name`` is neither."""
    return DATASETS.get(ALIASES.get(name, name)) if isinstance(name, str) else None


def get_dataset(name: str) -> DatasetSpec:
    """The `DatasetSpec` of a registry name or alias.

    Raises:
        DatasetError: ``name`` is not in the registry (the message lists the known names).
    """
    if (spec := find_dataset(name)) is None:
        raise DatasetError(f"unknown dataset {name!r}; the known names are {known_names()}")
    return spec


def data_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: ``root`` when given, else ``$TALE_DATA_DIR``, else ``../shared/data``.

    ``../shared/data`` is looked for beside the working folder first (an installed package), then
    beside the project; when neither exists the project's is returned, for the error message.
    """
    if root is not None:
        return Path(root).expanduser()
    if env := os.environ.get("TALE_DATA_DIR"):
        return Path(env).expanduser()
    candidates = [Path.cwd() / ".." / "shared" / "data", _PROJECT / ".." / "shared" / "data"]
    return next((c for c in candidates if c.is_dir()), candidates[-1]).resolve()


def locate(
    dataset: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    *,
    other: str = "an existing JSONL file",
) -> tuple[DatasetSpec | None, Path]:
    """The file of a registry name (with its spec) or of a JSONL path (with None).

    Args:
        dataset: A registry name or alias, or a path.
        root: The data folder for names (default `data_dir`).
        other: What else ``dataset`` could have been, for the unknown-name message.

    Raises:
        DatasetNotFoundError: the name's file is missing under the data folder, or ``dataset`` is
            neither a name nor an existing file (a `DatasetError` and a ``FileNotFoundError``).
    """
    name = os.fspath(dataset)
    if (spec := find_dataset(name)) is not None:
        path = spec.file(root)
        if not path.is_file():
            raise DatasetNotFoundError(
                f"dataset {name!r} not found at {path}; set TALE_DATA_DIR (or --data-dir) to the folder holding "
                f"{spec.path}" + (f", or use {spec.hub}" if spec.hub else "")
            )
        return spec, path
    path = Path(name).expanduser()
    if not path.is_file():
        raise DatasetNotFoundError(f"dataset {name!r} is neither a known name ({known_names()}) nor {other}")
    return None, path


def parse_gold(value: Any, fmt: AnswerFormat | str | None = None, options: tuple[str, ...] | None = None) -> str:
    """The normalised gold answer of a data line: a number string, or a letter for multiple choice.

    Args:
        value: The line's answer field.
        fmt: How it is written (`AnswerFormat`); None infers it from the value, the rule of TALE-PT's
            question files: a number is numeric, a string with ``####`` a GSM8K solution, any other
            non-empty string is kept as written (stripped).
        options: The options, for `AnswerFormat.CHOICE`.

    Raises:
        ValueError: the answer does not fit the format (the message says why, without the line).
    """
    if fmt is None:
        if isinstance(value, bool):
            raise ValueError(f"'answer' must be a number or a string, got {value!r}")
        if isinstance(value, int | float):
            return gsm8k_zero_gold(value)
        if isinstance(value, str) and value.strip():
            return gsm8k_gold(value) if "####" in value else value.strip()
        raise ValueError(f"'answer' must be a number or a non-empty string, got {value!r}")
    fmt = AnswerFormat(fmt)
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
            return OPTION_LETTERS[value]
        letter = value.strip().upper() if isinstance(value, str) else None
        if not letter or len(letter) != 1 or letter not in OPTION_LETTERS[:n]:
            raise ValueError(
                f"the answer must be one of the letters {OPTION_LETTERS[:n]!r} (or an index), got {value!r}"
            )
        return letter
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"the answer must be a number or a string, got {type(value).__name__}")
    gold = gsm8k_zero_gold(value) if not isinstance(value, str) else normalize_number(value)
    if not gold:
        raise ValueError("the answer is empty")
    return gold


def slug(text: object, empty: str = "x") -> str:
    """``text`` made safe for file names and ids: other characters become ``-``; ``empty`` when none is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or empty
