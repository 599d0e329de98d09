"""``estimator="learned"`` in every integration: each accepts the name, records ``"learned"`` with zero
estimator tokens, asks no model for the budget, and gives the same question the same budget.

The models are the tiny real ones of ``tiny_models.py``: ``scripted_generator(" 7")`` answers " 7 7 ..."
until its cap, so every call and count is known. The expected budget comes from the shipped learned
estimator read on the *raw* question; ``test_the_question_is_read_raw`` checks that the prompt-wrapped
forms of the question would give other numbers, so a match proves the raw question was read.
(``tale serve`` is checked in ``tests/serve/test_serve_learned.py``, next to its fixtures.)
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from tiny_models import spy

from tale_integrations.core.budget import BudgetPolicy
from tale_integrations.core.estimators import get_estimator
from tale_integrations.core.learned import LearnedEstimator, default_learned_estimator
from tale_integrations.core.prompts import estimation_messages, question_prompt

Q = "A shop sells pens at $2 each. Ann buys 12 pens and pays with a $50 bill. How much change does she get?"
Q2 = "Janet has 16 eggs. She eats 3 and bakes with 4. She sells the rest at $2 each. How much does she make?"
#: A policy other than the default, passed explicitly where an integration takes one.
SCALED = BudgetPolicy(scale=0.75)
#: Answer caps, all above the budgets below, so no integration lowers a budget to its cap.
CAP = 64


def raw(question: str) -> int:
    [estimate] = default_learned_estimator().estimate([question])
    return estimate.raw


def expected(question: str, policy: BudgetPolicy | None = None) -> int:
    return (policy or BudgetPolicy()).resolve(raw(question), source="learned").tokens


def zero(usage: dict[str, Any]) -> bool:
    """Every token count in a usage dict is 0 (and there is at least one)."""
    counts = [v for k, v in usage.items() if k.endswith("tokens")]
    return bool(counts) and all(v == 0 for v in counts)


def no_tokens(usage: dict[str, Any] | None) -> bool:
    """LangChain's form of "no estimator tokens": `to_usage_metadata` writes an uncounted usage
    (``counter="none"``, zero tokens) as None; a zero usage dict is accepted too."""
    return usage is None or zero(usage)


def test_the_question_is_read_raw():
    # The fixture questions sit inside every cap and above every floor used here ...
    for q in (Q, Q2):
        assert 20 < expected(q, SCALED) < expected(q) == raw(q) < CAP
    # ... and any prompt-wrapped form of them would estimate differently, so equal budgets mean raw reads.
    wrapped = [question_prompt(Q, format="chat"), question_prompt(Q, format="gsm8k"),
               question_prompt(Q, budget=50, format="chat"), estimation_messages(Q)[-1]["content"]]
    assert all(raw(w) != raw(Q) for w in wrapped)
    assert raw(Q) != raw(Q2)


def test_get_estimator_names_the_shipped_estimator():
    estimator = get_estimator("learned")
    assert isinstance(estimator, LearnedEstimator) and estimator.name == "learned"
    assert estimator is default_learned_estimator()
    [estimate] = estimator.estimate([Q])
    assert estimate.raw == raw(Q) and estimate.usage.total_tokens == 0 and estimate.usage.counter == "none"


# -- core: TalePipeline ----------------------------------------------------------------------------


@pytest.mark.parametrize("format", ["chat", "gsm8k"])
def test_pipeline_accepts_learned(scripted_generator, format):
    from tale_integrations import Mode, TalePipeline

    gen = scripted_generator(" 7", model_name="sevens")
    calls = spy(gen)
    result = TalePipeline(gen, estimator="learned", format=format, max_tokens=CAP).invoke(Q)
    assert result.mode is Mode.TALE_EP
    assert result.estimator == "learned"
    assert result.estimator_usage.total_tokens == 0 and result.estimator_usage.counter == "none"
    assert (result.budget.tokens, result.budget.raw, result.budget.source) == (expected(Q), raw(Q), "learned")
    assert result.budget.adjusted is None
    [call] = calls  # the answer only: no estimator call
    assert call["prompts"] == [list(result.messages)]
    assert result.messages[-1]["content"] == question_prompt(Q, budget=expected(Q), format=format)
    assert result.total_usage.total_tokens == result.usage.total_tokens == (
        len(gen.encode_chat(result.messages)) + CAP)
    data = result.to_dict()
    assert data["estimator"] == "learned" and zero(data["estimator_usage"])
    json.dumps(data)


async def test_pipeline_async_batch_and_policy(scripted_generator):
    from tale_integrations import TalePipeline

    gen = scripted_generator(" 7")
    calls = spy(gen)
    pipeline = TalePipeline(gen, estimator="learned", policy=SCALED, format="chat", max_tokens=CAP)
    results = await pipeline.abatch([Q, Q2])
    assert [r.budget.tokens for r in results] == [expected(Q, SCALED), expected(Q2, SCALED)]
    assert [r.budget.adjusted for r in results] == ["scaled", "scaled"]
    assert all(r.estimator == "learned" and r.estimator_usage.total_tokens == 0 for r in results)
    assert len(calls) == 1 and len(calls[0]["prompts"]) == 2  # one batched answer call, nothing else


# -- LangChain: TaleRunnable and TaleBudgetMiddleware ----------------------------------------------


def test_runnable_accepts_learned(scripted_generator):
    pytest.importorskip("langchain_core")
    from tale_integrations.langchain import ChatTaleHF, TaleRunnable

    gen = scripted_generator(" 7", model_name="sevens")
    calls = spy(gen)
    reply = TaleRunnable(ChatTaleHF.from_generator(gen), estimator="learned", answer_reserve=4, repair=False).invoke(Q)
    t = reply.response_metadata["tale"]
    assert t["estimator"] == "learned"
    assert no_tokens(t["estimator_usage"])
    assert (t["budget"], t["budget_raw"], t["budget_source"], t["budget_adjusted"]) == (
        expected(Q), raw(Q), "learned", None)
    assert t["max_tokens"] == expected(Q) + 4
    [call] = calls  # the answer only
    assert call["prompts"] == [[{"role": "user", "content": question_prompt(Q, budget=expected(Q), format="chat")}]]
    assert call["max_tokens"] == expected(Q) + 4
    assert reply.content == " 7" * (expected(Q) + 4)
    assert t["total_usage"]["total_tokens"] == t["answer_usage"]["total_tokens"] == reply.usage_metadata["total_tokens"]


async def test_runnable_learned_batch_with_a_policy(scripted_generator):
    pytest.importorskip("langchain_core")
    from tale_integrations.langchain import ChatTaleHF, TaleRunnable

    gen = scripted_generator(" 7")
    calls = spy(gen)
    runnable = TaleRunnable(ChatTaleHF.from_generator(gen), estimator="learned", policy=SCALED, answer_reserve=2,
                            repair=False)
    replies = await runnable.abatch([Q, Q2])
    metas = [r.response_metadata["tale"] for r in replies]
    assert [m["budget"] for m in metas] == [expected(Q, SCALED), expected(Q2, SCALED)]
    assert all(m["estimator"] == "learned" and no_tokens(m["estimator_usage"]) for m in metas)
    answered = [p[-1]["content"] for c in calls for p in c["prompts"]]
    assert sorted(answered) == sorted(question_prompt(q, budget=expected(q, SCALED), format="chat") for q in (Q, Q2))


@pytest.mark.parametrize("run_async", [False, True])
async def test_middleware_accepts_learned(scripted_generator, run_async):
    pytest.importorskip("langchain")
    from langchain.agents import create_agent
    from langchain_core.messages import HumanMessage

    from tale_integrations.langchain import ChatTaleHF, TaleBudgetMiddleware

    gen = scripted_generator(" 7", model_name="sevens")
    calls = spy(gen)
    middleware = TaleBudgetMiddleware(estimator="learned", hard_cap=True, answer_reserve=4)
    agent = create_agent(ChatTaleHF.from_generator(gen), middleware=[middleware])
    state = {"messages": [HumanMessage(Q)]}
    state = await agent.ainvoke(state) if run_async else agent.invoke(state)
    human, reply = state["messages"]
    assert human.content == Q  # the saved state keeps the raw question
    [record] = state["tale_budgets"]
    assert record["estimator"] == "learned" and record["estimated"] is True
    assert no_tokens(record["estimator_usage"])
    assert (record["budget"], record["budget_raw"], record["budget_source"]) == (expected(Q), raw(Q), "learned")
    assert record["max_tokens"] == expected(Q) + 4
    [call] = calls  # the agent's model only: no estimator call
    assert call["prompts"] == [[{"role": "user", "content": question_prompt(Q, budget=expected(Q), format="chat")}]]
    assert reply.content == " 7" * (expected(Q) + 4) and record["usage"] == reply.usage_metadata


def test_middleware_learned_with_a_policy(scripted_generator):
    pytest.importorskip("langchain")
    from langchain.agents import create_agent
    from langchain_core.messages import HumanMessage

    from tale_integrations.langchain import ChatTaleHF, TaleBudgetMiddleware

    gen = scripted_generator(" 7")
    calls = spy(gen)
    agent = create_agent(ChatTaleHF.from_generator(gen, max_tokens=3),
                         middleware=[TaleBudgetMiddleware(estimator="learned", policy=SCALED)])
    [record] = agent.invoke({"messages": [HumanMessage(Q2)]})["tale_budgets"]
    # The model's own max_tokens (3) is a limit, so the estimate is lowered to it: the policy still applies.
    assert (record["budget"], record["budget_raw"], record["estimator"]) == (3, raw(Q2), "learned")
    assert "scaled" in record["budget_adjusted"] and "lowered to cap" in record["budget_adjusted"]
    assert len(calls) == 1


# -- LlamaIndex: TaleQueryTransform and TaleQueryEngine --------------------------------------------


TEXTS = ("Pens cost $2 each at the shop.", "Eggs sell at $2 each at the market.")


@pytest.fixture()
def wide_sevens(tiny_tokenizer):
    """A scripted " 7" generator with a 4096-token window, for LlamaIndex's long prompts (as in test_query.py)."""
    from tiny_models import build_tiny_model, script_model

    from tale_integrations.backends.hf import HFGenerator

    [token_id] = tiny_tokenizer.convert_tokens_to_ids([" 7"])
    model = script_model(build_tiny_model(tiny_tokenizer, max_positions=4096), token_id)
    return HFGenerator.from_model(model, tiny_tokenizer, model_name="answerer")


def test_query_transform_accepts_learned():
    pytest.importorskip("llama_index.core")
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler

    from tale_integrations.llama_index import TaleBudgetEvent, TaleQueryTransform

    seen: list[Any] = []

    class Events(BaseEventHandler):
        @classmethod
        def class_name(cls) -> str:
            return "LearnedEvents"

        def handle(self, event, **kwargs):
            seen.append(event)

    root = get_dispatcher()
    handler = Events()
    root.add_event_handler(handler)
    try:
        transform = TaleQueryTransform("learned")
        bundle = transform.run(Q)
        run = transform.estimate(Q2)
    finally:
        root.event_handlers.remove(handler)
    assert transform.estimator.name == "learned"
    assert bundle.query_str == question_prompt(Q, budget=expected(Q), format="chat")
    assert bundle.embedding_strs == [Q]
    event = [e for e in seen if isinstance(e, TaleBudgetEvent)][0]
    assert (event.query_str, event.budget, event.budget_raw, event.budget_source, event.estimator) == (
        Q, expected(Q), raw(Q), "learned", "learned")
    assert event.estimator_usage is None  # no model was asked
    d = run.to_dict()
    assert (d["budget"], d["estimator"], d["estimator_reply"], d["calls"]) == (expected(Q2), "learned", None, [])
    assert zero(d["usage"]["estimator"]) and zero(d["usage"]["total"])


def test_query_engine_accepts_learned(wide_sevens, monkeypatch):
    pytest.importorskip("llama_index.core")
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.schema import TextNode

    from tale_integrations.llama_index import TaleHFLLM, TaleQueryEngine

    calls = spy(wide_sevens)
    llm = TaleHFLLM.from_generator(wide_sevens, max_new_tokens=6)
    index = VectorStoreIndex([TextNode(text=t) for t in TEXTS], embed_model=MockEmbedding(embed_dim=8))
    response = TaleQueryEngine(index.as_query_engine(llm=llm, similarity_top_k=2), estimator="learned").query(Q)
    meta = response.metadata["tale"]
    assert (meta["question"], meta["budget"], meta["estimator"], meta["estimator_reply"]) == (
        Q, expected(Q), "learned", None)
    assert (meta["budget_raw"], meta["budget_source"], meta["budget_adjusted"]) == (raw(Q), "learned", None)
    assert [c["role"] for c in meta["calls"]] == ["answer"]  # the answer only: no estimator call
    assert zero(meta["usage"]["estimator"])
    assert meta["usage"]["total"]["total_tokens"] == meta["usage"]["answer"]["total_tokens"] > 0
    [call] = calls
    assert f"Query: {question_prompt(Q, budget=expected(Q), format='chat')}" in call["prompts"][0][-1]["content"]
    assert response.response == " 7" * 6


def test_query_engine_zero_shot_by_name_asks_the_engines_own_llm(wide_sevens):
    pytest.importorskip("llama_index.core")
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.schema import TextNode

    from tale_integrations.llama_index import TaleHFLLM, TaleQueryEngine

    calls = spy(wide_sevens)
    llm = TaleHFLLM.from_generator(wide_sevens, max_new_tokens=6)
    index = VectorStoreIndex([TextNode(text=t) for t in TEXTS], embed_model=MockEmbedding(embed_dim=8))
    engine = TaleQueryEngine(index.as_query_engine(llm=llm, similarity_top_k=2), estimator="zero-shot")
    meta = engine.query(Q).metadata["tale"]
    assert meta["estimator"] != "learned"
    assert [c["role"] for c in meta["calls"]] == ["estimator", "answer"]
    assert len(calls) == 2  # both calls went to the engine's own LLM, not Settings.llm


async def test_query_engine_learned_with_a_policy_async(wide_sevens):
    pytest.importorskip("llama_index.core")
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.schema import TextNode

    from tale_integrations.llama_index import TaleHFLLM, TaleQueryEngine

    calls = spy(wide_sevens)
    llm = TaleHFLLM.from_generator(wide_sevens, max_new_tokens=4)
    index = VectorStoreIndex([TextNode(text=t) for t in TEXTS], embed_model=MockEmbedding(embed_dim=8))
    engine = TaleQueryEngine(index.as_query_engine(llm=llm), estimator="learned", policy=SCALED)
    meta = (await engine.aquery(Q2)).metadata["tale"]
    assert (meta["budget"], meta["estimator"]) == (expected(Q2, SCALED), "learned")
    assert meta["budget_adjusted"] == "scaled" and zero(meta["usage"]["estimator"])
    assert len(calls) == 1


# -- the same question, the same budget, everywhere -------------------------------------------------


def test_every_integration_gives_the_same_budget(scripted_generator, wide_sevens):
    """One policy (SCALED, passed to each), one question: one budget from the pipeline, the runnable,
    the middleware and the LlamaIndex transform and engine."""
    pytest.importorskip("langchain")
    pytest.importorskip("llama_index.core")
    from langchain.agents import create_agent
    from langchain_core.messages import HumanMessage
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.schema import TextNode

    from tale_integrations import TalePipeline
    from tale_integrations.langchain import ChatTaleHF, TaleBudgetMiddleware, TaleRunnable
    from tale_integrations.llama_index import TaleHFLLM, TaleQueryEngine, TaleQueryTransform

    gen = scripted_generator(" 7")
    chat = ChatTaleHF.from_generator(gen)
    budgets = {
        "pipeline": TalePipeline(gen, estimator="learned", policy=SCALED, format="chat", max_tokens=CAP)
        .invoke(Q).budget.tokens,
        "runnable": TaleRunnable(chat, estimator="learned", policy=SCALED, answer_reserve=1, repair=False)
        .invoke(Q).response_metadata["tale"]["budget"],
        "middleware": create_agent(chat, middleware=[TaleBudgetMiddleware(estimator="learned", policy=SCALED,
                                                                          hard_cap=True, answer_reserve=1)])
        .invoke({"messages": [HumanMessage(Q)]})["tale_budgets"][0]["budget"],
        "transform": TaleQueryTransform("learned", policy=SCALED).estimate(Q).budget.tokens,
    }
    index = VectorStoreIndex([TextNode(text=t) for t in TEXTS], embed_model=MockEmbedding(embed_dim=8))
    engine = TaleQueryEngine(index.as_query_engine(llm=TaleHFLLM.from_generator(wide_sevens, max_new_tokens=1)),
                             estimator="learned", policy=SCALED)
    budgets["query_engine"] = engine.query(Q).metadata["tale"]["budget"]
    assert budgets == dict.fromkeys(budgets, expected(Q, SCALED))


def test_every_integration_writes_the_same_budget_record(scripted_generator, wide_sevens, tmp_path):
    """The budget record (`core.decision.RECORD_KEYS`) of one question under one policy: the same keys
    and values from the pipeline, the runnable, the middleware, the LlamaIndex transform and engine and
    the eval harness (tale serve: tests/serve/test_serve_learned.py). Only the estimator's usage is
    written in each framework's own form, so its value is compared apart."""
    pytest.importorskip("langchain")
    pytest.importorskip("llama_index.core")
    from langchain.agents import create_agent
    from langchain_core.messages import HumanMessage
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.schema import TextNode

    from tale_integrations import TalePipeline
    from tale_integrations.core.decision import RECORD_KEYS
    from tale_integrations.eval import evaluate, load_dataset
    from tale_integrations.langchain import ChatTaleHF, TaleBudgetMiddleware, TaleRunnable
    from tale_integrations.llama_index import TaleHFLLM, TaleQueryEngine, TaleQueryTransform

    gen = scripted_generator(" 7")
    chat = ChatTaleHF.from_generator(gen)
    index = VectorStoreIndex([TextNode(text=t) for t in TEXTS], embed_model=MockEmbedding(embed_dim=8))
    engine = TaleQueryEngine(index.as_query_engine(llm=TaleHFLLM.from_generator(wide_sevens, max_new_tokens=1)),
                             estimator="learned", policy=SCALED)
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"question": Q, "answer": 26}) + "\n")
    evaluate(gen, load_dataset(str(data)), ["tale-ep:learned"], tmp_path / "run", policy=SCALED, max_tokens=CAP,
             progress="none")
    [path] = (tmp_path / "run" / "results").iterdir()
    records = {
        "pipeline": TalePipeline(gen, estimator="learned", policy=SCALED, format="chat", max_tokens=CAP)
        .invoke(Q).to_dict(),
        "runnable": TaleRunnable(chat, estimator="learned", policy=SCALED, answer_reserve=1, repair=False)
        .invoke(Q).response_metadata["tale"],
        "middleware": create_agent(chat, middleware=[TaleBudgetMiddleware(estimator="learned", policy=SCALED,
                                                                          hard_cap=True, answer_reserve=1)])
        .invoke({"messages": [HumanMessage(Q)]})["tale_budgets"][0],
        "transform": TaleQueryTransform("learned", policy=SCALED).estimate(Q).to_dict(),
        "query_engine": engine.query(Q).metadata["tale"],
        "eval": json.loads(path.read_text().splitlines()[1]),
    }
    assert all(set(RECORD_KEYS) <= set(r) for r in records.values()), {k: set(RECORD_KEYS) - set(r)
                                                                        for k, r in records.items()}
    shown = {name: {k: r[k] for k in RECORD_KEYS if k != "estimator_usage"} for name, r in records.items()}
    want = {"budget": expected(Q, SCALED), "budget_raw": raw(Q), "budget_source": "learned",
            "budget_adjusted": "scaled", "estimator": "learned", "estimator_reply": None, "estimator_error": None,
            "budget_via": "prompt", "thinking": None}
    assert shown == dict.fromkeys(shown, want)
    # no model was asked: no estimator tokens in any form
    assert all(r["estimator_usage"] is None or zero(r["estimator_usage"]) for r in records.values())


# -- tale eval ---------------------------------------------------------------------------------------


def _eval(tiny_model_dir, tmp_path, name: str, *extra: str) -> list[dict[str, Any]]:
    """Run ``tale eval`` on Q and Q2 with the tiny model; return the tale-ep records (header first)."""
    from tale_integrations.cli import main

    data = tmp_path / "pens.jsonl"
    data.write_text(json.dumps({"question": Q, "answer": 26}) + "\n" + json.dumps({"question": Q2, "answer": 18}) + "\n")
    out = tmp_path / name
    assert main(["eval", "--dataset", str(data), "--model", str(tiny_model_dir), "--max-tokens", str(CAP),
                 "--batch-size", "2", "--out", str(out), "--no-progress", "--no-report", *extra]) == 0
    [path] = [p for p in (out / "results").iterdir() if "tale-ep" in p.name]
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("spelling", [["--methods", "tale-ep", "--estimator", "learned"],
                                      ["--methods", "tale-ep:learned"]])
def test_eval_accepts_learned(tiny_model_dir, tmp_path, spelling):
    pytest.importorskip("transformers")
    first, *records = _eval(tiny_model_dir, tmp_path, "run", *spelling)
    header = first["header"]
    assert header["method"] == spelling[1] and header["policy"] == BudgetPolicy().to_dict()
    assert header["estimator"] == "learned" and header["estimator_model"] is None
    assert [r["question"] for r in records] == [Q, Q2]
    for r, q in zip(records, (Q, Q2), strict=False):
        assert r["estimator"] == "learned" and r["estimator_model"] is None
        assert zero(r["estimator_usage"]) and r["estimator_usage"]["counter"] == "none"
        assert (r["budget"], r["budget_raw"], r["budget_source"]) == (expected(q), raw(q), "learned")
        assert f"use less than {expected(q)} tokens" in r["messages"][-1]["content"]


# -- tale ask -------------------------------------------------------------------------------------


def test_ask_uses_learned_by_default(tiny_model_dir, capsys):
    pytest.importorskip("transformers")
    from tale_integrations.cli import build_parser, main

    assert build_parser().parse_args(["ask", "Q?"]).estimator == "learned"
    for argv in ([], ["--estimator", "learned"]):
        assert main(["ask", Q, "--model", str(tiny_model_dir), "--max-tokens", str(CAP), "--json", *argv]) == 0
        tale = json.loads(capsys.readouterr().out)["tale"]
        assert tale["estimator"] == "learned" and zero(tale["estimator_usage"])
        assert (tale["budget"], tale["budget_raw"], tale["budget_source"], tale["budget_adjusted"]) == (
            expected(Q), raw(Q), "learned", None)
        assert tale["messages"][-1]["content"] == question_prompt(Q, budget=expected(Q), format="chat")
        assert tale["total_usage"]["total_tokens"] == tale["usage"]["total_tokens"]


def test_ask_text_output_says_no_model_call(tiny_model_dir, capsys):
    pytest.importorskip("transformers")
    from tale_integrations.cli import main

    assert main(["ask", Q, "--model", str(tiny_model_dir), "--max-tokens", str(CAP)]) == 0
    out = capsys.readouterr().out
    assert "== TALE-EP (learned) ==" in out
    assert f"Budget: {expected(Q)} tokens" in out
    assert "estimator learned: no model call" in out and "estimator call" not in out


def test_ask_compare_adds_vanilla_and_zero_shot(tiny_model_dir, capsys):
    pytest.importorskip("transformers")
    from tale_integrations.cli import main

    assert main(["ask", Q, "--model", str(tiny_model_dir), "--max-tokens", "8", "--min-budget", "4", "--compare",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"tale", "vanilla", "tale_zero_shot"}
    tale, zero_shot, vanilla = data["tale"], data["tale_zero_shot"], data["vanilla"]
    assert tale["estimator"] == "learned" and zero(tale["estimator_usage"])
    # --max-tokens 8 is the policy's cap: the learned estimate is lowered to it.
    assert (tale["budget"], tale["budget_raw"], tale["budget_source"], tale["budget_adjusted"]) == (
        8, raw(Q), "learned", "lowered to cap")
    assert zero_shot["estimator"].startswith("zero-shot") and zero_shot["estimator_usage"]["output_tokens"] > 0
    assert vanilla["budget"] is None and vanilla["estimator"] is None
