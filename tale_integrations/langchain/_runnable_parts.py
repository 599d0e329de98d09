"""The pieces `TaleRunnable` is made of: its input types and their parsing, the requests its flow
yields, the child configs of its model calls, and small message helpers."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.messages import (
    AIMessage, AIMessageChunk, AnyMessage, BaseMessage, HumanMessage, UsageMetadata, convert_to_messages,
)
from langchain_core.messages.ai import add_usage
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import patch_config
from typing_extensions import NotRequired, TypedDict

from ..core.checks import check_positive_int
from ..core.prompts import QuestionFormat
from ._adapters import ANSWER_TAG, ESTIMATE_TAG, NOSTREAM_TAG, REPAIR_TAG, last_human_index

__all__ = [
    "BRACKETED", "OUTCOME_KEYS", "REPAIR_SEPARATOR", "Children", "EstimateRequest", "Item", "ModelCall", "TaleInput",
    "TaleQuestion", "as_chunk", "parse_input", "to_message", "total_usage",
]


REPAIR_SEPARATOR = "\n\n"  # between a cut-off answer and its repaired ending, in `content`
#: Keys of ``response_metadata["tale"]`` known only after the answer (the closing chunk of a stream).
OUTCOME_KEYS = frozenset({"answer_usage", "repaired", "repair_usage", "repair_error", "total_usage"})
BRACKETED = re.compile(r"\[\[\s*[^\[\]\s][^\[\]]*\]\]")


class TaleQuestion(TypedDict):
    """Dict input: the question, an optional budget for this call (skips estimation), options."""

    question: str
    budget: NotRequired[int | None]
    options: NotRequired[list[str] | None]


#: What `TaleRunnable` accepts: a question string, a `TaleQuestion` dict, a `PromptValue` or a message list.
TaleInput = str | TaleQuestion | PromptValue | list[AnyMessage]


@dataclass(frozen=True, slots=True)
class Item:
    messages: tuple[BaseMessage, ...]
    index: int  # of the last human message, which carries the question
    question: str
    budget: int | None
    options: tuple[str, ...] | None


class Children:
    """One input's child configs, one per kind of model call, made when first needed."""

    __slots__ = ("_config", "_run_manager")

    def __init__(self, config: RunnableConfig, run_manager: Any) -> None:
        self._config, self._run_manager = config, run_manager

    def _child(self, *tags: str) -> RunnableConfig:
        callbacks = self._run_manager.get_child(tags[0])
        if tags[1:]:
            callbacks.add_tags(list(tags[1:]))
        return patch_config(self._config, callbacks=callbacks)

    @property
    def estimate(self) -> RunnableConfig:
        return self._child(ESTIMATE_TAG, NOSTREAM_TAG)

    @property
    def answer(self) -> RunnableConfig:
        return self._child(ANSWER_TAG)

    @property
    def repair(self) -> RunnableConfig:
        return self._child(REPAIR_TAG)


@dataclass(frozen=True, slots=True)
class EstimateRequest:
    questions: list[str]
    configs: list[RunnableConfig]


@dataclass(frozen=True, slots=True)
class ModelCall:
    kind: Literal["answer", "repair"]
    messages: list[list[BaseMessage]]
    configs: list[RunnableConfig]
    caps: list[int | None]
    headers: list[dict[str, Any]]
    #: Per row, call arguments beyond the cap: a thinking model's knob (`ThinkingTarget.call_kwargs`).
    extras: list[dict[str, Any]] | None = None

    def settings(self, i: int) -> dict[str, Any]:
        """Row ``i``'s extra call arguments (empty for the prompt trigger)."""
        return self.extras[i] if self.extras is not None else {}


def total_usage(*usages: UsageMetadata | None) -> UsageMetadata | None:
    present = [u for u in usages if u]
    return functools.reduce(add_usage, present) if present else None


def as_chunk(message: BaseMessage) -> AIMessageChunk:
    if isinstance(message, AIMessageChunk):
        return message
    return AIMessageChunk(content=message.content, id=message.id, response_metadata=message.response_metadata,
                          usage_metadata=getattr(message, "usage_metadata", None))


def to_message(chunk: AIMessageChunk | None) -> AIMessage:
    if chunk is None:
        return AIMessage(content="")
    return AIMessage(content=chunk.content, id=chunk.id, response_metadata=chunk.response_metadata,
                     usage_metadata=chunk.usage_metadata, additional_kwargs=chunk.additional_kwargs)


def parse_input(value: Any, format: QuestionFormat) -> Item:
    """One input of `TaleRunnable` (see its docstring) as an `Item`; bad input raises, naming the fix."""
    budget, options = None, None
    if isinstance(value, str):
        messages: list[BaseMessage] = [HumanMessage(value)]
    elif isinstance(value, PromptValue):
        messages = value.to_messages()
    elif isinstance(value, Mapping):
        if "question" not in value:
            raise ValueError(
                f"TaleRunnable got a dict without a 'question' key (keys: {sorted(map(str, value))}); pass "
                "{'question': ..., 'budget': optional int}, a string, or messages from a prompt template"
            )
        question, budget, options = value["question"], value.get("budget"), value.get("options")
        if not isinstance(question, str):
            raise TypeError(f"input['question'] must be a str, got {type(question).__name__}")
        check_positive_int("input['budget']", budget, optional=True)
        if options is not None and (isinstance(options, str) or not all(isinstance(o, str) for o in options)):
            raise TypeError("input['options'] must be a list of strings")
        messages = [HumanMessage(question)]
    elif isinstance(value, Sequence) and not isinstance(value, bytes):
        if not value:
            raise ValueError("TaleRunnable got an empty message list; give at least one human message")
        messages = convert_to_messages(value)
    else:
        raise TypeError(
            f"TaleRunnable input must be a str, a dict with 'question', a PromptValue or a list of messages, "
            f"got {type(value).__name__}"
        )
    index = last_human_index(messages)
    if index is None:
        raise ValueError("TaleRunnable found no human message in its input; the last human message is the question")
    question = str(messages[index].text)
    if not question.strip():
        raise ValueError("the question (the last human message) is empty; pass the text of the question")
    if format is QuestionFormat.MULTIPLE_CHOICE and not options:
        raise ValueError("format='multiple_choice' needs the answer options: pass {'question': ..., 'options': [...]}")
    return Item(tuple(messages), index, question, budget, tuple(options) if options else None)
