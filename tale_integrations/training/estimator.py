"""Fitting data for a `LearnedEstimator`: (question, needed tokens) pairs from three sources.

- `reference_pairs`: a data set's reference solutions (GSM8K's rationales), counted with a named
  counter; model-agnostic. The calculator annotations (``<<48/2=24>>``) are removed before counting:
  they are the data set's tooling, not text a model writes.
- `search_pairs`: a ``tale search`` file; the target is each question's optimal budget (found only).
- `vanilla_correct_pairs`: an evaluation's results file; the target is the output tokens of each
  correct answer (its recorded count, or a recount with a named counter).

`fit_estimator` fits on such pairs and records where they came from; ``tale train estimator`` is its
command line, and refits the shipped default byte for byte with
``tale train estimator --dataset gsm8k-train --target reference --out DIR`` (``gsm8k`` means the
train split too in the training commands, `TRAINING_ALIASES`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..core.learned import FitSettings, LearnedEstimator, LearnedEstimatorError, TargetKind, pairs_from
from ..core.records import read_records, warn_recovered
from ..core.search import SearchStatus, load_records
from ..core.tokens import get_counter
from ._common import file_sha256
from .data import locate_dataset

__all__ = [
    "Pairs", "dataset_path", "fit_estimator", "reference_pairs", "reference_solution", "search_pairs",
    "vanilla_correct_pairs",
]

_CALCULATOR = re.compile(r"<<[^<>]*>>")


@dataclass(frozen=True, slots=True, kw_only=True)
class Pairs:
    """Fitting pairs and where they came from."""

    questions: list[str]
    targets: list[float]
    kind: TargetKind
    counter: str
    source: str
    source_sha256: str | None


def dataset_path(dataset: str, data_dir: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """The file of a named data set (`locate_dataset`) or a JSONL path, and its name for the record
    (a named set's path under the data folder, ``"gsm8k/train.jsonl"``; else the file name)."""
    spec, path = locate_dataset(dataset, data_dir)
    return path, spec.path if spec is not None else path.name


def reference_solution(answer: str) -> str:
    """A GSM8K reference solution as a model would write it: calculator annotations removed."""
    return _CALCULATOR.sub("", answer)


def reference_pairs(dataset: str = "gsm8k-train", *, data_dir: str | os.PathLike[str] | None = None,
                    counter: str = "cl100k_base") -> Pairs:
    """Pairs from a data set's reference solutions (lines whose ``answer`` is a worked solution).

    Raises:
        FileNotFoundError: no such data set.
        LearnedEstimatorError: the data set has no worked solutions (GSM8K-Zero's answers are numbers).
    """
    path, source = dataset_path(dataset, data_dir)
    count = get_counter(counter)
    questions, targets = [], []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            answer = row.get("answer")
            if not isinstance(answer, str) or "####" not in answer:
                raise LearnedEstimatorError(
                    f"{path}, line {n}: the answer is not a worked solution ending in '#### N', so this data set has "
                    "no reference solutions; use --target vanilla-correct or --search-file instead"
                )
            questions.append(row["question"])
            targets.append(float(count.count(reference_solution(answer))))
    questions, targets = pairs_from(zip(questions, targets, strict=False))
    return Pairs(questions=questions, targets=targets, kind=TargetKind.REFERENCE, counter=count.name, source=source,
                 source_sha256=file_sha256(path))


def search_pairs(path: str | os.PathLike[str]) -> Pairs:
    """Pairs from a ``tale search`` file: each found question's optimal budget."""
    records = load_records(str(path))
    found = [(r.question, float(r.optimal_budget)) for r in records
             if r.status is SearchStatus.FOUND and r.optimal_budget]
    if not found:
        raise LearnedEstimatorError(f"{path} holds no question with a found budget ({len(records)} records)")
    questions, targets = pairs_from(found)
    return Pairs(questions=questions, targets=targets, kind=TargetKind.SEARCH, counter=records[0].counter,
                 source=Path(path).name, source_sha256=file_sha256(Path(path)))


def vanilla_correct_pairs(path: str | os.PathLike[str], *, counter: str | None = None) -> Pairs:
    """Pairs from an evaluation's results file (``tale eval``): the correct answers' output tokens.

    Args:
        path: A results JSONL file of a vanilla method.
        counter: Recount each answer with this counter (``"cl100k_base"``...); default: the recorded count.
    """
    path = Path(path)
    try:
        read = read_records(path)  # the results' own reader: ids once, damaged lines left out and reported
    except ValueError as exc:
        raise LearnedEstimatorError(
            f"{exc}; pass the results file of a vanilla method written by `tale eval`"
        ) from None
    warn_recovered(read.recovery)
    header = read.header or {}
    rows = [row for row in read.records.values() if "question" in row and "correct" in row]
    if header.get("kind") != "tale-eval" or header.get("method") not in ("vanilla", "tale-pt"):
        raise LearnedEstimatorError(f"{path} is not the results file of a vanilla method written by `tale eval` "
                                    f"(its header says method {header.get('method')!r})")
    count = get_counter(counter) if counter else None
    pairs = [(r["question"], float(count.count(r["text"]) if count else r["output_tokens"])) for r in rows
             if r["correct"] and r.get("finish_reason") != "length"]
    pairs = [(q, t) for q, t in pairs if t > 0]
    if not pairs:
        raise LearnedEstimatorError(f"{path} holds no correct, finished answer to fit on ({len(rows)} results)")
    questions, targets = pairs_from(pairs)
    name = count.name if count else rows[0].get("counter", "reported")
    return Pairs(questions=questions, targets=targets, kind=TargetKind.VANILLA_CORRECT, counter=name,
                 source=path.name, source_sha256=file_sha256(path))


def fit_estimator(pairs: Pairs, *, settings: FitSettings | None = None) -> LearnedEstimator:
    """Fit a `LearnedEstimator` on ``pairs``, recording their provenance."""
    return LearnedEstimator.fit(pairs.questions, pairs.targets, target=pairs.kind, counter=pairs.counter,
                                source=pairs.source, source_sha256=pairs.source_sha256, settings=settings)
