"""Fixtures for the evaluation tests: scripted generators with chosen outputs and usage, JSONL files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tale_integrations.core.generation import FunctionGenerator, Generation, Usage

ESTIMATION_MARK = "estimate the minimum number of tokens"


def write_jsonl(path: Path, rows: list) -> Path:
    """Write rows (dicts are JSON-encoded, strings written as they are) one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


class Scripted:
    """A scripted model: answers each question from a table, records every conversation it was sent.

    ``answers`` maps a substring of the question to (text, output_tokens); an estimation prompt is
    answered with ``estimate`` and ``estimate_tokens``. Every answer reports 100 input tokens (20 for
    the estimator) and finish reason ``"stop"`` unless its output tokens reach ``max_tokens``.
    ``fail_on_call`` makes the N-th ``generate`` call raise (a crash mid-run).
    """

    def __init__(self, answers: dict[str, tuple[str, int]], *, estimate: str = "Budget: [[30]]",
                 estimate_tokens: int = 5, model: str = "gpt-4o-mini", fail_on_call: int | None = None) -> None:
        self.answers, self.estimate, self.estimate_tokens = answers, estimate, estimate_tokens
        self.model, self.fail_on_call = model, fail_on_call
        self.calls: list[list[list[dict[str, str]]]] = []
        self.sent: list[list[dict[str, str]]] = []
        self.generator = _Counting(self)

    def _one(self, messages, *, max_tokens=None, stop=None, temperature=None) -> Generation:
        self.sent.append(messages)
        content = messages[-1]["content"]
        if ESTIMATION_MARK in content:
            usage = Usage(input_tokens=20, output_tokens=self.estimate_tokens, counter="reported")
            return Generation(text=self.estimate, usage=usage, finish_reason="stop", model=self.model)
        for key, (text, tokens) in self.answers.items():
            if key in "\n".join(m["content"] for m in messages):
                reason = "length" if max_tokens is not None and tokens >= max_tokens else "stop"
                usage = Usage(input_tokens=100, output_tokens=tokens, counter="reported")
                return Generation(text=text, usage=usage, finish_reason=reason, model=self.model)
        raise AssertionError(f"unscripted prompt: {content!r}")

    def record_call(self, prompts) -> None:
        self.calls.append([list(p) for p in prompts])
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise ConnectionError("simulated crash")

    def questions_asked(self) -> list[str]:
        """The question of every answer prompt sent (estimation prompts excluded), in order."""
        out = []
        for messages in self.sent:
            content = messages[-1]["content"]
            if ESTIMATION_MARK not in content:
                match = re.search(r"(Q\d+)", "\n".join(m["content"] for m in messages))
                out.append(match.group(1) if match else content)
        return out


class _Counting(FunctionGenerator):
    """A FunctionGenerator that counts its batched calls (and can crash on one)."""

    def __init__(self, owner: Scripted) -> None:
        super().__init__(owner._one, model_name=owner.model)
        self.owner = owner

    def generate(self, prompts, **kwargs):
        self.owner.record_call(prompts)
        return super().generate(prompts, **kwargs)

    async def agenerate(self, prompts, **kwargs):
        self.owner.record_call(prompts)
        return await super().agenerate(prompts, **kwargs)


@pytest.fixture()
def scripted():
    """Factory: ``scripted({"Q1": ("[[7]]", 12)}, ...)`` returns a `Scripted` model."""
    return Scripted


@pytest.fixture(name="write_jsonl")
def write_jsonl_fixture():
    """The `write_jsonl` helper, as a fixture."""
    return write_jsonl


@pytest.fixture()
def numeric_file(tmp_path) -> Path:
    """Five numeric questions Q1..Q5 with golds 1..5."""
    rows = [{"question": f"Q{i}: what is {i}?", "answer": float(i)} for i in range(1, 6)]
    return write_jsonl(tmp_path / "five.jsonl", rows)


@pytest.fixture()
def five_answers() -> dict[str, tuple[str, int]]:
    """Answers to Q1..Q5: right for Q1, Q2, Q4, Q5; wrong for Q3; tokens 10, 20, 30, 40, 50."""
    return {
        "Q1": ("so [[1]]", 10), "Q2": ("so [[2]]", 20), "Q3": ("so [[9]]", 30), "Q4": ("so [[4]]", 40),
        "Q5": ("so [[5]]", 50),
    }


@pytest.fixture()
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine thread hand-offs dominate."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
