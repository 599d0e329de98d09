"""The OpenAI response and stream-chunk shapes ``tale serve`` answers with (plain dicts)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from ..core.generation import Generation
from ..core.tools import ToolStreamDelta
from .tale import TalePlan, openai_usage
from .turns import ServeTurn, finish_reason, tool_delta

__all__ = ["Shape"]


class Shape:
    """Builds the JSON of one response, plain or streamed, for the chat or completions endpoint.

    Args:
        kind: ``"chat"`` or ``"completion"``.
        model: The served model name.
        tale: The request's TALE plan, if it has one (added as the ``tale`` object).
        include_usage: For streams: add ``"usage": null`` to every chunk and a usage chunk at the end.
        turn: A chat request's `ServeTurn` (tool calls, reasoning); None reads the text as the answer.
    """

    def __init__(self, kind: str, model: str, *, tale: TalePlan | None = None, include_usage: bool = False,
                 turn: ServeTurn | None = None) -> None:
        self.kind = kind
        self.model = model
        self.tale = tale
        self.include_usage = include_usage
        self.turn = turn
        self._parser = turn.stream_parser() if turn is not None else None
        self._calls = False  # a tool call was streamed
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _head(self, obj: str) -> dict[str, Any]:
        head: dict[str, Any] = {"id": self.id, "object": obj, "created": self.created, "model": self.model}
        if self.kind == "chat":
            head["system_fingerprint"] = None
        return head

    def _tale(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.tale is not None:
            body["tale"] = self.tale.to_dict()
        return body

    def response(self, generation: Generation) -> dict[str, Any]:
        """The complete (non-streamed) response."""
        if self.kind == "chat":
            body = self._head("chat.completion")
            message, reason = self.turn.message(generation) if self.turn is not None else \
                ({"role": "assistant", "content": generation.text, "refusal": None}, generation.finish_reason)
            choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
        else:
            body = self._head("text_completion")
            choice = {"index": 0, "text": generation.text, "logprobs": None, "finish_reason": generation.finish_reason}
        body["choices"] = [choice]
        body["usage"] = openai_usage(generation.usage)
        return self._tale(body)

    def _chunk(self, choice: dict[str, Any] | None) -> dict[str, Any]:
        body = self._head("chat.completion.chunk" if self.kind == "chat" else "text_completion")
        body["choices"] = [] if choice is None else [choice]
        if self.include_usage:
            body["usage"] = None
        return body

    def _choice(self, text: str | None, finish_reason: str | None, *, role: bool = False,
                **delta_fields: Any) -> dict[str, Any]:
        if self.kind == "chat":
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            delta.update(delta_fields)
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}

    def first_chunk(self) -> dict[str, Any] | None:
        """The opening chunk: the assistant role for chat; for completions only when there is a
        ``tale`` object to carry (it rides on the first chunk, so a client sees the budget early)."""
        if self.kind != "chat" and self.tale is None:
            return None
        return self._tale(self._chunk(self._choice("", None, role=self.kind == "chat")))

    def text_chunk(self, text: str) -> dict[str, Any]:
        """A chunk carrying new text."""
        return self._chunk(self._choice(text, None))

    def reasoning_chunks(self, text: str) -> list[dict[str, Any]]:
        """The chunk carrying new thinking text, under ``reasoning`` and ``reasoning_content`` (none when
        the reasoning is not returned)."""
        if self.turn is None or not self.turn.returns_reasoning:
            return []
        return [self._chunk(self._choice(None, None, reasoning=text, reasoning_content=text))]

    def answer_chunks(self, text: str) -> list[dict[str, Any]]:
        """The chunks for new answer text: the text itself, or, when tool calls are expected, its text
        and tool-call pieces as the stream parser reads them."""
        if self._parser is None:
            return [self.text_chunk(text)]
        return self._deltas(self._parser.feed(text))

    def closing_chunks(self) -> list[dict[str, Any]]:
        """The pieces the stream parser still owes once the answer is complete (calls not streamed yet)."""
        if self._parser is None:
            return []
        deltas, _ = self._parser.finish()
        return self._deltas(deltas)

    def _deltas(self, deltas: list[ToolStreamDelta]) -> list[dict[str, Any]]:
        chunks = []
        for delta in deltas:
            if delta.index is None:
                if delta.content:
                    chunks.append(self.text_chunk(delta.content))
                continue
            self._calls = True
            chunks.append(self._chunk(self._choice(None, None, tool_calls=[tool_delta(delta)])))
        return chunks

    def finish_chunk(self, generation: Generation) -> dict[str, Any]:
        """The chunk with the finish reason (empty delta)."""
        return self._chunk(self._choice(None if self.kind == "chat" else "", finish_reason(generation, self._calls)))

    def usage_chunk(self, generation: Generation) -> dict[str, Any]:
        """The last chunk when usage was asked for: no choices, the usage."""
        body = self._chunk(None)
        body["usage"] = openai_usage(generation.usage)
        return body
