"""core/tools.py and core/schemas.py: tool specs, tool choice, the tool-call schema, parsing (whole and
streamed), the generic tool prompt and plain turns."""

from __future__ import annotations

import json

import pytest

from tale_integrations.core.errors import SchemaError, TaleTypeError, TaleValueError
from tale_integrations.core.schemas import check_json_schema, closed_schema, schema_errors
from tale_integrations.core.tools import (
    InvalidToolCall,
    ToolCall,
    ToolChoice,
    ToolSpec,
    ToolStreamParser,
    parse_tool_calls,
    plain_turns,
    render_tool_call,
    resolve_tool_choice,
    structured_output_prompt,
    template_renders_tools,
    tool_call_schema,
    tool_prompt,
    tool_specs,
    with_system_text,
)

ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                   "required": ["a", "b"]},
}}
WEATHER = {"name": "get_weather", "description": "Weather in a city.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}}, "required": ["city"]}}
NOARGS = {"name": "now"}
TOOLS = tool_specs([ADD, WEATHER, NOARGS])


# -- specs and schemas -------------------------------------------------------------------------------------


def test_tool_specs_read_openai_and_bare_forms():
    assert [t.name for t in TOOLS] == ["add", "get_weather", "now"]
    assert TOOLS[0].description == "Add two numbers."
    assert TOOLS[2].parameters == {"type": "object", "properties": {}}
    assert TOOLS[0].to_dict() == ADD


@pytest.mark.parametrize("parameters, words", [
    ({"type": "thing"}, "['type'] is 'thing'"),
    ({"type": "object", "properties": {"a": "number"}}, "['properties']['a'] must be a JSON Schema"),
    ({"type": "object", "required": "a"}, "['required'] must be a list"),
    ({"type": "object", "anyOf": []}, "['anyOf'] must be a non-empty list"),
    ({"type": "string"}, "must be an object schema"),
    ("an object", "must be a JSON Schema (a dict)"),
])
def test_a_tool_schema_that_is_not_json_schema_is_refused_naming_the_tool(parameters, words):
    with pytest.raises(SchemaError) as caught:
        tool_specs([{"name": "bad", "parameters": parameters}])
    assert words in str(caught.value) and "'bad'" in str(caught.value) and "tools[0]" in str(caught.value)


def test_bad_tool_entries_are_refused():
    with pytest.raises(TaleTypeError, match="tools\\[0\\] must be a tool schema"):
        tool_specs(["add"])
    with pytest.raises(TaleValueError, match="no function name"):
        tool_specs([{"parameters": {}}])
    with pytest.raises(TaleValueError, match="1-64 letters"):
        tool_specs([{"name": "two words"}])
    with pytest.raises(TaleTypeError, match="must be a list"):
        tool_specs(ADD)


def test_one_tool_given_twice_is_kept_once_but_two_tools_may_not_share_a_name():
    titled = {"name": "add", "parameters": {"type": "object", "title": "Add", "properties": {
        "a": {"type": "number", "title": "A"}, "b": {"type": "number"}}, "required": ["a", "b"]}}
    assert [t.name for t in tool_specs([ADD, titled])] == ["add"]
    with pytest.raises(TaleValueError, match="two different tools named 'add'"):
        tool_specs([ADD, {"name": "add", "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}])


def test_check_json_schema_passes_json_schema_and_pydantic_classes_get_a_hint():
    schema = {"type": "object", "$defs": {"n": {"type": "integer"}}, "properties": {"n": {"$ref": "#/$defs/n"}},
              "items": [True, {"type": "null"}], "x-extension": 1}
    assert check_json_schema(schema) is schema
    with pytest.raises(SchemaError, match="model_json_schema"):
        check_json_schema(ToolSpec)


def test_closed_schema_closes_objects_that_do_not_say_and_keeps_the_rest():
    schema = {"type": "object", "properties": {"inner": {"type": "object", "properties": {"x": {}}},
                                               "free": {"type": "object", "additionalProperties": True}}}
    closed = closed_schema(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["inner"]["additionalProperties"] is False
    assert closed["properties"]["free"]["additionalProperties"] is True
    assert "additionalProperties" not in schema  # a copy


@pytest.mark.parametrize("value, schema, expected", [
    ({"a": 1, "b": 2.5}, ADD["function"]["parameters"], []),
    ({"a": 1}, ADD["function"]["parameters"], ["$: missing required property 'b'"]),
    ({"a": "1", "b": 2}, ADD["function"]["parameters"], ['$.a: expected number, got "1"']),
    ({"city": "x", "unit": "k"}, WEATHER["parameters"], ["$.unit: \"k\" is not one of ['c', 'f']"]),
    ({"x": 1}, {"type": "object", "properties": {}, "additionalProperties": False}, ["$: unexpected property 'x'"]),
    ([1, "a"], {"type": "array", "items": {"type": "integer"}, "maxItems": 1},
     ['$[1]: expected integer, got "a"', "$: more than 1 items"]),
    (5, {"type": "integer", "exclusiveMaximum": 5}, ["$: 5 breaks exclusiveMaximum 5"]),
    ("ab", {"anyOf": [{"type": "integer"}, {"type": "string", "minLength": 3}]},
     ["$: matches none of the anyOf schemas"]),
    ({"n": 1.0}, {"$defs": {"n": {"type": "integer"}}, "properties": {"n": {"$ref": "#/$defs/n"}}}, []),
    (True, {"type": "integer"}, ["$: expected integer, got true"]),
])
def test_schema_errors(value, schema, expected):
    assert schema_errors(value, schema) == expected


# -- tool choice -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("choice, expected", [
    (None, ToolChoice(mode="auto")), ("auto", ToolChoice(mode="auto")),
    ("none", ToolChoice(mode="none")), (False, ToolChoice(mode="none")),
    ("any", ToolChoice(mode="required")), ("required", ToolChoice(mode="required")),
    (True, ToolChoice(mode="required")),
    ("add", ToolChoice(mode="required", name="add")),
    ({"type": "function", "function": {"name": "now"}}, ToolChoice(mode="required", name="now")),
    ({"type": "tool", "name": "add"}, ToolChoice(mode="required", name="add")),
])
def test_resolve_tool_choice(choice, expected):
    assert resolve_tool_choice(choice, TOOLS) == expected


def test_any_with_one_tool_names_it():
    assert resolve_tool_choice("any", TOOLS[:1]) == ToolChoice(mode="required", name="add")


def test_a_tool_choice_naming_a_missing_tool_is_refused_listing_the_tools():
    with pytest.raises(TaleValueError) as caught:
        resolve_tool_choice("multiply", TOOLS)
    message = str(caught.value)
    assert "'multiply'" in message and "['add', 'get_weather', 'now']" in message and "'any'" in message
    with pytest.raises(TaleValueError, match="no tools are bound"):
        resolve_tool_choice("any", ())
    with pytest.raises(TaleTypeError, match="tool_choice must be"):
        resolve_tool_choice(3, TOOLS)
    with pytest.raises(TaleValueError, match="names no tool"):
        resolve_tool_choice({"type": "function"}, TOOLS)


def test_tool_call_schema():
    assert tool_call_schema(TOOLS, ToolChoice(mode="auto")) is None
    one = tool_call_schema(TOOLS, ToolChoice(mode="required", name="now"))
    assert one == {"type": "object", "properties": {"name": {"const": "now"}, "arguments": {
        "type": "object", "properties": {}, "additionalProperties": False}},
        "required": ["name", "arguments"], "additionalProperties": False}
    anyof = tool_call_schema(TOOLS, ToolChoice(mode="required"))["anyOf"]
    assert [o["properties"]["name"]["const"] for o in anyof] == ["add", "get_weather", "now"]
    assert anyof[0]["properties"]["arguments"]["additionalProperties"] is False
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert schema_errors(call, {"anyOf": anyof}) == []
    assert schema_errors({"name": "get_weather", "arguments": {"town": "Paris"}}, {"anyOf": anyof})


# -- prompts and turns --------------------------------------------------------------------------------------------


def test_tool_prompt_golden():
    assert tool_prompt(TOOLS[:1], ToolChoice(mode="auto")) == (
        "You can call these tools:\n"
        '- add: Add two numbers. Arguments (JSON Schema): {"type": "object", "properties": {"a": {"type": "number"}, '
        '"b": {"type": "number"}}, "required": ["a", "b"]}\n\n'
        'To call a tool, reply with only a JSON object of the form {"name": "<tool name>", "arguments": '
        "{<the arguments>}}. To answer without a tool, reply in plain text."
    )
    required = tool_prompt(TOOLS, ToolChoice(mode="required"))
    assert required.endswith('Call one of these tools: reply with only a JSON object of the form {"name": '
                             '"<tool name>", "arguments": {<the arguments>}}.')
    assert "- now: (no description)" in required
    named = tool_prompt(TOOLS, ToolChoice(mode="required", name="now"))
    assert "- add" not in named and named.endswith('Call the tool now: reply with only a JSON object of the form '
                                                   '{"name": "now", "arguments": {<the arguments>}}.')


def test_structured_output_prompt():
    assert structured_output_prompt(None) == "Reply with only a JSON object."
    assert structured_output_prompt({"type": "object"}) == (
        'Reply with only a JSON object that follows this JSON Schema: {"type": "object"}')


def test_with_system_text():
    assert with_system_text([{"role": "user", "content": "q"}], "T") == [
        {"role": "system", "content": "T"}, {"role": "user", "content": "q"}]
    assert with_system_text([{"role": "system", "content": "S"}, {"role": "user", "content": "q"}], "T")[0] == {
        "role": "system", "content": "S\n\nT"}


def test_plain_turns_render_calls_as_taught_and_results_as_user_turns():
    turns = plain_turns([
        {"role": "user", "content": "1+2 and 3+4?"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}},
                                                            {"name": "add", "args": {"a": 3, "b": 4}}]},
        {"role": "tool", "content": "3", "name": "add"},
        {"role": "tool", "content": "boom", "name": "add", "status": "error"},
        {"role": "assistant", "content": "3 and ?"},
    ])
    assert turns == [
        {"role": "user", "content": "1+2 and 3+4?"},
        {"role": "assistant", "content": '{"name": "add", "arguments": {"a": 1, "b": 2}}\n'
                                         '{"name": "add", "arguments": {"a": 3, "b": 4}}'},
        {"role": "user", "content": "Tool result (add): 3\nTool error (add): boom"},
        {"role": "assistant", "content": "3 and ?"},
    ]
    # what a history shows is what the model is taught to write, so it parses back
    assert parse_tool_calls(turns[1]["content"], TOOLS).tool_calls[1].arguments == {"a": 3, "b": 4}


def test_template_renders_tools():
    assert template_renders_tools(lambda messages, tools: json.dumps(tools))
    assert not template_renders_tools(lambda messages, tools: messages[0]["content"])

    def fails(messages, tools):
        raise ValueError("no tools here")

    assert not template_renders_tools(fails)


# -- parsing ------------------------------------------------------------------------------------------------------


def test_a_bare_call_parses_with_an_id():
    reply = parse_tool_calls('{"name": "add", "arguments": {"a": 1, "b": 2}}', TOOLS)
    (call,) = reply.tool_calls
    assert (call.name, call.arguments, reply.content, reply.invalid_tool_calls) == ("add", {"a": 1, "b": 2}, "", ())
    assert call.id.startswith("call_") and len(call.id) == 29
    assert call.to_openai() == {"id": call.id, "type": "function",
                                "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}


@pytest.mark.parametrize("text, names, content", [
    ("The answer is 3.", [], "The answer is 3."),
    ('{"x": 1}', [], '{"x": 1}'),  # JSON that is not a call stays text
    ('[{"name": "now", "arguments": {}}, {"name": "add", "arguments": {"a": 1, "b": 2}}]', ["now", "add"], ""),
    ('{"name": "now", "arguments": {}}\n{"name": "now", "arguments": {}}\nDone.', ["now", "now"], "Done."),
    ('```json\n{"name": "now", "arguments": {}}\n```', ["now"], ""),
    ('Let me check.\n<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>', ["now"], "Let me check."),
    ('{"name": "now", "parameters": {}}', ["now"], ""),  # Llama's spelling
    ('{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}', ["add"], ""),  # OpenAI's: arguments as a string
    ('{"name": "now"}', ["now"], ""),  # no arguments: {}
])
def test_parse_forms(text, names, content):
    reply = parse_tool_calls(text, TOOLS)
    assert [c.name for c in reply.tool_calls] == names
    assert reply.content == content and reply.invalid_tool_calls == ()


@pytest.mark.parametrize("text, name, error", [
    ('{"name": "add", "arguments": {"a": 1', "add", "not valid JSON (cut off?)"),
    ('{"name": "mul", "arguments": {}}', "mul", "no tool named 'mul'"),
    ('{"name": "add", "arguments": {"a": 1}}', "add", "missing required property 'b'"),
    ('{"name": "add", "arguments": [1, 2]}', "add", "arguments must be a JSON object"),
    ('{"name": "add", "arguments": "{nope"}', "add", "arguments are not JSON"),
    ("<tool_call>nothing</tool_call>", None, "holds no JSON tool call"),
])
def test_invalid_calls_are_reported_with_their_error(text, name, error):
    reply = parse_tool_calls(text, TOOLS)
    assert reply.tool_calls == ()
    (bad,) = reply.invalid_tool_calls
    assert isinstance(bad, InvalidToolCall) and bad.name == name and error in bad.error and bad.id.startswith("call_")


def test_without_tools_any_name_passes_and_given_ids_are_used():
    reply = parse_tool_calls('{"name": "anything", "arguments": {"x": 1}}', ids=["id-1"])
    assert reply.tool_calls == (ToolCall(id="id-1", name="anything", arguments={"x": 1}),)


def test_render_tool_call_round_trips():
    text = render_tool_call("get_weather", {"city": "Zürich"})
    assert text == '{"name": "get_weather", "arguments": {"city": "Zürich"}}'
    assert parse_tool_calls(text, TOOLS).tool_calls[0].arguments == {"city": "Zürich"}


# -- streaming -----------------------------------------------------------------------------------------------------


def _stream(text: str, step: int = 1):
    parser = ToolStreamParser(TOOLS)
    deltas = []
    for k in range(0, len(text), step):
        deltas += parser.feed(text[k:k + step])
    more, reply = parser.finish()
    return deltas, deltas + more, reply


def _joined(deltas):
    content = "".join(d.content for d in deltas)
    calls: dict[int, list] = {}
    for d in deltas:
        if d.index is not None:
            entry = calls.setdefault(d.index, [d.id, d.name, ""])
            entry[2] += d.arguments
    return content, calls


@pytest.mark.parametrize("text", [
    '{"name": "add", "arguments": {"a": 1, "b": 2}}',
    "The answer is [[3]].",
    'Let me check. <tool_call>\n{"name": "now", "arguments": {}}\n</tool_call> Done.',
    '[{"name": "now", "arguments": {}}, {"name": "add", "arguments": {"a": 1, "b": 2}}]',
    '```json\n{"name": "now", "arguments": {}}\n```',
    '{"arguments": {}, "name": "now"}',  # keys in the other order: whole at finish
    '{"name": "add", "arguments": {"a": 1',  # cut off
    '{"x": "y"}',
])
@pytest.mark.parametrize("step", [1, 7])
def test_a_stream_agrees_with_the_whole_parse(text, step):
    _, deltas, reply = _stream(text, step)
    content, calls = _joined(deltas)
    assert content.strip() == reply.content
    written = [*reply.tool_calls, *reply.invalid_tool_calls]
    assert [c[0] for c in calls.values()] == [c.id for c in written]  # the ids the stream announced
    assert [c[1] for c in calls.values()] == [c.name for c in written]
    for (_, _, arguments), call in zip(calls.values(), written, strict=True):
        if isinstance(call, ToolCall):
            assert json.loads(arguments) == call.arguments


def test_a_canonical_call_streams_its_arguments_piece_by_piece_and_text_streams_at_once():
    early, _, _ = _stream('{"name": "add", "arguments": {"a": 1, "b": 2}}')
    assert early[0].name == "add" and early[0].id and early[0].arguments == ""
    assert len([d for d in early if d.arguments]) > 5
    parser = ToolStreamParser(TOOLS)
    assert [d.content for d in parser.feed("Hello <tool")] == ["Hello "]  # "<tool" may open a tag: held back
    assert [d.content for d in parser.feed("box> there")] == ["<toolbox> there"]
