"""One sync and one async runner for flows written as generators.

A *flow* is I/O-free logic written once as a Python generator: it yields a request (estimate these
questions, answer these prompts at these budgets), receives the reply through ``send``, and returns
its result. The runners below answer each request with a function the caller supplies, so the same
flow runs against a sync backend, an async one, or a stream. An exception raised while answering is
thrown into the flow at the ``yield`` that asked, so the flow decides whether it is fatal (the
pipeline turns a failed estimate into a fallback budget; a failed answer call propagates).

`TalePipeline`, the budget search and `TaleRunnable` are driven by these runners.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from collections.abc import Generator as PyGenerator
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["Reply", "adrive", "astream_drive", "drive", "stream_drive"]

Request = TypeVar("Request")
Result = TypeVar("Result")
Flow = PyGenerator[Request, Any, Result]


@dataclass(frozen=True, slots=True)
class Reply:
    """In a streamed run: the value that goes back into the flow (from an answer's event stream), or,
    as the run's last event, the flow's result."""

    value: Any


def drive(flow: Flow[Request, Result], answer: Callable[[Request], Any]) -> Result:
    """Run ``flow`` to its end, answering each request with ``answer(request)``."""
    try:
        request = next(flow)
        while True:
            try:
                reply = answer(request)
            except Exception as exc:
                request = flow.throw(exc)
            else:
                request = flow.send(reply)
    except StopIteration as done:
        return done.value


async def adrive(flow: Flow[Request, Result], answer: Callable[[Request], Awaitable[Any]]) -> Result:
    """Async twin of `drive`: ``answer(request)`` is awaited."""
    try:
        request = next(flow)
        while True:
            try:
                reply = await answer(request)
            except Exception as exc:
                request = flow.throw(exc)
            else:
                request = flow.send(reply)
    except StopIteration as done:
        return done.value


def stream_drive(flow: Flow[Request, Any], answer: Callable[[Request], Iterable[Any]]) -> Iterator[Any]:
    """Run ``flow`` as a stream: ``answer(request)`` yields events to pass on and ends with a `Reply`
    whose value goes back into the flow; the stream's last event is ``Reply(result)``."""
    try:
        request = next(flow)
        while True:
            reply: Reply | None = None
            try:
                for event in answer(request):
                    if isinstance(event, Reply):
                        reply = event
                    else:
                        yield event
                if reply is None:
                    raise RuntimeError(f"the answer to {type(request).__name__} ended without a Reply")
            except Exception as exc:
                request = flow.throw(exc)
            else:
                request = flow.send(reply.value)
    except StopIteration as done:
        yield Reply(done.value)


async def astream_drive(flow: Flow[Request, Any], answer: Callable[[Request], AsyncIterable[Any]]) -> AsyncIterator[Any]:
    """Async twin of `stream_drive`: ``answer(request)`` is an async iterable of events."""
    try:
        request = next(flow)
        while True:
            reply: Reply | None = None
            try:
                async for event in answer(request):
                    if isinstance(event, Reply):
                        reply = event
                    else:
                        yield event
                if reply is None:
                    raise RuntimeError(f"the answer to {type(request).__name__} ended without a Reply")
            except Exception as exc:
                request = flow.throw(exc)
            else:
                request = flow.send(reply.value)
    except StopIteration as done:
        yield Reply(done.value)
