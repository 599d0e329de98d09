"""`TaleHFLLM` as a function-calling LLM (``llama_index/_tools.py``): tools offered and parsed, tool results
rendered back, streams, the JSON-schema constraint, structured output, and FunctionAgent / ReActAgent runs.

Two kinds of real tiny models: a random llama held to a schema by the real constraint (whatever it
"wants" to write, the output must follow the schema), and the same llama made to write chosen replies
by a `RowRule` that forces their tokens (`Replies`), for exact assertions on parsing and agent loops.
"""

import json
from typing import Literal

import pytest

pytest.importorskip("llama_index.core")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from llama_index.core.agent.workflow import FunctionAgent, ReActAgent  # noqa: E402
from llama_index.core.base.llms.types import ToolCallBlock  # noqa: E402
from llama_index.core.llms import ChatMessage, MessageRole  # noqa: E402
from llama_index.core.llms.function_calling import FunctionCallingLLM  # noqa: E402
from llama_index.core.prompts import PromptTemplate  # noqa: E402
from llama_index.core.tools import FunctionTool  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from tale_integrations.backends.hf import HFGenerator  # noqa: E402
from tale_integrations.backends.row_rules import force_token  # noqa: E402
from tale_integrations.core.errors import SchemaError  # noqa: E402
from tale_integrations.core.schemas import schema_errors  # noqa: E402
from tale_integrations.core.tools import (  # noqa: E402
    ToolChoice,
    render_tool_call,
    structured_output_prompt,
    tool_prompt,
    tool_specs,
)
from tale_integrations.llama_index import TaleHFLLM  # noqa: E402
from tale_integrations.llama_index._llm_messages import to_backend_messages  # noqa: E402

CALL = '{"name": "multiply", "arguments": {"a": 6, "b": 7}}'


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def paint(color: Literal["red", "blue"], glossy: bool) -> str:
    """Paint the wall."""
    return f"painted {color}"


class Paint(BaseModel):
    """A paint job."""

    color: Literal["red", "blue"]
    glossy: bool


class Script:
    """A `RowRule` that makes its row write ``text`` and end the turn (a scripted reply)."""

    def __init__(self, tokenizer, text: str) -> None:
        self.ids = [*tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id]

    def apply(self, generated, scores) -> None:
        force_token(scores, self.ids[min(len(generated), len(self.ids) - 1)])


class Replies:
    """Makes ``generator`` write ``replies``, one per answer in order, and records each call's prompts
    and keyword arguments (its own rules, the constraint included, stay in place before the script)."""

    def __init__(self, monkeypatch, generator: HFGenerator, replies: list[str]) -> None:
        self.replies, self.calls = list(replies), []
        tokenizer = generator.tokenizer
        generate, stream, astream = generator.generate, generator.stream, generator.astream

        def script():
            return Script(tokenizer, self.replies.pop(0))

        def scripted_generate(prompts, answer_rules=None, **kwargs):
            self.calls.append({"prompts": prompts, "answer_rules": answer_rules, **kwargs})
            rules = [list(r) for r in answer_rules] if answer_rules is not None else [[] for _ in prompts]
            return generate(prompts, answer_rules=[[*r, script()] for r in rules], **kwargs)

        def scripted_stream(messages, answer_rules=(), **kwargs):
            self.calls.append({"prompts": [messages], "answer_rules": [answer_rules], **kwargs})
            return stream(messages, answer_rules=[*answer_rules, script()], **kwargs)

        def scripted_astream(messages, answer_rules=(), **kwargs):
            self.calls.append({"prompts": [messages], "answer_rules": [answer_rules], **kwargs})
            return astream(messages, answer_rules=[*answer_rules, script()], **kwargs)

        monkeypatch.setattr(generator, "generate", scripted_generate)
        monkeypatch.setattr(generator, "stream", scripted_stream)
        monkeypatch.setattr(generator, "astream", scripted_astream)

    @property
    def prompt(self) -> list[dict]:
        """The conversation of the last call."""
        return self.calls[-1]["prompts"][0]


@pytest.fixture(scope="module")
def wide_model(tiny_tokenizer):
    from tiny_models import build_tiny_model

    return build_tiny_model(tiny_tokenizer, max_positions=2048)  # room for the tool prompt


@pytest.fixture()
def generator(wide_model, tiny_tokenizer):
    return HFGenerator.from_model(wide_model, tiny_tokenizer, model_name="tiny-wide")


@pytest.fixture()
def llm(generator):
    return TaleHFLLM.from_generator(generator, max_new_tokens=160)


@pytest.fixture()
def strict_llm(generator):
    return TaleHFLLM.from_generator(generator, max_new_tokens=160, constrain=True)


def tools():
    return [FunctionTool.from_defaults(multiply), FunctionTool.from_defaults(paint)]


# -- the LLM and its tool arguments -------------------------------------------------------------------------


def test_is_a_function_calling_llm(generator):
    llm = TaleHFLLM.from_generator(generator, context_window=2048)
    assert isinstance(llm, FunctionCallingLLM)
    assert llm.metadata.is_function_calling_model and llm.metadata.is_chat_model
    assert TaleHFLLM.from_generator(generator).constrain is False  # the constraint is off unless asked


def test_prepare_chat_with_tools_resolves_the_choice(llm):
    multiply_tool, paint_tool = tools()
    prepared = llm._prepare_chat_with_tools([multiply_tool], user_msg="6 times 7?", tool_required=True)
    assert prepared["tools"][0]["function"]["name"] == "multiply"
    assert prepared["tool_choice"] == ToolChoice(mode="required", name="multiply")  # one tool: that one
    assert prepared["messages"][-1].content == "6 times 7?"
    both = [multiply_tool, paint_tool]
    assert llm._prepare_chat_with_tools(both, tool_required=True)["tool_choice"] == ToolChoice(mode="required")
    assert llm._prepare_chat_with_tools(both)["tool_choice"] == ToolChoice(mode="auto")
    assert llm._prepare_chat_with_tools(both, tool_choice="paint")["tool_choice"] == ToolChoice(mode="required",
                                                                                               name="paint")
    assert llm._prepare_chat_with_tools(both, strict=True)["strict"] is True


def test_bad_tool_input_is_a_clear_error(llm):
    with pytest.raises(ValueError, match=r"'divide'.*not among the bound tools \['multiply', 'paint'\]"):
        llm.chat_with_tools(tools(), user_msg="hi", tool_choice="divide")
    not_an_object = {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}
    with pytest.raises(SchemaError, match="tool 'f' parameters must be an object schema"):
        llm.chat([ChatMessage(role="user", content="hi")], tools=[not_an_object])
    with pytest.raises(TypeError, match=r"tools\[0\] must be a LlamaIndex BaseTool"):
        llm.chat([ChatMessage(role="user", content="hi")], tools=[multiply])


# -- replies parsed, results rendered back ---------------------------------------------------------------------


def test_a_tool_call_is_parsed_into_a_block_and_a_selection(llm, generator, monkeypatch):
    replies = Replies(monkeypatch, generator, [CALL])
    response = llm.chat_with_tools(tools(), user_msg="What is 6 times 7?")
    specs = tool_specs([t.metadata.to_openai_tool() for t in tools()])
    assert replies.prompt == [{"role": "system", "content": tool_prompt(specs, ToolChoice(mode="auto"))},
                              {"role": "user", "content": "What is 6 times 7?"}]
    (block,) = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
    assert (block.tool_name, block.tool_kwargs) == ("multiply", {"a": 6, "b": 7})
    (selection,) = llm.get_tool_calls_from_response(response)
    assert (selection.tool_name, selection.tool_kwargs, selection.tool_id) == ("multiply", {"a": 6, "b": 7},
                                                                             block.tool_call_id)
    assert selection.tool_id.startswith("call_")
    assert response.message.content == ""  # the call is not text
    (openai_form,) = response.message.additional_kwargs["tool_calls"]
    assert json.loads(openai_form["function"]["arguments"]) == {"a": 6, "b": 7}
    assert response.raw["usage"]["completion_tokens"] > 0  # usage as for any chat


def test_a_text_reply_has_no_calls(llm, generator, monkeypatch):
    Replies(monkeypatch, generator, ["It is 42."])
    response = llm.chat_with_tools(tools(), user_msg="What is 6 times 7?")
    assert response.message.content == "It is 42."
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="expected at least one tool call.*It is 42"):
        llm.get_tool_calls_from_response(response)


def test_invalid_calls_are_reported_not_returned(llm, generator, monkeypatch):
    Replies(monkeypatch, generator, ['{"name": "divide", "arguments": {"a": 6}}',
                                     '{"name": "multiply", "arguments": {"a": "six"}}'])
    response = llm.chat_with_tools(tools(), user_msg="What is 6 over 7?")
    assert not [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
    (invalid,) = response.message.additional_kwargs["invalid_tool_calls"]
    assert invalid["name"] == "divide" and "no tool named 'divide'" in invalid["error"]
    with pytest.raises(ValueError, match="no tool named 'divide'"):
        llm.get_tool_calls_from_response(response)
    response = llm.chat_with_tools(tools(), user_msg="What is 6 times 7?")
    assert "do not follow the schema" in response.message.additional_kwargs["invalid_tool_calls"][0]["error"]


def test_parallel_calls_are_kept_only_when_allowed(llm, generator, monkeypatch):
    two = CALL + "\n" + '{"name": "paint", "arguments": {"color": "red", "glossy": false}}'
    Replies(monkeypatch, generator, [two, two])
    both = llm.chat_with_tools(tools(), user_msg="Do both", allow_parallel_tool_calls=True)
    assert [c.tool_name for c in llm.get_tool_calls_from_response(both)] == ["multiply", "paint"]
    one = llm.chat_with_tools(tools(), user_msg="Do both")  # LlamaIndex's default: one call
    assert [c.tool_name for c in llm.get_tool_calls_from_response(one)] == ["multiply"]
    assert len(one.message.additional_kwargs["tool_calls"]) == 1


def test_tool_calls_and_results_are_rendered_back(llm, generator, monkeypatch):
    replies = Replies(monkeypatch, generator, ["It is 42.", "It is 42."])
    history = [
        ChatMessage(role="user", content="What is 6 times 7?"),
        ChatMessage(role="assistant", blocks=[ToolCallBlock(tool_call_id="c1", tool_name="multiply",
                                                            tool_kwargs={"a": 6, "b": 7})]),
        ChatMessage(role="tool", content="42", additional_kwargs={"tool_call_id": "c1"}),  # FunctionAgent's form
    ]
    llm.chat_with_tools(tools(), chat_history=history)
    assert replies.prompt[-2:] == [
        {"role": "assistant", "content": render_tool_call("multiply", {"a": 6, "b": 7})},
        {"role": "user", "content": "Tool result (multiply): 42"},
    ]
    # tool_choice="none": no tool is offered, the call runs as a plain chat with the history as text lines
    llm.chat_with_tools(tools(), chat_history=history, tool_choice="none")
    assert replies.prompt == to_backend_messages(history)
    assert replies.prompt[-2:] == [{"role": "assistant", "content": 'Tool call (multiply): {"a": 6, "b": 7}'},
                                   {"role": "user", "content": "Tool result (multiply): 42"}]


def test_no_tools_is_a_plain_turn(llm, generator, monkeypatch):
    replies = Replies(monkeypatch, generator, ["Hello."])
    messages = [ChatMessage(role="user", content="Hi")]
    assert llm.chat(messages, tools=[], tool_choice="auto").message.content == "Hello."  # an agent without tools
    assert replies.prompt == to_backend_messages(messages)
    assert llm._prepare_chat_with_tools([], user_msg="Hi", tool_required=True)["tool_choice"] is None


async def test_streamed_calls_and_text(llm, generator, monkeypatch):
    Replies(monkeypatch, generator, [CALL, CALL, "It is 42."])
    responses = list(llm.stream_chat_with_tools(tools(), user_msg="What is 6 times 7?"))
    assert "".join(r.delta or "" for r in responses) == ""  # the call never shows as text
    partial = [r for r in responses[:-1] if any(isinstance(b, ToolCallBlock) for b in r.message.blocks)]
    assert partial and isinstance(partial[0].message.blocks[-1].tool_kwargs, str)  # the JSON written so far
    assert llm.get_tool_calls_from_response(partial[-1])[0].tool_name == "multiply"  # partial JSON is read
    final = responses[-1]
    assert llm.get_tool_calls_from_response(final)[0].tool_kwargs == {"a": 6, "b": 7}
    assert final.raw["usage"]["completion_tokens"] > 0
    async_responses = [r async for r in await llm.astream_chat_with_tools(tools(), user_msg="What is 6 times 7?")]
    assert async_responses[-1].message.blocks[-1].tool_kwargs == {"a": 6, "b": 7}
    text = [r async for r in await llm.astream_chat_with_tools(tools(), user_msg="What is 6 times 7?")]
    assert "".join(r.delta or "" for r in text) == "It is 42." == text[-1].message.content


# -- the constraint ------------------------------------------------------------------------------------------------


def test_constrained_calls_always_follow_the_schema(strict_llm, llm):
    paint_tool = FunctionTool.from_defaults(paint)
    schema = paint_tool.metadata.get_parameters_dict()
    for question in ("Paint it", "Make the wall blue and shiny", "Any colour will do"):
        response = strict_llm.chat_with_tools([paint_tool], user_msg=question, tool_required=True)
        (call,) = strict_llm.get_tool_calls_from_response(response)
        assert call.tool_name == "paint" and schema_errors(call.tool_kwargs, schema) == []
    # the same random model without the constraint writes no call at all
    free = llm.chat_with_tools([paint_tool], user_msg="Paint it", tool_required=True)
    assert llm.get_tool_calls_from_response(free, error_on_no_tool_call=False) == []


async def test_constraint_per_call_and_in_streams(llm):
    paint_tool = FunctionTool.from_defaults(paint)
    response = await llm.achat_with_tools([paint_tool], user_msg="Paint it", tool_required=True, strict=True)
    assert llm.get_tool_calls_from_response(response)[0].tool_name == "paint"
    streamed = [r async for r in await llm.astream_chat_with_tools([paint_tool], user_msg="Paint it",
                                                                   tool_required=True, strict=True)]
    assert llm.get_tool_calls_from_response(streamed[-1])[0].tool_kwargs == response.message.blocks[-1].tool_kwargs


def test_auto_constrained_allows_a_call_or_text(strict_llm, generator, monkeypatch):
    calls = []
    original = generator.generate

    def spy(prompts, **kwargs):
        calls.append(kwargs)
        return original(prompts, **kwargs)

    monkeypatch.setattr(generator, "generate", spy)
    response = strict_llm.chat_with_tools(tools(), user_msg="Paint it")
    (rule,) = calls[0]["answer_rules"][0]
    assert type(rule).__name__ == "JsonSchemaRule"
    content = response.message.content
    made = strict_llm.get_tool_calls_from_response(response, error_on_no_tool_call=False)
    assert made or (content and not content.startswith("{"))  # a valid call, or text that is no call


def test_a_held_turn_gets_no_budget(generator, wide_model, tiny_tokenizer):
    enforcing = HFGenerator.from_model(wide_model, tiny_tokenizer, model_name="tiny-wide", enforce_budget=True)
    llm = TaleHFLLM.from_generator(enforcing, max_new_tokens=160, budget=5, constrain=True)
    calls = []
    original = enforcing.generate

    def spy(prompts, **kwargs):
        calls.append(kwargs)
        return original(prompts, **kwargs)

    enforcing.generate = spy
    response = llm.chat_with_tools([FunctionTool.from_defaults(paint)], user_msg="Paint it", tool_required=True)
    assert calls[0].get("budgets") in (None, [None])  # a budget would force wrap-up text into the JSON
    assert llm.get_tool_calls_from_response(response)[0].tool_name == "paint"
    llm.chat([ChatMessage(role="user", content="hi")])
    assert calls[1]["budgets"] == [5]  # plain turns keep it


def test_a_template_that_renders_tools_gets_them(wide_model, tiny_tokenizer, monkeypatch):
    template = ("{% if tools %}TOOLS: {{ tools | tojson }}\n{% endif %}"
                "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    generator = HFGenerator.from_model(wide_model, tiny_tokenizer, model_name="tools-template", chat_template=template)
    replies = Replies(monkeypatch, generator, [CALL])
    llm = TaleHFLLM.from_generator(generator, max_new_tokens=160)
    response = llm.chat_with_tools(tools(), user_msg="What is 6 times 7?")
    assert replies.prompt == [{"role": "user", "content": "What is 6 times 7?"}]  # no generic tool prompt
    assert [t["function"]["name"] for t in replies.calls[0]["chat_template_kwargs"]["tools"]] == ["multiply", "paint"]
    assert llm.get_tool_calls_from_response(response)[0].tool_kwargs == {"a": 6, "b": 7}


# -- structured output ----------------------------------------------------------------------------------------------

PROMPT = PromptTemplate("Describe a paint job for {room}.")


def test_structured_predict_through_the_constraint(strict_llm, generator, monkeypatch):
    calls = []
    original = generator.generate

    def spy(prompts, **kwargs):
        calls.append((prompts, kwargs))
        return original(prompts, **kwargs)

    monkeypatch.setattr(generator, "generate", spy)
    job = strict_llm.structured_predict(Paint, PROMPT, room="the kitchen")
    assert isinstance(job, Paint)
    prompt, kwargs = calls[0]
    assert prompt[0][0] == {"role": "system", "content": structured_output_prompt(Paint.model_json_schema())}
    assert prompt[0][-1]["content"] == "Describe a paint job for the kitchen."
    assert type(kwargs["answer_rules"][0][0]).__name__ == "JsonSchemaRule"


async def test_structured_twins_agree(strict_llm):
    job = strict_llm.structured_predict(Paint, PROMPT, room="the hall")
    assert await strict_llm.astructured_predict(Paint, PROMPT, room="the hall") == job
    streamed = list(strict_llm.stream_structured_predict(Paint, PROMPT, room="the hall"))
    assert streamed[-1] == job
    astreamed = [p async for p in await strict_llm.astream_structured_predict(Paint, PROMPT, room="the hall")]
    assert astreamed[-1] == job
    structured = strict_llm.as_structured_llm(Paint)
    reply = structured.chat([ChatMessage(role="user", content="Describe a paint job for the hall.")])
    assert Paint.model_validate_json(reply.message.content) == job


def test_structured_predict_unconstrained_parses_the_reply(llm, generator, monkeypatch):
    Replies(monkeypatch, generator, ['```json\n{"color": "blue", "glossy": false}\n```', "not json"])
    assert llm.structured_predict(Paint, PROMPT, room="the hall") == Paint(color="blue", glossy=False)
    with pytest.raises(ValueError, match="Invalid JSON"):
        llm.structured_predict(Paint, PROMPT, room="the hall")


def test_a_schema_the_constraint_cannot_enforce_is_refused(strict_llm):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "not": {"const": 3}}}}
    with pytest.raises(SchemaError, match="not"):
        strict_llm.chat([ChatMessage(role="user", content="hi")],
                        response_format={"type": "json_schema", "json_schema": {"schema": schema}})
    with pytest.raises(ValueError, match="response_format must be"):
        strict_llm.chat([ChatMessage(role="user", content="hi")], response_format={"type": "xml"})


# -- agents --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [True, False])
async def test_function_agent_runs_a_tool_loop(llm, generator, monkeypatch, streaming):
    replies = Replies(monkeypatch, generator, [CALL, "The answer is 42."])
    seen = []

    def recorded_multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        seen.append((a, b))
        return a * b

    agent = FunctionAgent(tools=[FunctionTool.from_defaults(recorded_multiply, name="multiply")], llm=llm,
                          streaming=streaming)
    response = await (agent.run("What is 6 times 7?"))
    assert seen == [(6, 7)]
    assert str(response) == "The answer is 42."
    assert response.tool_calls[0].tool_output.content == "42"
    assert replies.prompt[-1] == {"role": "user", "content": "Tool result (multiply): 42"}
    assert replies.replies == []


async def test_function_agent_initial_tool_choice_is_held(strict_llm):
    paint_tool = FunctionTool.from_defaults(paint, return_direct=True)
    agent = FunctionAgent(tools=[paint_tool], llm=strict_llm, initial_tool_choice="paint", streaming=False)
    response = await (agent.run("Anything you like"))
    (call,) = response.tool_calls
    assert call.tool_name == "paint" and set(call.tool_kwargs) == {"color", "glossy"}
    assert str(response).startswith("painted ")  # return_direct: the tool's result is the answer


async def test_react_agent_runs_on_it(llm, generator, monkeypatch):
    Replies(monkeypatch, generator, [
        'Thought: I need to multiply.\nAction: multiply\nAction Input: {"a": 6, "b": 7}',
        "Thought: I can answer without using any more tools.\nAnswer: 42",
    ])
    agent = ReActAgent(tools=[FunctionTool.from_defaults(multiply)], llm=llm, streaming=False)
    response = await (agent.run("What is 6 times 7?"))
    assert str(response) == "42"
    assert response.tool_calls[0].tool_kwargs == {"a": 6, "b": 7}


def test_message_roles_with_tool_blocks():
    history = [
        ChatMessage(role=MessageRole.ASSISTANT, blocks=[ToolCallBlock(tool_call_id="x", tool_name="paint",
                                                                      tool_kwargs='{"color": "red"}')]),
        ChatMessage(role=MessageRole.TOOL, content="done", additional_kwargs={"tool_call_id": "x"}),
        ChatMessage(role=MessageRole.TOOL, content="?", additional_kwargs={"name": "multiply"}),
        ChatMessage(role=MessageRole.TOOL, content="??"),
    ]
    assert to_backend_messages(history) == [
        {"role": "assistant", "content": 'Tool call (paint): {"color": "red"}'},
        {"role": "user", "content": "Tool result (paint): done"},
        {"role": "user", "content": "Tool result (multiply): ?"},
        {"role": "user", "content": "Tool result: ??"},
    ]
