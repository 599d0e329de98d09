"""The adapters between LangChain and the core: a chat model as a `Generator`, a Runnable as a
`BudgetEstimator`, and the small translations (usage, truncation, max_tokens).

The chat models are real `ChatTaleHF` instances over tiny scripted models; a fake appears only for
the pure logic of a model that declares no ``max_tokens`` and of provider metadata spellings.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("torch")

from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.language_models.fake import FakeListLLM  # noqa: E402
from langchain_core.language_models.fake_chat_models import FakeListChatModel  # noqa: E402
from langchain_core.messages import AIMessage  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate  # noqa: E402
from langchain_core.runnables import RunnableLambda  # noqa: E402
from tiny_models import spy  # noqa: E402

from tale_integrations.core.estimators import FixedEstimator, ZeroShotEstimator  # noqa: E402
from tale_integrations.core.generation import Generator, Usage  # noqa: E402
from tale_integrations.core.pipeline import TalePipeline  # noqa: E402
from tale_integrations.langchain import ChatModelGenerator, ChatTaleHF, RunnableEstimator  # noqa: E402
from tale_integrations.langchain._adapters import (  # noqa: E402
    accepts_max_tokens,
    as_estimator,
    call_configs,
    check_chat_model,
    finish_reason,
    model_max_tokens,
    to_usage,
    to_usage_metadata,
    unwrap_chat_model,
)

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture()
def sevens(scripted_generator):
    gen = scripted_generator(" 7", model_name="sevens")
    return gen, ChatTaleHF.from_generator(gen)


@pytest.fixture()
def forty(scripted_generator):
    gen = scripted_generator("[[40]]", model_name="forty")
    return gen, ChatTaleHF.from_generator(gen)


# -- ChatModelGenerator ---------------------------------------------------------------------------


def test_generator_batches_through_the_chat_model(sevens):
    gen, chat = sevens
    calls = spy(gen)
    adapter = ChatModelGenerator(chat)
    assert isinstance(adapter, Generator) and adapter.model_name == "sevens"
    out = adapter.generate([CHAT, [CHAT[1]]], max_tokens=3, temperature=0.0)
    assert len(calls) == 1 and calls[0]["prompts"] == [CHAT, [CHAT[1]]] and calls[0]["max_tokens"] == 3
    assert [g.text for g in out] == [" 7 7 7"] * 2
    assert out[0].usage == Usage(input_tokens=len(gen.encode_chat(CHAT)), output_tokens=3, counter="reported")
    assert out[0].finish_reason == "length" and out[0].model == "sevens"
    assert adapter.generate([]) == []


async def test_agenerate_batches_too(sevens):
    gen, chat = sevens
    calls = spy(gen)
    out = await ChatModelGenerator(chat).agenerate([CHAT, CHAT], max_tokens=2, stop=["never"])
    assert len(calls) == 1 and calls[0]["stop"] == ("never",) and [g.usage.output_tokens for g in out] == [2, 2]


def test_zero_shot_estimator_and_pipeline_run_on_a_chat_model(forty, sevens):
    [estimate] = ZeroShotEstimator(ChatModelGenerator(forty[1]), max_tokens=2).estimate(["What is 2 + 3?"])
    assert estimate.raw == 40 and estimate.usage.output_tokens == 2
    estimator = ZeroShotEstimator(ChatModelGenerator(forty[1]), max_tokens=2)
    pipeline = TalePipeline(ChatModelGenerator(sevens[1]), estimator=estimator, max_tokens=5, format="chat")
    result = pipeline.invoke("What is 2 + 3?")
    assert (result.budget.raw, result.budget.tokens) == (40, 5)  # the pipeline caps budgets at its max_tokens
    assert result.text == " 7" * 5 and result.finish_reason == "length"


def test_generator_validates_conversations(sevens):
    with pytest.raises(ValueError, match="role"):
        ChatModelGenerator(sevens[1]).generate([[{"role": "robot", "content": "x"}]])


def test_max_tokens_only_for_models_that_declare_it():
    fake = FakeListChatModel(responses=["[[12]]"])  # pure logic: a model with no max_tokens setting
    assert not accepts_max_tokens(fake)
    out = ChatModelGenerator(fake).generate([CHAT], max_tokens=3)
    assert out[0].text == "[[12]]" and out[0].usage.counter == "none" and out[0].model == "fake-list-chat-model"


def test_call_configs_make_child_runs_with_tags(sevens):
    class Tags(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tags: list[list[str]] = []

        def on_chat_model_start(self, serialized, messages, *, tags=None, **kwargs):
            self.tags.append(tags)

    seen = Tags()
    with call_configs([{"callbacks": [seen], "tags": ["a"]}, {"callbacks": [seen], "tags": ["b"]}]):
        ChatModelGenerator(sevens[1]).generate([CHAT, CHAT], max_tokens=1)
        ChatModelGenerator(sevens[1]).generate([CHAT], max_tokens=1)  # other length: the ambient config
    assert sorted(map(tuple, seen.tags)) == [("a",), ("b",)]


# -- chat model checks ----------------------------------------------------------------------------


def test_wrapped_chat_models_are_recognised(sevens):
    _, chat = sevens
    for wrapped in (chat.bind(max_tokens=5), chat.with_retry(), chat.with_fallbacks([chat]),
                    chat.with_config(tags=["x"])):
        assert unwrap_chat_model(wrapped) is chat and check_chat_model(wrapped) is wrapped
    assert model_max_tokens(chat) is None and model_max_tokens(chat.bind(max_tokens=5)) == 5
    assert model_max_tokens(chat.bind(max_tokens=5).bind(max_tokens=3)) == 3


def test_non_chat_models_are_rejected_with_a_hint():
    with pytest.raises(TypeError, match="ChatOpenAI, not OpenAI"):
        check_chat_model(FakeListLLM(responses=["x"]))
    with pytest.raises(TypeError, match="compose the rest"):
        check_chat_model(RunnableLambda(lambda x: x))
    with pytest.raises(TypeError, match="got str"):
        ChatModelGenerator("gpt-4o-mini")


def test_finish_reason_spellings():
    def message(**meta: Any) -> AIMessage:
        return AIMessage("x", response_metadata=meta)

    assert finish_reason(message(finish_reason="length")) == "length"
    assert finish_reason(message(stop_reason="max_tokens")) == "length"  # Anthropic
    assert finish_reason(message(finish_reason="MAX_TOKENS")) == "length"  # Gemini
    assert finish_reason(message(done_reason="length")) == "length"  # Ollama
    assert finish_reason(message(finish_reason="stop")) == finish_reason(message()) == "stop"


def test_usage_both_ways():
    reply = AIMessage("x", usage_metadata={
        "input_tokens": 10, "output_tokens": 5, "total_tokens": 15,
        "input_token_details": {"cache_read": 4}, "output_token_details": {"reasoning": 2},
    })
    usage = to_usage(reply)
    assert usage == Usage(input_tokens=10, output_tokens=5, cached_input_tokens=4, reasoning_tokens=2)
    assert to_usage_metadata(usage) == reply.usage_metadata
    assert to_usage(AIMessage("x")).counter == "none" and to_usage_metadata(Usage(counter="none")) is None


# -- estimators -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "raw"),
    [(40, 40), (0, 0), (12.2, 13), ("[[40]]", 40), ("  40 ", 40), ("Budget: 40", 40), ("1" * 20, 10**9),
     (AIMessage("[[7]]"), 7), ({"budget": 12}, 12)],
)
def test_runnable_estimator_reads_numbers(value, raw):
    [estimate] = RunnableEstimator(RunnableLambda(lambda q: value)).estimate(["q"])
    assert estimate.raw == raw and estimate.error is None


@pytest.mark.parametrize("garbage", ["no idea", "", -3, float("nan"), float("inf"), True, None, {"x": 1}, [40]])
def test_runnable_estimator_garbage_gives_no_number_and_says_why(garbage):
    [estimate] = RunnableEstimator(RunnableLambda(lambda q: garbage), name="mine").estimate(["q"])
    assert estimate.raw is None and estimate.error.startswith("mine returned")


async def test_runnable_estimator_batches_and_keeps_usage(forty):
    calls = spy(forty[0])
    chain = ChatPromptTemplate.from_messages([("human", "Budget for: {question}")]) | forty[1].bind(max_tokens=2)
    estimator = RunnableEstimator(chain)
    estimates = await estimator.aestimate(["a", "b"])
    assert [e.raw for e in estimates] == [40, 40] and estimates[0].usage.output_tokens == 2
    assert len(calls) == 1 and calls[0]["prompts"][1] == [{"role": "user", "content": "Budget for: b"}]
    assert estimator.name == "runnable:RunnableSequence"


def test_as_estimator_accepts_each_kind(sevens, forty):
    assert isinstance(as_estimator(None, sevens[1]), ZeroShotEstimator)
    assert as_estimator(None, sevens[1]).name == "zero-shot:sevens"
    assert as_estimator(forty[1], sevens[1], max_tokens=3).max_tokens == 3
    fixed = FixedEstimator(10)
    assert as_estimator(fixed, sevens[1]) is fixed
    assert isinstance(as_estimator(RunnableLambda(lambda q: 1), None), RunnableEstimator)

    def by_length(question: str) -> int:
        return len(question)

    function = as_estimator(by_length, None)
    assert function.name == "by_length" and function.estimate(["abc"])[0].raw == 3
    with pytest.raises(TypeError, match="budget=40"):
        as_estimator(40, sevens[1])
    # A string names an estimator: "zero-shot" is the default on the model, "learned" needs no model.
    assert as_estimator("zero-shot", sevens[1], max_tokens=3).name == "zero-shot:sevens"
    assert as_estimator("learned", None).name == "learned"
    with pytest.raises(ValueError, match="unknown estimator 'bogus'"):
        as_estimator("bogus", sevens[1])
    with pytest.raises(TypeError, match="estimator must be"):
        as_estimator(object(), sevens[1])
    with pytest.raises(TypeError, match="needs a chat model"):
        as_estimator(None, None)
