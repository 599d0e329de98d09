"""TALE's instrumentation events, the per-query record, and the collection of LLM calls."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from llama_index.core.base.llms.types import (  # noqa: E402
    ChatMessage,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.llms import CustomLLM, MockLLM  # noqa: E402
from llama_index.core.llms.callbacks import llm_completion_callback  # noqa: E402

from tale_integrations.core.budget import Budget  # noqa: E402
from tale_integrations.core.generation import Usage  # noqa: E402
from tale_integrations.llama_index import TaleBudgetEvent, TaleCall, TaleHFLLM, TaleRun, TaleUsageEvent  # noqa: E402
from tale_integrations.llama_index.events import collect_llm_calls, sum_usage  # noqa: E402

HI = [ChatMessage(role="user", content="hi")]


class CountingLLM(CustomLLM):
    """A completion LLM reporting usage; its inherited ``chat`` wraps ``complete`` (two LLM events, one call)."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="counting")

    @staticmethod
    def _response(prompt: str) -> CompletionResponse:
        return CompletionResponse(text="ok", raw={"usage": {"prompt_tokens": len(prompt), "completion_tokens": 2},
                                                  "model": "counting"})

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs) -> CompletionResponse:
        return self._response(prompt)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs) -> CompletionResponseGen:
        yield self._response(prompt)


# -- values ------------------------------------------------------------------------------------------


def test_run_record_and_usage_totals():
    est = Usage(input_tokens=10, output_tokens=3, counter="hf:m")
    answers = [Usage(input_tokens=100, output_tokens=20, counter="hf:m"), Usage(input_tokens=90, output_tokens=5,
                                                                                counter="hf:m")]
    run = TaleRun(question="q", budget=Budget(tokens=40, raw=40, source="zero-shot:m"), estimator="zero-shot:m",
                  estimator_reply="[[40]]", calls=(TaleCall(role="estimator", model="m", usage=est),))
    done = run.with_answer_calls([TaleCall(role="answer", model="m", usage=u) for u in answers])
    assert run.calls == done.calls[:1] and len(done.calls) == 3  # values: the original is unchanged
    assert done.usage("answer") == Usage(input_tokens=190, output_tokens=25, counter="hf:m")
    assert done.usage().total_tokens == 13 + 120 + 95
    d = done.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert (d["budget"], d["budget_source"], d["complete"], d["skipped"]) == (40, "zero-shot:m", True, None)
    assert d["calls"][0] == {"role": "estimator", "model": "m", **est.to_dict()}
    assert d["usage"]["total"]["total_tokens"] == 228
    event = done.event()
    assert isinstance(event, TaleUsageEvent) and event.calls == d["calls"] and event.usage == d["usage"]
    skipped = TaleRun(question="q", budget=None, skipped="no nodes retrieved").to_dict()
    assert (skipped["budget"], skipped["budget_raw"], skipped["usage"]["total"]["counter"]) == (None, None, "none")
    assert sum_usage([]) == Usage(counter="none")


def test_event_classes():
    event = TaleBudgetEvent(query_str="q", budget=40, budget_raw=12, budget_source="zero-shot:m",
                            budget_adjusted="raised to floor")
    dumped = event.model_dump()
    assert (dumped["class_name"], dumped["budget"], dumped["budget_adjusted"]) == (
        "TaleBudgetEvent", 40, "raised to floor")
    assert TaleUsageEvent.class_name() == "TaleUsageEvent"


# -- collecting calls ----------------------------------------------------------------------------------


def test_collects_exact_usage_of_calls_inside_the_block_only(tiny_generator):
    llm = TaleHFLLM.from_generator(tiny_generator, max_new_tokens=3)
    llm.chat(HI)  # before: not recorded
    with collect_llm_calls() as recorder:
        first = llm.chat(HI)
        second = llm.complete("hello")
        batch = llm.batch_chat([HI, HI])
    llm.chat(HI)  # after: not recorded
    calls = recorder.calls()
    expected = [r.raw["usage"] for r in (first, second, *batch)]
    assert [(c.usage.input_tokens, c.usage.output_tokens) for c in calls] == [
        (u["prompt_tokens"], u["completion_tokens"]) for u in expected]
    assert {c.model for c in calls} == {"tiny-llama"} and {c.usage.counter for c in calls} == {"hf:tiny-llama"}
    assert {c.role for c in calls} == {"answer"}


def test_a_call_wrapped_by_another_llm_method_counts_once():
    llm = CountingLLM()
    with collect_llm_calls() as recorder:
        llm.chat(HI)  # CustomLLM.chat -> complete: a chat event and a completion event
        llm.complete("abc")
        list(llm.stream_chat(HI))
    calls = recorder.calls()
    assert len(calls) == 3
    assert [c.usage.output_tokens for c in calls] == [2, 2, 2] and calls[1].usage.input_tokens == 3
    assert calls[0].model == "counting"


def test_an_llm_without_usage_is_recorded_with_none():
    with collect_llm_calls() as recorder:
        MockLLM().complete("abc")
    [call] = recorder.calls()
    assert call.usage == Usage(counter="none") and call.model is None


async def test_concurrent_tasks_and_threads_do_not_mix(tiny_generator):
    llm = TaleHFLLM.from_generator(tiny_generator, max_new_tokens=2)

    async def one(n: int) -> int:
        with collect_llm_calls() as recorder:
            for _ in range(n):
                await llm.achat(HI)
        return len(recorder.calls())

    assert await asyncio.gather(one(1), one(2), one(3)) == [1, 2, 3]

    counts = {}

    def in_thread(n: int) -> None:
        with collect_llm_calls() as recorder:
            for _ in range(n):
                llm.chat(HI)
        counts[n] = len(recorder.calls())

    threads = [threading.Thread(target=in_thread, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts == {1: 1, 2: 2}
