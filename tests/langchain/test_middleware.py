"""`TaleBudgetMiddleware` in real `create_agent` graphs.

Which models are real: the budget estimator is always a real `ChatTaleHF` (a tiny scripted model
that answers ``[[40]]``), and the no-tool agent runs entirely on a real `ChatTaleHF`. The agent's
model in the tool-calling tests is langchain_core's `GenericFakeChatModel`, scripted to emit one
tool call and then a final answer: `ChatTaleHF` cannot emit tool calls and no other tool-calling
model is reachable offline. What those tests check is the middleware's pure logic (the request
the model saw, what the saved state holds, when the estimator runs), which does not depend on who
wrote the scripted replies; the tool itself really runs in the agent's tool node.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain")
pytest.importorskip("torch")

from langchain.agents import create_agent  # noqa: E402
from langchain.agents.middleware import ExtendedModelResponse, ModelRequest, ModelResponse  # noqa: E402
from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from tiny_models import spy  # noqa: E402

from tale_integrations.core.budget import BudgetPolicy  # noqa: E402
from tale_integrations.core.estimators import EstimatorError, FixedEstimator  # noqa: E402
from tale_integrations.core.prompts import question_prompt  # noqa: E402
from tale_integrations.langchain import ChatTaleHF, TaleAgentState, TaleBudgetMiddleware  # noqa: E402

Q = "What is 2 + 3?"
BUDGETED = question_prompt(Q, budget=40, format="chat")


class ToolCallingFake(GenericFakeChatModel):
    """Scripted replies; tools are accepted (the script already holds the tool call)."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ToolCallingFake:
        return self


class SeenByModel(BaseCallbackHandler):
    """The message lists the agent's model received (estimator calls left out)."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []

    def on_chat_model_start(self, serialized, messages, *, tags=None, **kwargs):
        if "tale:estimate" not in (tags or []):
            self.calls.append(messages[0])


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def tool_then_answer(*answers: str) -> ToolCallingFake:
    script = []
    for i, answer in enumerate(answers):
        script += [AIMessage("", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": f"call-{i}"}]),
                   AIMessage(answer)]
    return ToolCallingFake(messages=iter(script))


@pytest.fixture()
def forty(scripted_generator):
    gen = scripted_generator("[[40]]", model_name="forty")
    return gen, ChatTaleHF.from_generator(gen)


def _no_budget_text(state: dict[str, Any]) -> None:
    """No saved user-side message carries budget text (a model's own reply may echo it)."""
    for message in state["messages"]:
        if isinstance(message, AIMessage):
            continue
        assert "use less than" not in str(message.content) and "step by step" not in str(message.content)


# -- in a real agent ------------------------------------------------------------------------------


def _check_tool_turn(state: dict[str, Any], seen: SeenByModel, estimator_calls: list[Any]) -> None:
    human, call, result, final = state["messages"]
    assert human.content == Q and call.tool_calls[0]["name"] == "add"
    assert isinstance(result, ToolMessage) and result.content == "5" and final.content == "The sum is 5."
    _no_budget_text(state)
    assert len(estimator_calls) == 1  # once for the turn, not again after the tool result
    first, second = seen.calls
    assert [m.content for m in first] == [BUDGETED]
    assert [m.content for m in second[:1]] == [BUDGETED] and isinstance(second[2], ToolMessage)
    assert first[0].id == human.id  # the rewritten message keeps the id
    records = state["tale_budgets"]
    summary = [(r["budget"], r["estimated"], r["message_id"]) for r in records]
    assert summary == [(40, True, human.id), (40, False, human.id)]
    assert records[0]["estimator"] == "zero-shot:forty" and records[0]["estimator_usage"]["output_tokens"] == 2
    assert records[1]["estimator_usage"] is None and records[0]["max_tokens"] is None


def test_tool_turn_budget_goes_to_the_request_only(forty):
    calls, seen = spy(forty[0]), SeenByModel()
    agent = create_agent(tool_then_answer("The sum is 5."), tools=[add],
                         middleware=[TaleBudgetMiddleware(forty[1], estimator_max_tokens=2)])
    state = agent.invoke({"messages": [HumanMessage(Q)]}, {"callbacks": [seen]})
    _check_tool_turn(state, seen, calls)


async def test_tool_turn_async(forty):
    calls, seen = spy(forty[0]), SeenByModel()
    agent = create_agent(tool_then_answer("The sum is 5."), tools=[add],
                         middleware=[TaleBudgetMiddleware(forty[1], estimator_max_tokens=2)])
    state = await agent.ainvoke({"messages": [HumanMessage(Q)]}, {"callbacks": [seen]})
    _check_tool_turn(state, seen, calls)


def test_each_new_human_turn_is_estimated_once(forty):
    calls, seen = spy(forty[0]), SeenByModel()
    agent = create_agent(tool_then_answer("The sum is 5.", "Still 5."), tools=[add], checkpointer=InMemorySaver(),
                         middleware=[TaleBudgetMiddleware(forty[1], estimator_max_tokens=2)],
                         system_prompt="You add numbers.")
    config = {"configurable": {"thread_id": "t1"}, "callbacks": [seen]}
    agent.invoke({"messages": [HumanMessage(Q)]}, config)
    state = agent.invoke({"messages": [HumanMessage("And again?")]}, config)
    assert len(calls) == 2
    _no_budget_text(state)
    third = seen.calls[2]  # the first model call of turn two
    assert isinstance(third[0], SystemMessage) and third[0].content == "You add numbers."
    assert third[1].content == Q  # an earlier turn is sent as the user wrote it
    assert third[-1].content == question_prompt("And again?", budget=40, format="chat")
    assert [r["estimated"] for r in state["tale_budgets"]] == [True, False, True, False]
    assert len({r["message_id"] for r in state["tale_budgets"]}) == 2


def test_estimator_reply_is_not_in_the_message_stream(forty):
    # (GenericFakeChatModel cannot stream a tool call, so this script answers at once.)
    model = ToolCallingFake(messages=iter([AIMessage("The sum is 5.")]))
    agent = create_agent(model, tools=[add], middleware=[TaleBudgetMiddleware(forty[1], estimator_max_tokens=2)])
    streamed = [chunk for chunk, _ in agent.stream({"messages": [HumanMessage(Q)]}, stream_mode="messages")]
    assert "".join(str(m.content) for m in streamed) == "The sum is 5."  # no "[[40]]" from the estimator


def test_agent_on_a_real_chat_model_with_hard_cap(forty):
    gen, chat = forty
    calls = spy(gen)
    middleware = TaleBudgetMiddleware(hard_cap=True, answer_reserve=8, estimator_max_tokens=2)
    state = create_agent(chat, middleware=[middleware]).invoke({"messages": [HumanMessage(Q)]})
    human, reply = state["messages"]
    assert human.content == Q and reply.content == "[[40]]" * 48
    assert calls[0]["prompts"][0][0]["content"] == "You are a helpful assistant."  # the zero-shot estimate
    assert calls[1]["prompts"][0] == [{"role": "user", "content": BUDGETED}] and calls[1]["max_tokens"] == 48
    [record] = state["tale_budgets"]
    assert (record["budget"], record["max_tokens"], record["estimator"]) == (40, 48, "zero-shot:forty")
    assert record["usage"] == reply.usage_metadata and record["usage"]["output_tokens"] == 48


# -- the decisions, on requests built by hand (pure logic) ----------------------------------------


def run(middleware: TaleBudgetMiddleware, messages: list[Any], model: Any, **fields: Any) -> tuple[Any, list[Any]]:
    seen: list[ModelRequest] = []

    def handler(request: ModelRequest) -> ModelResponse:
        seen.append(request)
        return ModelResponse(result=[AIMessage("ok", usage_metadata={"input_tokens": 3, "output_tokens": 1,
                                                                      "total_tokens": 4})])

    request = ModelRequest(model=model, messages=messages, state={"messages": messages, **fields}, runtime=None)
    return middleware.wrap_model_call(request, handler), seen


@pytest.fixture()
def chat(scripted_generator):
    return ChatTaleHF.from_generator(scripted_generator(" 7"))


def test_requests_without_a_question_pass_through(chat):
    middleware = TaleBudgetMiddleware(FixedEstimator(30))
    for messages in ([AIMessage("hi")], [HumanMessage("   ")]):
        result, [request] = run(middleware, messages, chat)
        assert isinstance(result, ModelResponse) and request.messages == messages


def test_mid_loop_without_a_record_passes_through(chat):
    messages = [HumanMessage(Q, id="h1"), AIMessage("", tool_calls=[{"name": "add", "args": {}, "id": "c"}]),
                ToolMessage("5", tool_call_id="c")]
    result, [request] = run(TaleBudgetMiddleware(FixedEstimator(30)), messages, chat)
    assert isinstance(result, ModelResponse) and request.messages == messages
    record = {"message_id": "h1", "budget": 25, "budget_raw": 25, "budget_source": "x", "budget_adjusted": None,
              "estimator": "x"}
    result, [request] = run(TaleBudgetMiddleware(FixedEstimator(30)), messages, chat, tale_budgets=[record])
    assert request.messages[0].content == question_prompt(Q, budget=25, format="chat")  # the turn's budget, reused
    assert result.command.update["tale_budgets"][0]["estimated"] is False


def test_fixed_budget_cap_and_settings(chat):
    messages = [HumanMessage(Q)]
    result, [request] = run(TaleBudgetMiddleware(budget=30, hard_cap=True, answer_reserve=10), messages, chat)
    assert isinstance(result, ExtendedModelResponse)
    assert request.model_settings == {"max_tokens": 40} and request.messages[0].content.endswith("30 tokens:\n")
    [record] = result.command.update["tale_budgets"]
    assert (record["budget_source"], record["estimator"], record["usage"]["total_tokens"]) == ("fixed", None, 4)
    assert messages[0].content == Q  # the caller's message objects are untouched
    capped = ChatTaleHF.from_generator(chat.generator, max_tokens=12)
    _, [request] = run(TaleBudgetMiddleware(budget=30, hard_cap=True), messages, capped)
    assert request.model_settings == {"max_tokens": 12}
    assert request.messages[0].content.endswith("12 tokens:\n")  # a budget never exceeds the model's own cap


def test_garbage_and_failing_estimators(chat):
    policy = BudgetPolicy(fallback_budget=50)
    result, [request] = run(TaleBudgetMiddleware(lambda q: "no idea", policy=policy), [HumanMessage(Q)], chat)
    [record] = result.command.update["tale_budgets"]
    assert (record["budget"], record["budget_source"], record["budget_adjusted"]) == (50, "fallback", "parse failed")

    def broken(question: str) -> int:
        raise ConnectionError("down")

    with pytest.raises(EstimatorError, match="on_estimator_error='fallback'"):
        run(TaleBudgetMiddleware(broken), [HumanMessage(Q)], chat)
    result, _ = run(TaleBudgetMiddleware(broken, on_estimator_error="fallback", policy=policy), [HumanMessage(Q)], chat)
    assert result.command.update["tale_budgets"][0]["budget_adjusted"] == "estimator failed"


def test_bad_settings_fail_at_construction():
    with pytest.raises(ValueError, match="budget"):
        TaleBudgetMiddleware(budget=0)
    with pytest.raises(ValueError, match="on_estimator_error"):
        TaleBudgetMiddleware(on_estimator_error="ignore")
    with pytest.raises(TypeError, match="budget=40"):
        TaleBudgetMiddleware(40)
    assert TaleBudgetMiddleware.state_schema is TaleAgentState


# -- the embedded model ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_embedded_agent_without_tools(embedded_generator):
    llm = ChatTaleHF.from_generator(embedded_generator)
    middleware = TaleBudgetMiddleware(policy=BudgetPolicy(min_budget=8, max_budget=24, fallback_budget=16),
                                      hard_cap=True, answer_reserve=8, estimator_max_tokens=16)
    seen = SeenByModel()
    agent = create_agent(llm, middleware=[middleware], system_prompt="Answer briefly.")
    state = await agent.ainvoke({"messages": [HumanMessage("What is 6 times 7?")]}, {"callbacks": [seen]})
    human, reply = state["messages"]
    _no_budget_text(state)
    [record] = state["tale_budgets"]
    assert 8 <= record["budget"] <= 24 and record["max_tokens"] == record["budget"] + 8
    assert record["estimated"] and record["estimator_usage"]["input_tokens"] > 0
    assert 0 < reply.usage_metadata["output_tokens"] <= record["max_tokens"] and record["usage"] == reply.usage_metadata
    [call] = seen.calls
    assert call[-1].content == question_prompt("What is 6 times 7?", budget=record["budget"], format="chat")
