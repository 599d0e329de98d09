"""`TaleHFLLM`'s function calling and structured output: LlamaIndex's tool and message types translated
to the core's (``core/tools.py``) and back.

How one turn with tools or structured output runs (prompt, constraint, budget, parsing) is decided
once, framework-free, by `backends.hf.tool_turns.ToolTurn` (shared with the LangChain adapter):
`pop_tool_turn` builds it from a call's keywords, ``_llm_messages.to_turns`` gives it plain turns,
and `tool_response` / `tool_stream` / `atool_stream` put its parsed reply into LlamaIndex's types.

* **Offering tools.** `prepare_chat_with_tools` (``FunctionCallingLLM._prepare_chat_with_tools``)
  turns ``BaseTool`` values into OpenAI-form tool schemas and LlamaIndex's ``tool_choice`` /
  ``tool_required`` into a `core.tools.ToolChoice`: ``tool_required=True`` with no choice means "call
  a tool" (with one tool, that one), ``"auto"``/None means "call a tool or answer in text",
  ``"none"`` offers none (the call runs as a plain chat: earlier calls and results are rendered as
  text lines, as without tools, which keeps a small model from writing another call), a tool's name
  (``FunctionAgent(initial_tool_choice=...)``) calls that one.
* **Prompt.** When the model's chat template renders tools they go to the template; otherwise the
  generic tool prompt goes to the system turn. Earlier tool calls (`ToolCallBlock`) and tool results
  become plain turns (`core.tools.plain_turns`; a result is named after the call its
  ``tool_call_id`` answers).
* **Constraint** (``strict=True`` per call, or the LLM's ``constrain`` field): a turn that must call a
  tool is held to `core.tools.tool_call_schema`; ``"auto"`` to "a tool call or plain text that does
  not start with ``{``"; a structured-output turn to its schema. Such a turn gets no token budget, so
  budget enforcement never cuts its JSON.
* **Reply.** Valid calls become `ToolCallBlock` values (with ids) after the text block, and are
  repeated in OpenAI's form in ``message.additional_kwargs["tool_calls"]`` (what LlamaIndex's
  structured streaming reads); calls that cannot be run (not JSON, unknown tool, arguments off the
  schema) are listed with the reason in ``additional_kwargs["invalid_tool_calls"]`` and are never
  returned by `get_tool_calls`. Streams carry the text as ``delta`` and the calls so far as blocks
  (their arguments as the JSON text written so far); the last response holds the parsed reply.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole, TextBlock, ToolCallBlock
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.llms.utils import parse_partial_json

from ..backends.hf.tool_turns import TOOL_KWARGS, ToolTurn
from ..backends.hf.tool_turns import openai_tools as shared_openai_tools
from ..core.errors import TaleTypeError, TaleValueError
from ..core.tools import ToolReply, ToolSpec, ToolStreamDelta, ToolStreamParser, resolve_tool_choice, tool_specs

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

__all__ = [
    "TOOL_KWARGS", "ToolTurn", "atool_stream", "get_tool_calls", "openai_tools", "pop_tool_turn",
    "prepare_chat_with_tools", "response_format_for", "single_call", "structured_text", "tool_response", "tool_stream",
]


def openai_tools(tools: Sequence[Any], where: str = "tools") -> list[Any]:
    """LlamaIndex tools (``BaseTool``: ``FunctionTool``, ``QueryEngineTool``...) or OpenAI-form dicts as
    OpenAI-form tool schemas (``{"type": "function", "function": {...}}``)."""

    def convert(i: int, tool: Any) -> Any:
        metadata = getattr(tool, "metadata", None)
        if isinstance(tool, (Mapping, ToolSpec)):
            return tool  # checked by the core
        if metadata is not None and hasattr(metadata, "to_openai_tool"):
            return metadata.to_openai_tool(skip_length_check=True)
        raise TaleTypeError(f"{where}[{i}] must be a LlamaIndex BaseTool (FunctionTool.from_defaults(fn), say) "
                            f"or an OpenAI tool dict, got {type(tool).__name__}")

    return shared_openai_tools(tools, convert, kinds="BaseTool or OpenAI tool dicts", where=where)


def prepare_chat_with_tools(tools: Sequence[BaseTool], user_msg: str | ChatMessage | None,
                            chat_history: Sequence[ChatMessage] | None, *, tool_required: bool,
                            tool_choice: Any, strict: bool | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the `chat` call that offers ``tools`` (see the module docstring).

    Raises:
        SchemaError: a tool's parameters are not an object JSON Schema.
        TaleValueError: ``tool_choice`` names a tool that is not among ``tools``.
    """
    specs = tool_specs(openai_tools(tools))
    if tool_choice is None and tool_required:
        tool_choice = "required"
    choice = resolve_tool_choice(tool_choice, specs) if specs else None  # no tools: a plain turn
    messages = list(chat_history or [])
    if user_msg is not None:
        messages.append(ChatMessage(role=MessageRole.USER, content=user_msg) if isinstance(user_msg, str)
                        else user_msg)
    prepared = {"messages": messages, "tools": [s.to_dict() for s in specs], "tool_choice": choice, **kwargs}
    if strict is not None:
        prepared["strict"] = strict
    return prepared


def response_format_for(output_cls: type) -> dict[str, Any]:
    """The ``response_format`` of a structured-output call for a pydantic class."""
    schema = output_cls.model_json_schema()
    return {"type": "json_schema", "json_schema": {"name": schema.get("title", output_cls.__name__), "schema": schema}}


# -- one turn -------------------------------------------------------------------------------------------------


def pop_tool_turn(generator: Any, kwargs: dict[str, Any], *, constrain: bool) -> ToolTurn | None:
    """Pop a call's tool keywords (`TOOL_KWARGS`) from ``kwargs``: the turn they describe, or None
    when the call is a plain one (no tools, no ``response_format``, or ``tool_choice="none"``).

    Raises:
        SchemaError: a tool or response schema that is not JSON Schema, or (constrained) one the
            constraint cannot enforce.
        TaleValueError: a ``tool_choice`` naming a tool that is not offered, a bad ``response_format``.
    """
    options = {k: kwargs.pop(k) for k in TOOL_KWARGS if k in kwargs}
    if not options.get("tools") and options.get("response_format") is None:
        return None  # no tools offered (an agent with none passes an empty list): a plain turn
    strict = options.get("strict")
    response_format = options.get("response_format")
    turn = ToolTurn.for_call(generator, tools=None if response_format is not None else openai_tools(options["tools"]),
                             tool_choice=options.get("tool_choice"), response_format=response_format,
                             constrain=bool(constrain if strict is None else strict))
    if response_format is None and turn.choice.mode == "none":
        # No call can be made: a plain turn, the history's calls and results as text lines (as in a
        # chat without tools). A small model shown its earlier calls as JSON writes another one.
        return None
    return turn


def tool_response(turn: ToolTurn, response: ChatResponse) -> ChatResponse:
    """``response`` (a whole answer) with its text split into text and tool-call blocks."""
    if not turn.parses_calls:
        return response
    return _with_reply(response, turn.reply(response.message.content or ""))


def tool_stream(turn: ToolTurn, responses: Iterator[ChatResponse]) -> Iterator[ChatResponse]:
    """A tool turn's stream: ``delta`` carries only text; calls appear as blocks as they are written."""
    parser = turn.stream_parser()
    if parser is None:
        yield from responses
        return
    pending, state = None, _StreamState(parser)
    for response in responses:
        if pending is not None:
            yield pending
        pending = state.feed(response)
    if pending is not None:
        yield state.finish(pending)


async def atool_stream(turn: ToolTurn, responses: AsyncIterator[ChatResponse]) -> AsyncIterator[ChatResponse]:
    """Async twin of `tool_stream`."""
    parser = turn.stream_parser()
    if parser is None:
        async for response in responses:
            yield response
        return
    pending, state = None, _StreamState(parser)
    async for response in responses:
        if pending is not None:
            yield pending
        pending = state.feed(response)
    if pending is not None:
        yield state.finish(pending)


class _StreamState:
    """The text and calls of a streamed tool turn so far (one `ToolStreamParser`)."""

    def __init__(self, parser: ToolStreamParser) -> None:
        self.parser = parser
        self.content = ""
        self.calls: dict[int, dict[str, str | None]] = {}  # index -> id, name, arguments text so far

    def _take(self, deltas: list[ToolStreamDelta]) -> str:
        text = ""
        for d in deltas:
            if d.index is None:
                text += d.content
                continue
            call = self.calls.setdefault(d.index, {"id": d.id, "name": d.name, "arguments": ""})
            call["arguments"] = (call["arguments"] or "") + d.arguments
        self.content += text
        return text

    def feed(self, response: ChatResponse) -> ChatResponse:
        delta = self._take(self.parser.feed(response.delta or ""))
        blocks = [ToolCallBlock(tool_call_id=c["id"], tool_name=c["name"] or "", tool_kwargs=c["arguments"] or "")
                  for c in self.calls.values()]
        return _rebuilt(response, self.content, blocks, {}, delta)

    def finish(self, last: ChatResponse) -> ChatResponse:
        deltas, reply = self.parser.finish()
        delta = (last.delta or "") + self._take([d for d in deltas if d.index is None])
        return _with_reply(last, reply, delta)


def _with_reply(response: ChatResponse, reply: ToolReply, delta: str | None = None) -> ChatResponse:
    blocks = [ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=c.arguments) for c in reply.tool_calls]
    extra: dict[str, Any] = {}
    if reply.tool_calls:
        extra["tool_calls"] = [c.to_openai() for c in reply.tool_calls]
    if reply.invalid_tool_calls:
        extra["invalid_tool_calls"] = [c.to_dict() for c in reply.invalid_tool_calls]
    return _rebuilt(response, reply.content, blocks, extra, response.delta if delta is None else delta)


def _rebuilt(response: ChatResponse, content: str, calls: list[ToolCallBlock], extra: dict[str, Any],
             delta: str | None) -> ChatResponse:
    """``response`` with its text replaced by ``content`` and ``calls`` added (other blocks, such as
    thinking, kept in place)."""
    message = response.message
    kept = [b for b in message.blocks if not isinstance(b, (TextBlock, ToolCallBlock))]
    new = message.model_copy(update={
        "blocks": [*kept, TextBlock(text=content), *calls],
        "additional_kwargs": {**message.additional_kwargs, **extra},
    })
    return response.model_copy(update={"message": new, "delta": delta})


# -- what LlamaIndex reads back --------------------------------------------------------------------------------


def get_tool_calls(response: ChatResponse, *, error_on_no_tool_call: bool) -> list[ToolSelection]:
    """The tool calls of a response (`FunctionCallingLLM.get_tool_calls_from_response`), from its
    `ToolCallBlock` values; arguments still being streamed are read as partial JSON.

    Raises:
        TaleValueError: no valid call and ``error_on_no_tool_call`` (the message gives the invalid
            calls' reasons, if any).
    """
    selections = []
    for block in response.message.blocks:
        if not isinstance(block, ToolCallBlock):
            continue
        arguments = block.tool_kwargs
        if isinstance(arguments, str):
            try:
                arguments = parse_partial_json(arguments) if arguments.strip() else {}
            except (ValueError, TypeError):
                arguments = {}
        selections.append(ToolSelection(tool_id=block.tool_call_id or "", tool_name=block.tool_name,
                                        tool_kwargs=arguments if isinstance(arguments, dict) else {}))
    if not selections and error_on_no_tool_call:
        invalid = response.message.additional_kwargs.get("invalid_tool_calls") or []
        why = "; ".join(f"{c.get('name') or '?'}: {c.get('error')}" for c in invalid)
        raise TaleValueError("expected at least one tool call, but the model made none"
                             + (f" that can be run ({why})" if why else f" (it answered {response.message.content!r})")
                             + "; tool_required=True (or a tool_choice) asks for a call, and constrain=True (or "
                             "strict=True) holds it to its tool's schema")
    return selections


def single_call(response: ChatResponse) -> ChatResponse:
    """``response`` with only its first tool call (for ``allow_parallel_tool_calls=False``)."""
    message = response.message
    calls = [b for b in message.blocks if isinstance(b, ToolCallBlock)]
    if len(calls) <= 1:
        return response
    blocks = [b for b in message.blocks if not isinstance(b, ToolCallBlock) or b is calls[0]]
    extra = dict(message.additional_kwargs)
    if isinstance(extra.get("tool_calls"), list):
        extra["tool_calls"] = extra["tool_calls"][:1]
    message = message.model_copy(update={"blocks": blocks, "additional_kwargs": extra})
    return response.model_copy(update={"message": message})


def structured_text(response: ChatResponse) -> str:
    """The JSON text of a structured-output reply (a code fence around it is dropped)."""
    text = (response.message.content or "").strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    return text
