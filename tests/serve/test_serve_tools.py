"""Tool calling and structured output through `tale serve`: ``tools``, ``tool_choice``, ``response_format`` on
``/v1/chat/completions``, plain and streamed, with the real ``openai`` client and LangChain's
``ChatOpenAI(...).bind_tools(...)`` / ``with_structured_output`` on loopback.

Scripted models (`tiny_models.build_ranking_model`) write exact replies (a whole tool call as one token, then
the end of turn); the tiny random model writes noise, so whatever it returns under a constraint shows the
constraint at work.
"""

from __future__ import annotations

import json

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("torch")
pytest.importorskip("llguidance")

from tiny_models import build_ranking_model, build_tiny_model, build_tiny_tokenizer  # noqa: E402

from tale_integrations.core.schemas import schema_errors  # noqa: E402

CALL = '{"name": "add", "arguments": {"a": 1, "b": 2}}'
CUT = '{"name": "add", "arguments": {"a": 1'
TEXT = "It is 3."
ADD = {"type": "function", "function": {"name": "add", "description": "Add two numbers.", "parameters": {
    "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
MESSAGES = [{"role": "user", "content": "What is 1 + 2?"}]
JOKE = {"type": "object", "properties": {"setup": {"type": "string", "maxLength": 20},
                                         "punchline": {"type": "string", "maxLength": 20}},
        "required": ["setup", "punchline"]}


def scripted(reply: str, name: str):
    """A generator whose model answers ``reply`` (one added token) and ends its turn."""
    from tale_integrations.backends.hf import HFGenerator

    tokenizer = build_tiny_tokenizer()
    tokenizer.add_tokens([reply])
    model = build_ranking_model(tokenizer, {"": [reply], reply: [tokenizer.eos_token]})
    return HFGenerator.from_model(model, tokenizer, model_name=name)


@pytest.fixture(scope="module", params=["continuous", "microbatch"])
def scheduler(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def caller_url(serve_module, scheduler) -> str:
    return serve_module(scripted(CALL, "caller"), scheduler=scheduler)


@pytest.fixture(scope="module")
def random_generator():
    from tale_integrations.backends.hf import HFGenerator

    tokenizer = build_tiny_tokenizer()
    return HFGenerator.from_model(build_tiny_model(tokenizer, max_positions=2048), tokenizer, model_name="random")


@pytest.fixture(scope="module")
def random_url(serve_module, random_generator, scheduler) -> str:
    return serve_module(random_generator, scheduler=scheduler)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def streamed(url: str, model: str, **ask) -> tuple[str | None, list[dict], str]:
    """(content, tool calls as OpenAI dicts, finish reason) of a stream, assembled as a client does."""
    content, calls, finish = None, {}, None
    for chunk in client(url).chat.completions.create(model=model, messages=ask.pop("messages", MESSAGES),
                                                     stream=True, **ask):
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content:
                content = (content or "") + delta.content
            for piece in delta.tool_calls or []:
                call = calls.setdefault(piece.index, {"id": None, "type": "function",
                                                      "function": {"name": "", "arguments": ""}})
                if piece.id:
                    assert call["id"] is None, "a call's id comes once"
                    call["id"] = piece.id
                if piece.function.name:
                    call["function"]["name"] += piece.function.name
                call["function"]["arguments"] += piece.function.arguments or ""
            finish = choice.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


def plain(url: str, model: str, **ask) -> tuple[str | None, list[dict], str]:
    r = client(url).chat.completions.create(model=model, messages=ask.pop("messages", MESSAGES), **ask)
    message = r.choices[0].message
    calls = [c.model_dump(exclude_none=True) for c in message.tool_calls or []]
    return message.content, calls, r.choices[0].finish_reason


def without_ids(calls: list[dict]) -> list[dict]:
    return [{k: v for k, v in c.items() if k != "id"} for c in calls]


# -- tool calls ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("choice", [None, "auto"])
def test_tool_calls_round_trip_plain_and_streamed(caller_url, choice):
    ask = {"tools": [ADD, WEATHER], "max_tokens": 40}
    if choice is not None:
        ask["tool_choice"] = choice
    content, calls, finish = plain(caller_url, "caller", **ask)
    assert content is None and finish == "tool_calls"
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [("add", {"a": 1,
                                                                                                          "b": 2})]
    assert calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    s_content, s_calls, s_finish = streamed(caller_url, "caller", **ask)
    assert (s_content, without_ids(s_calls), s_finish) == (content, without_ids(calls), finish)
    assert s_calls[0]["id"].startswith("call_")


def test_tool_choice_none_offers_no_tools(caller_url):
    content, calls, finish = plain(caller_url, "caller", tools=[ADD], tool_choice="none", max_tokens=40)
    assert (content, calls, finish) == (CALL, [], "stop")  # the text, unread


def test_text_reply_with_tools_offered(serve):
    url = serve(scripted(TEXT, "talker"))
    assert plain(url, "talker", tools=[ADD], max_tokens=20) == (TEXT, [], "stop")
    assert streamed(url, "talker", tools=[ADD], max_tokens=20) == (TEXT, [], "stop")


def test_a_call_that_does_not_parse_is_returned_as_written(serve):
    """As OpenAI returns arguments that are not valid JSON: the client decides (LangChain reports it invalid)."""
    url = serve(scripted(CUT, "cutter"))
    content, calls, finish = plain(url, "cutter", tools=[ADD], max_tokens=20)
    assert content is None and finish == "tool_calls"
    assert [c["function"] for c in calls] == [{"name": "add", "arguments": '{"a": 1'}]
    s_content, s_calls, s_finish = streamed(url, "cutter", tools=[ADD], max_tokens=20)
    assert (s_content, without_ids(s_calls), s_finish) == (content, without_ids(calls), finish)


def test_tool_results_go_back_to_the_model(caller_url, serve_module):
    from tale_integrations.backends.hf.tool_turns import ToolTurn
    from tale_integrations.core.tools import tool_specs

    history = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "3"}]
    r = client(caller_url).chat.completions.create(model="caller", messages=history, tools=[ADD], max_tokens=40)
    generator = scripted(CALL, "caller")
    turns = [MESSAGES[0], {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "name": "add", "arguments": {"a": 1, "b": 2}}]},
        {"role": "tool", "content": "3", "name": "add"}]
    expected = ToolTurn.for_call(generator, tools=tool_specs([ADD])).conversation(turns)
    assert "add" in expected[-1]["content"] and "3" in expected[-1]["content"]  # the result, named
    assert r.usage.prompt_tokens == len(generator.encode_chat(expected))


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_a_required_call_is_held_to_the_schema(random_url, random_generator, choice):
    """The random model writes noise; held to the tools' schema, it writes a valid call."""
    from tale_integrations.core.tools import parse_tool_calls, tool_specs

    ask = {"tools": [ADD, WEATHER], "tool_choice": choice, "max_tokens": 60}
    content, calls, finish = plain(random_url, "random", **ask)
    assert len(calls) >= 1 and content is None and finish in ("tool_calls", "length")
    for call in calls:
        text = json.dumps({"name": call["function"]["name"], "arguments": json.loads(call["function"]["arguments"])})
        reply = parse_tool_calls(text, tool_specs([ADD, WEATHER]))
        assert reply.tool_calls and not reply.invalid_tool_calls, call
    if isinstance(choice, dict):
        assert {c["function"]["name"] for c in calls} == {"get_weather"}
    s_content, s_calls, s_finish = streamed(random_url, "random", **ask)
    assert (s_content, without_ids(s_calls), s_finish) == (content, without_ids(calls), finish)


def test_strict_auto_turn_is_a_valid_call_or_text(random_url):
    strict = {**ADD, "function": {**ADD["function"], "strict": True}}
    content, calls, _ = plain(random_url, "random", tools=[strict], max_tokens=60)
    assert calls or (content is not None and not content.lstrip().startswith("{"))
    for call in calls:
        assert call["function"]["name"] == "add"
        assert schema_errors(json.loads(call["function"]["arguments"]), ADD["function"]["parameters"]) == []


def test_unconstrained_server_refuses_strict(serve, random_generator):
    url = serve(random_generator, constrain="never")
    strict = {**ADD, "function": {**ADD["function"], "strict": True}}
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        plain(url, "random", tools=[strict], max_tokens=10)
    assert refused.value.body["param"] == "strict"


# -- structured output -----------------------------------------------------------------------------------------

def test_json_schema_response_format(random_url):
    fmt = {"type": "json_schema", "json_schema": {"name": "joke", "schema": JOKE, "strict": True}}
    content, calls, finish = plain(random_url, "random", response_format=fmt, max_tokens=80)
    assert calls == [] and finish == "stop"
    assert schema_errors(json.loads(content), JOKE) == []
    assert streamed(random_url, "random", response_format=fmt, max_tokens=80) == (content, [], finish)


def test_json_object_response_format(random_url):
    content, _, _ = plain(random_url, "random", response_format={"type": "json_object"}, max_tokens=40)
    assert isinstance(json.loads(content), dict)


# -- LangChain's ChatOpenAI ------------------------------------------------------------------------------------

def test_chat_openai_bind_tools_round_trip(caller_url):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def add(a: float, b: float) -> float:
        """Add two numbers."""
        return a + b

    llm = ChatOpenAI(model="caller", base_url=f"{caller_url}/v1", api_key="unused", max_retries=0, max_tokens=40)
    bound = llm.bind_tools([add])
    message = bound.invoke([HumanMessage("What is 1 + 2?")])
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("add", {"a": 1, "b": 2})]
    assert message.response_metadata["finish_reason"] == "tool_calls"
    chunks = list(bound.stream([HumanMessage("What is 1 + 2?")]))
    total = sum(chunks[1:], chunks[0])
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [("add", {"a": 1, "b": 2})]
    assert total.tool_calls[0]["id"].startswith("call_")
    # the tool's result goes back: a full agent turn through the server
    result = ToolMessage(str(add.invoke(message.tool_calls[0]["args"])), tool_call_id=message.tool_calls[0]["id"])
    again = bound.invoke([HumanMessage("What is 1 + 2?"), message, result])
    assert again.tool_calls  # the scripted model calls again; the history was accepted
    forced = llm.bind_tools([add], tool_choice="add").invoke([HumanMessage("What is 1 + 2?")], max_tokens=60)
    assert [c["name"] for c in forced.tool_calls] == ["add"]


def test_chat_openai_with_structured_output(random_url):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class Joke(BaseModel):
        """A joke."""

        setup: str = Field(max_length=20)
        punchline: str = Field(max_length=20)

    llm = ChatOpenAI(model="random", base_url=f"{random_url}/v1", api_key="unused", max_retries=0, max_tokens=80)
    joke = llm.with_structured_output(Joke, method="json_schema", strict=True).invoke("Tell me a joke")
    assert isinstance(joke, Joke)


# -- the embedded model ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_embedded_model_calls_a_tool_through_the_server(serve, embedded_generator):
    """SmolLM2 (its template renders no tools: the generic tool prompt) with three tools and a required call:
    a schema-valid call, plain and streamed alike."""
    from tale_integrations.core.tools import parse_tool_calls, tool_specs

    url = serve(embedded_generator, served_model_name="smol")
    tools = [ADD, WEATHER, {"type": "function", "function": {"name": "multiply", "parameters": {
        "type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"]}}}]
    ask = {"tools": tools, "tool_choice": "required", "max_tokens": 64,
           "messages": [{"role": "user", "content": "What is 12 times 7?"}]}
    content, calls, finish = plain(url, "smol", **dict(ask))
    assert finish == "tool_calls" and content is None and len(calls) == 1
    function = calls[0]["function"]
    text = json.dumps({"name": function["name"], "arguments": json.loads(function["arguments"])})
    reply = parse_tool_calls(text, tool_specs(tools))
    assert reply.tool_calls and not reply.invalid_tool_calls
    s_content, s_calls, s_finish = streamed(url, "smol", **dict(ask))
    assert (s_content, without_ids(s_calls), s_finish) == (content, without_ids(calls), finish)
