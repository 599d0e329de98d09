"""The one seam to every model: the `Generator` protocol and the values it returns.

Every part of TALE that talks to a model (estimation, answering, search, evaluation) does so through
a `Generator`. A generator takes a batch of chat conversations and returns one `Generation` per
conversation, in order, with the text, the token usage the backend reported (or counted exactly),
the finish reason and the model name.

Backends: `tale_integrations.backends.hf.HFGenerator` (local transformers models). Anything else can
be wrapped with `FunctionGenerator`, or by writing a class with `generate` and `agenerate`: either
structurally (the `Generator` protocol) or as a subclass of `BaseGenerator`, which checks every call
once (`validate_messages`, `Sampling`) and leaves the subclass only the translation to its model.
"""

from __future__ import annotations

import asyncio
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable

from .checks import check_int, check_number, check_positive_int
from .errors import PromptTooLongError, TaleError, TaleTypeError, TaleValueError

__all__ = [
    "BaseGenerator",
    "FinishReason",
    "FunctionGenerator",
    "Generation",
    "Generator",
    "Message",
    "PromptTooLongError",
    "Sampling",
    "StreamEvent",
    "Usage",
    "validate_messages",
]

#: A chat message in the OpenAI shape: ``{"role": "system" | "user" | "assistant", "content": str}``.
Message: TypeAlias = Mapping[str, str]

#: Why a generation ended: ``"stop"`` (end of turn or a stop string), ``"length"`` (hit ``max_tokens``).
FinishReason: TypeAlias = Literal["stop", "length"]

_ROLES = frozenset({"system", "user", "assistant"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Token usage of one model call.

    Attributes:
        input_tokens: Prompt tokens, as the backend reported or counted them.
        output_tokens: Generated tokens, including the end-of-turn token when the model emitted one.
        cached_input_tokens: Part of ``input_tokens`` served from a provider's prompt cache.
        reasoning_tokens: Part of ``output_tokens`` spent on thinking (hidden by o-series models, returned
            apart as `Generation.reasoning` by local thinking models).
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
            check_int(f"Usage.{field}", getattr(self, field), low=0)

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
        reasoning: The thinking text of a thinking model, kept apart from ``text`` (its tokens are
            ``usage.reasoning_tokens``); None when the model did not think or the backend hides it.
    """

    text: str
    usage: Usage
    finish_reason: FinishReason
    model: str
    reasoning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (``reasoning`` only when there is some)."""
        out = {
            "text": self.text,
            "usage": self.usage.to_dict(),
            "finish_reason": self.finish_reason,
            "model": self.model,
        }
        if self.reasoning is not None:
            out["reasoning"] = self.reasoning
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEvent:
    """One piece of a streamed generation.

    Attributes:
        text: Text added since the previous event (may be empty). The ``text`` of all events of a
            stream, joined, equals the final `Generation`'s text.
        final: The complete `Generation` (usage, finish reason), set on the last event only.
        reasoning: Thinking text added since the previous event (a thinking model's; joined over
            the stream, it equals the final `Generation`'s ``reasoning``).
    """

    text: str
    final: Generation | None = None
    reasoning: str = ""


@runtime_checkable
class Generator(Protocol):
    """A batched chat model, sync and async.

    ``generate(prompts)`` returns exactly one `Generation` per conversation in ``prompts``, in order.
    ``max_tokens=None`` means the backend's own default cap; ``temperature=None`` the backend's
    default decoding (0 means greedy); ``stop`` strings end the generation and are not returned.
    An empty batch gives ``[]``. Bad arguments raise ``TypeError``/``ValueError`` naming the argument.
    `BaseGenerator` implements this shape once; tests/contract/generator_contract.py checks a backend
    against it.
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Sampling:
    """The checked settings of one `Generator` call (each None: the backend's default).

    Attributes:
        max_tokens: Output-token cap, a positive int.
        stop: Stop strings, each non-empty, kept as a tuple. A bare string is refused rather than
            read as a list of one-character stops (or guessed to be one stop): pass ``[text]``.
        temperature: Sampling temperature from 0 (greedy) to 2.
    """

    max_tokens: int | None = None
    stop: Sequence[str] | None = None
    temperature: float | None = None

    def __post_init__(self) -> None:
        check_positive_int("max_tokens", self.max_tokens, optional=True)
        check_number("temperature", self.temperature, low=0, high=2, optional=True, hint=" (0 = greedy)")
        stop = self.stop
        if stop is None:
            return
        listed = isinstance(stop, Sequence) and not isinstance(stop, (str, bytes))
        if not listed or not all(isinstance(s, str) for s in stop):
            raise TaleTypeError(f"stop must be a list of strings or None (one stop string: [text]), got {stop!r}")
        if not all(stop):
            raise TaleValueError(f"stop must hold non-empty strings, got {list(stop)!r}")
        object.__setattr__(self, "stop", tuple(stop))

    def to_dict(self) -> dict[str, Any]:
        """The settings as the keyword arguments of `Generator.generate` (``stop`` as a list)."""
        stop = list(self.stop) if self.stop is not None else None
        return {"max_tokens": self.max_tokens, "stop": stop, "temperature": self.temperature}


class BaseGenerator(ABC):
    """The `Generator` shape written once: a subclass translates checked calls to its model.

    The public ``generate``/``agenerate`` check the call (`validate_messages` on the batch, `Sampling`
    on the settings), answer an empty batch with ``[]`` without calling the model, hand the plain-dict
    conversations to ``_generate``/``_agenerate``, and check that exactly one `Generation` came back
    per conversation. A subclass sets ``model_name`` and implements ``_generate``; it overrides
    ``_agenerate`` when its model has a truly async path (the default runs ``_generate`` in a worker
    thread, off the event loop).

    Backends with per-call arguments beyond the protocol (``HFGenerator``'s per-row caps, budgets and
    cancel events) implement the `Generator` protocol directly instead.
    """

    model_name: str

    def generate(
        self,
        prompts: Sequence[Sequence[Message]],
        *,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
    ) -> list[Generation]:
        """One `Generation` per conversation in ``prompts``, in order.

        Raises:
            TypeError: ``prompts`` is not a list of conversations, or ``stop`` not a list of strings.
            ValueError: an empty conversation, an unknown role, or a setting out of range.
        """
        conversations, sampling = _check_call(prompts, max_tokens, stop, temperature)
        if not conversations:
            return []
        return self._one_each(conversations, self._generate(conversations, sampling))

    async def agenerate(
        self,
        prompts: Sequence[Sequence[Message]],
        *,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
    ) -> list[Generation]:
        """Async twin of `generate`, with the same checks."""
        conversations, sampling = _check_call(prompts, max_tokens, stop, temperature)
        if not conversations:
            return []
        return self._one_each(conversations, await self._agenerate(conversations, sampling))

    @abstractmethod
    def _generate(self, conversations: list[list[dict[str, str]]], sampling: Sampling) -> Sequence[Generation]:
        """Answer a checked, non-empty batch: one `Generation` per conversation, in order."""

    async def _agenerate(self, conversations: list[list[dict[str, str]]], sampling: Sampling) -> Sequence[Generation]:
        """Async twin of ``_generate``; by default ``_generate`` in a worker thread."""
        return await asyncio.to_thread(self._generate, conversations, sampling)

    def _one_each(self, conversations: list[Any], generations: Sequence[Generation]) -> list[Generation]:
        generations = list(generations)
        if len(generations) != len(conversations):
            raise TaleError(
                f"{type(self).__name__} returned {len(generations)} generations for {len(conversations)} "
                "conversations; a Generator returns exactly one per conversation"
            )
        return generations


def _check_call(
    prompts: Any, max_tokens: Any, stop: Any, temperature: Any
) -> tuple[list[list[dict[str, str]]], Sampling]:
    return validate_messages(prompts), Sampling(max_tokens=max_tokens, stop=stop, temperature=temperature)


class FunctionGenerator(BaseGenerator):
    """A `Generator` over a plain function, for custom backends and tests of pure logic.

    The function receives one conversation and the call's settings and returns a `Generation` or a
    string; a string is wrapped with zero usage (``counter="none"``) and finish reason ``"stop"``.
    ``agenerate`` runs ``afn`` when given, else the sync function in worker threads; either way the
    conversations of a batch run concurrently.

    Args:
        fn: ``fn(messages, *, max_tokens, stop, temperature) -> Generation | str``; ``stop`` arrives as
            a list (or None).
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

    def _generate(self, conversations: list[list[dict[str, str]]], sampling: Sampling) -> list[Generation]:
        settings = sampling.to_dict()
        return [self._wrap(self._fn(messages, **settings)) for messages in conversations]

    async def _agenerate(self, conversations: list[list[dict[str, str]]], sampling: Sampling) -> list[Generation]:
        settings = sampling.to_dict()
        if self._afn is not None:
            values = await asyncio.gather(*(self._afn(messages, **settings) for messages in conversations))
        else:
            values = await asyncio.gather(
                *(asyncio.to_thread(self._fn, messages, **settings) for messages in conversations)
            )
        return [self._wrap(v) for v in values]
