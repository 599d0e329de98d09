"""Tool calling and structured output for local models, as pure logic (no model, no framework).

One shape everywhere: a tool is a `ToolSpec` (name, description, JSON Schema of its arguments); the
caller's ``tool_choice`` resolves to a `ToolChoice`; a tool call the model writes is one JSON object

    {"name": "<tool name>", "arguments": {...}}

either as the whole reply (several may follow one another) or inside ``<tool_call>...</tool_call>``
tags, the form of chat templates that render tools (Hermes, Qwen). `parse_tool_calls` turns a reply
into a `ToolReply`: its text, the `ToolCall` values (each with an id) and the `InvalidToolCall`
values (each with the reason). `ToolStreamParser` does the same while text streams in, handing out
text deltas and tool-call deltas. `tool_call_schema` is the JSON Schema a constrained turn must
follow (``backends/constraints.py`` enforces it while decoding).

For chat templates that cannot render tools: `tool_prompt` is the generic tool prompt (its text is
in ``core/prompts.py``), `with_system_text` puts it in the system turn, and `plain_turns` renders
assistant tool calls and tool results as plain role/content turns. `template_renders_tools` tells
the two kinds of template apart.

Adapters (LangChain, LlamaIndex, the server) translate their own tool and message types into these
and back; none of them parses or renders tool calls itself.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import SchemaError, TaleTypeError, TaleValueError
from .prompts import (
    JSON_MODE_PROMPT,
    STRUCTURED_OUTPUT_PROMPT,
    TOOL_ERROR_TURN,
    TOOL_INSTRUCTION_AUTO,
    TOOL_INSTRUCTION_NAMED,
    TOOL_INSTRUCTION_REQUIRED,
    TOOL_PROMPT,
    TOOL_PROMPT_LINE,
    TOOL_RESULT_TURN,
)
from .schemas import check_json_schema, closed_schema, schema_errors

__all__ = [
    "InvalidToolCall",
    "ToolCall",
    "ToolChoice",
    "ToolReply",
    "ToolSpec",
    "ToolStreamDelta",
    "ToolStreamParser",
    "new_call_id",
    "parse_tool_calls",
    "plain_turns",
    "render_tool_call",
    "resolve_tool_choice",
    "structured_output_prompt",
    "template_renders_tools",
    "tool_call_schema",
    "tool_prompt",
    "tool_specs",
    "with_system_text",
]

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


# -- tools and the caller's choice -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolSpec:
    """One tool the model may call.

    Attributes:
        name: The tool's name (letters, digits, ``_``, ``.``, ``-``; at most 64 characters).
        description: What it does, shown to the model.
        parameters: JSON Schema of its arguments: an object schema.
    """

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise TaleValueError(
                f"a tool's name must be 1-64 letters, digits, '_', '.' or '-', got {self.name!r}"
            )
        if not isinstance(self.description, str):
            raise TaleTypeError(f"tool {self.name!r}: description must be a str, got {type(self.description).__name__}")
        check_json_schema(self.parameters, f"tool {self.name!r} parameters")
        kind = self.parameters.get("type", "object")
        if kind != "object":
            raise SchemaError(
                f"tool {self.name!r} parameters must be an object schema ({{'type': 'object', 'properties': ...}}), "
                f"got type {kind!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The tool in OpenAI's function-tool form (what chat templates that render tools expect)."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": copy.deepcopy(dict(self.parameters)),
        }}


def _tool_spec(tool: Any, where: str) -> ToolSpec:
    if isinstance(tool, ToolSpec):
        return tool
    if not isinstance(tool, Mapping):
        raise TaleTypeError(
            f"{where} must be a tool schema (a dict in OpenAI's form {{'type': 'function', 'function': "
            f"{{'name', 'description', 'parameters'}}}}), got {type(tool).__name__}"
        )
    body = tool.get("function") if tool.get("type") == "function" and "function" in tool else tool
    if not isinstance(body, Mapping) or not isinstance(body.get("name"), str):
        raise TaleValueError(
            f"{where} has no function name; give {{'type': 'function', 'function': {{'name': ..., 'parameters': "
            f"...}}}} or {{'name': ..., 'parameters': ...}}, got keys {sorted(tool)}"
        )
    parameters = body.get("parameters", body.get("input_schema"))
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    try:
        return ToolSpec(name=body["name"], description=body.get("description") or "", parameters=parameters)
    except (SchemaError, TaleValueError, TaleTypeError) as exc:
        raise type(exc)(f"{where}: {exc}") from None


def tool_specs(tools: Iterable[Any], where: str = "tools") -> tuple[ToolSpec, ...]:
    """`ToolSpec` values from OpenAI-style tool schemas (``{"type": "function", "function": {...}}``), bare
    function schemas (``{"name", "description", "parameters"}``) or `ToolSpec` values.

    A tool given twice (equal but for titles and descriptions, e.g. a pydantic model and its JSON
    Schema) is kept once, the first time.

    Raises:
        SchemaError: a tool's parameters are not an object JSON Schema (the message names the tool).
        TaleValueError: a schema has no name, or two different tools share one.
        TaleTypeError: a tool is not a dict.
    """
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Iterable):
        raise TaleTypeError(f"{where} must be a list of tool schemas, got {type(tools).__name__}")
    seen: dict[str, ToolSpec] = {}
    for i, tool in enumerate(tools):
        spec = _tool_spec(tool, f"{where}[{i}]")
        first = seen.setdefault(spec.name, spec)
        if first is not spec and _bare(first.parameters) != _bare(spec.parameters):
            raise TaleValueError(
                f"{where} has two different tools named {spec.name!r}; tool names must be unique"
            )
    return tuple(seen.values())


#: Schema keywords that annotate and never change which values are valid.
_ANNOTATIONS = frozenset({"title", "description", "examples", "$comment"})


def _bare(schema: Any) -> Any:
    """``schema`` without annotations (one tool given twice, as a class and as its schema, is one tool)."""
    if isinstance(schema, Mapping):
        return {k: _bare(v) if k not in ("properties", "$defs", "definitions") else {n: _bare(x) for n, x in v.items()}
                for k, v in schema.items() if k not in _ANNOTATIONS}
    if isinstance(schema, list):
        return [_bare(v) for v in schema]
    return schema


ToolMode = Literal["auto", "none", "required"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolChoice:
    """What the model must do with its tools on one turn.

    Attributes:
        mode: ``"auto"`` (call a tool or answer in text), ``"none"`` (answer in text; the tools are
            not offered) or ``"required"`` (call a tool: ``name`` if set, else any of them).
        name: The one tool that must be called (``mode="required"`` only).
    """

    mode: ToolMode = "auto"
    name: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "none", "required"):
            raise TaleValueError(f"ToolChoice.mode must be 'auto', 'none' or 'required', got {self.mode!r}")
        if self.name is not None and self.mode != "required":
            raise TaleValueError("ToolChoice.name is only allowed with mode='required'")

    @property
    def required(self) -> bool:
        """Whether this turn must be a tool call (so it can be constrained to `tool_call_schema`)."""
        return self.mode == "required"

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "name": self.name}


def resolve_tool_choice(choice: Any, tools: Sequence[ToolSpec]) -> ToolChoice:
    """The `ToolChoice` for a caller's ``tool_choice``.

    Accepted: None or ``"auto"``; ``"none"`` or False; ``"any"``, ``"required"`` or True (any tool;
    with one tool, that one); a tool's name; OpenAI's ``{"type": "function", "function": {"name": ...}}``;
    ``{"type": "tool", "name": ...}``; a `ToolChoice`.

    Raises:
        TaleValueError: a name that is not one of ``tools`` (the message lists them), an unknown
            string, or a required call with no tools.
    """
    names = [t.name for t in tools]
    if isinstance(choice, ToolChoice):
        resolved = choice
    elif choice is None or choice == "auto":
        resolved = ToolChoice(mode="auto")
    elif choice is False or choice == "none":
        resolved = ToolChoice(mode="none")
    elif choice is True or choice in ("any", "required"):
        resolved = ToolChoice(mode="required")
    elif isinstance(choice, str):
        resolved = ToolChoice(mode="required", name=choice)
    elif isinstance(choice, Mapping):
        body = choice.get("function") if isinstance(choice.get("function"), Mapping) else choice
        name = body.get("name")
        if not isinstance(name, str):
            raise TaleValueError(
                f"tool_choice {dict(choice)!r} names no tool; give {{'type': 'function', 'function': {{'name': ...}}}}"
            )
        resolved = ToolChoice(mode="required", name=name)
    else:
        raise TaleTypeError(
            f"tool_choice must be 'auto', 'none', 'any', 'required', a tool's name or a dict naming one, got {choice!r}"
        )
    if resolved.name is not None and resolved.name not in names:
        raise TaleValueError(
            f"tool_choice names the tool {resolved.name!r}, which is not among the bound tools {names}; "
            "bind it, or pass 'any' to let the model pick"
        )
    if resolved.required and not tools:
        raise TaleValueError(f"tool_choice={choice!r} requires a tool call, but no tools are bound")
    if resolved.required and resolved.name is None and len(names) == 1:
        resolved = ToolChoice(mode="required", name=names[0])
    return resolved


def tool_call_schema(tools: Sequence[ToolSpec], choice: ToolChoice) -> dict[str, Any] | None:
    """The JSON Schema a constrained tool-call turn must follow, or None when the turn is free.

    For ``mode="required"``: one object ``{"name": <const>, "arguments": <the tool's parameters>}``
    per allowed tool (``anyOf`` when there are several), with objects closed (`closed_schema`).
    """
    if not choice.required:
        return None
    allowed = [t for t in tools if choice.name is None or t.name == choice.name]
    options = []
    for tool in allowed:
        arguments = closed_schema(dict(tool.parameters))
        if not arguments.get("properties") and "additionalProperties" not in arguments:
            arguments["additionalProperties"] = False  # a tool without arguments takes {}
        arguments.setdefault("type", "object")
        options.append({
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": arguments},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })
    return options[0] if len(options) == 1 else {"anyOf": options}


# -- prompts and turns for templates that cannot render tools ---------------------------------------


def tool_prompt(tools: Sequence[ToolSpec], choice: ToolChoice) -> str:
    """The generic tool prompt (``core/prompts.py``): the tools, one line each, and how to call them."""
    lines = "\n".join(
        TOOL_PROMPT_LINE.format(name=t.name, description=t.description.strip() or "(no description)",
                                parameters=json.dumps(t.parameters, ensure_ascii=False))
        for t in tools if choice.name is None or t.name == choice.name
    )
    instruction = {"auto": TOOL_INSTRUCTION_AUTO, "none": TOOL_INSTRUCTION_AUTO,
                   "required": TOOL_INSTRUCTION_NAMED if choice.name else TOOL_INSTRUCTION_REQUIRED}[choice.mode]
    return TOOL_PROMPT.format(tools=lines, instruction=instruction.format(name=choice.name))


def structured_output_prompt(schema: Mapping[str, Any] | None) -> str:
    """The system text of a structured-output turn: follow ``schema``, or (None) reply with a JSON object."""
    if schema is None:
        return JSON_MODE_PROMPT
    return STRUCTURED_OUTPUT_PROMPT.format(schema=json.dumps(schema, ensure_ascii=False))


def with_system_text(messages: Sequence[Mapping[str, Any]], text: str) -> list[dict[str, Any]]:
    """``messages`` with ``text`` added to the first system turn (after its own text), or as a new first
    system turn when there is none."""
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system":
        own = out[0].get("content") or ""
        out[0]["content"] = f"{own}\n\n{text}" if own else text
    else:
        out.insert(0, {"role": "system", "content": text})
    return out


def render_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """One tool call as the model writes it (the JSON the generic prompt teaches)."""
    return json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False)


def plain_turns(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Turns with tool calls and tool results as plain ``{"role", "content"}`` turns.

    An assistant turn's ``tool_calls`` (each with ``name`` and ``arguments``) are appended to its text,
    one `render_tool_call` per line; a ``"tool"`` turn (``content``, ``name``, and ``status="error"``
    for a failed tool) becomes a user turn `TOOL_RESULT_TURN` (`TOOL_ERROR_TURN`), consecutive results
    joined into one turn. Other turns pass unchanged.
    """
    out: list[dict[str, str]] = []
    previous_tool = False
    for message in messages:
        role, content = message.get("role"), message.get("content") or ""
        if role == "tool":
            template = TOOL_ERROR_TURN if message.get("status") == "error" else TOOL_RESULT_TURN
            text = template.format(name=message.get("name") or "tool", content=content)
            if previous_tool:
                out[-1]["content"] += "\n" + text
            else:
                out.append({"role": "user", "content": text})
            previous_tool = True
            continue
        previous_tool = False
        if role == "assistant" and message.get("tool_calls"):
            calls = [render_tool_call(c["name"], c.get("arguments", c.get("args")) or {})
                     for c in message["tool_calls"]]
            content = "\n".join([content] + calls if content else calls)
        out.append({"role": str(role), "content": content})
    return out


#: A tool name no real tool has: a template that renders tools shows it.
_PROBE = "tale_probe_tool_4f1c"


def template_renders_tools(render: Callable[[list[dict[str, str]], list[dict[str, Any]]], str]) -> bool:
    """Whether a chat template shows the tools it is given.

    ``render(messages, tools)`` renders one conversation with OpenAI-form tools to text (a tokenizer's
    ``apply_chat_template(messages, tools=tools, tokenize=False)``). A template that fails on tools
    counts as one that cannot render them.
    """
    probe = ToolSpec(name=_PROBE, description="probe", parameters={"type": "object", "properties": {}}).to_dict()
    try:
        return _PROBE in render([{"role": "user", "content": "hi"}], [probe])
    except Exception:
        return False


# -- parsing what the model wrote --------------------------------------------------------------------


def new_call_id() -> str:
    """A fresh tool-call id (``call_`` and 24 hex digits, OpenAI's shape)."""
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCall:
    """A tool call that parsed and follows its tool's schema.

    Attributes:
        id: Its id (to match the tool's result).
        name: The tool's name.
        arguments: The arguments, a JSON object.
    """

    id: str
    name: str
    arguments: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": copy.deepcopy(self.arguments)}

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's ``tool_calls`` item (arguments as a JSON string)."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)}}


@dataclass(frozen=True, slots=True, kw_only=True)
class InvalidToolCall:
    """A tool call the model wrote that cannot be run.

    Attributes:
        id: Its id.
        name: The tool's name, if one could be read.
        arguments: The arguments as written (text), if any.
        error: Why it is invalid.
    """

    id: str
    name: str | None
    arguments: str | None
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments, "error": self.error}


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolReply:
    """A model reply split into its text and its tool calls.

    Attributes:
        content: The text outside any tool call (stripped).
        tool_calls: The valid calls, in order.
        invalid_tool_calls: The calls that cannot be run, each with its error.
    """

    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    invalid_tool_calls: tuple[InvalidToolCall, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"content": self.content, "tool_calls": [c.to_dict() for c in self.tool_calls],
                "invalid_tool_calls": [c.to_dict() for c in self.invalid_tool_calls]}


_DECODER = json.JSONDecoder()
_CALL_START = re.compile(r'\s*(\{\s*"name"\s*:|\[\s*\{\s*"name"\s*:)')
_FENCE = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?```\s*$", re.S)


def _call_from(obj: Any, raw: str, tools: Mapping[str, ToolSpec] | None, call_id: str) -> ToolCall | InvalidToolCall:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return InvalidToolCall(id=call_id, name=None, arguments=raw, error='a tool call needs a "name" string')
    name = obj["name"]
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # OpenAI's form: arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            return InvalidToolCall(id=call_id, name=name, arguments=args, error=f"arguments are not JSON: {exc}")
    written = json.dumps(args, ensure_ascii=False)
    if not isinstance(args, dict):
        return InvalidToolCall(id=call_id, name=name, arguments=written, error="arguments must be a JSON object")
    if tools is not None:
        if name not in tools:
            return InvalidToolCall(id=call_id, name=name, arguments=written,
                                   error=f"no tool named {name!r}; the tools are {sorted(tools)}")
        try:
            problems = schema_errors(args, tools[name].parameters)
        except SchemaError:  # a reference the schema cannot resolve: nothing to check against
            problems = []
        if problems:
            return InvalidToolCall(id=call_id, name=name, arguments=written,
                                   error=f"arguments do not follow the schema of {name!r}: {'; '.join(problems[:5])}")
    return ToolCall(id=call_id, name=name, arguments=args)


def _partial_name(raw: str) -> str | None:
    match = re.match(r'\s*\[?\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"', raw)
    return match.group(1) if match else None


def _calls_in(raw: str, tools: Mapping[str, ToolSpec] | None, ids: Callable[[], str]) -> tuple[list, str]:
    """The calls at the start of ``raw`` (JSON objects or a list of them, one after another) and the text after."""
    calls: list[ToolCall | InvalidToolCall] = []
    pos = 0
    while _CALL_START.match(raw, pos):
        start = len(raw) - len(raw[pos:].lstrip())
        try:
            obj, end = _DECODER.raw_decode(raw, start)
        except json.JSONDecodeError as exc:
            calls.append(InvalidToolCall(id=ids(), name=_partial_name(raw[start:]), arguments=raw[start:].strip(),
                                         error=f"the tool call is not valid JSON (cut off?): {exc.msg}"))
            return calls, ""
        for item in obj if isinstance(obj, list) else [obj]:
            calls.append(_call_from(item, json.dumps(item, ensure_ascii=False), tools, ids()))
        pos = end
    return calls, raw[pos:]


def parse_tool_calls(text: str, tools: Sequence[ToolSpec] | None = None, *,
                     ids: Sequence[str] | None = None) -> ToolReply:
    """Split a reply into text and tool calls (see the module docstring for the forms recognised).

    A reply is a tool call when it starts with ``{"name":`` (or ``[{"name":``), a code fence around it
    allowed; ``<tool_call>`` blocks are recognised anywhere. A call is invalid when it is not JSON
    (cut off by a cap, say), has no name, names no tool in ``tools``, or its arguments are not an
    object following the tool's schema (`schema_errors`). With ``tools=None`` any name passes and
    arguments are not checked.

    Args:
        text: The model's reply.
        tools: The bound tools.
        ids: Ids for the calls, in order (a stream that already announced them); new ones past the end.
    """
    by_name = {t.name: t for t in tools} if tools is not None else None
    given = list(ids or [])

    def next_id() -> str:
        return given.pop(0) if given else new_call_id()

    calls: list[ToolCall | InvalidToolCall] = []
    if TOOL_CALL_OPEN in text:
        parts, rest = [], text
        while TOOL_CALL_OPEN in rest:
            before, _, after = rest.partition(TOOL_CALL_OPEN)
            parts.append(before)
            body, _, rest = after.partition(TOOL_CALL_CLOSE)
            found, trailing = _calls_in(body, by_name, next_id)
            if not found:
                found = [InvalidToolCall(id=next_id(), name=_partial_name(body), arguments=body.strip(),
                                         error="the tool-call block holds no JSON tool call")]
            elif trailing.strip():
                found.append(InvalidToolCall(id=next_id(), name=None, arguments=trailing.strip(),
                                             error="text after the tool call inside the tool-call block"))
            calls += found  # an unclosed last block whose JSON is complete still counts
        parts.append(rest)
        content = "".join(parts)
    else:
        fenced = _FENCE.match(text)
        body = fenced.group(1) if fenced and _CALL_START.match(fenced.group(1)) else text
        calls, content = _calls_in(body, by_name, next_id)
        if not calls:
            content = text
    return ToolReply(
        content=content.strip(),
        tool_calls=tuple(c for c in calls if isinstance(c, ToolCall)),
        invalid_tool_calls=tuple(c for c in calls if isinstance(c, InvalidToolCall)),
    )


# -- streaming ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolStreamDelta:
    """A piece of a streamed reply: text (``content``) or a piece of tool call ``index``.

    A tool call's first delta carries its ``id`` and ``name``; later ones carry more of its
    ``arguments`` text. Joined per index, the argument pieces are the call's arguments as JSON.
    """

    content: str = ""
    index: int | None = None
    id: str | None = None
    name: str | None = None
    arguments: str = ""


_CANONICAL = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


class ToolStreamParser:
    """Splits a streamed reply into text deltas and tool-call deltas as it arrives.

    Text streams as it comes, except a tail that might open a tool call, held until it is known. A
    reply that starts with ``{`` is a tool call; so is a ``<tool_call>`` block anywhere. A call in
    the form the generic prompt teaches (``{"name": ..., "arguments": ...}``, keys in that order)
    streams its arguments piece by piece; any other form is handed out whole at `finish`. `finish`
    parses the whole reply with `parse_tool_calls` (the ids streamed so far are kept) and returns
    the deltas still owed and the final `ToolReply`.

    Args:
        tools: The bound tools (as in `parse_tool_calls`).
    """

    def __init__(self, tools: Sequence[ToolSpec] | None = None) -> None:
        self.tools = tools
        self.text = ""
        self.ids: list[str] = []
        self._pos = 0  # where the next unhandled character is
        self._mode = "start"  # start | text | call | opaque
        self._call_start = 0
        self._args_start: int | None = None
        self._depth = 0
        self._in_string = self._escape = False
        self._streamed: dict[int, tuple[str, int, int]] = {}  # index -> (name, args start, args end so far)
        self._sent = ""  # the text handed out so far

    def feed(self, text: str) -> list[ToolStreamDelta]:
        """The deltas that ``text`` (the next piece of the reply) completes."""
        self.text += text
        out: list[ToolStreamDelta] = []
        while True:
            before = (self._mode, self._pos)
            out += self._step()
            if (self._mode, self._pos) == before:
                self._sent += "".join(d.content for d in out)
                return out

    def _step(self) -> list[ToolStreamDelta]:
        text, pos = self.text, self._pos
        if self._mode == "start":
            stripped = text[pos:].lstrip()
            if not stripped:
                return []
            if stripped.startswith("{"):
                self._open_call(len(text) - len(stripped))
                return []
            if len(stripped) < len(TOOL_CALL_OPEN) and TOOL_CALL_OPEN.startswith(stripped):
                return []  # may still become a tag
            opening = _opening_state(stripped)
            if opening == "maybe":
                return []
            self._mode = "opaque" if opening == "yes" else "text"  # a list of calls or a fenced call: whole at finish
            return []
        if self._mode == "text":
            found = text.find(TOOL_CALL_OPEN, pos)
            if found >= 0:
                out = [ToolStreamDelta(content=text[pos:found])] if found > pos else []
                self._open_call(found + len(TOOL_CALL_OPEN))
                return out
            keep = next((k for k in range(min(len(TOOL_CALL_OPEN) - 1, len(text) - pos), 0, -1)
                         if TOOL_CALL_OPEN.startswith(text[len(text) - k:])), 0)
            end = len(text) - keep
            if end > pos:
                self._pos = end
                return [ToolStreamDelta(content=text[pos:end])]
            return []
        if self._mode == "call":
            return self._step_call()
        return []  # opaque: everything waits for finish

    def _open_call(self, start: int) -> None:
        self._mode, self._call_start = "call", start
        self._args_start = None
        self._pos = start

    def _step_call(self) -> list[ToolStreamDelta]:
        text = self.text
        if self._args_start is None:
            match = _CANONICAL.match(text, self._call_start)
            if match is None:
                if _partial_canonical(text[self._call_start:].lstrip()):
                    return []  # not enough text yet
                self._mode = "opaque"
                return []
            if not text[match.end():].lstrip():
                return []
            index = len(self._streamed)
            call_id = new_call_id()
            self.ids.append(call_id)
            name = json.loads(f'"{match.group(1)}"')
            self._args_start = len(text) - len(text[match.end():].lstrip())
            self._streamed[index] = (name, self._args_start, self._args_start)
            self._depth, self._in_string, self._escape = 0, False, False
            self._pos = self._args_start
            return [ToolStreamDelta(index=index, id=call_id, name=name)]
        index = len(self._streamed) - 1
        name, start, _ = self._streamed[index]
        pos = self._pos
        end = None
        for k in range(pos, len(text)):
            ch = text[k]
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    end = k + 1
                    break
        stop = end if end is not None else len(text)
        out = [ToolStreamDelta(index=index, arguments=text[pos:stop])] if stop > pos else []
        self._streamed[index] = (name, start, stop)
        self._pos = stop
        if end is not None:  # the arguments are complete: the rest of this call waits for finish
            self._mode = "opaque"
        return out

    def finish(self) -> tuple[list[ToolStreamDelta], ToolReply]:
        """The deltas still owed and the whole reply, parsed.

        A call streamed piece by piece gets nothing more (its arguments text is what the model wrote,
        whole or cut off); the others come out whole, with `ToolCall.arguments` as JSON (or, for an
        invalid call, the text as written). Text owed is the reply's text past what was sent.
        """
        reply = parse_tool_calls(self.text, self.tools, ids=self.ids)
        out: list[ToolStreamDelta] = []
        written = sorted([*reply.tool_calls, *reply.invalid_tool_calls],
                         key=lambda c: self.ids.index(c.id) if c.id in self.ids else len(self.ids))
        for index, call in enumerate(written):
            if index not in self._streamed:
                arguments = json.dumps(call.arguments, ensure_ascii=False) if isinstance(call, ToolCall) \
                    else call.arguments or ""
                out.append(ToolStreamDelta(index=index, id=call.id, name=call.name, arguments=arguments))
        sent = self._sent.lstrip()
        owed = reply.content[len(sent):] if reply.content.startswith(sent) else ""
        if owed:
            out.insert(0, ToolStreamDelta(content=owed))
        return out, reply


_OPENING = ("{", '"name"', ":", None, ",", '"arguments"', ":")  # None: the name, a JSON string
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_PARTIAL_STRING = re.compile(r'"(?:[^"\\]|\\.)*\\?')


_LIST_OPENING = re.compile(r'\[\s*\{\s*"name"|```(?:json)?\s*(?:\[\s*)?\{\s*"name"')


def _opening_state(head: str) -> str:
    """``"yes"`` if ``head`` opens a list of calls or a fenced call, ``"maybe"`` while it still may, else ``"no"``."""
    if _LIST_OPENING.match(head):
        return "yes"
    for full in ('[{"name"', '```json\n{"name"', '```json\n[{"name"', '```\n{"name"'):
        squeezed = re.sub(r"\s+", "", head) if not head.startswith("```") else head.replace(" ", "")
        if full.replace("\n", "").startswith(squeezed.replace("\n", "")):
            return "maybe"
    return "no"


def _partial_canonical(head: str) -> bool:
    """Whether ``head`` may still grow into the canonical ``{"name": "...", "arguments": `` opening."""
    pos = 0
    for token in _OPENING:
        while pos < len(head) and head[pos].isspace():
            pos += 1
        if pos == len(head):
            return True
        if token is None:
            match = _STRING.match(head, pos)
            if match is None:
                return _PARTIAL_STRING.fullmatch(head, pos) is not None
            pos = match.end()
        elif head.startswith(token, pos):
            pos += len(token)
        else:
            return token.startswith(head[pos:])
    return True
