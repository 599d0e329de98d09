"""Thinking models in `TaleRunnable` and `TaleBudgetMiddleware`: the budget through each vendor class's
own knob (ChatOpenAI, ChatAnthropic, ChatGoogleGenerativeAI, ChatOllama), as the class's request
building writes it, captured on the SDK's transport (tests/vendor_mocks.py; no network).

The agent tests run a real ``create_agent`` loop on a real ``ChatOpenAI`` whose server is scripted to
answer with a tool call, then a final answer: the tool really runs in the agent's tool node.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain_openai")

from langchain_core.messages import AIMessage, HumanMessage  # noqa: E402
from vendor_mocks import (  # noqa: E402
    anthropic_reply,
    chat_anthropic,
    chat_gemini,
    chat_ollama,
    chat_openai,
    openai_reply,
)

from tale_integrations.core.prompts import question_prompt  # noqa: E402
from tale_integrations.core.thinking import ThinkingModel, ThinkingPolicy  # noqa: E402
from tale_integrations.langchain import TaleRunnable  # noqa: E402
from tale_integrations.langchain._thinking import thinking_target  # noqa: E402

Q = "What is 2 + 3?"
PLAIN = question_prompt(Q, format="chat")  # the question with no budget in it
RESERVE = ThinkingPolicy().answer_reserve


def user_text(body: dict[str, Any]) -> str:
    messages = body.get("messages") or body.get("contents")
    last = messages[-1]
    content = last.get("content", last.get("parts"))
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def tale(message: AIMessage) -> dict[str, Any]:
    return message.response_metadata["tale"]


# -- TaleRunnable, one vendor class each ------------------------------------------------------------------


def test_chat_openai_reasoning_model_gets_reasoning_effort():
    llm, capture = chat_openai("o4-mini")
    out = TaleRunnable(llm, budget=300).invoke(Q)
    body = capture.body
    assert body["reasoning_effort"] == "low" and body["max_completion_tokens"] == 2048 + RESERVE
    assert "max_tokens" not in body and user_text(body) == PLAIN
    meta = tale(out)
    assert (meta["budget"], meta["budget_via"], meta["max_tokens"]) == (300, "thinking", 2048 + RESERVE)
    assert meta["thinking"]["fields"] == {"reasoning_effort": "low", "max_completion_tokens": 2048 + RESERVE}
    assert meta["thinking"]["family"] == "o-series" and out.usage_metadata["output_token_details"]["reasoning"] == 4


async def test_chat_openai_async_and_batch_group_by_knob():
    llm, capture = chat_openai("gpt-5-mini")
    outs = await TaleRunnable(llm).abatch([{"question": Q, "budget": 100}, {"question": Q, "budget": 5000}])
    assert sorted(b["reasoning_effort"] for b in capture.bodies) == ["medium", "minimal"]
    assert [tale(o)["thinking"]["level"] for o in outs] == ["minimal", "medium"]


def test_chat_openai_on_vllm_is_declared_and_keeps_extra_body():
    llm, capture = chat_openai("Qwen/Qwen3-8B", base_url="http://vllm.invalid/v1",
                               extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    assert thinking_target(llm) is None  # a name alone never picks the server
    out = TaleRunnable(llm, budget=300, thinking="vllm").invoke(Q)
    body = capture.body
    assert body["thinking_token_budget"] == 300 and body["chat_template_kwargs"] == {"enable_thinking": True}
    assert body["max_completion_tokens"] == 300 + RESERVE and user_text(body) == PLAIN
    assert tale(out)["thinking"]["engine"] == "vllm" and "--reasoning-parser" in tale(out)["thinking"]["note"]
    with pytest.raises(ValueError, match="name the server"):  # pydantic wraps the TaleValueError
        TaleRunnable(llm, thinking=True)


def test_non_thinking_model_keeps_the_prompt_trigger():
    llm, capture = chat_openai("gpt-4o-mini")
    out = TaleRunnable(llm, budget=40).invoke(Q)
    assert user_text(capture.body) == question_prompt(Q, budget=40, format="chat")
    assert capture.body["max_completion_tokens"] == 40 + 64 and "reasoning_effort" not in capture.body
    assert (tale(out)["budget_via"], tale(out)["thinking"]) == ("prompt", None)


def test_thinking_false_keeps_the_prompt_on_a_reasoning_model():
    llm, capture = chat_openai("o3")
    out = TaleRunnable(llm, budget=40, thinking=False).invoke(Q)
    assert "reasoning_effort" not in capture.body and tale(out)["budget_via"] == "prompt"
    # and no hard cap of budget + reserve: it would be spent on thinking before any answer
    assert "max_completion_tokens" not in capture.body and tale(out)["max_tokens"] is None


@pytest.mark.filterwarnings("ignore:Using Claude with:UserWarning")
def test_chat_anthropic_budget_tokens_raised_to_its_minimum():
    pytest.importorskip("langchain_anthropic")
    llm, capture = chat_anthropic("claude-sonnet-4-5")
    out = TaleRunnable(llm, budget=300).invoke(Q)
    body = capture.body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024} and body["max_tokens"] == 1024 + RESERVE
    assert user_text(body) == PLAIN and "output_config" not in body
    assert tale(out)["thinking"]["adjusted"] == "raised to the engine's minimum (1024)"
    assert out.content[-1]["text"] == "5"  # the thinking block stays in the content, as ChatAnthropic returns it


def test_chat_anthropic_adaptive_effort_and_the_models_own_limit():
    pytest.importorskip("langchain_anthropic")
    llm, capture = chat_anthropic("claude-opus-4-7", max_tokens=2500)
    out = TaleRunnable(llm, budget=5000).invoke(Q)
    body = capture.body
    assert body["thinking"] == {"type": "adaptive"} and body["output_config"] == {"effort": "medium"}
    assert body["max_tokens"] == 2500  # never above the cap set on the model
    assert "output cap lowered to the output limit (2500)" in tale(out)["thinking"]["adjusted"]


def test_chat_anthropic_with_its_own_thinking_setting_keeps_the_prompt():
    pytest.importorskip("langchain_anthropic")
    llm, capture = chat_anthropic("claude-sonnet-4-5", thinking={"type": "enabled", "budget_tokens": 2000},
                                  max_tokens=4000)
    out = TaleRunnable(llm, budget=40).invoke(Q)
    assert capture.body["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    # no hard cap on a model that thinks: budget + reserve would cut its thinking (and fall below budget_tokens)
    assert tale(out)["budget_via"] == "prompt" and capture.body["max_tokens"] == 4000
    assert tale(out)["max_tokens"] is None
    with pytest.raises(ValueError, match="drop it from the model"):
        TaleRunnable(llm, budget=40, thinking=True)


def test_chat_gemini_budget_and_level():
    pytest.importorskip("langchain_google_genai")
    llm, capture = chat_gemini("gemini-2.5-flash-lite")
    out = TaleRunnable(llm, budget=300).invoke(Q)
    config = capture.body["generationConfig"]
    assert config["thinkingConfig"] == {"thinking_budget": 512} and config["maxOutputTokens"] == 512 + RESERVE
    assert user_text(capture.body) == PLAIN and out.usage_metadata["output_token_details"]["reasoning"] == 4
    llm, capture = chat_gemini("gemini-3-pro-preview", max_output_tokens=4000)
    TaleRunnable(llm, budget=300).invoke(Q)
    config = capture.body["generationConfig"]
    assert config["thinkingConfig"] == {"thinking_level": "LOW"} and config["maxOutputTokens"] == 3072


def test_chat_ollama_think_level_and_its_options():
    pytest.importorskip("langchain_ollama")
    llm, capture = chat_ollama("gpt-oss:20b", temperature=0.5)
    out = TaleRunnable(llm, budget=300).invoke(Q)
    body = capture.body
    assert body["think"] == "low" and body["options"] == {"temperature": 0.5, "num_predict": 2048 + RESERVE}
    assert out.additional_kwargs["reasoning_content"] == "2+3"
    llm, capture = chat_ollama("qwen3:8b")
    TaleRunnable(llm, budget=300).invoke(Q)
    assert capture.body["think"] is True and capture.body["options"] == {"num_predict": 300 + RESERVE}
    llm, capture = chat_ollama("llama3.2")
    assert tale(TaleRunnable(llm, budget=30).invoke(Q))["budget_via"] == "prompt"


def test_declared_knob_on_a_class_that_cannot_carry_it():
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel

    fake = GenericFakeChatModel(messages=iter([AIMessage("5")]))
    with pytest.raises(ValueError, match="GenericFakeChatModel is none of them"):
        TaleRunnable(fake, thinking="vllm")
    llm, _ = chat_openai("o3")
    with pytest.raises(ValueError, match="cannot carry the anthropic knob"):
        TaleRunnable(llm, thinking="anthropic")
    custom = ThinkingModel(engine="openai", family="mine", level_field="reasoning_effort", levels=("high",),
                           cap_field="max_completion_tokens")
    llm, capture = chat_openai("my-deployment")
    TaleRunnable(llm, budget=10, thinking=custom).invoke(Q)
    assert capture.body["reasoning_effort"] == "high"


def test_streaming_carries_the_knob():
    llm, capture = chat_openai("o4-mini")
    chunks = list(TaleRunnable(llm, budget=300).stream(Q))
    assert capture.body["reasoning_effort"] == "low" and capture.body["stream"] is True
    assert chunks[0].response_metadata["tale"]["budget_via"] == "thinking"


def test_repair_of_a_thinking_answer_carries_the_knob():
    cut = openai_reply("The sum", reasoning=4)

    def cut_reply(body: dict[str, Any]) -> dict[str, Any]:
        out = cut(body)
        out["choices"][0]["finish_reason"] = "length"
        return out

    llm, capture = chat_openai("o4-mini", cut_reply, openai_reply("[[5]]"))
    out = TaleRunnable(llm, budget=300).invoke(Q)
    answer, repair = capture.bodies
    assert repair["reasoning_effort"] == answer["reasoning_effort"] == "low"
    assert repair["max_completion_tokens"] == answer["max_completion_tokens"] and tale(out)["repaired"] is True


# -- TaleBudgetMiddleware in a real agent loop --------------------------------------------------------------


@pytest.fixture()
def add_tool():
    from langchain_core.tools import tool

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    return add


def agent_run(llm: Any, add_tool: Any, **middleware: Any) -> dict[str, Any]:
    pytest.importorskip("langchain.agents")
    from langchain.agents import create_agent

    from tale_integrations.langchain import TaleBudgetMiddleware

    agent = create_agent(llm, tools=[add_tool], middleware=[TaleBudgetMiddleware(**middleware)])
    return agent.invoke({"messages": [HumanMessage(Q)]})


def test_agent_on_a_thinking_model_sends_no_cap_with_tools(add_tool):
    llm, capture = chat_openai("o4-mini", openai_reply(tool_call={"name": "add", "args": {"a": 2, "b": 3}}),
                               openai_reply("The sum is 5."))
    state = agent_run(llm, add_tool, budget=300, hard_cap=True)
    assert state["messages"][-1].content == "The sum is 5." and state["messages"][2].content == "5"
    first, second = capture.bodies
    for body in (first, second):  # both calls carry tools: the effort, never a cap that could cut the JSON
        assert body["tools"] and body["reasoning_effort"] == "low"
        assert "max_completion_tokens" not in body and "max_tokens" not in body
        assert body["messages"][0]["content"] == PLAIN
    records = state["tale_budgets"]
    assert [(r["budget"], r["budget_via"], r["max_tokens"], r["estimated"]) for r in records] == \
        [(300, "thinking", None, False)] * 2
    assert all(r["cap_skipped"] == "the request carries tools: a cap could cut a tool call's arguments"
               for r in records)
    assert records[0]["thinking"]["adjusted"] == "no output cap: the request may emit a tool call"
    assert state["messages"][0].content == Q  # the saved conversation keeps the user's words


async def test_agent_on_an_anthropic_model_raises_the_cap_it_requires(add_tool):
    pytest.importorskip("langchain_anthropic")
    import json

    def tool_use(body: dict[str, Any]) -> dict[str, Any]:
        return {"id": "m", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "tool_use", "id": "t1", "name": "add", "input": {"a": 2, "b": 3}}],
                "stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 9}}

    llm, capture = chat_anthropic("claude-opus-4-7", tool_use, anthropic_reply("The sum is 5."), max_tokens=30000)
    llm.__dict__["_async_client"] = _anthropic_async(capture)
    pytest.importorskip("langchain.agents")
    from langchain.agents import create_agent

    from tale_integrations.langchain import TaleBudgetMiddleware

    agent = create_agent(llm, tools=[add_tool], middleware=[TaleBudgetMiddleware(budget=300)])
    state = await agent.ainvoke({"messages": [HumanMessage(Q)]})
    assert json.dumps(capture.bodies[0]["tools"]) and state["messages"][-1].text == "The sum is 5."
    for body in capture.bodies:  # Anthropic requires max_tokens: the model's own limit, not budget + reserve
        assert body["thinking"] == {"type": "adaptive"} and body["output_config"] == {"effort": "low"}
        assert body["max_tokens"] == 30000
    assert "output cap raised to the output limit" in state["tale_budgets"][0]["thinking"]["adjusted"]


def _anthropic_async(capture: Any) -> Any:
    import anthropic

    return anthropic.AsyncClient(api_key="k", http_client=capture.async_client(), max_retries=0, timeout=60)


def test_agent_prompt_trigger_with_tools_skips_the_hard_cap(add_tool):
    llm, capture = chat_openai("gpt-4o-mini", openai_reply(tool_call={"name": "add", "args": {"a": 2, "b": 3}}),
                               openai_reply("The sum is 5."))
    state = agent_run(llm, add_tool, budget=40, hard_cap=True)
    for body in capture.bodies:
        assert "max_completion_tokens" not in body and "max_tokens" not in body
        assert body["messages"][0]["content"] == question_prompt(Q, budget=40, format="chat")
    assert [(r["budget_via"], r["max_tokens"]) for r in state["tale_budgets"]] == [("prompt", None)] * 2
    assert state["tale_budgets"][0]["cap_skipped"].startswith("the request carries tools")


def test_agent_without_tools_caps_the_thinking_answer():
    pytest.importorskip("langchain.agents")
    from langchain.agents import create_agent

    from tale_integrations.langchain import TaleBudgetMiddleware

    llm, capture = chat_openai("o4-mini", openai_reply("5"))
    state = create_agent(llm, middleware=[TaleBudgetMiddleware(budget=300)]).invoke({"messages": [HumanMessage(Q)]})
    assert capture.body["max_completion_tokens"] == 2048 + RESERVE and capture.body["reasoning_effort"] == "low"
    [record] = state["tale_budgets"]
    assert (record["max_tokens"], record["cap_skipped"], record["budget_via"]) == (2048 + RESERVE, None, "thinking")


def test_forced_tool_call_gets_no_budget():
    pytest.importorskip("langchain.agents")
    from langchain.agents.middleware import ModelRequest, ModelResponse

    from tale_integrations.langchain import TaleBudgetMiddleware

    llm, _ = chat_openai("o4-mini")
    seen: list[Any] = []

    def handler(request: Any) -> Any:
        seen.append(request)
        return ModelResponse(result=[AIMessage("ok")])

    messages = [HumanMessage(Q)]
    for choice in ("any", "required", {"type": "function", "function": {"name": "add"}}):
        request = ModelRequest(model=llm, messages=messages, tool_choice=choice, tools=[],
                               state={"messages": messages}, runtime=None)
        result = TaleBudgetMiddleware(budget=300).wrap_model_call(request, handler)
        assert isinstance(result, ModelResponse) and seen[-1] is request  # untouched, no record
    request = ModelRequest(model=llm, messages=messages, tool_choice="auto", tools=[], state={"messages": messages},
                           runtime=None)
    TaleBudgetMiddleware(budget=300).wrap_model_call(request, handler)
    assert seen[-1].model_settings["reasoning_effort"] == "low"
