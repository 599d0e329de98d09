"""The OpenAI response and stream-chunk shapes ``tale serve`` answers with (plain dicts)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from ..core.generation import Generation
from .tale import TalePlan, openai_usage

__all__ = ["Shape"]


class Shape:
    """Builds the JSON of one response, plain or streamed, for the chat or completions endpoint.

    Args:
        kind: ``"chat"`` or ``"completion"``.
        model: The served model name.
        tale: The request's TALE plan, if it has one (added as the ``tale`` object).
        include_usage: For streams: add ``"usage": null`` to every chunk and a usage chunk at the end.
    """

    def __init__(self, kind: str, model: str, *, tale: TalePlan | None = None, include_usage: bool = False) -> None:
        self.kind = kind
        self.model = model
        self.tale = tale
        self.include_usage = include_usage
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
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": generation.text, "refusal": None},
                "logprobs": None,
                "finish_reason": generation.finish_reason,
            }
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

    def _choice(self, text: str | None, finish_reason: str | None, *, role: bool = False) -> dict[str, Any]:
        if self.kind == "chat":
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
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

    def finish_chunk(self, generation: Generation) -> dict[str, Any]:
        """The chunk with the finish reason (empty delta)."""
        return self._chunk(self._choice(None if self.kind == "chat" else "", generation.finish_reason))

    def usage_chunk(self, generation: Generation) -> dict[str, Any]:
        """The last chunk when usage was asked for: no choices, the usage."""
        body = self._chunk(None)
        body["usage"] = openai_usage(generation.usage)
        return body
