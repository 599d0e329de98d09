"""`TaleRunnable` and `TaleBudgetMiddleware` on this package's own `ChatTaleHF`: when the chat template has
a thinking block, the budget goes to the local backend's thinking knob (``thinking_budget`` and
``max_tokens`` per call) instead of the prompt.

The model is a tiny scripted thinker (tests/tiny_models.py ``build_chain_model``) that opens a block and
thinks `` 7`` until the block is closed for it, then answers ``[[40]]``: its reasoning tokens are exactly
the thinking budget plus the two markers. What the model received is read on the generator's own
``generate`` (``spy``).
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("torch")

from langchain_core.messages import AIMessage, HumanMessage  # noqa: E402
from tiny_models import build_chain_model, build_thinking_tokenizer, spy  # noqa: E402

from tale_integrations.backends.budget_enforcer import MAX_PARTIAL_TOKENS  # noqa: E402
from tale_integrations.backends.hf import HFGenerator  # noqa: E402
from tale_integrations.backends.hf.settings import ThinkingEnforcement  # noqa: E402
from tale_integrations.core.errors import TaleValueError  # noqa: E402
from tale_integrations.core.prompts import question_prompt  # noqa: E402
from tale_integrations.core.thinking import ThinkingPolicy  # noqa: E402
from tale_integrations.langchain import ChatTaleHF, TaleRunnable  # noqa: E402

Q = "What is 3 + 4?"
PLAIN = [[{"role": "user", "content": question_prompt(Q, format="chat")}]]  # no budget in the prompt
RESERVE = ThinkingPolicy().answer_reserve
MARKERS = 2  # <think> and </think>, one token each, both written by the model
#: The local backend's own answer reserve (`ThinkingEnforcement.answer_reserve`) in these tests.
LOCAL = 8
#: What a thinking budget needs above itself in the cap: both markers, a cut character, the local reserve.
LEAST = MARKERS + MAX_PARTIAL_TOKENS + LOCAL


@pytest.fixture(scope="module")
def thinker() -> tuple[HFGenerator, list[dict[str, Any]]]:
    tok = build_thinking_tokenizer()
    chain = {"Ċ": "<think>", "<think>": " 7", "</think>": "[[40]]", "[[40]]": tok.eos_token}
    model = build_chain_model(tok, chain, default=" 7", max_positions=1024)  # room for the tool prompt
    gen = HFGenerator.from_model(model, tok, model_name="thinker", thinking=ThinkingEnforcement(answer_reserve=LOCAL))
    return gen, spy(gen)


def tale(message: AIMessage) -> dict[str, Any]:
    return message.response_metadata["tale"]


def sent(calls: list[dict[str, Any]]) -> tuple[Any, Any, Any]:
    """The last call's prompts, thinking budgets and output cap."""
    return calls[-1]["prompts"], calls[-1].get("thinking_budgets"), calls[-1]["max_tokens"]


def test_the_budget_goes_to_the_local_knob_not_the_prompt(thinker):
    gen, calls = thinker
    assert gen.thinking_reserve == LEAST
    out = TaleRunnable(ChatTaleHF.from_generator(gen), budget=5).invoke(Q)
    assert sent(calls) == (PLAIN, [5], 5 + RESERVE)
    assert out.content == "[[40]]" and out.additional_kwargs["reasoning_content"] == "7 7 7 7 7"
    assert out.usage_metadata["output_token_details"]["reasoning"] == 5 + MARKERS
    meta = tale(out)
    assert (meta["budget"], meta["budget_via"], meta["max_tokens"]) == (5, "thinking", 5 + RESERVE)
    assert meta["thinking"]["fields"] == {"thinking_budget": 5, "max_tokens": 5 + RESERVE}
    assert (meta["thinking"]["engine"], meta["thinking"]["applied"], meta["thinking"]["adjusted"]) == ("hf", True, None)
    for declared in ("hf", True):  # declaring it gives the same knob
        again = TaleRunnable(ChatTaleHF.from_generator(gen), budget=5, thinking=declared).invoke(Q)
        assert tale(again)["thinking"] == meta["thinking"] and sent(calls) == (PLAIN, [5], 5 + RESERVE)


async def test_async_batch_and_stream_carry_the_knob(thinker):
    gen, calls = thinker
    runnable = TaleRunnable(ChatTaleHF.from_generator(gen))
    out = await runnable.ainvoke({"question": Q, "budget": 3})
    assert out.usage_metadata["output_token_details"]["reasoning"] == 3 + MARKERS and sent(calls)[1] == [3]
    outs = await runnable.abatch([{"question": Q, "budget": 2}, {"question": Q, "budget": 4}])
    assert [o.usage_metadata["output_token_details"]["reasoning"] for o in outs] == [2 + MARKERS, 4 + MARKERS]
    assert [tale(o)["thinking"]["budget"] for o in outs] == [2, 4]
    chunks = list(runnable.stream({"question": Q, "budget": 1}))  # through the generator's own stream
    assert chunks[0].response_metadata["tale"]["budget_via"] == "thinking"
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    assert total.additional_kwargs["reasoning_content"] == "7" and total.content == "[[40]]"
    assert total.usage_metadata["output_token_details"]["reasoning"] == 1 + MARKERS


def test_the_answer_reserve_is_at_least_the_backends_own(thinker):
    gen, calls = thinker
    policy = ThinkingPolicy(answer_reserve=2)
    out = TaleRunnable(ChatTaleHF.from_generator(gen), budget=5, thinking_policy=policy).invoke(Q)
    assert sent(calls) == (PLAIN, [5], 5 + LEAST)  # raised from 2: the markers and the local reserve fit
    assert out.usage_metadata["output_token_details"]["reasoning"] == 5 + MARKERS and out.content == "[[40]]"


def test_a_small_cap_lowers_the_knob_then_refuses_it(thinker):
    gen, calls = thinker
    small = ThinkingPolicy(answer_reserve=2)
    out = TaleRunnable(ChatTaleHF.from_generator(gen, max_tokens=30), budget=50, thinking_policy=small).invoke(Q)
    meta = tale(out)["thinking"]
    assert (meta["budget"], meta["max_tokens"]) == (30 - LEAST, 30) and sent(calls) == (PLAIN, [30 - LEAST], 30)
    assert meta["adjusted"] == f"lowered to fit the output limit (30) with the answer reserve ({LEAST})"
    assert out.usage_metadata["output_token_details"]["reasoning"] == 30 - LEAST + MARKERS and out.content == "[[40]]"
    # one token above the least the backend needs still thinks one token
    edge = TaleRunnable(ChatTaleHF.from_generator(gen, max_tokens=LEAST + 1), budget=50, thinking_policy=small)
    assert tale(edge.invoke(Q))["thinking"]["budget"] == 1 and sent(calls)[1] == [1]
    # at the least, no room is left to think: the prompt carries the budget (held to the model's own cap)
    refused = TaleRunnable(ChatTaleHF.from_generator(gen, max_tokens=LEAST), budget=50, thinking_policy=small,
                           repair=False).invoke(Q)
    meta = tale(refused)
    assert (meta["budget_via"], meta["thinking"]["applied"], meta["thinking"]["fields"]) == ("prompt", False, {})
    assert meta["thinking"]["adjusted"] == (f"the output limit ({LEAST}) cannot hold ChatTaleHF's thinking block and "
                                            f"answer reserve ({LEAST} tokens) beside a thinking budget; the budget "
                                            "goes into the prompt")
    assert meta["budget"] == LEAST and meta["max_tokens"] is None  # no hard cap: the thinking would spend it
    assert sent(calls) == ([[{"role": "user", "content": question_prompt(Q, budget=LEAST, format="chat")}]], None,
                           LEAST)  # the model's own cap


def test_thinking_false_forces_the_prompt(thinker):
    gen, calls = thinker
    out = TaleRunnable(ChatTaleHF.from_generator(gen, max_tokens=20), budget=5, thinking=False, repair=False).invoke(Q)
    # no hard cap of budget + reserve either (only the model's own): the model thinks, its thinking would spend it
    assert sent(calls) == ([[{"role": "user", "content": question_prompt(Q, budget=5, format="chat")}]], None, 20)
    assert (tale(out)["budget_via"], tale(out)["thinking"], tale(out)["max_tokens"]) == ("prompt", None, None)


def test_a_model_without_a_thinking_block_keeps_the_prompt(tiny_model_dir):
    chat = ChatTaleHF(model_path=str(tiny_model_dir), device="cpu", max_tokens=80)
    runnable = TaleRunnable(chat, budget=5, repair=False)
    declared = TaleRunnable(chat, budget=5, thinking=True)
    assert not chat.generator.is_loaded  # the chat template is read on the first call, not here
    calls = spy(chat.generator)
    out = runnable.invoke(Q)
    assert sent(calls) == ([[{"role": "user", "content": question_prompt(Q, budget=5, format="chat")}]], None, 5 + 64)
    assert (tale(out)["budget_via"], tale(out)["thinking"], tale(out)["max_tokens"]) == ("prompt", None, 5 + 64)
    with pytest.raises(TaleValueError, match="has no thinking block"):
        declared.invoke(Q)
    with pytest.raises(ValueError, match="ChatTaleHF cannot carry the vllm knob"):
        TaleRunnable(chat, thinking="vllm")


# -- TaleBudgetMiddleware in a real agent loop --------------------------------------------------------------


def test_agent_middleware_sends_the_budget_to_the_local_knob(thinker):
    pytest.importorskip("langchain.agents")
    from langchain.agents import create_agent
    from langchain_core.tools import tool

    from tale_integrations.langchain import TaleBudgetMiddleware

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    gen, calls = thinker
    chat = ChatTaleHF.from_generator(gen)
    state = create_agent(chat, middleware=[TaleBudgetMiddleware(budget=5)]).invoke({"messages": [HumanMessage(Q)]})
    assert sent(calls) == (PLAIN, [5], 5 + RESERVE) and state["messages"][0].content == Q
    [record] = state["tale_budgets"]
    assert (record["budget_via"], record["max_tokens"], record["cap_skipped"]) == ("thinking", 5 + RESERVE, None)
    assert record["usage"]["output_token_details"]["reasoning"] == 5 + MARKERS
    # with tools: the thinking budget still holds, and no cap that could cut a tool call's arguments
    state = create_agent(chat, tools=[add], middleware=[TaleBudgetMiddleware(budget=5)]).invoke(
        {"messages": [HumanMessage(Q)]})
    prompts, budgets, cap = sent(calls)
    assert (prompts[0][-1], budgets, cap) == (PLAIN[0][0], [5], None)
    [record] = state["tale_budgets"]
    assert (record["budget_via"], record["thinking"]["fields"], record["max_tokens"]) == \
        ("thinking", {"thinking_budget": 5}, None)
    assert record["cap_skipped"].startswith("the request carries tools")
    assert state["messages"][-1].usage_metadata["output_token_details"]["reasoning"] == 5 + MARKERS
