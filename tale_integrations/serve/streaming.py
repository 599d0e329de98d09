"""Server-sent events for ``stream: true``: ``data: {chunk}\\n\\n`` ... ``data: [DONE]\\n\\n``.

Streams are not micro-batched: each one runs ``generator.stream`` (token by token) on its own
thread, and the HF backend's generation lock serialises it with the batches. A pump thread drives
the backend's iterator and hands events to the event loop; when the client goes away the response
is closed, the pump sees it at the next token and closes the backend's iterator, which stops the
generation at its next step.
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


def _data(body: Any) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


async def sse_events(pump: StreamPump, shape: Shape) -> AsyncIterator[bytes]:
    """The byte stream of one response; stops the pump however it ends."""
    try:
        first = shape.first_chunk()
        if first is not None:
            yield _data(first)
        final: Generation | None = None
        while True:
            item = await pump.queue.get()
            if item is _END:
                break
            if isinstance(item, _Failure):
                logger.error("stream failed", exc_info=item.error)
                yield _data(error_body(f"the generation failed: {item.error!r}", type="server_error",
                                       code="internal_error"))
                return
            assert isinstance(item, StreamEvent)
            if item.text:
                yield _data(shape.text_chunk(item.text))
            if item.final is not None:
                final = item.final
        if final is None:  # pragma: no cover - the backend always ends with a final event
            yield _data(error_body("the stream ended without a result", type="server_error", code="internal_error"))
            return
        yield _data(shape.finish_chunk(final))
        if shape.include_usage:
            yield _data(shape.usage_chunk(final))
        yield b"data: [DONE]\n\n"
    finally:
        pump.stop()
