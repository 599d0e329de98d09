"""`TaleHFLLM`'s conversions: LlamaIndex chat messages to the backend's ``{"role", "content"}`` dicts,
and backend `Generation` values (and stream events) to LlamaIndex responses with exact usage."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    CachePoint,
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)

from ..core.generation import Generation, Message, StreamEvent
from ..core.prompts import TOOL_CALL_LINE, TOOL_RESULT_TURN, TOOL_RESULT_TURN_UNNAMED

__all__ = [
    "TOOL_RESULT_PREFIX", "apieces", "chat_response", "completion_response", "pieces", "raw_of",
    "to_backend_messages", "to_turns", "usage_of",
]

#: Prefix of the user message that carries a tool or function result.
TOOL_RESULT_PREFIX = TOOL_RESULT_TURN_UNNAMED.format(content="")  # text lives in core/prompts.py

_ROLES = {
    MessageRole.SYSTEM: "system", MessageRole.DEVELOPER: "system", MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant", MessageRole.CHATBOT: "assistant", MessageRole.MODEL: "assistant",
}
_TOOL_ROLES = frozenset({MessageRole.TOOL, MessageRole.FUNCTION})


def to_backend_messages(messages: Sequence[ChatMessage]) -> list[Message]:
    """LlamaIndex chat messages as backend ``{"role", "content"}`` dicts.

    System and developer messages become ``system``; user ``user``; assistant, chatbot and model
    ``assistant``. Tool and function results become a user message ``"Tool result (<name>): <content>"``
    (``"Tool result: <content>"`` when the tool's name is unknown; small chat templates know no tool
    role), and an assistant's tool calls (`ToolCallBlock`) are appended to its text as ``"Tool call
    (<name>): <json arguments>"``. Text blocks are joined with newlines; cache points and thinking
    blocks are dropped; image, audio, video and document blocks are refused (text only).

    Raises:
        TypeError: ``messages`` is not a list of `ChatMessage`.
        ValueError: it is empty, or a message holds a non-text block or an unknown role.
    """
    converted: list[Message] = []
    for turn in to_turns(messages):
        if turn["role"] == "tool":
            name, content = turn["name"], turn["content"]
            text = TOOL_RESULT_TURN.format(name=name, content=content) if name else TOOL_RESULT_PREFIX + content
            converted.append({"role": "user", "content": text})
            continue
        content = turn["content"]
        if turn.get("tool_calls"):
            lines = [TOOL_CALL_LINE.format(name=c["name"], arguments=json.dumps(c["arguments"], ensure_ascii=False))
                     for c in turn["tool_calls"]]
            content = "\n".join([content, *lines] if content else lines)
        converted.append({"role": turn["role"], "content": content})
    return converted


def to_turns(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """LlamaIndex chat messages as the turns `core.tools.plain_turns` renders for a turn with tools.

    As `to_backend_messages` (same roles, same checks), but an assistant turn keeps its tool calls
    (``"tool_calls"``: ``{"name", "arguments"}`` from its `ToolCallBlock` values) and a tool or function
    result stays a ``"tool"`` turn with the tool's ``"name"``: the message's ``additional_kwargs["name"]``
    (or ``"tool_name"``), else the name of the earlier call its ``additional_kwargs["tool_call_id"]``
    answers (``FunctionAgent`` gives only the id), else None.
    """
    if isinstance(messages, (str, ChatMessage)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a list of ChatMessage, got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty; pass at least one ChatMessage")
    turns: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool-call id -> the tool's name
    for i, message in enumerate(messages):
        if not isinstance(message, ChatMessage):
            raise TypeError(f"messages[{i}] must be a ChatMessage, got {type(message).__name__}")
        texts, calls = [], []
        for block in message.blocks:
            if isinstance(block, TextBlock):
                texts.append(block.text)
            elif isinstance(block, ToolCallBlock):
                calls.append(block)
            elif not isinstance(block, (CachePoint, ThinkingBlock)):
                kind = getattr(block, "block_type", type(block).__name__)
                raise ValueError(f"messages[{i}] holds a {kind!r} block, but TaleHFLLM reads text only; "
                                 "pass text blocks (describe the content in words)")
        text = "\n".join(texts)
        extra = message.additional_kwargs
        if message.role in _TOOL_ROLES:
            name = extra.get("name") or extra.get("tool_name") or names.get(extra.get("tool_call_id"))
            turns.append({"role": "tool", "content": text, "name": name})
        elif message.role in _ROLES:
            turn: dict[str, Any] = {"role": _ROLES[message.role], "content": text}
            if calls:
                turn["tool_calls"] = [{"name": c.tool_name, "arguments": _arguments(c.tool_kwargs)} for c in calls]
                names.update((c.tool_call_id, c.tool_name) for c in calls if c.tool_call_id)
            turns.append(turn)
        else:
            raise ValueError(f"messages[{i}] has role {message.role.value!r}, which TaleHFLLM cannot map")
    return turns


def _arguments(kwargs: dict[str, Any] | str) -> dict[str, Any]:
    """A `ToolCallBlock`'s arguments as a dict (they may be held as JSON text)."""
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs) if kwargs.strip() else {}
        except json.JSONDecodeError:
            return {}
    return dict(kwargs) if isinstance(kwargs, dict) else {}


def usage_of(generation: Generation) -> dict[str, int]:
    usage = generation.usage
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens}


def raw_of(generation: Generation) -> dict[str, Any]:
    # TokenCountingHandler reads raw["usage"]; with exact counts there it never re-counts with tiktoken.
    usage: dict[str, Any] = usage_of(generation)
    if generation.reasoning is not None:  # a thinking model's thinking tokens, as OpenAI reports them
        usage["completion_tokens_details"] = {"reasoning_tokens": generation.usage.reasoning_tokens}
    return {"usage": usage, "model": generation.model, "finish_reason": generation.finish_reason,
            "token_counter": generation.usage.counter}


def _counts(final: Generation | None) -> dict[str, Any]:
    if final is None:
        return {}
    counts: dict[str, Any] = usage_of(final)
    if final.reasoning is not None:
        counts["reasoning_tokens"] = final.usage.reasoning_tokens
    return counts


def chat_response(final: Generation | None, text: str | None = None, delta: str | None = None, *,
                  thinking: str | None = None, thinking_delta: str | None = None) -> ChatResponse:
    """A chat response; a thinking model's thinking (``thinking``, by default the final one) comes first
    as a `ThinkingBlock`, and a stream piece's new thinking as ``additional_kwargs["thinking_delta"]``."""
    content = final.text if text is None else text
    if thinking is None and final is not None:
        thinking = final.reasoning
    if thinking is None:
        message = ChatMessage(role=MessageRole.ASSISTANT, content=content)
    else:
        tokens = final.usage.reasoning_tokens if final is not None else None
        message = ChatMessage(role=MessageRole.ASSISTANT,
                              blocks=[ThinkingBlock(content=thinking, num_tokens=tokens), TextBlock(text=content)])
    extra = _counts(final)
    if thinking_delta:
        extra["thinking_delta"] = thinking_delta
    return ChatResponse(message=message, delta=delta, raw=raw_of(final) if final else None, additional_kwargs=extra)


def completion_response(final: Generation | None, text: str | None = None, delta: str | None = None, *,
                        thinking: str | None = None, thinking_delta: str | None = None) -> CompletionResponse:
    """A completion response; a thinking model's thinking as ``additional_kwargs["thinking"]`` (and a stream
    piece's new thinking as ``"thinking_delta"``)."""
    if thinking is None and final is not None:
        thinking = final.reasoning
    extra = _counts(final)
    if thinking is not None:
        extra["thinking"] = thinking
    if thinking_delta:
        extra["thinking_delta"] = thinking_delta
    return CompletionResponse(text=final.text if text is None else text, delta=delta,
                              raw=raw_of(final) if final else None, additional_kwargs=extra)


def _piece(make: Callable[..., Any], event: StreamEvent, text: str, thinking: str | None) -> Any:
    return make(event.final, text, event.text, thinking=thinking, thinking_delta=event.reasoning or None)


def pieces(events: Iterator[StreamEvent], make: Callable[..., Any]) -> Iterator[Any]:
    text, thinking = "", None
    for event in events:
        text += event.text
        if event.reasoning:
            thinking = (thinking or "") + event.reasoning
        yield _piece(make, event, text, thinking)


async def apieces(events: AsyncIterator[StreamEvent], make: Callable[..., Any]) -> AsyncIterator[Any]:
    text, thinking = "", None
    async for event in events:
        text += event.text
        if event.reasoning:
            thinking = (thinking or "") + event.reasoning
        yield _piece(make, event, text, thinking)
