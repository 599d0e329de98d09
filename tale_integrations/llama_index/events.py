"""What TALE reports to LlamaIndex: instrumentation events, the per-query record, and the collection
of the usage of every LLM call made while a query is answered.

- `TaleBudgetEvent` is dispatched once a question's budget is known (with the estimator's usage);
  `TaleUsageEvent` once an answer is complete (after a stream is consumed, for streams), with the
  usage of every call. Both go through ``llama_index.core.instrumentation``, so any event handler
  on the root dispatcher sees them.
- `TaleRun` is the record that `TaleQueryEngine` puts into ``response.metadata["tale"]`` (as a dict).
- `collect_llm_calls` records, for the code run inside it, every LLM call that ended
  (``LLMChatEndEvent``/``LLMCompletionEndEvent``) with the usage its response reports. It keys on
  a ContextVar, so concurrent queries (threads, asyncio tasks) never see each other's calls, and it
  keeps only the innermost call when one LLM method wraps another (``CustomLLM.chat`` calling
  ``complete``, for instance), so no call is counted twice.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import reduce
from typing import Any, Literal

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMCompletionEndEvent
from llama_index.core.instrumentation.span_handlers import NullSpanHandler

from ..core.budget import Budget
from ..core.decision import BudgetRecord
from ..core.generation import Usage
from ._adapters import usage_from_response

__all__ = [
    "CallRecorder",
    "TaleBudgetEvent",
    "TaleCall",
    "TaleRun",
    "TaleUsageEvent",
    "collect_llm_calls",
    "finish_astream",
    "finish_stream",
    "report_llm_call",
    "sum_usage",
]

dispatcher = get_dispatcher(__name__)


class TaleBudgetEvent(BaseEvent):
    """A question's TALE budget is known.

    Attributes:
        query_str: The user's question (as retrieval sees it).
        budget, budget_raw, budget_source, budget_adjusted, estimator, estimator_reply, estimator_error,
            estimator_usage: The budget record, as every integration writes it (`core.decision`);
            ``estimator_usage`` (`Usage.to_dict`) only when a model was asked.
    """

    query_str: str
    budget: int | None
    budget_raw: int | None = None
    budget_source: str | None = None
    budget_adjusted: str | None = None
    estimator: str | None = None
    estimator_reply: str | None = None
    estimator_error: str | None = None
    estimator_usage: dict[str, Any] | None = None

    @classmethod
    def class_name(cls) -> str:
        return "TaleBudgetEvent"


class TaleUsageEvent(BaseEvent):
    """A TALE answer is complete: the usage of every call made for it.

    Attributes:
        query_str: The user's question.
        budget: The budget in the prompt (None when none was used).
        calls: One `TaleCall.to_dict` per model call, estimator first.
        usage: Totals by role: ``{"estimator": ..., "answer": ..., "total": ...}`` (`Usage.to_dict`).
    """

    query_str: str
    budget: int | None
    calls: list[dict[str, Any]]
    usage: dict[str, dict[str, Any]]

    @classmethod
    def class_name(cls) -> str:
        return "TaleUsageEvent"


def sum_usage(usages: list[Usage]) -> Usage:
    """The sum of ``usages``; zero with ``counter="none"`` when there are none."""
    return reduce(lambda a, b: a + b, usages) if usages else Usage(counter="none")


@dataclass(frozen=True, slots=True, kw_only=True)
class TaleCall:
    """One model call made for a question.

    Attributes:
        role: ``"estimator"`` (the budget estimate) or ``"answer"`` (synthesis: one or more per answer).
        model: The model's name, when known.
        usage: Its token usage; ``counter="none"`` with zeros when the LLM reported none.
    """

    role: Literal["estimator", "answer"]
    model: str | None
    usage: Usage

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        return {"role": self.role, "model": self.model, **self.usage.to_dict()}


@dataclass(frozen=True, slots=True, kw_only=True)
class TaleRun:
    """What TALE did for one question; ``response.metadata["tale"]`` holds its `to_dict`.

    Attributes:
        question: The user's question.
        budget: The resolved `Budget`, or None when no budget was estimated (see ``skipped``).
        estimator: The estimator's name, if one ran.
        estimator_reply: The estimator model's reply, if a model was asked.
        estimator_error: Why the estimator gave no number, when it gave none.
        calls: Every model call, in order: the estimator's, then the answer's.
        skipped: Why no budget was estimated (nothing retrieved; a synthesizer that writes no answer).
        complete: False while a streamed answer is still being consumed (its calls are not all in).
    """

    question: str
    budget: Budget | None
    estimator: str | None = None
    estimator_reply: str | None = None
    estimator_error: str | None = None
    calls: tuple[TaleCall, ...] = ()
    skipped: str | None = None
    complete: bool = True

    def usage(self, role: str | None = None) -> Usage:
        """Total usage of the calls of ``role`` (``"estimator"``, ``"answer"``), or of all calls."""
        return sum_usage([c.usage for c in self.calls if role is None or c.role == role])

    @property
    def record(self) -> BudgetRecord:
        """The budget record (`core.decision.RECORD_KEYS`); its usage is the estimator's model calls."""
        asked = any(c.role == "estimator" for c in self.calls)
        return BudgetRecord(budget=self.budget, estimator=self.estimator, estimator_reply=self.estimator_reply or None,
                            estimator_error=self.estimator_error,
                            estimator_usage=self.usage("estimator") if asked else None)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict (JSON-serialisable) form: the question, the budget record, the calls and their usage."""
        return {
            "question": self.question,
            **self.record.to_dict(),
            "skipped": self.skipped,
            "complete": self.complete,
            "calls": [c.to_dict() for c in self.calls],
            "usage": {"estimator": self.usage("estimator").to_dict(), "answer": self.usage("answer").to_dict(),
                      "total": self.usage().to_dict()},
        }

    def with_answer_calls(self, calls: list[TaleCall], *, complete: bool = True) -> TaleRun:
        """A copy with the answer ``calls`` appended."""
        return dataclasses.replace(self, calls=(*self.calls, *calls), complete=complete)

    def event(self) -> TaleUsageEvent:
        """The `TaleUsageEvent` of this run."""
        d = self.to_dict()
        return TaleUsageEvent(query_str=self.question, budget=d["budget"], calls=d["calls"], usage=d["usage"])


# -- collecting the LLM calls of a query -----------------------------------------------------------


class _Collector:
    def __init__(self) -> None:
        self.ends: list[tuple[str | None, Any]] = []  # (span id, response) of each LLM end event
        self.parents: dict[str, str | None] = {}  # span id -> parent span id, for spans opened meanwhile

    def calls(self) -> list[TaleCall]:
        """The recorded calls, innermost only: a call whose span encloses another call's is a wrapper."""
        enclosing: set[str] = set()
        for span, _ in self.ends:
            parent = self.parents.get(span) if span else None
            while parent is not None and parent not in enclosing:
                enclosing.add(parent)
                parent = self.parents.get(parent)
        calls = []
        for span, response in self.ends:
            if span is not None and span in enclosing:
                continue
            raw = getattr(response, "raw", None)
            model = raw.get("model") if isinstance(raw, dict) else getattr(raw, "model", None)
            usage = usage_from_response(response) or Usage(counter="none")
            calls.append(TaleCall(role="answer", model=model if isinstance(model, str) else None, usage=usage))
        return calls


_ACTIVE: contextvars.ContextVar[_Collector | None] = contextvars.ContextVar("tale_llm_calls", default=None)
_install_lock = threading.Lock()


class _LLMEndHandler(BaseEventHandler):
    @classmethod
    def class_name(cls) -> str:
        return "TaleLLMEndHandler"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        collector = _ACTIVE.get()
        if collector is not None and isinstance(event, (LLMChatEndEvent, LLMCompletionEndEvent)):
            collector.ends.append((event.span_id, event.response))


class _SpanParents(NullSpanHandler):
    @classmethod
    def class_name(cls) -> str:
        return "TaleSpanParents"

    def span_enter(self, id_: str, bound_args: Any, instance: Any = None, parent_id: str | None = None,
                   tags: Any = None, **kwargs: Any) -> None:
        collector = _ACTIVE.get()
        if collector is not None:
            collector.parents[id_] = parent_id


def _install() -> None:
    """Put the two handlers on the root dispatcher once (they do nothing outside `collect_llm_calls`)."""
    root = get_dispatcher()  # the root: every dispatcher propagates to it
    with _install_lock:
        if not any(isinstance(h, _LLMEndHandler) for h in root.event_handlers):
            root.add_event_handler(_LLMEndHandler())
        if not any(isinstance(h, _SpanParents) for h in root.span_handlers):
            root.add_span_handler(_SpanParents())


@contextlib.contextmanager
def _active(collector: _Collector) -> Iterator[None]:
    token = _ACTIVE.set(collector)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


class CallRecorder:
    """Records LLM calls while `recording` (re-enterable, e.g. around each step of a stream)."""

    def __init__(self) -> None:
        _install()
        self._collector = _Collector()

    def recording(self) -> contextlib.AbstractContextManager[None]:
        """Record the LLM calls that end inside this block."""
        return _active(self._collector)

    def calls(self) -> list[TaleCall]:
        """The calls recorded so far (innermost only)."""
        return self._collector.calls()


@contextlib.contextmanager
def collect_llm_calls() -> Iterator[CallRecorder]:
    """Record every LLM call that ends inside the block; read them with ``recorder.calls()``."""
    recorder = CallRecorder()
    with recorder.recording():
        yield recorder


# -- streams: the record is complete when the stream ends --------------------------------------------


def _complete(run: TaleRun, recorder: CallRecorder, record: dict[str, Any]) -> None:
    final = run.with_answer_calls(recorder.calls())
    record.clear()
    record.update(final.to_dict())
    dispatcher.event(final.event())


def finish_stream(pieces: Iterator[str], run: TaleRun, recorder: CallRecorder,
                  record: dict[str, Any]) -> Iterator[str]:
    """Pass a response stream through, recording the LLM calls that end while it is consumed; at its
    end, fill ``record`` (the response's ``metadata["tale"]``) in place and dispatch `TaleUsageEvent`."""
    while True:
        with recorder.recording():
            try:
                piece = next(pieces)
            except StopIteration:
                break
        yield piece
    _complete(run, recorder, record)


async def finish_astream(pieces: AsyncIterator[str], run: TaleRun, recorder: CallRecorder,
                         record: dict[str, Any]) -> AsyncIterator[str]:
    """Async twin of `finish_stream`."""
    while True:
        with recorder.recording():
            try:
                piece = await pieces.__anext__()
            except StopAsyncIteration:
                break
        yield piece
    _complete(run, recorder, record)


def report_llm_call(manager: CallbackManager, messages: list[ChatMessage], reply: str, usage: Usage, *,
                    name: str) -> None:
    """Report a model call made outside LlamaIndex (a core estimator's) as an LLM callback event whose
    response carries the exact usage, so ``TokenCountingHandler`` counts it without re-counting."""
    counts = {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
              "total_tokens": usage.total_tokens}
    response = ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=reply),
                            raw={"usage": counts, "token_counter": usage.counter}, additional_kwargs=counts)
    event_id = manager.on_event_start(CBEventType.LLM, payload={EventPayload.MESSAGES: messages,
                                                                EventPayload.SERIALIZED: {"class_name": name}})
    manager.on_event_end(CBEventType.LLM, payload={EventPayload.MESSAGES: messages, EventPayload.RESPONSE: response},
                         event_id=event_id)
