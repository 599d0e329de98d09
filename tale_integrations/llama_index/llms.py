"""`TaleHFLLM`: a LlamaIndex chat LLM over the local transformers backend (`HFGenerator`).

Unlike ``HuggingFaceLLM`` it always applies the chat template, returns only new text, honours
per-call ``max_tokens``, ``stop``, ``temperature`` and ``budget``, reports exact token counts where
``TokenCountingHandler`` reads them, runs async calls off the event loop, batches many prompts into
one backend call, and loads LoRA adapters natively.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatStartEvent,
    LLMCompletionEndEvent,
    LLMCompletionStartEvent,
)
from llama_index.core.instrumentation.span import active_span_id
from llama_index.core.llms import LLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback

from ..core.generation import Generation, Message
from ._llm_messages import (
    TOOL_RESULT_PREFIX, apieces, chat_response, completion_response, per_row, pieces, to_backend_messages,
)

__all__ = ["TOOL_RESULT_PREFIX", "TaleHFLLM", "to_backend_messages"]

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

#: Settings that belong to the generator; `from_generator` refuses them.
_LOADING_FIELDS = ("model_path", "adapter_path", "merge_adapter", "device", "dtype", "max_batch_size", "seed",
                   "enforce_budget")
#: Keyword arguments LlamaIndex itself passes (``complete(prompt, formatted=True)``); accepted silently.
_INTERNAL_KWARGS = frozenset({"formatted"})
_GENERATOR_KEY = "tale_generator"


class TaleHFLLM(LLM):
    """A local Hugging Face chat model as a LlamaIndex LLM (``metadata.is_chat_model`` is True).

    The backend `HFGenerator` is created with the LLM (paths and dtype are checked then) but loads
    its weights on first use. Reading `metadata` loads them too, unless ``context_window`` is given,
    because the context window comes from the model's config; ``as_query_engine(llm=...)`` reads it.
    Wrap an already built or loaded generator with `from_generator`. Query engines replace the LLM's
    ``callback_manager`` with ``Settings.callback_manager``: attach token counters there.

    Per-call keyword arguments of ``chat``/``complete``/``stream_*``/``a*``/``batch_*``:
    ``max_tokens`` (alias ``max_new_tokens``), ``stop`` (a string or list of strings), ``temperature``,
    ``budget`` (needs ``enforce_budget``) and ``answer_format`` (the enforcer's wrap-up style). Other
    keyword arguments (provider options such as ``extra_headers`` that some LlamaIndex components
    pass) are ignored with one logged warning per name.

    Responses carry the generated text only; ``raw`` is ``{"usage": {"prompt_tokens",
    "completion_tokens", "total_tokens"}, "model", "finish_reason", "token_counter"}`` and
    ``additional_kwargs`` repeats the three counts. Streams yield ``delta`` per piece and the text so
    far; the last response carries the usage.

    Args:
        model_path: A local model folder, a merged TALE-PT checkpoint, a LoRA adapter folder, a hub id,
            or None for the embedded SmolLM2-135M-Instruct.
        adapter_path: A PEFT LoRA adapter folder to apply on top of ``model_path``.
        merge_adapter: Merge the adapter into the weights after loading.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default CUDA when available.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or ``"auto"``; default bf16 on CUDA, fp32 on CPU.
        model_name: Name reported in responses and metadata; default the backend's (the folder's name).
        temperature: Default sampling temperature; 0 is greedy.
        max_new_tokens: Default output cap per call; also ``metadata.num_output``.
        max_batch_size: Prompts per forward pass in batched calls.
        seed: Seed for sampled decoding.
        enforce_budget: Hold answers to ``budget`` while decoding (the backend's `BudgetEnforcer`).
        budget: Default token budget per answer; needs ``enforce_budget``.
        context_window: Override the context window in `metadata` (skips loading the model to read it).
    """

    model_config = ConfigDict(extra="forbid")

    model_path: str | None = None
    adapter_path: str | None = None
    merge_adapter: bool = False
    device: str | None = None
    dtype: str | None = None
    model_name: str | None = None
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_new_tokens: int = Field(default=256, gt=0)
    max_batch_size: int = Field(default=16, gt=0)
    seed: int | None = None
    enforce_budget: bool = False
    budget: int | None = Field(default=None, gt=0)
    context_window: int | None = Field(default=None, gt=0)

    _generator: Any = PrivateAttr(default=None)
    _warned: set[str] = PrivateAttr(default_factory=set)

    @field_validator("model_path", "adapter_path", mode="before")
    @classmethod
    def _fspath(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @model_validator(mode="after")
    def _check_budget(self) -> TaleHFLLM:
        if self.budget is not None and not self.enforce_budget:
            raise ValueError(f"budget={self.budget} needs enforce_budget=True; without it nothing would enforce it")
        return self

    def model_post_init(self, context: Any, /) -> None:
        generator = context.get(_GENERATOR_KEY) if isinstance(context, dict) else None
        if generator is None:
            from ..backends.hf import HFGenerator  # the hf extra is needed only to build one

            generator = HFGenerator(
                self.model_path, adapter=self.adapter_path, merge=self.merge_adapter, device=self.device,
                dtype=self.dtype, max_new_tokens=self.max_new_tokens, max_batch_size=self.max_batch_size,
                temperature=self.temperature, seed=self.seed, enforce_budget=self.enforce_budget,
                model_name=self.model_name,
            )
        self._generator = generator
        if self.model_name is None:
            self.model_name = generator.model_name

    @classmethod
    def from_generator(cls, generator: Any, **fields: Any) -> TaleHFLLM:
        """Wrap an `HFGenerator` (loaded or not) or an object with the same API.

        ``fields`` are the per-call defaults (``temperature``, ``max_new_tokens``, ``budget``...) and
        LlamaIndex settings (``callback_manager``, ``system_prompt``...); ``temperature`` and
        ``max_new_tokens`` default to the generator's. Loading settings belong to the generator.

        Raises:
            TypeError: a loading setting was given, or ``generator`` lacks the backend API.
        """
        given = sorted(set(fields) & set(_LOADING_FIELDS))
        if given:
            raise TypeError(f"from_generator() takes {given} from the generator; set them on HFGenerator(...)")
        api = ("generate", "agenerate", "stream", "astream")
        missing = [m for m in api if not callable(getattr(generator, m, None))]
        if missing or not hasattr(generator, "model_name"):
            raise TypeError(f"generator must have the HFGenerator API (missing {missing or ['model_name']}), "
                            f"got {type(generator).__name__}")
        for name in ("temperature", "max_new_tokens"):
            if getattr(generator, name, None) is not None:
                fields.setdefault(name, getattr(generator, name))
        fields.update(enforce_budget=getattr(generator, "enforcement", None) is not None,
                      max_batch_size=getattr(generator, "max_batch_size", 16), seed=getattr(generator, "seed", None))
        return cls.model_validate(fields, context={_GENERATOR_KEY: generator})

    @classmethod
    def class_name(cls) -> str:
        return "TaleHFLLM"

    @property
    def generator(self) -> Any:
        """The backend generator (an `HFGenerator`)."""
        return self._generator

    @property
    def metadata(self) -> LLMMetadata:
        """Chat-model metadata; reads the context window from the model unless ``context_window`` is set."""
        return LLMMetadata(
            context_window=self.context_window or self._generator.context_window,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            model_name=self.model_name or self._generator.model_name,
        )

    # -- per-call settings and responses ------------------------------------------------------

    def _settings(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Backend keyword arguments for one call: per-call values over the LLM's defaults."""
        kwargs = {k: v for k, v in kwargs.items() if k not in _INTERNAL_KWARGS}
        max_tokens, max_new = kwargs.pop("max_tokens", None), kwargs.pop("max_new_tokens", None)
        if max_tokens is not None and max_new is not None and max_tokens != max_new:
            raise ValueError(f"max_tokens={max_tokens!r} and max_new_tokens={max_new!r} disagree; pass one of them")
        cap = max_tokens if max_tokens is not None else max_new
        stop = kwargs.pop("stop", None)
        temperature = kwargs.pop("temperature", None)
        settings = {
            "max_tokens": self.max_new_tokens if cap is None else cap,
            "stop": [stop] if isinstance(stop, str) else stop,
            "temperature": self.temperature if temperature is None else temperature,
            "budget": kwargs.pop("budget", self.budget),
        }
        if "answer_format" in kwargs:
            settings["answer_format"] = kwargs.pop("answer_format")
        if settings["budget"] is not None and getattr(self._generator, "enforcement", None) is None:
            raise ValueError(f"budget={settings['budget']!r} needs enforce_budget=True; without it nothing "
                             "would enforce it (put the budget in the prompt instead)")
        for name in sorted(set(kwargs) - self._warned):
            self._warned.add(name)
            logger.warning("TaleHFLLM ignores the keyword argument %r (known: max_tokens, max_new_tokens, stop, "
                           "temperature, budget, answer_format)", name)
        return settings

    def _prompt_messages(self, prompt: str, formatted: bool) -> list[Message]:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        text = prompt if formatted else self.completion_to_prompt(prompt)
        return [{"role": "user", "content": text}]

    def _generate(self, rows: list[list[Message]], settings: dict[str, Any]) -> list[Generation]:
        return self._generator.generate(rows, **per_row(settings, len(rows))) if rows else []

    async def _agenerate(self, rows: list[list[Message]], settings: dict[str, Any]) -> list[Generation]:
        return await self._generator.agenerate(rows, **per_row(settings, len(rows))) if rows else []

    # -- chat ---------------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer a conversation under the model's chat template."""
        settings = self._settings(kwargs)
        return chat_response(self._generate([to_backend_messages(messages)], settings)[0])

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Async twin of `chat` (decoding runs in a worker thread)."""
        settings = self._settings(kwargs)
        return chat_response((await self._agenerate([to_backend_messages(messages)], settings))[0])

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream a chat answer; the last response carries the usage."""
        settings = self._settings(kwargs)
        events = self._generator.stream(to_backend_messages(messages), **settings)
        return pieces(events, chat_response)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """Async twin of `stream_chat`."""
        settings = self._settings(kwargs)
        events = self._generator.astream(to_backend_messages(messages), **settings)
        return apieces(events, chat_response)

    # -- completion ---------------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Answer ``prompt`` sent as one user message (``completion_to_prompt`` applies unless ``formatted``)."""
        settings = self._settings(kwargs)
        return completion_response(self._generate([self._prompt_messages(prompt, formatted)], settings)[0])

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Async twin of `complete`."""
        settings = self._settings(kwargs)
        return completion_response((await self._agenerate([self._prompt_messages(prompt, formatted)], settings))[0])

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Stream a completion; the last response carries the usage."""
        settings = self._settings(kwargs)
        return pieces(self._generator.stream(self._prompt_messages(prompt, formatted), **settings),
                       completion_response)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        """Async twin of `stream_complete`."""
        settings = self._settings(kwargs)
        return apieces(self._generator.astream(self._prompt_messages(prompt, formatted), **settings),
                        completion_response)

    # -- batches (one backend call; one LLM callback event per input) --------------------------

    @dispatcher.span
    def batch_chat(self, conversations: Sequence[Sequence[ChatMessage]], **kwargs: Any) -> list[ChatResponse]:
        """Answer many conversations in one batched backend call, in order."""
        with self._batch(conversations, kwargs, chat=True) as (rows, settings, responses):
            responses += map(chat_response, self._generate(rows, settings))
        return responses

    @dispatcher.span
    async def abatch_chat(self, conversations: Sequence[Sequence[ChatMessage]], **kwargs: Any) -> list[ChatResponse]:
        """Async twin of `batch_chat`."""
        with self._batch(conversations, kwargs, chat=True) as (rows, settings, responses):
            responses += map(chat_response, await self._agenerate(rows, settings))
        return responses

    @dispatcher.span
    def batch_complete(self, prompts: Sequence[str], formatted: bool = False,
                       **kwargs: Any) -> list[CompletionResponse]:
        """Complete many prompts (each sent as one user message) in one batched backend call, in order."""
        with self._batch(prompts, {**kwargs, "formatted": formatted}, chat=False) as (rows, settings, responses):
            responses += map(completion_response, self._generate(rows, settings))
        return responses

    @dispatcher.span
    async def abatch_complete(self, prompts: Sequence[str], formatted: bool = False,
                              **kwargs: Any) -> list[CompletionResponse]:
        """Async twin of `batch_complete`."""
        with self._batch(prompts, {**kwargs, "formatted": formatted}, chat=False) as (rows, settings, responses):
            responses += map(completion_response, await self._agenerate(rows, settings))
        return responses

    @contextmanager
    def _batch(self, inputs: Sequence[Any], kwargs: dict[str, Any], *, chat: bool) -> Iterator[tuple]:
        """Convert a batch and fire, once per input, the events that ``llm_chat_callback`` or
        ``llm_completion_callback`` fire around one call; the body appends the responses in order."""
        if isinstance(inputs, str) or not isinstance(inputs, Sequence):
            raise TypeError(f"expected a list of {'conversations' if chat else 'prompts'}, got {type(inputs).__name__}")
        settings = self._settings(kwargs)
        rows = [to_backend_messages(x) if chat else self._prompt_messages(x, kwargs["formatted"]) for x in inputs]
        field, in_key, out_key = ("messages", EventPayload.MESSAGES, EventPayload.RESPONSE) if chat else (
            "prompt", EventPayload.PROMPT, EventPayload.COMPLETION)
        start_event, end_event = (LLMChatStartEvent, LLMChatEndEvent) if chat else (LLMCompletionStartEvent,
                                                                                     LLMCompletionEndEvent)
        manager, responses = self.callback_manager, []
        with manager.as_trace("chat" if chat else "completion"):
            span_id, model_dict = active_span_id.get(), self.to_payload() if inputs else {}
            event_ids = []
            for item in inputs:
                dispatcher.event(start_event(**{field: item}, model_dict=model_dict, additional_kwargs=kwargs,
                                             span_id=span_id))
                payload = {in_key: item, EventPayload.ADDITIONAL_KWARGS: kwargs, EventPayload.SERIALIZED: model_dict}
                event_ids.append(manager.on_event_start(CBEventType.LLM, payload=payload))
            try:
                yield rows, settings, responses
            except BaseException as exc:
                for event_id in event_ids:
                    manager.on_event_end(CBEventType.LLM, payload={EventPayload.EXCEPTION: exc}, event_id=event_id)
                raise
            for item, event_id, response in zip(inputs, event_ids, responses):
                manager.on_event_end(CBEventType.LLM, payload={in_key: item, out_key: response}, event_id=event_id)
                dispatcher.event(end_event(**{field: item}, response=response, span_id=span_id))
