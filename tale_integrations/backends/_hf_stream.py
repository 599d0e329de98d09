"""Stop strings and token-by-token streaming for `HFGenerator`."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from .._optional import require
from ..core.generation import StreamEvent

torch = require("torch", extra="hf", purpose="the local Hugging Face backend")
transformers = require("transformers", extra="hf", purpose="the local Hugging Face backend")
from transformers.generation.streamers import BaseStreamer  # noqa: E402

__all__ = ["RowLimits", "StopOnStrings", "TextAssembler", "TokenQueue", "is_done", "safe_prefix", "stream_text"]

_DONE = object()


class StopOnStrings(transformers.StoppingCriteria):
    """Ends each row once its new text contains a stop string (checked on a window of recent tokens)."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.stops = list(stops)
        self.prompt_length = prompt_length
        # A stop string of n characters spans at most n tokens; a little more covers the join.
        self.window = max(len(s) for s in self.stops) + 4
        self.stopped_at: dict[int, int] = {}

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        start = self.prompt_length
        for row in range(input_ids.shape[0]):
            if row in self.stopped_at:
                done[row] = True
                continue
            tail = input_ids[row, max(start, input_ids.shape[1] - self.window) :]
            text = self.tokenizer.decode(tail, skip_special_tokens=True)
            if any(s in text for s in self.stops):
                self.stopped_at[row] = input_ids.shape[1] - start
                done[row] = True
        return done


class RowLimits(transformers.StoppingCriteria):
    """Per-row output caps and cancellation, for batches whose rows asked for different limits."""

    def __init__(self, caps: Sequence[int], prompt_length: int, cancel: Sequence[threading.Event | None] | None) -> None:
        self.caps = list(caps)
        self.prompt_length = prompt_length
        self.cancel = list(cancel) if cancel is not None else [None] * len(self.caps)
        self.cancelled_at: dict[int, int] = {}

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        produced = input_ids.shape[1] - self.prompt_length
        done = []
        for row, (cap, event) in enumerate(zip(self.caps, self.cancel)):
            if event is not None and event.is_set():
                self.cancelled_at.setdefault(row, produced)
            done.append(produced >= cap or row in self.cancelled_at)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


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


class TextAssembler:
    """Turns new token ids into text deltas that are safe to show (see `safe_prefix`)."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] | None, eos_ids: set[int]) -> None:
        self.tokenizer, self.stop, self.eos_ids = tokenizer, stop, eos_ids
        self.ids: list[int] = []
        self.emitted = ""

    def feed(self, new_ids: list[int]) -> str:
        """The text to show for these new ids (may be empty)."""
        self.ids.extend(t for t in new_ids if t not in self.eos_ids)
        shown = safe_prefix(self.tokenizer.decode(self.ids, skip_special_tokens=True), self.stop)
        if len(shown) > len(self.emitted) and shown.startswith(self.emitted):
            delta, self.emitted = shown[len(self.emitted) :], shown
            return delta
        return ""

    def finish(self, outcome: dict[str, Any]) -> StreamEvent:
        """The last event (the rest of the text and the final `Generation`), or the worker's error."""
        if "error" in outcome:
            raise outcome["error"]
        final = outcome["generation"]
        rest = final.text[len(self.emitted) :] if final.text.startswith(self.emitted) else ""
        return StreamEvent(text=rest, final=final)


def is_done(item: Any) -> bool:
    """Whether a queue item marks the end of the generation."""
    return item is _DONE


def stream_text(
    tokenizer: Any, tokens: TokenQueue, stop: Sequence[str] | None, eos_ids: set[int], outcome: dict[str, Any]
) -> Iterator[StreamEvent]:
    """Turn the token queue into `StreamEvent` values; the last one carries the final `Generation`."""
    assembler = TextAssembler(tokenizer, stop, eos_ids)
    while not is_done(item := tokens.queue.get()):
        if delta := assembler.feed(item):
            yield StreamEvent(text=delta)
    yield assembler.finish(outcome)
