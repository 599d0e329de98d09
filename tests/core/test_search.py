"""Budget search logic with a generator whose correctness and lengths are scripted (pure logic),
plus a run on a real tiny model."""

from __future__ import annotations

import json
import re

import pytest

from tale_integrations.core.generation import FunctionGenerator, Generation, Usage
from tale_integrations.core.records import RecoveredFileWarning, RunMismatchError
from tale_integrations.core.search import (
    SearchItem,
    SearchStatus,
    asearch,
    load_records,
    search,
    search_to_file,
)


class Scripted:
    """Answers per question: ``script[qid](budget) -> (tokens, correct)``; budget None = vanilla."""

    def __init__(self, script):
        self.script = script
        self.calls: list[list[tuple[str, int | None]]] = []
        self.gen = FunctionGenerator(self._answer, model_name="scripted")
        self.model_name = "scripted"

    def _answer(self, messages, **_):
        text = messages[-1]["content"]
        qid = re.search(r"Q: (\S+)", text).group(1)
        m = re.search(r"use less than (\d+) tokens", text)
        budget = int(m.group(1)) if m else None
        tokens, correct = self.script[qid](budget)
        answer = f"so [[{'42' if correct else '41'}]]"
        return Generation(text=answer, usage=Usage(output_tokens=tokens), finish_reason="stop", model="scripted")

    def _record(self, prompts):
        batch = []
        for p in prompts:
            text = p[-1]["content"]
            m = re.search(r"use less than (\d+) tokens", text)
            batch.append((re.search(r"Q: (\S+)", text).group(1), int(m.group(1)) if m else None))
        self.calls.append(batch)

    def generate(self, prompts, **kw):
        self._record(prompts)
        return self.gen.generate(prompts, **kw)

    async def agenerate(self, prompts, **kw):
        self._record(prompts)
        return await self.gen.agenerate(prompts, **kw)


def item(qid: str) -> SearchItem:
    return SearchItem(id=qid, question=qid, gold="42")


def shrinking(vanilla_tokens: int, correct_down_to: int):
    """Correct for budgets >= correct_down_to; tokens track the budget (shorter when smaller)."""
    return lambda b: (vanilla_tokens, True) if b is None else (max(1, b - 1), b >= correct_down_to)


def test_halving_order_and_the_last_accepted_budget():
    gen = Scripted({"q": shrinking(100, 12)})
    [record] = search(gen, [item("q")])
    assert [p.budget for p in record.trace] == [None, 50, 25, 12, 6]
    assert [p.accepted for p in record.trace] == [True, True, True, True, False]
    assert record.status is SearchStatus.FOUND
    assert (record.optimal_budget, record.optimal_tokens) == (12, 11)
    assert record.optimal_answer == "so [[42]]"
    assert record.vanilla_tokens == 100


def test_greedy_stops_at_token_elasticity():
    # budget 25 is still correct but the answer is longer than at 50: the greedy rule stops there
    lengths = {None: 100, 50: 40, 25: 60, 12: 10}
    gen = Scripted({"q": lambda b: (lengths[b], True)})
    [record] = search(gen, [item("q")])
    assert [p.budget for p in record.trace] == [None, 50, 25]
    assert record.optimal_budget == 50
    assert record.trace[-1].correct and not record.trace[-1].accepted


def test_elasticity_mode_accepts_longer_correct_answers():
    lengths = {None: 100, 50: 40, 25: 60, 12: 80, 6: 90, 3: 95, 1: 99}
    gen = Scripted({"q": lambda b: (lengths[b], True)})
    [record] = search(gen, [item("q")], mode="elasticity")
    assert [p.budget for p in record.trace] == [None, 50, 25, 12, 6, 3, 1]
    assert record.optimal_budget == 1
    assert record.mode == "elasticity"


def test_wrong_vanilla_answer_is_skipped_and_recorded():
    gen = Scripted({"q": lambda b: (80, False)})
    [record] = search(gen, [item("q")])
    assert record.status is SearchStatus.VANILLA_WRONG
    assert len(record.trace) == 1 and record.optimal_budget is None and record.optimal_answer is None


def test_no_accepted_budget_says_so_explicitly():
    gen = Scripted({"q": lambda b: (80, b is None)})
    [record] = search(gen, [item("q")])
    assert record.status is SearchStatus.NO_BUDGET
    assert record.optimal_budget is None and record.optimal_answer is None
    assert record.to_dict()["optimal_budget"] is None


def test_a_one_token_vanilla_answer_cannot_be_halved():
    gen = Scripted({"q": lambda b: (1, True)})
    [record] = search(gen, [item("q")])
    assert record.status is SearchStatus.NO_BUDGET and len(record.trace) == 1


def test_each_halving_step_is_one_batched_call_for_the_active_questions():
    b_script = lambda b: (64, True) if b is None else (b // 2, b >= 32)  # noqa: E731
    gen = Scripted({"a": shrinking(100, 12), "b": b_script, "c": lambda b: (50, False)})
    records = search(gen, [item("a"), item("b"), item("c")])
    assert gen.calls[0] == [("a", None), ("b", None), ("c", None)]
    assert gen.calls[1] == [("a", 50), ("b", 32)]
    assert gen.calls[2] == [("a", 25), ("b", 16)]
    assert gen.calls[3] == [("a", 12)]
    assert len(gen.calls) == 5
    assert [r.id for r in records] == ["a", "b", "c"]
    assert [r.optimal_budget for r in records] == [12, 32, None]


async def test_async_search_gives_the_same_records():
    script = {"a": shrinking(100, 12), "b": lambda b: (64, True) if b is None else (b // 2, b >= 32)}
    sync = search(Scripted(script), [item("a"), item("b")])
    asynced = await asearch(Scripted(script), [item("a"), item("b")])
    assert [r.to_dict() for r in asynced] == [r.to_dict() for r in sync]


def test_counter_counts_visible_text():
    class Words:
        name = "words"

        def count(self, text):
            return len(text.split())

    gen = Scripted({"q": shrinking(100, 12)})
    [record] = search(gen, [item("q")], counter=Words())
    assert record.vanilla_tokens == 2 and record.counter == "words"
    assert record.status is SearchStatus.NO_BUDGET  # 2 words at every budget: never shorter


def test_duplicate_ids_and_bad_items_are_refused():
    with pytest.raises(ValueError, match="unique"):
        search(Scripted({}), [item("q"), item("q")])
    with pytest.raises(ValueError, match="gold"):
        SearchItem(id="x", question="q", gold="")
    with pytest.raises(ValueError, match="chat"):
        SearchItem(id="x", question="q", gold="1", format="chat")


def test_attempts_accept_a_budget_if_any_answer_is_acceptable_and_keep_the_shortest():
    answers = {50: iter([(40, False), (45, True), (30, True)]), 25: iter([(20, False)] * 3)}
    gen = Scripted({"a": lambda b: (100, True) if b is None else next(answers[b]), "b": lambda b: (60, False)})
    [a, b] = search(gen, [item("a"), item("b")], attempts=3)
    assert gen.calls[0] == [("a", None), ("b", None)]  # the vanilla answer is asked once
    assert gen.calls[1] == [("a", 50)] * 3 and gen.calls[2] == [("a", 25)] * 3
    assert (a.status, a.optimal_budget, a.optimal_tokens) == ("found", 50, 30)
    assert [(p.budget, p.tokens, p.accepted) for p in a.trace] == [
        (None, 100, True), (50, 40, False), (50, 45, False), (50, 30, True), (25, 20, False), (25, 20, False),
        (25, 20, False),
    ]
    assert b.status == "vanilla_wrong" and len(b.trace) == 1
    with pytest.raises(ValueError, match="attempts must be a positive int"):
        search(gen, [item("a")], attempts=0)


def test_attempts_are_part_of_the_run(tmp_path):
    path = tmp_path / "search.jsonl"
    search_to_file(Scripted({"a": shrinking(100, 12)}), [item("a")], path, attempts=2)
    with pytest.raises(RunMismatchError):
        search_to_file(Scripted({"a": shrinking(100, 12)}), [item("a")], path)


class Killed(Exception):
    pass


def test_resume_after_a_kill_loses_and_repeats_nothing(tmp_path):
    script = {q: shrinking(100, 12) if q != "b" else (lambda b: (30, True)) for q in "abcd"}
    items = [item(q) for q in "abcd"]
    path = tmp_path / "search.jsonl"

    gen = Scripted(script)
    original = gen.generate

    def dies_on_third_call(prompts, **kw):
        if len(gen.calls) == 2:
            raise Killed
        return original(prompts, **kw)

    gen.generate = dies_on_third_call
    with pytest.raises(Killed):
        search_to_file(gen, items, path)
    finished = [json.loads(line)["id"] for line in path.read_text().splitlines()[1:]]
    assert finished == ["b"]  # b's search ended in the second call; the others were still halving

    # a partial line from a kill mid-write is dropped on reopening
    with open(path, "a") as f:
        f.write('{"id": "a", "question": "trunc')
    again = Scripted(script)
    with pytest.warns(RecoveredFileWarning, match="line 3: cut by a kill"):
        records = search_to_file(again, items, path)
    assert [r.id for r in records] == ["a", "b", "c", "d"]
    assert all(q != "b" for batch in again.calls for q, _ in batch)  # b was not searched again
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines()[1:]]
    assert sorted(ids) == ["a", "b", "c", "d"] and len(ids) == 4
    loaded = {r.id: r for r in load_records(path)}
    assert loaded["a"].optimal_budget == 12 and loaded["b"].status is SearchStatus.NO_BUDGET


def test_waves_bound_what_a_kill_can_lose(tmp_path):
    script = {q: shrinking(100, 12) for q in "abcde"}
    items = [item(q) for q in "abcde"]
    path = tmp_path / "search.jsonl"
    gen = Scripted(script)
    original = gen.generate

    def dies_in_the_second_wave(prompts, **kw):
        if len(gen.calls) == 6:  # a and b take 5 calls (vanilla, 50, 25, 12, 6); c and d have had one
            raise Killed
        return original(prompts, **kw)

    gen.generate = dies_in_the_second_wave
    with pytest.raises(Killed):
        search_to_file(gen, items, path, wave=2)
    assert gen.calls[0] == [("a", None), ("b", None)]  # the first wave alone
    finished = [json.loads(line)["id"] for line in path.read_text().splitlines()[1:]]
    assert finished == ["a", "b"]  # the first wave's records were all on disk before the second began

    again = Scripted(script)
    records = search_to_file(again, items, path, wave=2)
    assert [q for q, _ in again.calls[0]] == ["c", "d"] and [q for q, _ in again.calls[-1]] == ["e"]
    assert [r.optimal_budget for r in records] == [12] * 5
    with pytest.raises(ValueError, match="wave must be a positive int"):
        search_to_file(Scripted(script), items, path, wave=0)


def test_a_file_from_a_different_run_is_refused(tmp_path):
    path = tmp_path / "search.jsonl"
    search_to_file(Scripted({"q": shrinking(100, 12)}), [item("q")], path)
    before = path.read_text()
    with pytest.raises(RunMismatchError, match="mode"):
        search_to_file(Scripted({"q": shrinking(100, 12)}), [item("q")], path, mode="elasticity")
    assert path.read_text() == before


@pytest.mark.parametrize(("content", "match"), [
    ("", "empty"),
    ("not json\n", "not a search file"),
    ('{"header": {"kind": "tale-eval"}}\n', "not a search file"),
])
def test_load_records_bad_files(tmp_path, content, match):
    path = tmp_path / "s.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_records(path)


def test_load_records_leaves_out_a_malformed_record_and_says_so(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"header": {"kind": "tale-search"}}\n{"id": "x"}\n')
    with pytest.warns(RecoveredFileWarning, match=r"s.jsonl: 1 line left out \(line 2: not a record of this file's kind"):
        assert load_records(path) == []


def test_search_on_a_real_tiny_model(scripted_generator):
    # the scripted model always answers " 7 7 7 ..." up to the cap: gold 7 is right at every budget,
    # and tokens track the cap, so the search halves while the cap shrinks the answer
    gen = scripted_generator(" 7")
    [record] = search(gen, [SearchItem(id="q", question="What is 3 + 4?", gold="7")], max_tokens=40)
    assert record.trace[0].tokens == 40
    assert record.status is SearchStatus.NO_BUDGET  # the answer does not get shorter with the budget alone
