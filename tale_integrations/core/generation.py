"""The one seam to every model: the `Generator` protocol and the values it returns.

Every part of TALE that talks to a model (estimation, answering, search, evaluation) does so through
a `Generator`. A generator takes a batch of chat conversations and returns one `Generation` per
conversation, in order, with the text, the token usage the backend reported (or counted exactly),
the finish reason and the model name.

Backends: `tale_integrations.backends.hf.HFGenerator` (local transformers models). Anything else can
be wrapped with `FunctionGenerator`, or by writing a class with `generate` and `agenerate`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable

__all__ = [
    "FinishReason",
    "FunctionGenerator",
    "Generation",
    "Generator",
    "Message",
    "PromptTooLongError",
    "StreamEvent",
    "Usage",
    "validate_messages",
]

#: A chat message in the OpenAI shape: ``{"role": "system" | "user" | "assistant", "content": str}``.
Message: TypeAlias = Mapping[str, str]

#: Why a generation ended: ``"stop"`` (end of turn or a stop string), ``"length"`` (hit ``max_tokens``).
FinishReason: TypeAlias = Literal["stop", "length"]

_ROLES = frozenset({"system", "user", "assistant"})


class PromptTooLongError(ValueError):
    """The prompt does not fit the model's context window (with room for at least one new token)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Token usage of one model call.

    Attributes:
        input_tokens: Prompt tokens, as the backend reported or counted them.
        output_tokens: Generated tokens, including the end-of-turn token when the model emitted one.
        cached_input_tokens: Part of ``input_tokens`` served from a provider's prompt cache.
        reasoning_tokens: Part of ``output_tokens`` spent on hidden reasoning (o-series models).
        counter: What produced the figures: ``"reported"`` for provider usage, ``"hf:<name>"`` for a
            model's own tokenizer, ``"tiktoken:<encoding>"`` for a tiktoken count.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    counter: str = "reported"

    def __post_init__(self) -> None:
        for field in ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Usage.{field} must be a non-negative int, got {value!r}")

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        counter = self.counter if self.counter == other.counter else "mixed"
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            counter=counter,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, with ``total_tokens`` added."""
        return {**dataclasses.asdict(self), "total_tokens": self.total_tokens}


@dataclass(frozen=True, slots=True, kw_only=True)
class Generation:
    """One model answer.

    Attributes:
        text: The generated text only (never the prompt), cut before any stop string.
        usage: Token usage of the call that produced it.
        finish_reason: ``"stop"`` or ``"length"``.
        model: The model's name as the backend knows it.
    """

    text: str
    usage: Usage
    finish_reason: FinishReason
    model: str

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        return {
            "text": self.text,
            "usage": self.usage.to_dict(),
            "finish_reason": self.finish_reason,
            "model": self.model,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEvent:
    """One piece of a streamed generation.

    Attributes:
        text: Text added since the previous event (may be empty). The ``text`` of all events of a
            stream, joined, equals the final `Generation`'s text.
        final: The complete `Generation` (usage, finish reason), set on the last event only.
    """

    text: str
    final: Generation | None = None


@runtime_checkable
class Generator(Protocol):
    """A batched chat model, sync and async.

    ``generate(prompts)`` returns exactly one `Generation` per conversation in ``prompts``, in order.
    ``max_tokens=None`` means the backend's own default cap; ``temperature=None`` the backend's
    default decoding (0 means greedy); ``stop`` strings end the generation and are not returned.
    """

    model_name: str

    def generate(
        self,
        prompts: Sequence[Sequence[Message]],
        *,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
    ) -> list[Generation]: ...

    async def agenerate(
        self,
        prompts: Sequence[Sequence[Message]],
        *,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
    ) -> list[Generation]: ...


def validate_messages(prompts: Sequence[Sequence[Message]]) -> list[list[dict[str, str]]]:
    """Check a batch of conversations and return plain-dict copies.

    Raises:
        TypeError: ``prompts`` is not a list of conversations of role/content mappings.
        ValueError: a conversation is empty or a role is unknown.
    """
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise TypeError(
            "prompts must be a list of conversations (each a list of {'role', 'content'} dicts), "
            f"got {type(prompts).__name__}"
        )
    checked: list[list[dict[str, str]]] = []
    for i, conversation in enumerate(prompts):
        if isinstance(conversation, (str, bytes)) or not isinstance(conversation, Sequence):
            raise TypeError(
                f"prompts[{i}] must be a list of {{'role', 'content'}} dicts, "
                f"got {type(conversation).__name__}; wrap a plain string as "
                "[{'role': 'user', 'content': text}]"
            )
        if not conversation:
            raise ValueError(f"prompts[{i}] is an empty conversation")
        messages = []
        for j, message in enumerate(conversation):
            if not isinstance(message, Mapping):
                raise TypeError(f"prompts[{i}][{j}] must be a mapping, got {type(message).__name__}")
            role, content = message.get("role"), message.get("content")
            if role not in _ROLES:
                raise ValueError(f"prompts[{i}][{j}]['role'] must be one of {sorted(_ROLES)}, got {role!r}")
            if not isinstance(content, str):
                raise TypeError(f"prompts[{i}][{j}]['content'] must be a str, got {type(content).__name__}")
            messages.append({"role": role, "content": content})
        checked.append(messages)
    return checked


class FunctionGenerator:
    """A `Generator` over a plain function, for custom backends and tests of pure logic.

    The function receives one conversation and the call's settings and returns a `Generation` or a
    string; a string is wrapped with zero usage (``counter="none"``) and finish reason ``"stop"``.
    ``agenerate`` runs ``afn`` when given, else the sync function in a worker thread.

    Args:
        fn: ``fn(messages, *, max_tokens, stop, temperature) -> Generation | str``.
        afn: Optional async twin of ``fn``.
        model_name: Name reported in each `Generation`.
    """

    def __init__(
        self,
        fn: Callable[..., Generation | str],
        *,
        afn: Callable[..., Any] | None = None,
        model_name: str = "function",
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self._fn = fn
        self._afn = afn
        self.model_name = model_name

    def _wrap(self, value: Generation | str) -> Generation:
        if isinstance(value, Generation):
            return value
        if isinstance(value, str):
            return Generation(text=value, usage=Usage(counter="none"), finish_reason="stop", model=self.model_name)
        raise TypeError(f"the generator function must return a Generation or str, got {type(value).__name__}")

    def generate(
        self,
        prompts: Sequence[Sequence[Message]],
        *,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
    ) -> list[Generation]:
        """Call the function once per conversation."""
        checked = validate_messages(prompts)
        settings = {"max_tokens": max_tokens, "stop": stop, "temperature": temperature}
        return [self._wrap(self._fn(messages, **settings)) for messages in checked]

    async def agenerate(
        self,
        prompts: Sequence[Sequence[Message]],
        *,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
    ) -> list[Generation]:
        """Async twin of `generate`: all conversations run concurrently."""
        checked = validate_messages(prompts)
        settings = {"max_tokens": max_tokens, "stop": stop, "temperature": temperature}
        if self._afn is not None:
            values = await asyncio.gather(*(self._afn(messages, **settings) for messages in checked))
        else:
            values = await asyncio.gather(
                *(asyncio.to_thread(self._fn, messages, **settings) for messages in checked)
            )
        return [self._wrap(v) for v in values]
