"""`TaleHFLLM`'s conversions: LlamaIndex chat messages to the backend's ``{"role", "content"}`` dicts,
and backend `Generation` values (and stream events) to LlamaIndex responses with exact usage."""

from __future__ import annotations

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
)

from ..core.generation import Generation, Message, StreamEvent
from ..core.prompts import TOOL_RESULT_TURN_UNNAMED

__all__ = [
    "TOOL_RESULT_PREFIX", "apieces", "chat_response", "completion_response", "pieces", "raw_of",
    "to_backend_messages", "usage_of",
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
    ``assistant``. Tool and function results become a user message ``"Tool result: <content>"``
    (small chat templates know no tool role). Text blocks are joined with newlines; cache points and
    thinking blocks are dropped; image, audio, video and document blocks are refused (text only).

    Raises:
        TypeError: ``messages`` is not a list of `ChatMessage`.
        ValueError: it is empty, or a message holds a non-text block or an unknown role.
    """
    if isinstance(messages, (str, ChatMessage)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a list of ChatMessage, got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty; pass at least one ChatMessage")
    converted: list[Message] = []
    for i, message in enumerate(messages):
        if not isinstance(message, ChatMessage):
            raise TypeError(f"messages[{i}] must be a ChatMessage, got {type(message).__name__}")
        texts = []
        for block in message.blocks:
            if isinstance(block, TextBlock):
                texts.append(block.text)
            elif not isinstance(block, (CachePoint, ThinkingBlock)):
                kind = getattr(block, "block_type", type(block).__name__)
                raise ValueError(f"messages[{i}] holds a {kind!r} block, but TaleHFLLM reads text only; "
                                 "pass text blocks (describe the content in words)")
        text = "\n".join(texts)
        if message.role in _TOOL_ROLES:
            converted.append({"role": "user", "content": TOOL_RESULT_PREFIX + text})
        elif message.role in _ROLES:
            converted.append({"role": _ROLES[message.role], "content": text})
        else:
            raise ValueError(f"messages[{i}] has role {message.role.value!r}, which TaleHFLLM cannot map")
    return converted


def usage_of(generation: Generation) -> dict[str, int]:
    usage = generation.usage
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens}


def raw_of(generation: Generation) -> dict[str, Any]:
    # TokenCountingHandler reads raw["usage"]; with exact counts there it never re-counts with tiktoken.
    return {"usage": usage_of(generation), "model": generation.model, "finish_reason": generation.finish_reason,
            "token_counter": generation.usage.counter}


def chat_response(final: Generation | None, text: str | None = None, delta: str | None = None) -> ChatResponse:
    content = final.text if text is None else text
    return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=content), delta=delta,
                        raw=raw_of(final) if final else None, additional_kwargs=usage_of(final) if final else {})


def completion_response(final: Generation | None, text: str | None = None,
                         delta: str | None = None) -> CompletionResponse:
    return CompletionResponse(text=final.text if text is None else text, delta=delta,
                              raw=raw_of(final) if final else None, additional_kwargs=usage_of(final) if final else {})


def pieces(events: Iterator[StreamEvent], make: Callable[..., Any]) -> Iterator[Any]:
    text = ""
    for event in events:
        text += event.text
        yield make(event.final, text, event.text)


async def apieces(events: AsyncIterator[StreamEvent], make: Callable[..., Any]) -> AsyncIterator[Any]:
    text = ""
    async for event in events:
        text += event.text
        yield make(event.final, text, event.text)
