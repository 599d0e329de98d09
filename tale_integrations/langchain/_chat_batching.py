"""The batch that answers all of a ``batch`` call's inputs with one backend call (for `ChatTaleHF`).

It is handed the generator to call explicitly, so it needs nothing from the chat model's module.
"""

from __future__ import annotations

import asyncio
import threading
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..backends.hf.settings import CallSettings
    from ..core.generation import Generation

__all__ = ["PENDING", "PendingBatch"]


class PendingBatch:
    """The conversations of one batch call, generated together the first time any of them is needed.

    LangChain runs a batch as one `_generate` per input (in threads, or as concurrent tasks), each
    after its own ``on_chat_model_start``. The first input to reach `_generate` sends every
    conversation to the backend in one call; the others pick up their results. If that call fails,
    each input falls back to its own call, so one bad prompt fails alone.

    Args:
        generator: The `HFGenerator` to call; an input made with another one takes no part.
        conversations: The batch's conversations, in order.
        settings: The batch's call settings; an input with other settings takes no part.
    """

    def __init__(self, generator: Any, conversations: list[list[dict[str, str]]], settings: CallSettings) -> None:
        self.generator, self.conversations, self.settings = generator, conversations, settings
        self.claimed = [False] * len(conversations)
        self.results: list[Generation] | None = None
        self.failed = False
        self.lock = threading.Lock()
        self.task: asyncio.Future[list[Generation]] | None = None

    def _claim(self, generator: Any, conversation: list[dict[str, str]], settings: CallSettings) -> int | None:
        if generator is self.generator and settings == self.settings:
            for i, candidate in enumerate(self.conversations):
                if not self.claimed[i] and candidate == conversation:
                    self.claimed[i] = True
                    return i
        return None

    def take(self, generator: Any, conversation: list[dict[str, str]], settings: CallSettings) -> Generation | None:
        """This conversation's result from the batch (generating the batch if no input has yet), or
        None if it is not part of it or the batched call failed: then it makes its own call."""
        with self.lock:
            i = self._claim(generator, conversation, settings)
            if i is not None and self.results is None and not self.failed:
                try:
                    self.results = generator.generate(
                        self.conversations, **settings.for_generate(len(self.conversations))
                    )
                except Exception:
                    self.failed = True
            return None if i is None or self.results is None else self.results[i]

    async def atake(self, generator: Any, conversation: list[dict[str, str]],
                    settings: CallSettings) -> Generation | None:
        """Async twin of `take`."""
        i = self._claim(generator, conversation, settings)
        if i is None:
            return None
        if self.task is None:
            self.task = asyncio.ensure_future(
                generator.agenerate(self.conversations, **settings.for_generate(len(self.conversations)))
            )
        try:
            return (await asyncio.shield(self.task))[i]
        except Exception:
            return None


PENDING: ContextVar[PendingBatch | None] = ContextVar("tale_hf_pending_batch", default=None)
