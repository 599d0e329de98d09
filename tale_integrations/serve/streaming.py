"""Server-sent events for ``stream: true``: ``data: {chunk}\n\n`` ... ``data: [DONE]\n\n``.

`sse_events` turns any async stream of `StreamEvent` values into the response's bytes. Under the
continuous scheduler the events come from ``ContinuousBatcher.open_stream`` (the stream is one row
of the running batch). Under the micro-batcher they come from a `StreamPump`: each stream runs
``generator.stream`` (token by token) on its own thread, and the HF backend's generation lock
serialises it with the batches; when the client goes away the pump closes the backend's iterator
at the next token, which stops the generation at its next step.

Thinking text streams under ``delta.reasoning`` and ``delta.reasoning_content``; when tool calls are
expected, the answer goes through the `Shape`'s stream parser (text deltas and ``delta.tool_calls``
pieces, the calls it could not stream piece by piece at the end). A failure mid-stream ends the
stream with an error chunk that carries the request id only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from ..core.generation import Generation, Message, StreamEvent
from .errors import error_body
from .responses import Shape

__all__ = ["StreamPump", "sse_events"]

logger = logging.getLogger("tale_integrations.serve")

_END = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class StreamPump:
    """Runs ``generator.stream(...)`` on a thread and feeds its events to an asyncio queue.

    Args:
        generator: The backend (``stream(messages, *, max_tokens, stop, temperature, budget,
            answer_format)``).
        messages: The conversation.
        settings: Keyword arguments for ``generator.stream``.
    """

    def __init__(self, generator: Any, messages: list[Message], settings: dict[str, Any]) -> None:
        self.generator = generator
        self.messages = messages
        self.settings = settings
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tale-serve-stream", daemon=True)

    def start(self) -> StreamPump:
        """Start generating."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the pump to stop; it closes the backend's iterator after the next event."""
        self._stop.set()

    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server stopped): nobody is listening
            self._stop.set()

    def _run(self) -> None:
        try:
            events = self.generator.stream(self.messages, **self.settings)
            try:
                for event in events:
                    self._put(event)
                    if self._stop.is_set():
                        break
            finally:
                events.close()
        except BaseException as exc:  # handed to the response, never lost in the thread
            self._put(_Failure(exc))
        finally:
            self._put(_END)


    async def events(self) -> AsyncIterator[StreamEvent]:
        """The backend's events as they come; a failure in the thread is raised here."""
        try:
            while (item := await self.queue.get()) is not _END:
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            self.stop()


def _data(body: Any) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode() + b"\n\n"


async def sse_events(events: AsyncIterator[StreamEvent], shape: Shape, *, request_id: str) -> AsyncIterator[bytes]:
    """The byte stream of one response; closes ``events`` however it ends."""
    try:
        first = shape.first_chunk()
        if first is not None:
            yield _data(first)
        final: Generation | None = None
        try:
            async for item in events:
                for chunk in shape.reasoning_chunks(item.reasoning) if item.reasoning else ():
                    yield _data(chunk)
                for chunk in shape.answer_chunks(item.text) if item.text else ():
                    yield _data(chunk)
                if item.final is not None:
                    final = item.final
        except Exception as exc:  # the headers are sent: the error goes in the stream
            logger.error("stream failed (request id %s)", request_id, exc_info=exc)
            yield _data(error_body(f"the generation failed (request id {request_id}); the server's log has the "
                                   "details", type="server_error", code="internal_error"))
            return
        if final is None:  # pragma: no cover - the backend always ends with a final event
            yield _data(error_body(f"the stream ended without a result (request id {request_id})",
                                   type="server_error", code="internal_error"))
            return
        for chunk in shape.closing_chunks():
            yield _data(chunk)
        yield _data(shape.finish_chunk(final))
        if shape.include_usage:
            yield _data(shape.usage_chunk(final))
        yield b"data: [DONE]\n\n"
    finally:
        await events.aclose()  # type: ignore[attr-defined]
