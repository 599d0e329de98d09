"""How `TaleRunnable`'s model requests reach the LangChain chat model.

A `ModelCall` is answered with one ``model.batch`` per distinct hard cap and thinking knob (the
groups running concurrently), or streamed: first a chunk opening the answer (the budget header in
``response_metadata["tale"]``, or the separator before a repair), then the model's own chunks, then
a `Reply` with the finished message for the flow (`core.flows.stream_drive`). `closing_chunk` is the
stream's last chunk: the outcome keys the header did not carry.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.runnables.config import get_executor_for_config

from ..core.flows import Reply
from ._runnable_parts import OUTCOME_KEYS, REPAIR_SEPARATOR, ModelCall, as_chunk, to_message

__all__ = ["acall_model", "astream_model", "call_model", "closing_chunk", "stream_model"]


def _with_cap(cap: int | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's keyword arguments with ``max_tokens`` lowered to ``cap`` (the caller's own cap wins if lower)."""
    if cap is None:
        return kwargs
    own = kwargs.get("max_tokens")
    return {**kwargs, "max_tokens": min(cap, own) if isinstance(own, int) else cap}


def _settings(call: ModelCall, i: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Row ``i``'s call arguments: the caller's, its hard cap, then its thinking knob (which wins)."""
    return {**_with_cap(call.caps[i], kwargs), **call.settings(i)}


def _groups(call: ModelCall) -> list[list[int]]:
    """The call's rows grouped by hard cap and knob (one ``batch`` per group)."""
    groups: dict[str, list[int]] = {}
    for i, cap in enumerate(call.caps):
        groups.setdefault(repr((cap, sorted(call.settings(i).items()))), []).append(i)
    return list(groups.values())


def call_model(model: BaseChatModel, call: ModelCall, kwargs: dict[str, Any]) -> list[Any]:
    """One reply (or exception) per row of ``call``, in order."""
    out: list[Any] = [None] * len(call.messages)

    def run(group: list[int]) -> None:
        replies = model.batch([call.messages[i] for i in group], [call.configs[i] for i in group],
                              return_exceptions=True, **_settings(call, group[0], kwargs))
        for i, reply in zip(group, replies):
            out[i] = reply

    groups = _groups(call)
    if len(groups) == 1:
        run(groups[0])
    else:
        with get_executor_for_config(call.configs[0]) as executor:
            list(executor.map(run, groups))
    return out


async def acall_model(model: BaseChatModel, call: ModelCall, kwargs: dict[str, Any]) -> list[Any]:
    """Async twin of `call_model` (``model.abatch``, the groups concurrently)."""
    out: list[Any] = [None] * len(call.messages)

    async def run(group: list[int]) -> None:
        replies = await model.abatch([call.messages[i] for i in group], [call.configs[i] for i in group],
                                     return_exceptions=True, **_settings(call, group[0], kwargs))
        for i, reply in zip(group, replies):
            out[i] = reply

    await asyncio.gather(*(run(g) for g in _groups(call)))
    return out


def _opening_chunk(call: ModelCall) -> AIMessageChunk:
    if call.kind == "answer":  # the budget, before the first answer token
        return AIMessageChunk(content="", response_metadata={"tale": call.headers[0]})
    return AIMessageChunk(content=REPAIR_SEPARATOR)


def stream_model(model: BaseChatModel, call: ModelCall, kwargs: dict[str, Any]) -> Iterator[Any]:
    """Stream the call's single row: the opening chunk, the model's chunks, then ``Reply([message])``."""
    yield _opening_chunk(call)
    final = None
    for chunk in model.stream(call.messages[0], call.configs[0], **_settings(call, 0, kwargs)):
        chunk = as_chunk(chunk)
        yield chunk
        final = chunk if final is None else final + chunk
    yield Reply([to_message(final)])


async def astream_model(model: BaseChatModel, call: ModelCall, kwargs: dict[str, Any]) -> AsyncIterator[Any]:
    """Async twin of `stream_model`."""
    yield _opening_chunk(call)
    final = None
    async for chunk in model.astream(call.messages[0], call.configs[0], **_settings(call, 0, kwargs)):
        chunk = as_chunk(chunk)
        yield chunk
        final = chunk if final is None else final + chunk
    yield Reply([to_message(final)])


def closing_chunk(result: AIMessage) -> AIMessageChunk:
    """The stream's last chunk: the outcome keys (usage totals, repair) the opening header did not carry."""
    tale = result.response_metadata["tale"]
    return AIMessageChunk(content="", response_metadata={"tale": {k: v for k, v in tale.items() if k in OUTCOME_KEYS}})
