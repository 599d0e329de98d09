"""`ChatTaleHF` tool calling and structured output (``langchain/_tools.py``), on tiny real models.

Scripted models (`tiny_models.build_ranking_model`) write exact replies: a whole tool call as one
added token, a cut-off call, or JSON for structured output; the tiny random model shows what the
constraint guarantees for a model that writes nonsense. The prompts each call sends are recorded
with `tiny_models.spy`.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("torch")

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402
from tiny_models import CHATML, build_ranking_model, build_tiny_model, build_tiny_tokenizer, spy  # noqa: E402

from tale_integrations.backends.hf import HFGenerator  # noqa: E402
from tale_integrations.core.errors import SchemaError, TaleValueError  # noqa: E402
from tale_integrations.core.schemas import schema_errors  # noqa: E402
from tale_integrations.langchain import ChatTaleHF  # noqa: E402

CALL = '{"name": "add", "arguments": {"a": 1, "b": 2}}'
CUT = '{"name": "add", "arguments": {"a": 1'
JOKE = '{"setup": "Why?", "punchline": "Because."}'


@tool
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


@tool
def get_weather(city: str) -> str:
    """Weather in a city."""
    return "sunny"


class Joke(BaseModel):
    """A joke."""

    setup: str = Field(description="the question")
    punchline: str = Field(description="the answer")


def scripted(reply: str, *, template: str | None = None, **kwargs) -> HFGenerator:
    """A generator whose model answers ``reply`` (one added token) and ends its turn."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_tokens([reply])
    if template is not None:
        tokenizer.chat_template = template
    model = build_ranking_model(tokenizer, {"": [reply], reply: [tokenizer.eos_token]})
    return HFGenerator.from_model(model, tokenizer, model_name="scripted", **kwargs)


@pytest.fixture(scope="module")
def caller():
    return scripted(CALL)


@pytest.fixture(scope="module")
def random_generator():
    """The tiny random llama with room for the tool prompt (the tiny tokenizer spells it out almost byte by byte)."""
    tokenizer = build_tiny_tokenizer()
    return HFGenerator.from_model(build_tiny_model(tokenizer, max_positions=2048), tokenizer, model_name="random")


@pytest.fixture()
def random_chat(random_generator):
    return ChatTaleHF.from_generator(random_generator, max_tokens=120)


# -- prompts ---------------------------------------------------------------------------------------------------


def test_a_template_without_tools_gets_the_generic_tool_prompt(caller):
    calls = spy(caller)
    chat = ChatTaleHF.from_generator(caller)
    chat.bind_tools([add, get_weather]).invoke([SystemMessage("Be brief."), HumanMessage("1+2?")])
    system = calls[-1]["prompts"][0][0]
    assert system["role"] == "system"
    assert system["content"].startswith("Be brief.\n\nYou can call these tools:\n- add: ")
    assert "- get_weather: Weather in a city." in system["content"]
    assert system["content"].endswith("To answer without a tool, reply in plain text.")
    chat.bind_tools([add, get_weather], tool_choice="get_weather").invoke("1+2?")
    assert calls[-1]["prompts"][0][0]["content"].endswith(
        'Call the tool get_weather: reply with only a JSON object of the form {"name": "get_weather", '
        '"arguments": {<the arguments>}}.')
    none = chat.bind_tools([add], tool_choice="none").invoke("1+2?")
    assert calls[-1]["prompts"][0] == [{"role": "user", "content": "1+2?"}]  # not offered...
    assert none.tool_calls == [] and none.content == CALL  # ...and not parsed


TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {% for t in tools %}{{ t['function']['name'] }} {% endfor %}<|im_end|>\n"
    "{% endif %}" + CHATML
)


def test_a_template_that_renders_tools_gets_them_and_no_generic_prompt():
    gen = scripted(CALL, template=TOOLS_TEMPLATE)
    calls = spy(gen)
    chat = ChatTaleHF.from_generator(gen)
    reply = chat.bind_tools([add]).invoke("1+2?")
    assert calls[-1]["prompts"][0] == [{"role": "user", "content": "1+2?"}]
    tools = calls[-1]["chat_template_kwargs"]["tools"]
    assert [t["function"]["name"] for t in tools] == ["add"]
    assert reply.tool_calls[0]["args"] == {"a": 1, "b": 2}
    ids = gen.encode_chat(calls[-1]["prompts"][0], chat_template_kwargs={"tools": tools})
    assert "Tools: add" in gen.tokenizer.decode(ids)
    plain = chat.get_num_tokens_from_messages([HumanMessage("1+2?")])
    assert chat.get_num_tokens_from_messages([HumanMessage("1+2?")], tools=[add]) == len(ids) > plain


def test_tool_calls_and_results_are_rendered_back_for_the_next_turn(caller):
    calls = spy(caller)
    history = [
        HumanMessage("1+2 and 3+x?"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"},
                                  {"name": "add", "args": {"a": 3}, "id": "c2"}]),
        ToolMessage("3", name="add", tool_call_id="c1"),
        ToolMessage("missing b", name="add", tool_call_id="c2", status="error"),
    ]
    ChatTaleHF.from_generator(caller).bind_tools([add]).invoke(history)
    turns = calls[-1]["prompts"][0]
    assert turns[1:] == [
        {"role": "user", "content": "1+2 and 3+x?"},
        {"role": "assistant", "content": '{"name": "add", "arguments": {"a": 1, "b": 2}}\n'
                                         '{"name": "add", "arguments": {"a": 3}}'},
        {"role": "user", "content": "Tool result (add): 3\nTool error (add): missing b"},
    ]


def test_token_counts_include_the_tool_prompt(caller):
    chat = ChatTaleHF.from_generator(caller)
    messages = [HumanMessage("1+2?")]
    with_tools = chat.get_num_tokens_from_messages(messages, tools=[add])
    assert with_tools > chat.get_num_tokens_from_messages(messages) + 20


# -- replies ----------------------------------------------------------------------------------------------------


def test_a_tool_call_comes_back_with_an_id_and_streams_as_tool_call_chunks(caller):
    chat = ChatTaleHF.from_generator(caller).bind_tools([add, get_weather])
    reply = chat.invoke("1+2?")
    assert reply.content == "" and reply.invalid_tool_calls == []
    (call,) = reply.tool_calls
    assert (call["name"], call["args"], call["type"]) == ("add", {"a": 1, "b": 2}, "tool_call")
    assert call["id"].startswith("call_")
    chunks = list(chat.stream("1+2?"))
    assert any(c.tool_call_chunks for c in chunks)
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [("add", {"a": 1, "b": 2})]
    assert full.tool_calls[0]["id"].startswith("call_") and full.usage_metadata["output_tokens"] == 2


async def test_async_twins(caller):
    chat = ChatTaleHF.from_generator(caller).bind_tools([add])
    assert (await chat.ainvoke("1+2?")).tool_calls[0]["args"] == {"a": 1, "b": 2}
    full = None
    async for chunk in chat.astream("1+2?"):
        full = chunk if full is None else full + chunk
    assert full.tool_calls[0]["args"] == {"a": 1, "b": 2}


def test_a_cut_off_call_is_an_invalid_tool_call_with_its_error():
    reply = ChatTaleHF.from_generator(scripted(CUT)).bind_tools([add]).invoke("1+2?")
    assert reply.tool_calls == []
    (bad,) = reply.invalid_tool_calls
    assert bad["name"] == "add" and "not valid JSON" in bad["error"] and bad["id"].startswith("call_")


def test_a_call_of_an_unknown_tool_is_invalid(caller):
    reply = ChatTaleHF.from_generator(caller).bind_tools([get_weather]).invoke("1+2?")
    assert reply.tool_calls == [] and "no tool named 'add'" in reply.invalid_tool_calls[0]["error"]


# -- the constraint ------------------------------------------------------------------------------------------------


def test_a_random_model_writes_valid_calls_only_when_constrained(random_chat):
    llguidance = pytest.importorskip("llguidance")  # noqa: F841
    prompts = ["Weather in Paris?", "What is 2+2?", "Hi"]
    free = random_chat.bind_tools([add, get_weather], tool_choice="any")
    assert not any(m.tool_calls for m in free.batch(prompts))  # a random model writes no call on its own
    held = random_chat.bind_tools([add, get_weather], tool_choice="any", strict=True)
    for message in held.batch(prompts):
        (call,) = message.tool_calls
        assert message.invalid_tool_calls == []
        spec = {"add": add, "get_weather": get_weather}[call["name"]]
        assert schema_errors(call["args"], spec.tool_call_schema.model_json_schema()) == []
    named = random_chat.bind_tools([add, get_weather], tool_choice="get_weather", strict=True).invoke("x")
    assert named.tool_calls[0]["name"] == "get_weather"


def test_the_model_field_turns_the_constraint_on(random_generator):
    pytest.importorskip("llguidance")
    chat = ChatTaleHF.from_generator(random_generator, max_tokens=120, constrain=True)
    assert chat.bind_tools([get_weather], tool_choice="any").invoke("x").tool_calls
    assert not chat.bind_tools([get_weather], tool_choice="any", strict=False).invoke("x").tool_calls


def test_a_constrained_turn_gets_no_budget_so_the_enforcer_never_cuts_its_json(random_generator):
    pytest.importorskip("llguidance")
    gen = HFGenerator.from_model(random_generator.model, random_generator.tokenizer, model_name="tiny",
                                 enforce_budget=True)
    calls = spy(gen)
    chat = ChatTaleHF.from_generator(gen, max_tokens=120, budget=8)
    message = chat.bind_tools([get_weather], tool_choice="any", strict=True).invoke("Weather?")
    assert calls[-1]["budgets"] is None
    assert message.tool_calls and message.invalid_tool_calls == []
    joke = chat.with_structured_output(Joke, strict=True).invoke("A joke.")
    assert isinstance(joke, Joke) and calls[-1]["budgets"] is None
    chat.invoke("A plain turn keeps its budget.")
    assert calls[-1]["budgets"] == [8]


def test_a_cap_closes_the_json_instead_of_cutting_it(random_generator):
    pytest.importorskip("llguidance")
    chat = ChatTaleHF.from_generator(random_generator, max_tokens=64)  # the forced text alone is ~40 tokens
    for prompt in ["a", "bb", "ccc"]:
        message = chat.bind_tools([get_weather], tool_choice="any", strict=True).invoke(prompt)
        assert message.tool_calls, message.invalid_tool_calls


# -- structured output ------------------------------------------------------------------------------------------


def test_structured_output_methods_on_a_scripted_model():
    joker = ChatTaleHF.from_generator(scripted(JOKE))
    calls = spy(joker._generator)
    assert joker.with_structured_output(Joke).invoke("A joke.") == Joke(setup="Why?", punchline="Because.")
    assert calls[-1]["prompts"][0][0]["content"].startswith(
        "Reply with only a JSON object that follows this JSON Schema: {")
    assert joker.with_structured_output(Joke.model_json_schema()).invoke("A joke.") == json.loads(JOKE)
    assert joker.with_structured_output(None, method="json_mode").invoke("A joke.") == json.loads(JOKE)
    assert calls[-1]["prompts"][0][0]["content"] == "Reply with only a JSON object."
    chunks = list(joker.with_structured_output(Joke).stream("A joke."))
    assert chunks[-1] == Joke(setup="Why?", punchline="Because.")
    tool_joke = '{"name": "Joke", "arguments": ' + JOKE + "}"
    caller = ChatTaleHF.from_generator(scripted(tool_joke))
    assert caller.with_structured_output(Joke, method="function_calling").invoke("x") == Joke(
        setup="Why?", punchline="Because.")


def test_include_raw_reports_a_parsing_error_instead_of_raising(caller):
    chat = ChatTaleHF.from_generator(caller)
    result = chat.with_structured_output(Joke, include_raw=True).invoke("A joke.")
    assert isinstance(result["raw"], AIMessage) and result["parsed"] is None and result["parsing_error"] is not None
    joker = ChatTaleHF.from_generator(scripted(JOKE))
    result = joker.with_structured_output(Joke, include_raw=True).invoke("A joke.")
    assert result["parsed"] == Joke(setup="Why?", punchline="Because.") and result["parsing_error"] is None


def test_a_random_model_follows_the_schema_when_constrained(random_chat):
    pytest.importorskip("llguidance")
    for method in ("json_schema", "function_calling"):
        result = random_chat.with_structured_output(Joke, method=method, strict=True).invoke("A joke.")
        assert isinstance(result, Joke)
    assert isinstance(random_chat.with_structured_output(None, method="json_mode", strict=True).invoke("x"), dict)


# -- bad input --------------------------------------------------------------------------------------------------


def test_bad_input_gets_clear_errors(caller):
    chat = ChatTaleHF.from_generator(caller)
    with pytest.raises(SchemaError, match=r"tool 'bad' parameters\['type'\] is 'thing'"):
        chat.bind_tools([{"type": "function", "function": {"name": "bad", "parameters": {"type": "thing"}}}])
    with pytest.raises(SchemaError, match="tools\\[0\\] is not a tool LangChain can describe"):
        chat.bind_tools([{"nonsense": 1}])
    with pytest.raises(TaleValueError, match="'multiply', which is not among the bound tools \\['add'\\]"):
        chat.bind_tools([add], tool_choice="multiply")
    with pytest.raises(TaleValueError, match="method must be"):
        chat.with_structured_output(Joke, method="xml")
    with pytest.raises(TaleValueError, match="needs a schema"):
        chat.with_structured_output(None)


def test_a_schema_the_constraint_cannot_enforce_is_refused_naming_the_keywords(caller):
    pytest.importorskip("llguidance")
    chat = ChatTaleHF.from_generator(caller)
    schema = {"title": "Odd", "type": "object", "properties": {"x": {"not": {"type": "string"}}}}
    with pytest.raises(SchemaError, match=r'Unimplemented keys: \["not"\]'):
        chat.with_structured_output(schema, strict=True)
    with pytest.raises(SchemaError, match="tool 'odd' parameters cannot be enforced"):
        chat.bind_tools([{"name": "odd", "parameters": schema}], strict=True)
    chat.with_structured_output(schema)  # unconstrained: the schema only parses
