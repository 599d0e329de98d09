"""`TaleRunnable` over real `ChatTaleHF` models (tiny scripted ones, fast; the embedded SmolLM2, `slow`).

``scripted_generator("[[40]]")`` is a real model that always says 40, so it is the estimator;
``scripted_generator(" 7")`` answers " 7 7 7 ..." until its cap, so every token count is known.
Fakes appear only where the test is about pure logic (a non-chat model, a failing estimator).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("torch")

from langchain_core.callbacks import BaseCallbackHandler, get_usage_metadata_callback  # noqa: E402
from langchain_core.language_models.fake import FakeListLLM  # noqa: E402
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage  # noqa: E402
from langchain_core.output_parsers import StrOutputParser  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder  # noqa: E402
from langchain_core.runnables import ConfigurableField, RunnableLambda  # noqa: E402
from tiny_models import spy  # noqa: E402

from tale_integrations.core.budget import BudgetPolicy  # noqa: E402
from tale_integrations.core.estimators import EstimatorError, FixedEstimator  # noqa: E402
from tale_integrations.core.prompts import PROMPT_VERSION, question_prompt  # noqa: E402
from tale_integrations.langchain import ChatTaleHF, TaleRunnable  # noqa: E402
from tale_integrations.langchain.runnable import REPAIR_PROMPT, repair_prompt  # noqa: E402

Q = "What is 2 + 3?"


class Runs(BaseCallbackHandler):
    """Chain and chat-model runs with their parents and tags, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, Any, list[str], Any]] = []

    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, tags=None, **kwargs):
        self.events.append(("chain", run_id, parent_run_id, tags or [], kwargs.get("name")))

    def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, tags=None, **kwargs):
        self.events.append(("chat", run_id, parent_run_id, tags or [], messages[0]))

    def on_llm_end(self, response, *, run_id, **kwargs):
        self.events.append(("end", run_id, None, [], response.generations[0][0].text))

    def chats(self, tag: str) -> list[tuple]:
        return [e for e in self.events if e[0] == "chat" and tag in e[3]]

    def tale_runs(self) -> list[Any]:
        return [e[1] for e in self.events if e[0] == "chain" and e[4] == "TaleRunnable"]


@pytest.fixture()
def est(scripted_generator):
    gen = scripted_generator("[[40]]", model_name="forty")
    return gen, ChatTaleHF.from_generator(gen)


@pytest.fixture()
def sevens(scripted_generator):
    gen = scripted_generator(" 7", model_name="sevens")
    return gen, ChatTaleHF.from_generator(gen)


@pytest.fixture()
def tale(est, sevens):
    """Budget 40 from a real zero-shot estimate; the answer is capped at 40 + 8 = 48 tokens."""
    return TaleRunnable(sevens[1], estimator=est[1], estimator_max_tokens=2, answer_reserve=8, repair=False)


# -- invoke: prompt, budget, cap, metadata --------------------------------------------------------


def test_invoke_budgets_prompt_and_caps_the_answer(est, sevens, tale):
    calls = spy(sevens[0])
    reply = tale.invoke(Q)
    assert isinstance(reply, AIMessage)
    assert calls[0]["prompts"] == [[{"role": "user", "content": question_prompt(Q, budget=40, format="chat")}]]
    assert calls[0]["max_tokens"] == 40 + 8
    assert reply.content == " 7" * 48 and reply.usage_metadata["output_tokens"] == 48
    meta = reply.response_metadata
    assert meta["model_name"] == "sevens"
    t = meta["tale"]
    assert (t["budget"], t["budget_raw"], t["budget_source"], t["max_tokens"]) == (40, 40, "zero-shot:forty", 48)
    assert t["estimator"] == "zero-shot:forty" and t["estimator_reply"].startswith("[[40]]")
    assert t["answer_usage"] == reply.usage_metadata
    assert t["estimator_usage"]["output_tokens"] == 2  # the zero-shot estimator's reply cap
    assert t["total_usage"]["total_tokens"] == t["estimator_usage"]["total_tokens"] + t["answer_usage"]["total_tokens"]
    assert t["repaired"] is False and t["prompt_version"] == PROMPT_VERSION


def test_default_estimator_is_zero_shot_on_the_same_model(est):
    gen, chat = est
    calls = spy(gen)
    reply = TaleRunnable(chat, answer_reserve=4, repair=False).invoke(Q)
    assert reply.response_metadata["tale"]["budget"] == 40
    assert reply.response_metadata["tale"]["estimator_usage"]["output_tokens"] == 64  # the default reply cap
    assert calls[0]["max_tokens"] == 64 and calls[1]["max_tokens"] == 44
    assert reply.response_metadata["tale"]["estimator"] == "zero-shot:forty"
    assert calls[0]["prompts"][0][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert f'Question: "{Q}"' in calls[0]["prompts"][0][1]["content"]
    assert calls[1]["prompts"][0][-1]["content"].endswith("use less than 40 tokens:\n")


def test_usage_callback_sees_both_calls(tale):
    with get_usage_metadata_callback() as cb:
        reply = tale.invoke(Q)
    total = sum(u["total_tokens"] for u in cb.usage_metadata.values())
    assert set(cb.usage_metadata) == {"forty", "sevens"}
    assert total == reply.response_metadata["tale"]["total_usage"]["total_tokens"]


def test_hard_cap_respects_the_models_own_cap(est, scripted_generator):
    capped = ChatTaleHF.from_generator(scripted_generator(" 7"), max_tokens=10)
    t = TaleRunnable(capped, estimator=est[1], estimator_max_tokens=2, repair=False).invoke(Q).response_metadata["tale"]
    assert (t["budget"], t["budget_adjusted"], t["max_tokens"]) == (10, "lowered to cap", 10)
    bound_chat = ChatTaleHF.from_generator(scripted_generator(" 7")).bind(max_tokens=30)
    bound = TaleRunnable(bound_chat, budget=25, repair=False)
    assert bound.invoke(Q).usage_metadata["output_tokens"] == 30


def test_hard_cap_off_sends_no_max_tokens(est, sevens):
    calls = spy(sevens[0])
    reply = TaleRunnable(sevens[1], estimator=est[1], estimator_max_tokens=2, hard_cap=False, repair=False).invoke(
        Q, max_tokens=5
    )
    assert reply.response_metadata["tale"]["max_tokens"] is None
    assert calls[0]["max_tokens"] == 5  # the caller's own per-call setting still reaches the model


def test_call_kwargs_reach_the_answer_model(tale, sevens):
    calls = spy(sevens[0])
    tale.invoke(Q, temperature=0.5, max_tokens=7)
    assert calls[0]["temperature"] == 0.5 and calls[0]["max_tokens"] == 7  # min(cap 48, caller's 7)


# -- repair ---------------------------------------------------------------------------------------


def test_cut_off_answer_gets_one_bounded_repair_call(est, sevens):
    calls = spy(sevens[0])
    reply = TaleRunnable(sevens[1], estimator=est[1], estimator_max_tokens=2, answer_reserve=16).invoke(Q)
    t = reply.response_metadata["tale"]
    assert len(calls) == 2 and calls[1]["max_tokens"] == 16
    repair_chat = calls[1]["prompts"][0]
    assert [m["role"] for m in repair_chat] == ["user", "assistant", "user"]
    assert repair_chat[1]["content"] == " 7" * 56 and repair_chat[2]["content"] == REPAIR_PROMPT
    assert t["repaired"] is True and t["repair_usage"]["output_tokens"] == 16
    assert reply.content == " 7" * 56 + "\n\n" + " 7" * 16
    assert reply.usage_metadata["output_tokens"] == 56 + 16
    assert t["total_usage"]["output_tokens"] == 2 + 56 + 16


def test_no_repair_when_the_cut_off_answer_has_a_bracketed_answer(est, scripted_generator):
    gen = scripted_generator("[[40]]", model_name="answers")
    calls = spy(gen)
    tale = TaleRunnable(ChatTaleHF.from_generator(gen), estimator=est[1], estimator_max_tokens=2, format="gsm8k",
                        answer_reserve=8)
    reply = tale.invoke(Q)
    assert len(calls) == 1 and reply.response_metadata["tale"]["repaired"] is False
    assert calls[0]["prompts"][0][0]["content"] == question_prompt(Q, budget=40, format="gsm8k")


def test_repair_prompt_carries_the_format_line():
    assert repair_prompt("chat") == REPAIR_PROMPT
    assert repair_prompt("gsm8k").startswith(REPAIR_PROMPT + "\nPlease Give the response")


# -- inputs ---------------------------------------------------------------------------------------


def test_dict_input_budget_skips_the_estimator(est, tale):
    est_calls = spy(est[0])
    reply = tale.invoke({"question": Q, "budget": 30})
    t = reply.response_metadata["tale"]
    assert est_calls == []
    assert (t["budget"], t["budget_source"], t["estimator"], t["max_tokens"]) == (30, "caller", None, 38)
    assert t["estimator_usage"] is None and t["total_usage"] == t["answer_usage"]


def test_fixed_budget_and_core_estimators(est, sevens):
    est_calls = spy(est[0])
    small = {"answer_reserve": 2, "repair": False}
    assert TaleRunnable(sevens[1], budget=50, **small).invoke(Q).response_metadata["tale"]["budget"] == 50
    t = TaleRunnable(sevens[1], estimator=FixedEstimator(30), **small).invoke(Q).response_metadata["tale"]
    assert (t["budget"], t["estimator"], t["estimator_usage"]) == (30, "fixed:30", None)
    t = TaleRunnable(sevens[1], estimator=lambda q: len(q), **small).invoke(Q).response_metadata["tale"]
    assert (t["budget_raw"], t["budget"], t["budget_adjusted"]) == (len(Q), 20, "raised to floor")
    assert est_calls == []


def test_prompt_template_messages_keep_system_and_history(sevens, tale):
    calls = spy(sevens[0])
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Be brief."), MessagesPlaceholder("history"), ("human", "{question}")]
    )
    history = [HumanMessage("Hi"), AIMessage("Hello!")]
    value = prompt.invoke({"history": history, "question": Q})
    tale.invoke(value)
    assert calls[0]["prompts"][0] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": question_prompt(Q, budget=40, format="chat")},
    ]
    assert value.to_messages()[-1].content == Q  # the caller's messages are not changed


def test_message_list_and_tuple_input(tale, sevens):
    calls = spy(sevens[0])
    tale.invoke([SystemMessage("S"), HumanMessage(Q, id="h1")])
    tale.invoke([("system", "S"), ("human", Q)])
    assert calls[0]["prompts"] == calls[1]["prompts"]


def test_lcel_composition(tale):
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | tale | StrOutputParser()
    assert chain.invoke({"question": Q}) == " 7" * 48


def test_bad_inputs_fail_clearly(tale):
    with pytest.raises(ValueError, match="without a 'question' key"):
        tale.invoke({"query": Q})
    with pytest.raises(ValueError, match="empty message list"):
        tale.invoke([])
    with pytest.raises(ValueError, match="no human message"):
        tale.invoke([SystemMessage("only a system message")])
    with pytest.raises(ValueError, match="empty"):
        tale.invoke("   ")
    with pytest.raises(ValueError, match="budget"):
        tale.invoke({"question": Q, "budget": 0})
    with pytest.raises(TypeError, match="input must be"):
        tale.invoke(42)
    with pytest.raises(ValueError, match="needs the answer options"):
        TaleRunnable(tale.model, budget=30, format="multiple_choice").invoke(Q)


def test_multiple_choice_options(sevens):
    calls = spy(sevens[0])
    tale = TaleRunnable(sevens[1], budget=30, format="multiple_choice", answer_reserve=2, repair=False)
    tale.invoke({"question": Q, "options": ["4", "5"]})
    expected = question_prompt(Q, budget=30, format="multiple_choice", options=["4", "5"])
    assert calls[0]["prompts"][0][0]["content"] == expected


def test_non_chat_models_and_bad_estimators_are_rejected(sevens):
    with pytest.raises(TypeError, match="text-completion LLM"):
        TaleRunnable(FakeListLLM(responses=["x"]))
    with pytest.raises(TypeError, match="not a chat model"):
        TaleRunnable(RunnableLambda(lambda x: x))
    with pytest.raises(TypeError, match="chat model"):
        TaleRunnable("gpt-4o-mini")
    with pytest.raises(TypeError, match="needs the chat model"):
        TaleRunnable()
    with pytest.raises(TypeError, match="budget=40"):
        TaleRunnable(sevens[1], estimator=40)


def test_garbage_estimate_uses_the_policy_fallback(sevens):
    policy = BudgetPolicy(fallback_budget=24)
    for garbage in ("no idea", {"x": 1}, -5, float("nan")):
        estimator = RunnableLambda(lambda q, g=garbage: g)
        tale = TaleRunnable(sevens[1], estimator=estimator, policy=policy, answer_reserve=2)
        t = tale.invoke(Q).response_metadata["tale"]
        assert (t["budget"], t["budget_source"], t["budget_adjusted"]) == (24, "fallback", "parse failed")
        assert t["estimator_error"]
    vanilla = TaleRunnable(sevens[1].bind(max_tokens=6), estimator=lambda q: "?",
                           policy=BudgetPolicy(on_parse_failure="vanilla"))
    calls = spy(sevens[0])
    t = vanilla.invoke(Q).response_metadata["tale"]
    assert t["budget"] is None and t["max_tokens"] is None
    assert calls[0]["prompts"][0][0]["content"] == question_prompt(Q, budget=None, format="chat")


def test_failing_estimator_raises_or_falls_back(sevens):
    def broken(question: str) -> int:
        raise ConnectionError("estimator down")

    with pytest.raises(EstimatorError, match="on_estimator_error='fallback'") as info:
        TaleRunnable(sevens[1], estimator=broken).invoke(Q)
    assert isinstance(info.value.__cause__, ConnectionError)
    t = TaleRunnable(sevens[1], estimator=broken, on_estimator_error="fallback",
                     policy=BudgetPolicy(fallback_budget=24), answer_reserve=2, repair=False).invoke(Q)
    t = t.response_metadata["tale"]
    assert (t["budget"], t["budget_adjusted"]) == (24, "estimator failed")


# -- configurable, retry, fallbacks, schemas ------------------------------------------------------


def test_configurable_budget_and_policy(tale):
    configurable = tale.configurable_fields(
        budget=ConfigurableField(id="tale_budget", name="Budget"),
        policy=ConfigurableField(id="tale_policy", name="Budget policy"),
    )
    assert sorted(s.id for s in configurable.config_specs) == ["tale_budget", "tale_policy"]
    meta = configurable.invoke(Q).response_metadata["tale"]
    assert meta["budget"] == 40
    fixed = configurable.with_config(configurable={"tale_budget": 25}).invoke(Q)
    assert fixed.response_metadata["tale"]["budget"] == 25
    scaled = configurable.invoke(Q, config={"configurable": {"tale_policy": {"scale": 2.0}}})
    assert scaled.response_metadata["tale"]["budget"] == 80 and scaled.response_metadata["tale"]["max_tokens"] == 88
    assert "tale_policy" in str(configurable.config_schema().model_json_schema())


def test_with_retry_and_with_fallbacks(sevens):
    attempts = []

    def flaky(question: str) -> int:
        attempts.append(question)
        if len(attempts) == 1:
            raise ConnectionError("try again")
        return 33

    retried = TaleRunnable(sevens[1], estimator=flaky, answer_reserve=2, repair=False).with_retry(
        retry_if_exception_type=(EstimatorError,), stop_after_attempt=2, wait_exponential_jitter=False
    )
    assert retried.invoke(Q).response_metadata["tale"]["budget"] == 33 and len(attempts) == 2

    def broken(question: str) -> int:
        raise ConnectionError("down")

    backup = TaleRunnable(sevens[1], budget=30, answer_reserve=2, repair=False)
    chain = TaleRunnable(sevens[1], estimator=broken).with_fallbacks([backup])
    assert chain.invoke(Q).response_metadata["tale"]["budget"] == 30


def test_input_and_output_schemas(tale):
    schema = tale.get_input_jsonschema()
    assert schema["title"] == "TaleRunnableInput"
    kinds = str(schema)
    assert "'type': 'string'" in kinds and "TaleQuestion" in kinds and "PromptValue" in kinds
    assert tale.get_input_jsonschema()["$defs"]["TaleQuestion"]["required"] == ["question"]
    assert tale.get_output_jsonschema()["title"] == "AIMessage"


# -- callbacks ------------------------------------------------------------------------------------


def test_estimator_and_answer_are_child_runs(tale):
    runs = Runs()
    tale.invoke(Q, config={"callbacks": [runs], "tags": ["mine"], "run_name": "tale-call"})
    [root] = [e for e in runs.events if e[0] == "chain"]
    assert root[4] == "tale-call" and root[2] is None
    [estimate], [answer] = runs.chats("tale:estimate"), runs.chats("tale:answer")
    assert estimate[2] == root[1] and answer[2] == root[1]
    assert "mine" in estimate[3] and "nostream" in estimate[3] and "nostream" not in answer[3]
    order = [e[0] + "".join("/" + t for t in e[3] if t.startswith("tale:")) for e in runs.events]
    assert order == ["chain", "chat/tale:estimate", "end", "chat/tale:answer", "end"]  # estimate ends first


def test_batch_child_runs_belong_to_their_input(tale):
    runs = Runs()
    tale.batch([Q, "What is 7?"], config={"callbacks": [runs]})
    roots = runs.tale_runs()
    assert len(roots) == 2
    for tag in ("tale:estimate", "tale:answer"):
        assert sorted(map(str, (e[2] for e in runs.chats(tag)))) == sorted(map(str, roots))


# -- batch and async ------------------------------------------------------------------------------


def test_batch_is_one_estimator_call_and_one_answer_call(est, sevens, tale):
    est_calls, answer_calls = spy(est[0]), spy(sevens[0])
    replies = tale.batch([Q, "What is 7?", {"question": "And 8?", "budget": 40}])
    assert [len(c["prompts"]) for c in est_calls] == [2]
    assert [len(c["prompts"]) for c in answer_calls] == [3]
    assert [r.response_metadata["tale"]["budget_source"] for r in replies] == ["zero-shot:forty"] * 2 + ["caller"]
    assert answer_calls[0]["prompts"][2][0]["content"] == question_prompt("And 8?", budget=40, format="chat")


def test_batch_groups_by_cap_and_keeps_order(sevens, tale):
    answer_calls = spy(sevens[0])
    replies = tale.batch([{"question": Q, "budget": 20}, Q, {"question": Q, "budget": 20}])
    assert sorted(len(c["prompts"]) for c in answer_calls) == [1, 2]
    assert [r.usage_metadata["output_tokens"] for r in replies] == [28, 48, 28]


def test_batch_bad_input_fails_alone_or_fast(est, sevens, tale):
    replies = tale.batch([Q, {"nope": 1}], return_exceptions=True)
    assert isinstance(replies[0], AIMessage) and isinstance(replies[1], ValueError)
    est_calls, answer_calls = spy(est[0]), spy(sevens[0])
    with pytest.raises(ValueError, match="'question'"):
        tale.batch([Q, {"nope": 1}])
    assert est_calls == [] and answer_calls == []


async def test_abatch_and_ainvoke_match_sync(est, sevens, tale):
    est_calls, answer_calls = spy(est[0]), spy(sevens[0])
    replies = await tale.abatch([Q, "What is 7?"])
    assert [len(c["prompts"]) for c in est_calls] == [2] and [len(c["prompts"]) for c in answer_calls] == [2]
    single = await tale.ainvoke(Q)
    assert single.content == replies[0].content == tale.invoke(Q).content
    assert single.response_metadata["tale"] == replies[0].response_metadata["tale"]


async def test_concurrent_ainvoke_calls(tale):
    replies = await asyncio.gather(*(tale.ainvoke(f"Question {i}?") for i in range(4)))
    assert all(r.response_metadata["tale"]["budget"] == 40 for r in replies)


# -- streaming ------------------------------------------------------------------------------------


def _check_stream(chunks: list[AIMessageChunk], reference: AIMessage) -> None:
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    head, *body, tail = chunks
    assert head.content == "" and head.response_metadata["tale"]["budget"] == 40  # the estimate comes first
    assert "total_usage" not in head.response_metadata["tale"]
    assert "".join(c.content for c in body) == reference.content
    assert tail.response_metadata["tale"]["total_usage"] == reference.response_metadata["tale"]["total_usage"]
    merged = head
    for c in [*body, tail]:
        merged = merged + c
    assert merged.response_metadata["tale"] == reference.response_metadata["tale"]
    assert merged.usage_metadata == reference.usage_metadata


def test_stream_budget_first_then_answer(est, sevens):
    tale = TaleRunnable(sevens[1], estimator=est[1], estimator_max_tokens=2, answer_reserve=4)  # streams a repair too
    chunks = list(tale.stream(Q))
    reference = tale.invoke(Q)
    assert reference.response_metadata["tale"]["repaired"]
    _check_stream(chunks, reference)
    assert "\n\n" in [c.content for c in chunks]


async def test_astream_budget_first_then_answer(tale):
    chunks = [c async for c in tale.astream(Q)]
    _check_stream(chunks, await tale.ainvoke(Q))


def test_stream_through_an_lcel_chain(tale):
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | tale | StrOutputParser()
    pieces = list(chain.stream({"question": Q}))
    assert len(pieces) > 3 and "".join(pieces) == " 7" * 48


async def test_astream_events_show_both_calls_in_order(tale):
    events = [e async for e in tale.astream_events(Q, version="v2")]
    kinds = [(e["event"], tuple(t for t in e["tags"] if t.startswith("tale:"))) for e in events]
    start_est = kinds.index(("on_chat_model_start", ("tale:estimate",)))
    end_est = kinds.index(("on_chat_model_end", ("tale:estimate",)))
    first_token = kinds.index(("on_chat_model_stream", ("tale:answer",)))
    assert kinds[0] == ("on_chain_start", ()) and start_est < end_est < first_token
    assert kinds[-1] == ("on_chain_end", ())
    tale_chunks = [e for e in events if e["event"] == "on_chain_stream"]
    assert tale_chunks[0]["data"]["chunk"].response_metadata["tale"]["budget"] == 40


# -- the embedded model ---------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_lcel_chain_invoke_and_stream(embedded_generator):
    llm = ChatTaleHF.from_generator(embedded_generator)
    policy = BudgetPolicy(min_budget=16, max_budget=32, fallback_budget=24)
    tale = TaleRunnable(llm, policy=policy, answer_reserve=8, estimator_max_tokens=16)
    prompt = ChatPromptTemplate.from_messages([("system", "You are a careful assistant."), ("human", "{question}")])
    question = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    runs = Runs()
    reply = (prompt | tale).invoke({"question": question}, config={"callbacks": [runs]})
    t = reply.response_metadata["tale"]
    assert 16 <= t["budget"] <= 32 and t["max_tokens"] == t["budget"] + 8
    assert t["estimator"].startswith("zero-shot:") and t["estimator_usage"]["input_tokens"] > 0
    assert reply.usage_metadata["output_tokens"] <= t["max_tokens"] + (8 if t["repaired"] else 0)
    assert isinstance(reply.content, str) and reply.content.strip()
    assert len(runs.chats("tale:estimate")) == 1 and len(runs.chats("tale:answer")) == 1
    # The same budget again, streamed: greedy decoding gives the same text, the budget chunk first.
    fixed = TaleRunnable(llm, budget=t["budget"], policy=policy, answer_reserve=8)
    chunks = list((prompt | fixed).stream({"question": question}))
    assert chunks[0].response_metadata["tale"]["budget"] == t["budget"]
    assert "".join(c.content for c in chunks) == reply.content


@pytest.mark.slow
async def test_embedded_abatch(embedded_generator):
    llm = ChatTaleHF.from_generator(embedded_generator)
    calls = spy(embedded_generator)
    tale = TaleRunnable(llm, budget=16, answer_reserve=4, repair=False)
    replies = await tale.abatch(["What is 2 + 2?", "What is 3 + 5?"])
    assert [len(c["prompts"]) for c in calls] == [2]
    assert all(0 < r.usage_metadata["output_tokens"] <= 20 and r.content for r in replies)
