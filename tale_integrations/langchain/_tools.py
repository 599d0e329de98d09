"""`ChatTaleHF`'s tool calling and structured output: ``bind_tools`` and ``with_structured_output``
as LangChain defines them, and LangChain's side of one turn that uses them.

How such a turn runs (prompt, constraint, budget, parsing) is decided once, framework-free, by
`backends.hf.tool_turns.ToolTurn` (shared with the LlamaIndex adapter); this module only translates
LangChain's types into it and back:

* **Call.** `tool_turn` reads the bound keywords (`TOOL_KWARGS`); ``_chat_messages.to_turns`` turns
  LangChain messages into the plain turns `ToolTurn.conversation` takes (tool calls and results kept).
* **Reply.** Tool calls are parsed into ``AIMessage.tool_calls`` (with ids) and
  ``invalid_tool_calls`` (with the reason); streams carry ``tool_call_chunks``.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any, Literal

from langchain_core.messages import AIMessageChunk
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.output_parsers import JsonOutputKeyToolsParser, JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import PydanticToolsParser
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from ..backends.hf.tool_turns import TOOL_KWARGS, ToolTurn
from ..backends.hf.tool_turns import openai_tools as shared_openai_tools
from ..core.errors import SchemaError, TaleValueError
from ..core.schemas import check_json_schema
from ..core.tools import ToolChoice, ToolReply, ToolStreamDelta, resolve_tool_choice, tool_specs

__all__ = [
    "TOOL_KWARGS", "ToolTurn", "bind_tools", "delta_chunk", "message_fields", "openai_tools",
    "tool_turn", "with_structured_output",
]

StructuredMethod = Literal["json_schema", "function_calling", "json_mode"]


# -- binding --------------------------------------------------------------------------------------------


def openai_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """LangChain tools (BaseTool, typed function, pydantic model or dict) as OpenAI-form tool schemas."""
    return shared_openai_tools(tools, _openai_tool, kinds="BaseTool, function, pydantic model or dict")


def _openai_tool(i: int, tool: Any) -> dict[str, Any]:
    if isinstance(tool, dict) and tool.get("type") == "function" and "function" in tool:
        return tool  # already OpenAI's form: checked by the core, not rewritten
    try:
        return convert_to_openai_tool(tool)
    except Exception as exc:
        raise SchemaError(
            f"tools[{i}] is not a tool LangChain can describe ({exc}); give a BaseTool, a typed function with "
            "a docstring, a pydantic model, or a dict {'name', 'description', 'parameters': <JSON Schema>}"
        ) from None


def bind_tools(chat: Any, tools: Sequence[Any], *, tool_choice: Any = None, strict: bool | None = None,
               parallel_tool_calls: bool | None = None, **kwargs: Any) -> Runnable:
    """`ChatTaleHF.bind_tools`: the tools and choice are checked now and bound to the model.

    Raises:
        SchemaError: a tool's parameters are not an object JSON Schema, or (``strict``) use keywords
            the constraint cannot enforce.
        TaleValueError: ``tool_choice`` names a tool that is not bound, or asks for a call with no tools.
    """
    converted = openai_tools(tools)
    specs = tool_specs(converted)
    choice = resolve_tool_choice(tool_choice, specs)
    if _constrained(chat, strict) and choice.mode != "none":
        from ..backends.constraints import validate_json_schema

        for spec in specs:
            validate_json_schema(dict(spec.parameters), where=f"tool {spec.name!r} parameters")
    bound = {"tools": [s.to_dict() for s in specs], "tool_choice": choice.to_dict()}
    if strict is not None:
        bound["strict"] = strict
    if parallel_tool_calls is not None:
        bound["parallel_tool_calls"] = parallel_tool_calls
    return chat.bind(**bound, **kwargs)


def _constrained(chat: Any, strict: bool | None) -> bool:
    return bool(chat.constrain if strict is None else strict)


def with_structured_output(chat: Any, schema: Any = None, *, method: StructuredMethod = "json_schema",
                           include_raw: bool = False, strict: bool | None = None, **kwargs: Any) -> Runnable:
    """`ChatTaleHF.with_structured_output`, as LangChain defines it.

    Args:
        schema: A pydantic model, TypedDict, JSON Schema dict or OpenAI tool dict; for
            ``"json_mode"`` it may be None (the output is then any JSON object, parsed to a dict).
        method: ``"json_schema"`` (the reply is the JSON document), ``"function_calling"`` (the
            reply is a call of a tool with the schema as its arguments) or ``"json_mode"`` (a JSON
            object; the schema only parses it).
        include_raw: Return ``{"raw": AIMessage, "parsed": ..., "parsing_error": ...}`` instead of
            raising when the output cannot be parsed.
        strict: Hold the output to the schema while decoding (default: the model's ``constrain``).

    Raises:
        SchemaError: the schema is not JSON Schema, or (constrained) uses keywords the constraint
            cannot enforce.
        TaleValueError: an unknown method, or no schema where one is needed.
    """
    if method not in ("json_schema", "function_calling", "json_mode"):
        raise TaleValueError(f"method must be 'json_schema', 'function_calling' or 'json_mode', got {method!r}")
    if schema is None and method != "json_mode":
        raise TaleValueError(f"with_structured_output(method={method!r}) needs a schema; only 'json_mode' takes None")
    pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
    if method == "function_calling":
        name = convert_to_openai_tool(schema)["function"]["name"]
        llm = bind_tools(chat, [schema], tool_choice=name, strict=strict, ls_structured_output_format={
            "kwargs": {"method": method, "strict": strict}, "schema": schema}, **kwargs)
        parser: Runnable = PydanticToolsParser(tools=[schema], first_tool_only=True) if pydantic \
            else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
    else:
        json_schema = None
        if schema is not None:
            try:
                json_schema = convert_to_json_schema(schema)
            except Exception as exc:
                raise SchemaError(f"schema cannot be read as JSON Schema ({exc}); give a pydantic model, a "
                                  "TypedDict or a JSON Schema dict") from None
            check_json_schema(json_schema, "schema")
        if method == "json_schema" and _constrained(chat, strict):
            from ..backends.constraints import validate_json_schema

            validate_json_schema(json_schema, where="schema")
        response_format: dict[str, Any] = {"type": "json_object"} if method == "json_mode" else {
            "type": "json_schema", "json_schema": {"name": json_schema.get("title", "output"), "schema": json_schema}}
        bound = {"response_format": response_format,
                 "ls_structured_output_format": {"kwargs": {"method": method, "strict": strict}, "schema": schema}}
        if strict is not None:
            bound["strict"] = strict
        llm = chat.bind(**bound, **kwargs)
        parser = PydanticOutputParser(pydantic_object=schema) if pydantic else JsonOutputParser()
    if include_raw:
        assign = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        fallback = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | assign.with_fallbacks([fallback], exception_key="parsing_error")
    return llm | parser


# -- one turn (`backends.hf.tool_turns.ToolTurn`) -------------------------------------------------------


def tool_turn(chat: Any, options: dict[str, Any]) -> ToolTurn | None:
    """The turn for a call's tool keywords (`TOOL_KWARGS`, popped from the call), or None when it uses none."""
    if not any(options.get(k) is not None for k in ("tools", "response_format")):
        return None
    return ToolTurn.for_call(chat._generator, tools=options.get("tools"),
                             tool_choice=_choice_from(options.get("tool_choice")),
                             response_format=options.get("response_format"),
                             constrain=_constrained(chat, options.get("strict")))


def _choice_from(bound: Any) -> Any:
    """A tool choice as `bind_tools` binds it (``ToolChoice.to_dict``), or as a caller passed it."""
    if isinstance(bound, dict) and set(bound) == {"mode", "name"}:
        return ToolChoice(mode=bound["mode"], name=bound["name"])
    return bound


def message_fields(reply: ToolReply) -> dict[str, Any]:
    """An `AIMessage`'s content, tool_calls and invalid_tool_calls for a parsed reply."""
    return {
        "content": reply.content,
        "tool_calls": [tool_call(name=c.name, args=c.arguments, id=c.id) for c in reply.tool_calls],
        "invalid_tool_calls": [invalid_tool_call(name=c.name, args=c.arguments, id=c.id, error=c.error)
                               for c in reply.invalid_tool_calls],
    }


def delta_chunk(delta: ToolStreamDelta) -> AIMessageChunk:
    """One streamed piece as an `AIMessageChunk` (text, or a ``tool_call_chunks`` item)."""
    if delta.index is None:
        return AIMessageChunk(content=delta.content)
    return AIMessageChunk(content="", tool_call_chunks=[
        tool_call_chunk(name=delta.name, args=delta.arguments, id=delta.id, index=delta.index)])

