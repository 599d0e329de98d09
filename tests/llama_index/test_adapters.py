"""LlamaIndex LLM → core `Generator`, the template-backed zero-shot estimator, `as_estimator`, and
reading usage from LlamaIndex responses."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse  # noqa: E402
from llama_index.core.bridge.pydantic import Field  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402
from llama_index.core.prompts import ChatPromptTemplate, PromptTemplate  # noqa: E402

from tale_integrations.core.estimators import (  # noqa: E402
    BudgetEstimator,
    FixedEstimator,
    FunctionEstimator,
    ZeroShotEstimator,
)
from tale_integrations.core.generation import Generator, Usage  # noqa: E402
from tale_integrations.core.prompts import estimation_messages  # noqa: E402
from tale_integrations.core.tokens import TiktokenCounter  # noqa: E402
from tale_integrations.llama_index import (  # noqa: E402
    LlamaIndexEstimator,
    LlamaIndexGenerator,
    TaleHFLLM,
    as_estimator,
)
from tale_integrations.llama_index._adapters import estimation_template, usage_from_response  # noqa: E402

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]
OTHER = [{"role": "user", "content": "a longer question, so the batch needs left padding"}]
Q = "What is 2 + 3?"


class Spy:
    def __init__(self, monkeypatch, obj, name):
        self.calls = []
        inner = getattr(obj, name)

        def spy(*args, **kwargs):
            self.calls.append((args, kwargs))
            return inner(*args, **kwargs)

        monkeypatch.setattr(obj, name, spy)


class KwargsLLM(MockLLM):
    """MockLLM (echoes the prompt, reports no usage) that records the keyword arguments of each chat."""

    seen: list = Field(default_factory=list)

    def chat(self, messages, **kwargs):
        self.seen.append(kwargs)
        return super().chat(messages)


# -- usage_from_response ---------------------------------------------------------------------------


def test_usage_from_the_places_token_counting_reads():
    tale = ChatResponse(message=ChatMessage(content="x"), raw={
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}, "token_counter": "hf:m"})
    assert usage_from_response(tale) == Usage(input_tokens=11, output_tokens=3, counter="hf:m")
    openai_like = CompletionResponse(text="x", raw=SimpleNamespace(usage=SimpleNamespace(
        model_dump=lambda: {"input_tokens": 5, "output_tokens": 2})))
    assert usage_from_response(openai_like) == Usage(input_tokens=5, output_tokens=2, counter="reported")
    gemini_like = CompletionResponse(text="x", raw={"usage_metadata": {"prompt_token_count": 4,
                                                                       "candidates_token_count": 1}})
    assert usage_from_response(gemini_like) == Usage(input_tokens=4, output_tokens=1)
    only_kwargs = CompletionResponse(text="x", additional_kwargs={"prompt_tokens": 2, "completion_tokens": 1})
    assert usage_from_response(only_kwargs) == Usage(input_tokens=2, output_tokens=1)
    assert usage_from_response(CompletionResponse(text="x")) is None
    assert usage_from_response(CompletionResponse(text="x", raw={"usage": {"foo": 1}})) is None
    assert usage_from_response(None) is None


# -- LlamaIndexGenerator ---------------------------------------------------------------------------


def test_generator_over_tale_hf_llm_is_one_batched_call_with_exact_usage(tiny_generator, monkeypatch):
    llm = TaleHFLLM.from_generator(tiny_generator, max_new_tokens=5)
    gen = LlamaIndexGenerator(llm)
    assert isinstance(gen, Generator) and gen.model_name == "tiny-llama"
    direct = tiny_generator.generate([CHAT, OTHER], max_tokens=4, temperature=0.0)
    spy = Spy(monkeypatch, tiny_generator, "generate")
    out = gen.generate([CHAT, OTHER], max_tokens=4, temperature=0.0)
    assert len(spy.calls) == 1 and spy.calls[0][0][0] == [CHAT, OTHER]
    assert spy.calls[0][1]["max_tokens"] == 4 and spy.calls[0][1]["temperature"] == 0.0
    assert [g.text for g in out] == [g.text for g in direct]
    assert [g.usage for g in out] == [g.usage for g in direct]  # exact, with the model's own counter
    assert [g.finish_reason for g in out] == [g.finish_reason for g in direct]
    assert {g.model for g in out} == {"tiny-llama"}


async def test_agenerate_matches_generate(tiny_generator, monkeypatch):
    gen = LlamaIndexGenerator(TaleHFLLM.from_generator(tiny_generator, max_new_tokens=4))
    spy = Spy(monkeypatch, tiny_generator, "agenerate")
    out = await gen.agenerate([CHAT, OTHER])
    assert len(spy.calls) == 1
    assert [(g.text, g.usage) for g in out] == [(g.text, g.usage) for g in gen.generate([CHAT, OTHER])]


def test_stop_and_length(scripted_generator):
    gen = LlamaIndexGenerator(TaleHFLLM.from_generator(scripted_generator(" 7"), max_new_tokens=10))
    [full] = gen.generate([CHAT], max_tokens=3)
    assert (full.text, full.finish_reason, full.usage.output_tokens) == (" 7 7 7", "length", 3)
    [cut] = gen.generate([CHAT], stop=["7 7"])
    assert (cut.text, cut.finish_reason) == (" ", "stop")


async def test_an_llm_without_usage_or_batching():
    llm = KwargsLLM()
    gen = LlamaIndexGenerator(llm)
    out = gen.generate([CHAT, OTHER], max_tokens=7, stop=["3?"])
    assert len(llm.seen) == 2 and llm.seen[0] == {"max_tokens": 7, "stop": ["3?"]}
    assert "3?" not in out[0].text and out[0].text.endswith("What is 2 + ")  # the stop string is cut here
    assert out[0].finish_reason == "stop" and out[1].finish_reason == "stop"
    assert out[0].usage == Usage(counter="none")  # nothing reported: zeros, and it says so
    counted = LlamaIndexGenerator(llm, counter=TiktokenCounter())
    [g] = await counted.agenerate([OTHER])
    assert g.usage.counter == "tiktoken:cl100k_base"
    assert g.usage.input_tokens == TiktokenCounter().count(OTHER[0]["content"])  # the message text only
    assert g.usage.output_tokens == TiktokenCounter().count(g.text)
    quiet = LlamaIndexGenerator(llm, forward_settings=False)
    llm.seen.clear()
    quiet.generate([CHAT], max_tokens=7)
    assert llm.seen == [{}]


def test_generator_bad_arguments():
    with pytest.raises(TypeError, match="LlamaIndex LLM"):
        LlamaIndexGenerator(object())
    with pytest.raises(TypeError, match="TokenCounter"):
        LlamaIndexGenerator(MockLLM(), counter="cl100k_base")
    with pytest.raises(TypeError, match="list of conversations"):
        LlamaIndexGenerator(MockLLM()).generate("hello")


# -- LlamaIndexEstimator -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["scripts", "figure"])
def test_default_estimation_template_renders_the_core_chat(variant):
    rendered = estimation_template(variant).format_messages(question=Q)
    assert [{"role": m.role.value, "content": m.content} for m in rendered] == estimation_messages(Q, variant=variant)


def test_estimator_over_an_llm(scripted_generator, monkeypatch):
    gen = scripted_generator("[[40]]", model_name="est")
    est = LlamaIndexEstimator(TaleHFLLM.from_generator(gen), max_tokens=2)
    assert isinstance(est, BudgetEstimator) and isinstance(est, ZeroShotEstimator)
    assert est.name == "zero-shot:est" and est.llm is not None
    spy = Spy(monkeypatch, gen, "generate")
    [estimate] = est.estimate([Q])
    assert spy.calls[0][0][0] == [estimation_messages(Q)]
    assert (estimate.raw, estimate.reply) == (40, "[[40]][[40]]")
    assert estimate.usage == Usage(input_tokens=len(gen.encode_chat(estimation_messages(Q))), output_tokens=2,
                                   counter="hf:est")


async def test_estimator_over_a_core_generator_and_a_custom_template(scripted_generator):
    gen = scripted_generator("[[40]]")
    est = LlamaIndexEstimator(gen, max_tokens=1, prompt_template=PromptTemplate("How long? {question}"))
    assert est.llm is None
    assert est.messages(Q) == [{"role": "user", "content": f"How long? {Q}"}]
    [estimate] = await est.aestimate([Q])
    assert estimate.raw == 40 and estimate.usage.output_tokens == 1


def test_estimator_bad_input(scripted_generator):
    gen = scripted_generator("[[40]]")
    with pytest.raises(ValueError, match=r"\{question\}"):
        LlamaIndexEstimator(gen, prompt_template=ChatPromptTemplate.from_messages([("user", "no variable")]))
    with pytest.raises(TypeError, match="prompt template"):
        LlamaIndexEstimator(gen, prompt_template="{question}")
    with pytest.raises(ValueError, match="empty"):
        LlamaIndexEstimator(gen).estimate([" "])
    with pytest.raises(TypeError, match="Generator"):
        LlamaIndexEstimator(object())


# -- as_estimator ------------------------------------------------------------------------------------


def test_as_estimator(tiny_generator):
    llm = TaleHFLLM.from_generator(tiny_generator)
    assert isinstance(as_estimator(llm), LlamaIndexEstimator) and as_estimator(llm).llm is llm
    assert isinstance(as_estimator(tiny_generator), LlamaIndexEstimator)
    fixed = as_estimator(40)
    assert isinstance(fixed, FixedEstimator) and fixed.name == "fixed:40"
    core = FixedEstimator(12)
    assert as_estimator(core) is core

    def by_length(question: str) -> int:
        return 10 * len(question.split())

    fn = as_estimator(by_length)
    assert isinstance(fn, FunctionEstimator) and fn.name == "by_length"
    assert fn.estimate([Q])[0].raw == 50
    for bad in (True, None, object()):
        with pytest.raises(TypeError, match="estimator must be"):
            as_estimator(bad)
    # A string names an estimator (core.estimators.get_estimator).
    assert as_estimator("learned").name == "learned"
    with pytest.raises(ValueError, match="unknown estimator 'forty'"):
        as_estimator("forty")