"""TALE-PT data: questions in, search records out, SFT / DPO records for training.

- `load_questions` reads a named data set of the registry in `tale_integrations.core.datasets`
  (``gsm8k-train``, ``gsm8k-test``, ``gsm8k-zero``...) or any JSONL file of ``{"question", "answer"}``
  lines into `SearchItem` values (GSM8K ``#### n`` answers, GSM8K-Zero floats, plain strings;
  ``options`` lines become multiple-choice items). Here, and only here, ``gsm8k`` still means GSM8K's
  train split (`TRAINING_ALIASES`), as it did before the registry was shared.
- `split_by_hash` splits questions into train / held-out by a seeded hash of the question text:
  the same seed always gives the same split, whatever the order or number of questions, and two
  copies of one question never land on opposite sides (GSM8K-Zero has no train split of its own).
- `build_sft_records` / `build_dpo_records` turn search records into training records. The prompt is
  the question prompt **without** any budget (`answer_messages(question)`); the SFT target and the
  DPO chosen side are the answer under the optimal budget, the DPO rejected side the vanilla CoT
  answer. Records without an accepted budget, or whose vanilla answer was wrong, are left out and
  counted in `DataStats` (never trained on: they have no accepted budget).
- `write_jsonl` / `read_sft_records` / `read_dpo_records` / `load_sft_data` / `load_dpo_data` read
  and write the records, with errors that name the file and line at fault (`DataStats`,
  `budget_stats` and the JSONL helpers live in `_common` and are re-exported here).

Standard library only: nothing here needs torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar

from ..core.checks import check_positive_int
from ..core.datasets import ALIASES, DATASETS, DatasetSpec, locate, parse_gold
from ..core.datasets import data_dir as default_data_dir
from ..core.prompts import QuestionFormat, answer_messages
from ..core.search import SearchItem, SearchRecord, SearchStatus, load_records
from ._common import DataStats, budget_stats, file_sha256, is_search_file, jsonl_rows, records_sha256, write_jsonl

__all__ = [
    "DPORecord", "DataStats", "SFTRecord", "Split", "TRAINING_ALIASES", "budget_stats", "build_dpo_records",
    "build_sft_records", "default_data_dir", "file_sha256", "is_search_file", "load_dpo_data", "load_questions",
    "load_sft_data", "locate_dataset", "read_dpo_records", "read_sft_records", "records_sha256", "records_stats",
    "sample_items", "select_split", "split_by_hash", "training_names", "write_jsonl",
]

#: Names the TALE-PT commands read otherwise than the registry: ``gsm8k`` meant GSM8K's train split
#: here before evaluation and training shared one registry (the shipped learned estimator is refitted
#: with ``--dataset gsm8k``), so it keeps that meaning in this package; ``gsm8k-train`` is the spelling
#: that means the train split everywhere.
TRAINING_ALIASES: Mapping[str, str] = MappingProxyType({"gsm8k": "gsm8k-train"})


def training_names() -> str:
    """The named data sets as the training commands read them, for help texts."""
    names = [n for n in (*DATASETS, *ALIASES) if n not in TRAINING_ALIASES]
    return "; ".join([", ".join(names), *(f"{old} = {new} here" for old, new in TRAINING_ALIASES.items())])

#: Which part of a hash split to use.
Split = Literal["all", "train", "held-out"]

T = TypeVar("T")


def locate_dataset(
    dataset: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None
) -> tuple[DatasetSpec | None, Path]:
    """The file of a registry name (read through `TRAINING_ALIASES`) with its spec, or of a JSONL path.

    Raises:
        DatasetNotFoundError: (a ``FileNotFoundError``) the name's file is missing, or ``dataset`` is
            neither a name nor a file; the message names the known names or ``TALE_DATA_DIR``.
    """
    name = os.fspath(dataset)
    return locate(TRAINING_ALIASES.get(name, name), data_dir)


def load_questions(
    dataset: str | os.PathLike[str], *, data_dir: str | os.PathLike[str] | None = None, limit: int | None = None
) -> list[SearchItem]:
    """Read questions with their gold answers.

    Args:
        dataset: A registry name (`locate_dataset`; ``gsm8k`` is the train split here) or the path of a
            JSONL file whose lines hold ``question`` and ``answer`` (and optionally ``id`` and ``options``).
        data_dir: Folder of the named data sets (default `default_data_dir`).
        limit: Keep only the first ``limit`` questions.

    Returns:
        One `SearchItem` per line; the id is the line's ``id`` field, else its 0-based index.

    Raises:
        FileNotFoundError: no such data set or file.
        ValueError: the file is empty, a line is malformed (named by number) or ids repeat.
    """
    check_positive_int("limit", limit, optional=True)
    spec, path = locate_dataset(dataset, data_dir)
    answer_format = spec.answer_format if spec is not None else None  # a path: inferred line by line
    items: list[SearchItem] = []
    for n, row in jsonl_rows(path):
        where = f"{path}, line {n}"
        if not isinstance(row.get("question"), str) or not row["question"].strip():
            raise ValueError(f"{where}: needs a non-empty 'question' string")
        if "answer" not in row:
            raise ValueError(f"{where}: has no 'answer'")
        options = row.get("options")
        fmt = QuestionFormat.MULTIPLE_CHOICE if options else QuestionFormat.GSM8K
        item_id = str(row["id"]) if row.get("id") is not None else str(len(items))
        options = tuple(options) if options else None
        try:
            gold = parse_gold(row["answer"], answer_format, options)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        items.append(SearchItem(id=item_id, question=row["question"], gold=gold, format=fmt, options=options))
        if limit is not None and len(items) >= limit:
            break
    if len({it.id for it in items}) != len(items):
        raise ValueError(f"{path}: question ids repeat; give every line a unique 'id' or none at all")
    return items


def _unit_hash(seed: int, text: str) -> float:
    digest = hashlib.sha256(f"{seed}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_hash(questions: Iterable[T], *, seed: int, held_out: float) -> tuple[list[T], list[T]]:
    """Split questions into (train, held-out) by a seeded hash of each question's text.

    Each question's side depends only on ``seed`` and its own text, so the split is stable when
    questions are added, removed or reordered, and duplicates of a question share a side. The
    held-out share is ``held_out`` in expectation, not exactly. Order is kept within each side.

    Args:
        questions: Strings or objects with a ``question`` attribute (e.g. `SearchItem`).
        seed: Any int; different seeds give independent splits.
        held_out: Expected held-out share, in [0, 1].
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if isinstance(held_out, bool) or not isinstance(held_out, (int, float)) or not 0 <= held_out <= 1:
        raise ValueError(f"held_out must be a number in [0, 1], got {held_out!r}")
    train: list[T] = []
    held: list[T] = []
    for q in questions:
        text = q if isinstance(q, str) else getattr(q, "question", None)
        if not isinstance(text, str):
            raise TypeError(f"split_by_hash needs strings or objects with a 'question' string, got {type(q).__name__}")
        (held if _unit_hash(seed, text) < held_out else train).append(q)
    return train, held


def select_split(questions: Sequence[T], split: Split, *, seed: int, held_out: float) -> list[T]:
    """``"all"`` questions, or the ``"train"`` / ``"held-out"`` side of `split_by_hash`."""
    if split == "all":
        return list(questions)
    if split not in ("train", "held-out"):
        raise ValueError(f"split must be 'all', 'train' or 'held-out', got {split!r}")
    train, held = split_by_hash(questions, seed=seed, held_out=held_out)
    return train if split == "train" else held


def sample_items(items: Sequence[SearchItem], samples: int) -> list[SearchItem]:
    """Each item ``samples`` times with ids ``ID#k``: one independent search per sample (sampled
    decoding), so a question the model rarely answers right can still yield training records."""
    check_positive_int("samples", samples)
    if samples == 1:
        return list(items)
    return [dataclasses.replace(it, id=f"{it.id}#{k}") for it in items for k in range(samples)]


# -- records ----------------------------------------------------------------------------------


def _check_prompt(prompt: Any, where: str) -> tuple[dict[str, str], ...]:
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise ValueError(f"{where}: 'prompt' must be a non-empty list of {{'role', 'content'}} messages")
    messages = []
    for m in prompt:
        if not isinstance(m, Mapping) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: each prompt message needs a role (system/user/assistant) and a content string")
        messages.append({"role": m["role"], "content": m["content"]})
    return tuple(messages)


def _validate(record: Any, texts: tuple[str, ...], counts: tuple[str, ...]) -> None:
    where = f"{type(record).__name__} {record.id!r}"
    object.__setattr__(record, "prompt", _check_prompt(record.prompt, where))
    for name in texts:
        if not isinstance(getattr(record, name), str) or not getattr(record, name).strip():
            raise ValueError(f"{where}: {name!r} must be a non-empty string")
    for name in counts:
        value = getattr(record, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{where}: {name!r} must be a non-negative int or null, got {value!r}")


def _as_dict(record: Any) -> dict[str, Any]:
    d = dataclasses.asdict(record)
    d["prompt"] = [dict(m) for m in record.prompt]
    return d


@dataclass(frozen=True, slots=True, kw_only=True)
class SFTRecord:
    """One SFT example: the budget-free prompt and the answer the model gave under its optimal budget.

    Attributes:
        id: The question's id (from the search file).
        prompt: Chat messages, ending with the user turn (no budget in it).
        completion: The target answer (the end-of-turn token is added at training time).
        budget: The optimal budget it was written under (None when unknown).
        completion_tokens: Its token count as the search counted it.
        vanilla_tokens: The vanilla CoT answer's token count.
    """

    id: str
    prompt: tuple[dict[str, str], ...]
    completion: str
    budget: int | None = None
    completion_tokens: int | None = None
    vanilla_tokens: int | None = None

    def __post_init__(self) -> None:
        _validate(self, ("completion",), ("budget", "completion_tokens", "vanilla_tokens"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (one line of an SFT file)."""
        return _as_dict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class DPORecord:
    """One DPO example: prompt, chosen (optimal-budget answer), rejected (vanilla CoT answer)."""

    id: str
    prompt: tuple[dict[str, str], ...]
    chosen: str
    rejected: str
    budget: int | None = None
    chosen_tokens: int | None = None
    rejected_tokens: int | None = None

    def __post_init__(self) -> None:
        _validate(self, ("chosen", "rejected"), ("budget", "chosen_tokens", "rejected_tokens"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (one line of a DPO file)."""
        return _as_dict(self)


def _prompt_for(record: SearchRecord) -> tuple[dict[str, str], ...]:
    fmt = QuestionFormat(record.format)
    if fmt not in (QuestionFormat.GSM8K, QuestionFormat.CLOZE):
        raise ValueError(
            f"search record {record.id!r} has format {record.format!r}: search files do not keep multiple-choice "
            "options, so only 'gsm8k' and 'cloze' records can be turned into training prompts"
        )
    return tuple(answer_messages(record.question, budget=None, format=fmt))


def _left_out(records: Sequence[SearchRecord]) -> Counter[str]:
    return Counter(str(r.status) for r in records if r.status is not SearchStatus.FOUND)


def build_sft_records(records: Iterable[SearchRecord]) -> tuple[list[SFTRecord], DataStats]:
    """SFT records from search records: (prompt without budget → answer under the optimal budget).

    Records with status ``no_budget`` or ``vanilla_wrong`` are left out and counted.
    """
    records = list(records)
    sft = [
        SFTRecord(id=r.id, prompt=_prompt_for(r), completion=r.optimal_answer, budget=r.optimal_budget,
                  completion_tokens=r.optimal_tokens, vanilla_tokens=r.vanilla_tokens)
        for r in records if r.status is SearchStatus.FOUND and r.optimal_answer
    ]
    left = _left_out(records)
    if missing := sum(1 for r in records if r.status is SearchStatus.FOUND and not r.optimal_answer):
        left["empty_answer"] = missing
    return sft, _stats(sft, total=len(records), left_out=left)


def _stats(records: Sequence[SFTRecord | DPORecord], *, total: int, left_out: Mapping[str, int]) -> DataStats:
    """Budgets, target tokens (SFT completion / DPO chosen) and vanilla tokens (SFT vanilla / DPO rejected)."""
    counts = [(r.completion_tokens, r.vanilla_tokens) if isinstance(r, SFTRecord)
              else (r.chosen_tokens, r.rejected_tokens) for r in records]
    return DataStats(
        total=total, used=len(records), left_out=dict(left_out),
        budget=budget_stats(r.budget for r in records),
        target_tokens=budget_stats(target for target, _ in counts),
        vanilla_tokens=budget_stats(vanilla for _, vanilla in counts),
    )


def build_dpo_records(records: Iterable[SearchRecord]) -> tuple[list[DPORecord], DataStats]:
    """DPO records from search records: chosen = optimal-budget answer, rejected = vanilla CoT answer.

    Left out and counted: ``no_budget``, ``vanilla_wrong``, and ``identical_answers`` (chosen and
    rejected texts equal: no preference to learn).
    """
    records = list(records)
    left = _left_out(records)
    dpo: list[DPORecord] = []
    for r in records:
        if r.status is not SearchStatus.FOUND:
            continue
        if not r.optimal_answer or not r.vanilla_answer.strip():
            left["empty_answer"] += 1
        elif r.optimal_answer.strip() == r.vanilla_answer.strip():
            left["identical_answers"] += 1
        else:
            dpo.append(DPORecord(id=r.id, prompt=_prompt_for(r), chosen=r.optimal_answer, rejected=r.vanilla_answer,
                                 budget=r.optimal_budget, chosen_tokens=r.optimal_tokens,
                                 rejected_tokens=r.vanilla_tokens))
    return dpo, _stats(dpo, total=len(records), left_out=left)


def records_stats(records: Sequence[SFTRecord | DPORecord]) -> DataStats:
    """`DataStats` of ready training records (nothing left out)."""
    records = list(records)
    if all(isinstance(r, SFTRecord) for r in records) or all(isinstance(r, DPORecord) for r in records):
        return _stats(records, total=len(records), left_out={})
    raise TypeError("records must all be SFTRecord or all DPORecord values")


# -- files ------------------------------------------------------------------------------------


def _read(path: str | os.PathLike[str], cls: type[T], fields: tuple[str, ...]) -> list[T]:
    path = Path(path)
    if is_search_file(path):
        raise ValueError(f"{path} is a search file, not a training file; pass it as a search file (--search-file)")
    records = []
    for n, row in jsonl_rows(path):
        where = f"{path}, line {n}"
        if "header" in row and len(row) == 1:
            raise ValueError(f"{where}: a header line; {path} is not a {cls.__name__} file")
        missing = [f for f in fields if f not in row]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(repr(m) for m in missing)} (a {cls.__name__} needs "
                             f"{', '.join(fields)})")
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            records.append(cls(**{k: v for k, v in row.items() if k in known}))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None
    return records


def read_sft_records(path: str | os.PathLike[str]) -> list[SFTRecord]:
    """Read an SFT JSONL file (``{"id", "prompt", "completion", ...}`` lines)."""
    return _read(path, SFTRecord, ("id", "prompt", "completion"))


def read_dpo_records(path: str | os.PathLike[str]) -> list[DPORecord]:
    """Read a DPO JSONL file (``{"id", "prompt", "chosen", "rejected", ...}`` lines)."""
    return _read(path, DPORecord, ("id", "prompt", "chosen", "rejected"))


def _load_search(path: Path) -> list[SearchRecord]:
    records = load_records(str(path))
    if not records:
        raise ValueError(f"{path} holds a search header but no records; run `tale search` to fill it")
    return records


def load_sft_data(path: str | os.PathLike[str]) -> tuple[list[SFTRecord], DataStats]:
    """SFT records from a search file (built with `build_sft_records`) or from an SFT file.

    Raises:
        ValueError: the file is empty or malformed, or no record is usable (the message gives the
            counts of what was left out).
    """
    return _load_data(path, build_sft_records, read_sft_records)


def load_dpo_data(path: str | os.PathLike[str]) -> tuple[list[DPORecord], DataStats]:
    """DPO records from a search file (built with `build_dpo_records`) or from a DPO file."""
    return _load_data(path, build_dpo_records, read_dpo_records)


def _load_data(path: str | os.PathLike[str], build: Any, read: Any) -> tuple[list[Any], DataStats]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if is_search_file(path):
        records, stats = build(_load_search(path))
    else:
        records = read(path)
        stats = _stats(records, total=len(records), left_out={})
    if not records:
        raise ValueError(f"{path}: no usable training records ({stats.summary()})")
    return records, stats
