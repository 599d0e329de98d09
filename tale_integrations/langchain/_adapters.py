"""Adapters between LangChain objects and the framework-free core.

- `ChatModelGenerator`: a core `Generator` over any LangChain chat model (ChatOpenAI, ChatTaleHF...),
  so the core's estimators and `TalePipeline` can run on it. A batch is one ``model.batch`` call.
- `RunnableEstimator`: a core `BudgetEstimator` over any Runnable (or function) that returns a
  number, a ``[[budget]]`` reply or an `AIMessage` holding one.
- `as_estimator`: what `TaleRunnable` and `TaleBudgetMiddleware` accept as an estimator, turned
  into a `BudgetEstimator`.
- `call_configs`: hands one `RunnableConfig` per question to the adapters for the duration of a
  core call, so the model calls made inside a core estimator appear as child runs of the caller.

Plus what both components share: the budgeted rewrite of the last human message, the child-run
tags, usage in both directions, truncation, the "does this model take max_tokens" check.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from langchain_core.language_models import BaseChatModel, BaseLLM
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, UsageMetadata
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_core.runnables.base import RunnableBindingBase
from langchain_core.runnables.configurable import DynamicRunnable
from langchain_core.runnables.fallbacks import RunnableWithFallbacks

from ..core.budget import parse_budget
from ..core.estimators import BudgetEstimator, Estimate, ZeroShotEstimator, get_estimator, is_zero_shot
from ..core.generation import BaseGenerator, FinishReason, Generation, Sampling, Usage
from ..core.prompts import EstimationPrompt, QuestionFormat, question_prompt

__all__ = [
    "ANSWER_TAG",
    "ESTIMATE_TAG",
    "NOSTREAM_TAG",
    "REPAIR_TAG",
    "ChatModelGenerator",
    "RunnableEstimator",
    "accepts_max_tokens",
    "as_estimator",
    "budgeted_messages",
    "call_configs",
    "finish_reason",
    "last_human_index",
    "model_max_tokens",
    "to_usage",
    "to_usage_metadata",
    "unwrap_chat_model",
]

#: Tags of the child runs, to filter traces and ``astream_events``.
ESTIMATE_TAG, ANSWER_TAG, REPAIR_TAG = "tale:estimate", "tale:answer", "tale:repair"
#: LangGraph's tag for "do not stream this model call's messages" (``stream_mode="messages"``): the
#: estimator's reply is bookkeeping, not part of the conversation a user watches.
NOSTREAM_TAG = "nostream"

# Provider spellings of "the answer hit the output-token cap" (OpenAI and most OpenAI-compatible
# servers: finish_reason "length"; Anthropic: stop_reason "max_tokens"; Gemini: "MAX_TOKENS").
_TRUNCATED = frozenset({"length", "max_tokens"})
_ROLE_TO_MESSAGE: dict[str, type[BaseMessage]] = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}

_CONFIGS: ContextVar[list[RunnableConfig] | None] = ContextVar("tale_call_configs", default=None)


@contextlib.contextmanager
def call_configs(configs: Sequence[RunnableConfig]) -> Iterator[None]:
    """Inside this block, an adapter call over ``len(configs)`` inputs runs input i under ``configs[i]``.

    The core's `Generator` and `BudgetEstimator` protocols carry no LangChain config; this is how a
    `ZeroShotEstimator` over a `ChatModelGenerator` still reports its model calls as child runs of
    the `TaleRunnable` run that asked (one per question, even in a batch). A call over a different
    number of inputs falls back to the ambient config.
    """
    token = _CONFIGS.set(list(configs))
    try:
        yield
    finally:
        _CONFIGS.reset(token)


def _configs_for(n: int) -> list[RunnableConfig] | None:
    configs = _CONFIGS.get()
    return configs if configs is not None and len(configs) == n else None


# -- messages -------------------------------------------------------------------------------------


def budgeted_messages(
    messages: Sequence[BaseMessage], index: int, question: str, budget: int | None, *,
    format: QuestionFormat | str = QuestionFormat.CHAT, options: Sequence[str] | None = None,
) -> list[BaseMessage]:
    """``messages`` with the human message at ``index`` rewritten as the budgeted question prompt.

    Its id and any non-text content blocks (images) are kept; every other message is unchanged.
    """
    human = messages[index]
    text = question_prompt(question, budget=budget, format=format, options=options)
    content: Any = text
    if isinstance(human.content, list):  # keep the other blocks; the text blocks become the prompt
        others = [b for b in human.content
                  if not (isinstance(b, str) or (isinstance(b, dict) and b.get("type") == "text"))]
        content = [{"type": "text", "text": text}, *others]
    return [*messages[:index], human.model_copy(update={"content": content}), *messages[index + 1:]]


def last_human_index(messages: Sequence[BaseMessage]) -> int | None:
    """Index of the last `HumanMessage`, or None."""
    return next((i for i in range(len(messages) - 1, -1, -1) if isinstance(messages[i], HumanMessage)), None)


# -- chat models ----------------------------------------------------------------------------------


def _layers(model: Any) -> Iterator[Any]:
    """``model`` and what it wraps, outermost first, through ``bind``/``with_retry``/``with_fallbacks``/
    ``configurable_*`` wrappers (a fallback chain is followed through its first runnable)."""
    for _ in range(32):  # wrappers nest, but never this deep
        yield model
        if isinstance(model, RunnableBindingBase):
            model = model.bound
        elif isinstance(model, RunnableWithFallbacks):
            model = model.runnable
        elif isinstance(model, DynamicRunnable):
            model = model.default
        else:
            return


def unwrap_chat_model(model: Any) -> BaseChatModel | None:
    """The chat model under ``bind``/``with_retry``/``with_fallbacks``/``configurable_*`` wrappers, or None."""
    return next((layer for layer in _layers(model) if isinstance(layer, BaseChatModel)), None)


def check_chat_model(model: Any, *, argument: str = "model") -> Runnable:
    """Return ``model`` if it is a chat model (possibly wrapped), else raise a TypeError naming the fix."""
    if unwrap_chat_model(model) is not None:
        return model
    if isinstance(model, BaseLLM):
        hint = "it is a text-completion LLM; use the provider's chat model class (ChatOpenAI, not OpenAI)"
    elif isinstance(model, Runnable):
        hint = "it is a Runnable but not a chat model; pass the chat model itself and compose the rest with |"
    else:
        hint = "pass a LangChain chat model such as ChatOpenAI(...) or ChatTaleHF()"
    raise TypeError(f"{argument} must be a LangChain chat model (BaseChatModel), got {type(model).__name__}: {hint}")


def _bound_kwargs(model: Any) -> dict[str, Any]:
    """Keyword arguments bound by ``.bind(...)`` wrappers, outermost winning."""
    found: dict[str, Any] = {}
    for layer in _layers(model):
        if isinstance(layer, RunnableBindingBase):
            found = {**layer.kwargs, **found}
    return found


def accepts_max_tokens(model: Any) -> bool:
    """Whether the chat model declares a ``max_tokens`` setting (so a per-call cap means something)."""
    chat = unwrap_chat_model(model)
    return chat is not None and "max_tokens" in type(chat).model_fields


def model_max_tokens(model: Any) -> int | None:
    """The output-token cap the user already set on the model (bound or as a field), if any."""
    chat = unwrap_chat_model(model)
    if chat is None or "max_tokens" not in type(chat).model_fields:
        return None
    value = _bound_kwargs(model).get("max_tokens", getattr(chat, "max_tokens", None))
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def model_name(model: Any) -> str:
    """A readable name for the model: its ``model_name``/``model`` setting, else its type."""
    chat = unwrap_chat_model(model)
    for attr in ("model_name", "model"):
        value = getattr(chat, attr, None)
        if isinstance(value, str) and value:
            return value
    return getattr(chat, "_llm_type", None) or type(chat or model).__name__


def finish_reason(message: BaseMessage) -> FinishReason:
    """``"length"`` when the provider says the reply hit its output cap, else ``"stop"``."""
    meta = message.response_metadata or {}
    reason = meta.get("finish_reason") or meta.get("stop_reason") or meta.get("done_reason")
    return "length" if isinstance(reason, str) and reason.lower() in _TRUNCATED else "stop"


def to_usage(message: BaseMessage) -> Usage:
    """A message's ``usage_metadata`` as a core `Usage` (``counter="none"`` when the model reported none)."""
    meta = getattr(message, "usage_metadata", None)
    if not meta:
        return Usage(counter="none")
    inputs, outputs = meta.get("input_token_details") or {}, meta.get("output_token_details") or {}
    return Usage(
        input_tokens=int(meta.get("input_tokens") or 0),
        output_tokens=int(meta.get("output_tokens") or 0),
        cached_input_tokens=int(inputs.get("cache_read") or 0),
        reasoning_tokens=int(outputs.get("reasoning") or 0),
        counter="reported",
    )


def to_usage_metadata(usage: Usage | None) -> UsageMetadata | None:
    """A core `Usage` as LangChain `UsageMetadata`; None when nothing was counted (``counter="none"``)."""
    if usage is None or (usage.counter == "none" and usage.total_tokens == 0):
        return None
    meta = UsageMetadata(
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, total_tokens=usage.total_tokens
    )
    if usage.cached_input_tokens:
        meta["input_token_details"] = {"cache_read": usage.cached_input_tokens}
    if usage.reasoning_tokens:
        meta["output_token_details"] = {"reasoning": usage.reasoning_tokens}
    return meta


def _to_messages(conversation: Sequence[Mapping[str, str]]) -> list[BaseMessage]:
    return [_ROLE_TO_MESSAGE[m["role"]](content=m["content"]) for m in conversation]


class ChatModelGenerator(BaseGenerator):
    """A core `Generator` over a LangChain chat model.

    ``generate`` sends every conversation in one ``model.batch`` call (``abatch`` for
    ``agenerate``): ChatTaleHF answers a batch with one batched backend call, API models send the
    requests concurrently. ``max_tokens`` is passed only to models that declare a ``max_tokens``
    setting (others have no per-call cap to set); ``stop`` and ``temperature`` are passed when given.
    Usage is the model's reported ``usage_metadata`` (``counter="reported"``), or zero with
    ``counter="none"`` when the model reports none. Calls are checked by `BaseGenerator`.

    Args:
        model: A chat model, possibly wrapped (``bind``, ``with_retry``, ``with_fallbacks``...).
    """

    def __init__(self, model: Runnable) -> None:
        self.model = check_chat_model(model)
        self.model_name = model_name(model)

    def _kwargs(self, sampling: Sampling) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if sampling.max_tokens is not None and accepts_max_tokens(self.model):
            kwargs["max_tokens"] = sampling.max_tokens
        if sampling.stop:
            kwargs["stop"] = list(sampling.stop)
        if sampling.temperature is not None:
            kwargs["temperature"] = sampling.temperature
        return kwargs

    def _generation(self, reply: Any) -> Generation:
        if not isinstance(reply, BaseMessage):
            raise TypeError(f"the chat model returned {type(reply).__name__}, not a message")
        name = (reply.response_metadata or {}).get("model_name")
        return Generation(
            text=str(reply.text), usage=to_usage(reply), finish_reason=finish_reason(reply),
            model=name if isinstance(name, str) and name else self.model_name,
        )

    def _generate(self, conversations: list[list[dict[str, str]]], sampling: Sampling) -> list[Generation]:
        """One `Generation` per conversation, from one ``model.batch`` call."""
        messages = [_to_messages(c) for c in conversations]
        replies = self.model.batch(messages, _configs_for(len(messages)), **self._kwargs(sampling))
        return [self._generation(r) for r in replies]

    async def _agenerate(self, conversations: list[list[dict[str, str]]], sampling: Sampling) -> list[Generation]:
        """Async twin of `_generate` (``model.abatch``)."""
        messages = [_to_messages(c) for c in conversations]
        replies = await self.model.abatch(messages, _configs_for(len(messages)), **self._kwargs(sampling))
        return [self._generation(r) for r in replies]

    def __repr__(self) -> str:
        return f"ChatModelGenerator({self.model_name!r})"


# -- estimators -----------------------------------------------------------------------------------


class RunnableEstimator:
    """A core `BudgetEstimator` over a Runnable that maps a question to a budget.

    The Runnable receives the question string (a one-variable prompt template accepts it as is)
    and may return an int, a finite non-negative float (rounded up), a string (``[[40]]``,
    ``Budget: 40`` or bare digits), an `AIMessage` holding such text (its usage is recorded) or a
    mapping with a ``budget`` key. Anything else, or a negative number, gives an `Estimate` with
    no number and an ``error`` saying what came back: the `BudgetPolicy` then applies its
    parse-failure rule (fallback budget, or vanilla CoT). Exceptions raised by the Runnable
    propagate (the caller's ``on_estimator_error`` decides).

    Args:
        runnable: The estimator; one ``batch``/``abatch`` call per batch of questions.
        name: Recorded with each budget; default ``"runnable:<the runnable's name>"``.
    """

    def __init__(self, runnable: Runnable, *, name: str | None = None) -> None:
        if not isinstance(runnable, Runnable):
            raise TypeError(f"runnable must be a LangChain Runnable, got {type(runnable).__name__}")
        self.runnable = runnable
        self.name = name or f"runnable:{runnable.get_name()}"

    def _read(self, value: Any) -> Estimate:
        usage, reply = Usage(counter="none"), ""
        if isinstance(value, BaseMessage):
            usage, value = to_usage(value), str(value.text)
        if isinstance(value, Mapping) and "budget" in value:
            value = value["budget"]
        if isinstance(value, str):
            reply = value
            stripped = value.strip()
            raw = parse_budget(f"[[{stripped}]]") if stripped.isascii() and stripped.isdigit() else parse_budget(value)
            error = None if raw is not None else f"{self.name} returned text with no budget in it: {value[:80]!r}"
            return Estimate(raw=raw, reply=reply, usage=usage, error=error)
        if isinstance(value, float) and math.isfinite(value) and value >= 0:
            value = min(math.ceil(value), 10**9)
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                return Estimate(raw=None, usage=usage, error=f"{self.name} returned a negative budget ({value})")
            return Estimate(raw=value, usage=usage)
        return Estimate(
            raw=None, usage=usage,
            error=f"{self.name} returned {type(value).__name__} {value!r:.80}; expected a number or '[[budget]]' text",
        )

    def estimate(self, questions: Sequence[str]) -> list[Estimate]:
        """One ``runnable.batch`` call for all questions."""
        qs = _question_list(questions)
        return [self._read(v) for v in self.runnable.batch(qs, _configs_for(len(qs)))] if qs else []

    async def aestimate(self, questions: Sequence[str]) -> list[Estimate]:
        """Async twin of `estimate` (``runnable.abatch``)."""
        qs = _question_list(questions)
        return [self._read(v) for v in await self.runnable.abatch(qs, _configs_for(len(qs)))] if qs else []


def _question_list(questions: Sequence[str]) -> list[str]:
    if isinstance(questions, (str, bytes)) or not isinstance(questions, Sequence):
        raise TypeError(f"questions must be a list of strings, got {type(questions).__name__}")
    return list(questions)


def as_estimator(
    estimator: Any, model: Runnable | None, *, prompt: EstimationPrompt | str = EstimationPrompt.SCRIPTS,
    max_tokens: int = 64,
) -> BudgetEstimator:
    """Turn what a user passed as ``estimator`` into a core `BudgetEstimator`.

    - None: the paper's zero-shot estimator (`ZeroShotEstimator`) on ``model``, its reply capped at
      ``max_tokens`` and written with the ``prompt`` variant;
    - a chat model: the zero-shot estimator on that model;
    - a core `BudgetEstimator` (``FixedEstimator``, ``FunctionEstimator``, ``LearnedEstimator``...): as is;
    - a name: ``"learned"`` (the shipped learned estimator: no model call, zero tokens),
      ``"learned:PATH"``, ``"fixed:N"`` (`core.estimators.get_estimator`), or ``"zero-shot"`` (as None);
    - any other Runnable, or a plain (sync or async) function ``question -> number``: `RunnableEstimator`.

    Raises:
        TypeError: anything else (an int says to use ``budget=N`` instead).
    """
    if is_zero_shot(estimator):
        estimator = None
    elif isinstance(estimator, str):
        return get_estimator(estimator)
    if estimator is None:
        if model is None:
            raise TypeError("the default zero-shot estimator needs a chat model to ask")
        return ZeroShotEstimator(ChatModelGenerator(model), prompt=prompt, max_tokens=max_tokens)
    if unwrap_chat_model(estimator) is not None:
        return ZeroShotEstimator(ChatModelGenerator(estimator), prompt=prompt, max_tokens=max_tokens)
    if isinstance(estimator, BudgetEstimator) and not isinstance(estimator, Runnable):
        return estimator
    if isinstance(estimator, Runnable):
        return RunnableEstimator(estimator)
    if isinstance(estimator, int) and not isinstance(estimator, bool):
        raise TypeError(f"estimator={estimator} is a number; for the same budget on every call pass budget={estimator}")
    if callable(estimator):
        fn: Callable[..., Any] = estimator
        return RunnableEstimator(RunnableLambda(fn), name=getattr(fn, "__name__", None) or "function")
    raise TypeError(
        "estimator must be None (zero-shot on the model), a chat model, a core BudgetEstimator, a Runnable "
        f"or a function returning a number; got {type(estimator).__name__}"
    )
