"""Optimal token-budget search (the paper's Algorithms 1 and 2), batched across questions.

For each question: answer with vanilla chain-of-thought (T tokens); skip the question if that is
wrong; then halve the budget from T while the budgeted answer stays correct **and** gets shorter
than the last accepted one (the greedy rule that stops at token elasticity). The last accepted
budget is the question's optimal budget, its answer the TALE-PT training target. Elasticity mode
drops the "shorter" condition (accept while correct), for plotting token cost against budget.

The per-question logic is a small state machine (`_Search`); `search` and `asearch` drive all
questions together, so each halving step is one batched generator call for every question still
searching. `search_to_file` streams finished records to JSONL and resumes after a kill.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .answers import AnswerKind, answers_match, choices_match, extract_answer
from .checks import check_positive_int
from .flows import adrive, drive
from .generation import Generation, Generator
from .prompts import PROMPT_VERSION, QuestionFormat, answer_messages
from .tokens import TokenCounter

__all__ = [
    "SearchItem", "SearchMode", "SearchRecord", "SearchStatus", "TracePoint", "asearch", "load_records", "run_header",
    "search", "search_to_file",
]


class SearchMode(enum.StrEnum):
    """Which acceptance rule the halving loop uses."""

    #: Accept a halved budget iff the answer is correct and shorter than the last accepted one.
    GREEDY = "greedy"
    #: Accept iff the answer is correct (token elasticity plots).
    ELASTICITY = "elasticity"


class SearchStatus(enum.StrEnum):
    """How a question's search ended."""

    #: At least one halved budget was accepted.
    FOUND = "found"
    #: The vanilla answer was correct but no halved budget was accepted.
    NO_BUDGET = "no_budget"
    #: The vanilla answer was wrong: the question is skipped.
    VANILLA_WRONG = "vanilla_wrong"


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchItem:
    """A question to search: its id (unique in a run), text, gold answer and format."""

    id: str
    question: str
    gold: str
    format: QuestionFormat = QuestionFormat.GSM8K
    options: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("id", "question", "gold"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"SearchItem.{name} must be a non-empty string, got {value!r}")
        object.__setattr__(self, "format", QuestionFormat(self.format))
        if self.format is QuestionFormat.CHAT:
            raise ValueError("SearchItem.format must be 'gsm8k', 'cloze' or 'multiple_choice': 'chat' answers cannot "
                             "be checked")


@dataclass(frozen=True, slots=True, kw_only=True)
class TracePoint:
    """One answer of the search: the budget asked (None = vanilla), its token count, correctness."""

    budget: int | None
    tokens: int
    correct: bool
    accepted: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchRecord:
    """The outcome of one question's search (one JSONL line of a search file).

    ``optimal_budget`` and ``optimal_answer`` are None unless ``status`` is ``"found"``: records
    without an accepted budget are kept (they are part of the run) but never trained on.
    """

    id: str
    question: str
    gold: str
    format: str
    status: SearchStatus
    vanilla_answer: str
    vanilla_tokens: int
    optimal_budget: int | None
    optimal_answer: str | None
    optimal_tokens: int | None
    trace: tuple[TracePoint, ...]
    mode: SearchMode
    counter: str

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        d = dataclasses.asdict(self)
        d["status"], d["mode"] = str(self.status), str(self.mode)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchRecord:
        """Inverse of `to_dict`; raises ValueError on a malformed record."""
        try:
            fields = dict(data)
            fields["trace"] = tuple(TracePoint(**p) for p in fields["trace"])
            fields["status"] = SearchStatus(fields["status"])
            fields["mode"] = SearchMode(fields["mode"])
            return cls(**fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed search record: {exc}") from exc


class _Search:
    """One question's halving loop: ask for the next budget, receive the outcome."""

    def __init__(self, item: SearchItem, mode: SearchMode, count: Callable[[Generation], int]) -> None:
        self.item, self.mode, self.count = item, mode, count
        self.trace: list[TracePoint] = []
        self.vanilla: tuple[str, int] | None = None
        self.best: tuple[int, str, int] | None = None  # (budget, answer, tokens)
        self.pending: int | None = None
        self.done = False

    def next_budget(self) -> int | None:
        """The budget to ask next (None = the vanilla answer); only called while not done."""
        if self.vanilla is None:
            return None
        return self.pending

    def _correct(self, text: str) -> bool:
        if self.item.format is QuestionFormat.MULTIPLE_CHOICE:
            return choices_match(extract_answer(text, AnswerKind.CHOICE), self.item.gold)
        return answers_match(extract_answer(text, AnswerKind.NUMERIC), self.item.gold, text=text)

    def feed(self, generations: Sequence[Generation]) -> None:
        """The answers to the last request: one for the vanilla step, one per attempt for a budget."""
        if self.vanilla is None:
            text, tokens = generations[0].text, self.count(generations[0])
            correct = self._correct(text)
            self.vanilla = (text, tokens)
            self.trace.append(TracePoint(budget=None, tokens=tokens, correct=correct, accepted=correct))
            self.done = not correct
            self._advance(tokens)
            return
        budget = self.pending
        assert budget is not None
        previous = self.best[2] if self.best else self.vanilla[1]
        answers = [(g.text, self.count(g), self._correct(g.text)) for g in generations]
        acceptable = [
            k for k, (_, tokens, correct) in enumerate(answers)
            if correct and (self.mode is SearchMode.ELASTICITY or tokens < previous)
        ]
        chosen = min(acceptable, key=lambda k: answers[k][1]) if acceptable else None  # the shortest
        for k, (_, tokens, correct) in enumerate(answers):
            self.trace.append(TracePoint(budget=budget, tokens=tokens, correct=correct, accepted=k == chosen))
        if chosen is None:
            self.done = True
            return
        self.best = (budget, answers[chosen][0], answers[chosen][1])
        self._advance(budget)

    def _advance(self, budget: int) -> None:
        if self.done:
            return
        candidate = budget // 2
        if candidate < 1:
            self.done = True
        else:
            self.pending = candidate

    def record(self, counter: str) -> SearchRecord:
        assert self.vanilla is not None
        vanilla_correct = self.trace[0].correct
        status = SearchStatus.FOUND if self.best else (
            SearchStatus.NO_BUDGET if vanilla_correct else SearchStatus.VANILLA_WRONG
        )
        return SearchRecord(
            id=self.item.id, question=self.item.question, gold=self.item.gold, format=str(self.item.format),
            status=status, vanilla_answer=self.vanilla[0], vanilla_tokens=self.vanilla[1],
            optimal_budget=self.best[0] if self.best else None, optimal_answer=self.best[1] if self.best else None,
            optimal_tokens=self.best[2] if self.best else None, trace=tuple(self.trace), mode=self.mode,
            counter=counter,
        )


def _counter(counter: TokenCounter | None) -> tuple[Callable[[Generation], int], str]:
    if counter is None:
        return (lambda g: g.usage.output_tokens), "usage"
    if not callable(getattr(counter, "count", None)):
        raise TypeError(f"counter must be a TokenCounter (with count(text)) or None, got {type(counter).__name__}")
    return (lambda g: counter.count(g.text)), counter.name


def _flow(items: Sequence[SearchItem], mode: SearchMode, counter: TokenCounter | None, on_record: Callable | None,
          attempts: int = 1):
    """Yields batches of (item, budget) requests; receives their generations; returns the records."""
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError("search items must have unique ids")
    _check_attempts(attempts)
    count, counter_name = _counter(counter)
    states = [_Search(it, SearchMode(mode), count) for it in items]
    records: dict[str, SearchRecord] = {}
    active = list(states)
    while active:
        requests = [(s, s.next_budget()) for s in active]
        sizes = [1 if budget is None else attempts for _, budget in requests]
        generations = yield [(s.item, budget) for (s, budget), n in zip(requests, sizes) for _ in range(n)]
        if len(generations) != sum(sizes):
            raise ValueError(f"the generator returned {len(generations)} answers for {sum(sizes)} prompts")
        start = 0
        for (state, _), n in zip(requests, sizes):
            state.feed(generations[start : start + n])
            start += n
        still = []
        for state in active:
            if state.done:
                record = state.record(counter_name)
                records[state.item.id] = record
                if on_record is not None:
                    on_record(record)
            else:
                still.append(state)
        active = still
    return [records[i] for i in ids]


def _check_attempts(attempts: Any) -> None:
    check_positive_int("attempts", attempts, hint=" (answers sampled per halved budget)")


def _prompts(batch: list[tuple[SearchItem, int | None]]) -> list[list[dict[str, str]]]:
    return [answer_messages(it.question, budget=b, format=it.format, options=it.options) for it, b in batch]


def search(
    generator: Generator,
    items: Iterable[SearchItem],
    *,
    mode: SearchMode | str = SearchMode.GREEDY,
    counter: TokenCounter | None = None,
    max_tokens: int | None = 1024,
    temperature: float | None = None,
    on_record: Callable[[SearchRecord], None] | None = None,
    attempts: int = 1,
) -> list[SearchRecord]:
    """Search the optimal budget of every item; each halving step is one batched call.

    Args:
        generator: The model to search with (the one that will be trained, for TALE-PT).
        items: The questions.
        mode: `SearchMode`: ``"greedy"`` (the paper) or ``"elasticity"``.
        counter: Counts answer tokens on the visible text (e.g. ``TiktokenCounter()`` for the
            paper's cl100k counts); None uses the generator's reported output tokens.
        max_tokens: Output cap of every call (the paper's 1024).
        temperature: Sampling temperature (None: the generator's default).
        on_record: Called with each record as soon as its question finishes.
        attempts: Answers sampled per halved budget (default 1, the paper). With more, a budget is
            accepted if any of them is, and the shortest acceptable answer is kept: for small
            models whose sampled answers are rarely right. Useful only with sampling.

    Returns:
        One `SearchRecord` per item, in order.
    """
    def answer(batch: list[tuple[SearchItem, int | None]]) -> list[Generation]:
        return generator.generate(_prompts(batch), max_tokens=max_tokens, temperature=temperature)

    return drive(_flow(list(items), SearchMode(mode), counter, on_record, attempts), answer)


async def asearch(
    generator: Generator,
    items: Iterable[SearchItem],
    *,
    mode: SearchMode | str = SearchMode.GREEDY,
    counter: TokenCounter | None = None,
    max_tokens: int | None = 1024,
    temperature: float | None = None,
    on_record: Callable[[SearchRecord], None] | None = None,
    attempts: int = 1,
) -> list[SearchRecord]:
    """Async twin of `search` (each step is one ``agenerate`` call: one concurrent wave for API models)."""
    async def answer(batch: list[tuple[SearchItem, int | None]]) -> list[Generation]:
        return await generator.agenerate(_prompts(batch), max_tokens=max_tokens, temperature=temperature)

    return await adrive(_flow(list(items), SearchMode(mode), counter, on_record, attempts), answer)


def run_header(generator: Generator, *, mode: SearchMode | str, counter: TokenCounter | None,
               max_tokens: int | None, temperature: float | None, attempts: int = 1) -> dict[str, Any]:
    """What identifies a search run; a resumed run must match it."""
    header = {
        "kind": "tale-search",
        "model": getattr(generator, "model_name", type(generator).__name__),
        "mode": str(SearchMode(mode)),
        "counter": _counter(counter)[1],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "prompt_version": PROMPT_VERSION,
    }
    if attempts != 1:  # files written before the option existed stay resumable
        header["attempts"] = attempts
    return header


def search_to_file(
    generator: Generator,
    items: Iterable[SearchItem],
    path: str,
    *,
    mode: SearchMode | str = SearchMode.GREEDY,
    counter: TokenCounter | None = None,
    max_tokens: int | None = 1024,
    temperature: float | None = None,
    wave: int | None = 256,
    attempts: int = 1,
    wait: bool | float = False,
) -> list[SearchRecord]:
    """`search`, streaming each finished record to a JSONL file and resuming a killed run.

    Items whose record is already in the file are not searched again; the file's header must match
    this run (model, mode, counter, settings), otherwise `RunMismatchError` is raised and nothing
    is written. Questions are searched ``wave`` at a time (None: all at once): each wave's records
    are on disk before the next wave starts, so a kill loses at most one wave's unfinished work.
    Returns the records of all items, read back or new, in item order. ``attempts``: see `search`.
    One process writes a file at a time: another one on the same file raises `RunLockedError`, or waits
    for it with ``wait`` (True, or at most that many seconds). Lines the file could not use (a cut last
    line, a damaged one) are left out with a `RecoveredFileWarning` and their questions searched again.
    """
    from .records import RecordFile, warn_recovered

    check_positive_int("wave", wave, optional=True, hint=" (questions searched together)")
    items = list(items)
    _check_attempts(attempts)
    header = run_header(generator, mode=mode, counter=counter, max_tokens=max_tokens, temperature=temperature,
                        attempts=attempts)
    with RecordFile(path, header, wait=wait) as store:
        warn_recovered(store.recovery)
        todo = [it for it in items if it.id not in store]
        size = wave or max(len(todo), 1)
        for start in range(0, len(todo), size):
            search(generator, todo[start : start + size], mode=mode, counter=counter, max_tokens=max_tokens,
                   temperature=temperature, on_record=lambda r: store.append(r.to_dict()), attempts=attempts)
        return [SearchRecord.from_dict(store.records[it.id]) for it in items]


def load_records(path: str | os.PathLike[str]) -> list[SearchRecord]:
    """Read a search file written by `search_to_file` (through `core.records.read_records`).

    Records are deduplicated by id; lines that cannot be used (a cut last line, invalid UTF-8, another
    schema) are left out with a `RecoveredFileWarning` naming each.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is empty or is not a search file (its first line is not a tale-search header).
    """
    from .records import read_records, warn_recovered

    read = read_records(path, kind="tale-search", what="search file", check=SearchRecord.from_dict)
    warn_recovered(read.recovery)
    return [SearchRecord.from_dict(record) for record in read.records.values()]
