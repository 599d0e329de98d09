"""Fixtures for the TALE-PT tests: scripted search generators, search files, tiny training data.

Helpers are handed out as fixtures (``make_record``, ``write_search``, ``scripted_search``...): the
tests run with ``--import-mode=importlib``, where a conftest is not importable as a module.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tale_integrations.core.generation import FunctionGenerator, Generation, Usage
from tale_integrations.core.prompts import answer_messages
from tale_integrations.core.search import SearchItem, SearchMode, SearchRecord, SearchStatus, TracePoint

#: Tiny-tokenizer tokens: a target the tiny model can learn to emit (see tests/conftest.py).
TARGET = "[[40]] 7 STOP"


def _scripted_search(golds: dict[str, str]):
    """A FunctionGenerator for the search: the question text names its gold (``golds[question]``).

    Vanilla answers are correct with 100 tokens; under budget B the answer is correct and B - 1
    tokens long while B >= 12, wrong below. Questions starting with "hard" are always wrong.
    """

    def answer(messages, **_):
        text = messages[-1]["content"]
        question = re.search(r"Q: (.*)\n", text).group(1)
        m = re.search(r"use less than (\d+) tokens", text)
        budget = int(m.group(1)) if m else None
        gold = golds[question]
        if question.startswith("hard"):
            tokens, correct = 90, False
        elif budget is None:
            tokens, correct = 100, True
        else:
            tokens, correct = max(1, budget - 1), budget >= 12
        reply = f"{'short ' if budget else 'long '}answer [[{gold if correct else gold + '1'}]]"
        return Generation(text=reply, usage=Usage(output_tokens=tokens), finish_reason="stop", model="scripted")

    return FunctionGenerator(answer, model_name="scripted")


def _record(qid: str, status: str = "found", *, question: str | None = None, optimal: str = TARGET,
                  vanilla: str = "Let's see. 7 and 7 and 7 make [[40]] STOP", budget: int = 16) -> SearchRecord:
    """A search record as `search` would write it."""
    found = status == "found"
    return SearchRecord(
        id=qid, question=question or f"What is {qid}?", gold="40", format="gsm8k", status=SearchStatus(status),
        vanilla_answer=vanilla, vanilla_tokens=60, optimal_budget=budget if found else None,
        optimal_answer=optimal if found else None, optimal_tokens=10 if found else None,
        trace=(TracePoint(budget=None, tokens=60, correct=status != "vanilla_wrong",
                          accepted=status != "vanilla_wrong"),),
        mode=SearchMode.GREEDY, counter="usage",
    )


def _write_search(path: Path, records: list[SearchRecord]) -> Path:
    header = {"header": {"kind": "tale-search", "model": "tiny", "mode": "greedy", "counter": "usage",
                         "max_tokens": 64, "temperature": None, "prompt_version": "1"}}
    lines = [json.dumps(header)] + [json.dumps(r.to_dict()) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _write_questions(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def scripted_search():
    """``scripted_search({question: gold})`` -> a search generator with scripted correctness/lengths."""
    return _scripted_search


@pytest.fixture()
def make_record():
    """``make_record(qid, status="found", question=..., optimal=..., vanilla=..., budget=16)``."""
    return _record


@pytest.fixture()
def write_search():
    """``write_search(path, records)`` writes a search file (header + records) and returns its path."""
    return _write_search


@pytest.fixture()
def write_questions():
    """``write_questions(path, rows)`` writes a question JSONL file and returns its path."""
    return _write_questions


@pytest.fixture()
def search_file(tmp_path) -> Path:
    """Six usable records (distinct questions) and three that must be left out."""
    records = [_record(f"q{i}", question=f"What is {i} plus {i}?") for i in range(6)]
    records += [_record("nb", "no_budget"), _record("vw1", "vanilla_wrong"), _record("vw2", "vanilla_wrong")]
    return _write_search(tmp_path / "search.jsonl", records)


@pytest.fixture()
def questions() -> list[SearchItem]:
    return [SearchItem(id=str(i), question=f"Question number {i}?", gold=str(i)) for i in range(40)]


@pytest.fixture()
def sft_records():
    """``sft_records(n, target=TARGET)``: n SFT records with distinct prompts and one shared target."""
    from tale_integrations.training.data import SFTRecord

    def make(n: int = 6, target: str = TARGET):
        return [SFTRecord(id=f"q{i}", prompt=answer_messages(f"What is {i} plus {i}?"), completion=target, budget=16,
                          completion_tokens=10, vanilla_tokens=60) for i in range(n)]

    return make
