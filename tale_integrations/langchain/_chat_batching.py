"""`ChatTaleHF`'s call settings and the batch that answers all of a ``batch`` call's inputs with
one backend call."""

from __future__ import annotations

import asyncio
import threading
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..core.generation import Generation
    from .chat_models import ChatTaleHF

__all__ = ["PENDING", "CallSettings", "PendingBatch"]


@dataclass(frozen=True, slots=True)
class CallSettings:
    """The settings of one call: per-call kwargs over the instance's defaults."""

    max_tokens: int | None
    stop: Any
    temperature: float
    budget: int | None

    def for_stream(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "stop": self.stop, "temperature": self.temperature, "budget": self.budget}

    def for_generate(self, n: int) -> dict[str, Any]:
        budgets = None if self.budget is None else [self.budget] * n
        return {"max_tokens": self.max_tokens, "stop": self.stop, "temperature": self.temperature, "budgets": budgets}


class PendingBatch:
    """The conversations of one batch call, generated together the first time any of them is needed.

    LangChain runs a batch as one `_generate` per input (in threads, or as concurrent tasks), each
    after its own ``on_chat_model_start``. The first input to reach `_generate` sends every
    conversation to the backend in one call; the others pick up their results. If that call fails,
    each input falls back to its own call, so one bad prompt fails alone.
    """

    def __init__(self, owner: ChatTaleHF, conversations: list[list[dict[str, str]]], settings: CallSettings) -> None:
        self.owner, self.conversations, self.settings = owner, conversations, settings
        self.claimed = [False] * len(conversations)
        self.results: list[Generation] | None = None
        self.failed = False
        self.lock = threading.Lock()
        self.task: asyncio.Future[list[Generation]] | None = None

    def _claim(self, owner: ChatTaleHF, conversation: list[dict[str, str]], settings: CallSettings) -> int | None:
        if owner is self.owner and settings == self.settings:
            for i, candidate in enumerate(self.conversations):
                if not self.claimed[i] and candidate == conversation:
                    self.claimed[i] = True
                    return i
        return None

    def take(self, owner: ChatTaleHF, conversation: list[dict[str, str]], settings: CallSettings) -> Generation | None:
        with self.lock:
            i = self._claim(owner, conversation, settings)
            if i is not None and self.results is None and not self.failed:
                try:
                    self.results = owner.generator.generate(
                        self.conversations, **settings.for_generate(len(self.conversations))
                    )
                except Exception:
                    self.failed = True
            return None if i is None or self.results is None else self.results[i]

    async def atake(self, owner: ChatTaleHF, conversation: list[dict[str, str]], settings: CallSettings) -> Generation | None:
        i = self._claim(owner, conversation, settings)
        if i is None:
            return None
        if self.task is None:
            self.task = asyncio.ensure_future(
                owner.generator.agenerate(self.conversations, **settings.for_generate(len(self.conversations)))
            )
        try:
            return (await asyncio.shield(self.task))[i]
        except Exception:
            return None


PENDING: ContextVar[PendingBatch | None] = ContextVar("tale_hf_pending_batch", default=None)
