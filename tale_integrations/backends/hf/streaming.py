"""Token-by-token streaming for `HFGenerator`: a queue that ``generate`` feeds new token ids into, and
the text deltas made from them, holding back any tail that could still grow into a stop string. On a
model with a thinking block the thinking comes as `StreamEvent.reasoning` deltas, split as the final
`Generation` splits it (``backends/thinking.py``), and the stop strings apply to the answer only."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from ..._optional import require
from ...core.generation import Generation, StreamEvent
from ..thinking import ThinkingTracker

torch = require("torch", extra="hf", purpose="the local Hugging Face backend")
transformers = require("transformers", extra="hf", purpose="the local Hugging Face backend")
from transformers.generation.streamers import BaseStreamer  # noqa: E402

__all__ = ["TextAssembler", "TokenQueue", "astream_events", "is_done", "safe_prefix", "start", "stream_events"]

_DONE = object()


class _Cancelled(transformers.StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class TokenQueue(BaseStreamer):
    """Receives new token ids from ``generate`` (one put per step) and hands them to a consumer."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()
        self.cancelled = threading.Event()
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate first puts the prompt ids
            self._prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        """Called by generate at the end; the producer thread signals completion with `finish`."""

    def finish(self) -> None:
        self.queue.put(_DONE)

    def cancel(self) -> None:
        self.cancelled.set()

    def criterion(self) -> transformers.StoppingCriteria:
        """A stopping criterion that ends generation once the consumer has gone away."""
        return _Cancelled(self.cancelled)


def safe_prefix(text: str, stop: Sequence[str] | None) -> str:
    """The part of ``text`` that can be shown now: before any stop string, without a trailing partial
    character, and without a tail that could still grow into a stop string."""
    text = text.rstrip("\ufffd")
    if not stop:
        return text
    cut = min((p for p in (text.find(s) for s in stop) if p >= 0), default=-1)
    if cut >= 0:
        return text[:cut]
    longest = max(len(s) for s in stop) - 1
    for k in range(min(len(text), longest), 0, -1):
        tail = text[-k:]
        if any(s.startswith(tail) for s in stop):
            return text[:-k]
    return text


def _delta(shown: str, emitted: str) -> str:
    return shown[len(emitted) :] if len(shown) > len(emitted) and shown.startswith(emitted) else ""


class TextAssembler:
    """Turns new token ids into text (and thinking) deltas that are safe to show (see `safe_prefix`).

    ``thinking`` is the row's `ThinkingTracker` on a model with a thinking block, else None.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] | None, eos_ids: set[int],
                 thinking: ThinkingTracker | None = None) -> None:
        self.tokenizer, self.stop, self.eos_ids, self.thinking = tokenizer, stop, eos_ids, thinking
        self.ids: list[int] = []
        self.emitted = ""
        self.emitted_reasoning = ""

    def feed(self, new_ids: list[int]) -> str:
        """The text to show for these new ids (may be empty); the thinking to show is `feed_event`'s."""
        return self.feed_event(new_ids).text

    def feed_event(self, new_ids: list[int]) -> StreamEvent:
        """The text and thinking to show for these new ids (either may be empty)."""
        self.ids.extend(t for t in new_ids if t not in self.eos_ids)
        tracker, reasoning = self.thinking, ""
        if tracker is None:
            answer = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        else:
            tracker.advance(self.ids)
            thought = tracker.reasoning_text(self.ids)
            if thought is not None:
                end = None if tracker.answer_start is not None or not tracker.markers.end_in_text else [
                    tracker.markers.end]
                reasoning = _delta(safe_prefix(thought, end).strip(), self.emitted_reasoning)
                self.emitted_reasoning += reasoning
            if tracker.answer_start is None:
                return StreamEvent(text="", reasoning=reasoning)
            answer = self.tokenizer.decode(self.ids[tracker.answer_start :], skip_special_tokens=True)
            if tracker.thought:
                answer = answer.lstrip()
        text = _delta(safe_prefix(answer, self.stop), self.emitted)
        self.emitted += text
        return StreamEvent(text=text, reasoning=reasoning)

    def finish(self, outcome: dict[str, Any]) -> StreamEvent:
        """The last event (the rest of the text and thinking, and the final `Generation`), or the worker's error."""
        if "error" in outcome:
            raise outcome["error"]
        final = outcome["generation"]
        thought = final.reasoning or ""
        return StreamEvent(text=_delta(final.text, self.emitted), final=final,
                           reasoning=_delta(thought, self.emitted_reasoning))


def is_done(item: Any) -> bool:
    """Whether a queue item marks the end of the generation."""
    return item is _DONE


def start(decode: Callable[[TokenQueue], Generation]) -> tuple[TokenQueue, threading.Thread, dict[str, Any]]:
    """Run ``decode`` (one generation that feeds its new tokens to the queue it is given) in a worker thread.

    Returns the queue, the thread and the outcome, which holds ``"generation"`` or, if ``decode``
    raised, ``"error"`` once the queue is done (an error is handed to the consumer, never lost).
    """
    tokens = TokenQueue()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["generation"] = decode(tokens)
        except BaseException as exc:  # handed to the consumer, never lost in the thread
            outcome["error"] = exc
        finally:
            tokens.finish()

    thread = threading.Thread(target=work, name="tale-hf-stream", daemon=True)
    thread.start()
    return tokens, thread, outcome


def stream_events(tokenizer: Any, stop: Sequence[str] | None, eos_ids: set[int],
                  decode: Callable[[TokenQueue], Generation],
                  thinking: ThinkingTracker | None = None) -> Iterator[StreamEvent]:
    """Run ``decode`` and turn its tokens into `StreamEvent` values; the last carries the final `Generation`.

    Nothing runs before the first event is asked for; closing the iterator early stops the generation.
    ``thinking``: the row's `ThinkingTracker` on a model with a thinking block.
    """
    tokens, thread, outcome = start(decode)
    assembler = TextAssembler(tokenizer, stop, eos_ids, thinking)
    try:
        while not is_done(item := tokens.queue.get()):
            event = assembler.feed_event(item)
            if event.text or event.reasoning:
                yield event
        yield assembler.finish(outcome)
    finally:
        tokens.cancel()
        thread.join()


async def astream_events(tokenizer: Any, stop: Sequence[str] | None, eos_ids: set[int],
                         decode: Callable[[TokenQueue], Generation],
                         thinking: ThinkingTracker | None = None) -> AsyncIterator[StreamEvent]:
    """Async twin of `stream_events`: the event loop only waits on the token queue, never on the model."""
    tokens, thread, outcome = start(decode)
    assembler = TextAssembler(tokenizer, stop, eos_ids, thinking)
    try:
        while not is_done(item := await asyncio.to_thread(tokens.queue.get)):
            event = assembler.feed_event(item)
            if event.text or event.reasoning:
                yield event
        yield assembler.finish(outcome)
    finally:
        tokens.cancel()
        await asyncio.to_thread(thread.join)
