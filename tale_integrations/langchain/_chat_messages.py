"""`ChatTaleHF`'s message conversion: LangChain messages to the backend's ``{"role", "content"}``
dicts (text only; tool calls and results rendered as text), and a `Generation`'s usage and metadata
back as LangChain expects them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.messages import (
    AIMessage, BaseMessage, ChatMessage, FunctionMessage, HumanMessage, SystemMessage, ToolMessage,
)

from ..core.prompts import TOOL_CALL_LINE, TOOL_RESULT_TURN

if TYPE_CHECKING:
    from ..core.generation import Generation

__all__ = [
    "PROVIDER", "message_text", "reasoning_kwargs", "response_metadata", "to_conversation", "to_turns",
    "usage_metadata",
]

PROVIDER = "tale-hf"
_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "ai": "assistant"}
_TOOL_BLOCKS = frozenset({"tool_call", "tool_call_chunk", "tool_use", "function_call"})
# An AI message's thinking (a reasoning model's, passed back in a history) is not sent to the model again.
_REASONING_BLOCKS = frozenset({"reasoning", "thinking", "redacted_thinking"})


def message_text(message: BaseMessage, where: str) -> str:
    if isinstance(message.content, str):
        return message.content
    parts = []
    for k, part in enumerate(message.content):
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text":
            parts.append(str(part.get("text", "")))
        elif not (isinstance(message, AIMessage) and isinstance(part, dict)
                  and part.get("type") in _TOOL_BLOCKS | _REASONING_BLOCKS):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise ValueError(
                f"{where}.content[{k}] is a {kind!r} part; ChatTaleHF runs a text-only local model, so message "
                "content must be a string or a list of text parts (no images, audio or files)"
            )
    return "".join(parts)  # an AI message's tool-call blocks are rendered from message.tool_calls


def to_conversation(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as the backend's ``{"role", "content"}`` dicts (see the module docstring)."""
    if not messages:
        raise ValueError("messages is empty; give at least one message")
    conversation = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if isinstance(message, SystemMessage):
            role, content = "system", message_text(message, where)
        elif isinstance(message, HumanMessage):
            role, content = "user", message_text(message, where)
        elif isinstance(message, AIMessage):
            calls = [TOOL_CALL_LINE.format(name=c["name"], arguments=json.dumps(c["args"])) for c in message.tool_calls]
            role, content = "assistant", "\n".join([t for t in [message_text(message, where)] if t] + calls)
        elif isinstance(message, (ToolMessage, FunctionMessage)):
            name = message.name or getattr(message, "tool_call_id", None) or "tool"
            role, content = "user", TOOL_RESULT_TURN.format(name=name, content=message_text(message, where))
        elif isinstance(message, ChatMessage) and message.role.lower() in _ROLES:
            role, content = _ROLES[message.role.lower()], message_text(message, where)
        else:
            label = f"ChatMessage with role {message.role!r}" if isinstance(message, ChatMessage) else type(message).__name__
            raise ValueError(f"{where} is a {label}; ChatTaleHF accepts system, human, AI and tool messages")
        conversation.append({"role": role, "content": content})
    return conversation


def to_turns(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as the turns `core.tools.plain_turns` renders for a turn with tools: as
    `to_conversation`, but an AI message keeps its ``tool_calls`` and a tool message its role
    (``"tool"``), name and status."""
    conversation = to_conversation(messages)
    turns: list[dict[str, Any]] = []
    for message, turn in zip(messages, conversation, strict=True):
        if isinstance(message, AIMessage) and message.tool_calls:
            turn = {"role": "assistant", "content": message_text(message, "message"),
                    "tool_calls": [{"name": c["name"], "arguments": c["args"]} for c in message.tool_calls]}
        elif isinstance(message, (ToolMessage, FunctionMessage)):
            turn = {"role": "tool", "content": message_text(message, "message"),
                    "name": message.name or getattr(message, "tool_call_id", None) or "tool",
                    "status": getattr(message, "status", "success")}
        turns.append(turn)
    return turns


def usage_metadata(generation: Generation) -> dict[str, Any]:
    usage = generation.usage
    out: dict[str, Any] = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                           "total_tokens": usage.total_tokens}
    if generation.reasoning is not None or usage.reasoning_tokens:  # a thinking model's thinking tokens
        out["output_token_details"] = {"reasoning": usage.reasoning_tokens}
    return out


def reasoning_kwargs(reasoning: str | None) -> dict[str, str]:
    """An AI message's ``additional_kwargs`` for its thinking: ``{"reasoning_content": ...}`` (LangChain's
    ``content_blocks`` reads it as a ``"reasoning"`` block, as for DeepSeek and Ollama), or ``{}``."""
    return {} if reasoning is None else {"reasoning_content": reasoning}


def response_metadata(generation: Generation) -> dict[str, Any]:
    return {"model_name": generation.model, "finish_reason": generation.finish_reason, "model_provider": PROVIDER}
