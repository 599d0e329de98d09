"""`TaleHFLLM`: a LlamaIndex chat LLM over the local transformers backend (`HFGenerator`).

Unlike ``HuggingFaceLLM`` it always applies the chat template, returns only new text, honours
per-call ``max_tokens``, ``stop``, ``temperature`` and ``budget``, reports exact token counts where
``TokenCountingHandler`` reads them, runs async calls off the event loop, batches many prompts into
one backend call, and loads LoRA adapters natively.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Self

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
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr, model_validator
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

from .._hf_fields import HFModelFields
from ..core.generation import Generation, Message
from ._llm_messages import TOOL_RESULT_PREFIX, apieces, chat_response, completion_response, pieces, to_backend_messages

if TYPE_CHECKING:
    from ..backends.hf.settings import CallSettings

__all__ = ["TOOL_RESULT_PREFIX", "TaleHFLLM", "to_backend_messages"]

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

#: Keyword arguments LlamaIndex itself passes (``complete(prompt, formatted=True)``); accepted silently.
_FRAMEWORK_KWARGS = frozenset({"formatted"})
#: Options for hosted APIs that LlamaIndex components pass to any LLM (``DocumentContextExtractor``
#: sends ``extra_headers``); a local model has no use for them: ignored, with one warning per name.
_PROVIDER_OPTIONS = frozenset({"extra_headers"})


class TaleHFLLM(HFModelFields, LLM):
    """A local Hugging Face chat model as a LlamaIndex LLM (``metadata.is_chat_model`` is True).

    The backend `HFGenerator` is created with the LLM (paths and dtype are checked then) but loads
    its weights on first use. Reading `metadata` loads them too, unless ``context_window`` is given,
    because the context window comes from the model's config; ``as_query_engine(llm=...)`` reads it.
    Wrap an already built or loaded generator with `from_generator`. Query engines replace the LLM's
    ``callback_manager`` with ``Settings.callback_manager``: attach token counters there.

    Per-call keyword arguments of ``chat``/``complete``/``stream_*``/``a*``/``batch_*``:
    ``max_tokens`` (alias ``max_new_tokens``), ``stop`` (a string or list of strings), ``temperature``,
    ``budget`` (needs ``enforce_budget``) and ``answer_format`` (the enforcer's wrap-up style), as for
    `ChatTaleHF`; any other raises TypeError naming it, except ``extra_headers``, an option for hosted
    APIs that LlamaIndex's ``DocumentContextExtractor`` passes, which is ignored with one logged warning.

    The model's settings (``model_path``, ``adapter_path``, ``merge_adapter``, ``device``, ``dtype``,
    ``temperature``, ``max_batch_size``, ``seed``, ``enforce_budget``, ``budget``) are
    `HFModelFields`', held as `ChatTaleHF` holds them: checked once, and after construction each
    reads back what the generator runs with.

    Responses carry the generated text only; ``raw`` is ``{"usage": {"prompt_tokens",
    "completion_tokens", "total_tokens"}, "model", "finish_reason", "token_counter"}`` and
    ``additional_kwargs`` repeats the three counts. Streams yield ``delta`` per piece and the text so
    far; the last response carries the usage.

    Attributes:
        model_name: Name reported in responses and metadata; default the backend's (the folder's name).
        max_new_tokens: Default output cap per call; also ``metadata.num_output``. Default: the
            generator's ``max_new_tokens`` (512), read back after construction.
        context_window: Override the context window in `metadata` (skips loading the model to read it).
    """

    cap_field: ClassVar[str] = "max_new_tokens"

    model_name: str | None = None
    max_new_tokens: int | None = None
    context_window: int | None = Field(default=None, gt=0)

    # Unknown arguments raise, so a misspelt setting (``max_tokens``, say) never passes silently.
    model_config = ConfigDict(extra="forbid")

    _warned: set[str] = PrivateAttr(default_factory=set)

    @model_validator(mode="after")
    def _cap_from_generator(self) -> Self:
        # Runs after HFModelFields' validator (a base's validators run first), so the generator is there.
        if self.max_new_tokens is None:  # LlamaIndex reads it as metadata.num_output
            self.max_new_tokens = self._generator.max_new_tokens
        return self

    @classmethod
    def class_name(cls) -> str:
        return "TaleHFLLM"

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

    def _call(self, kwargs: dict[str, Any]) -> CallSettings:
        """This call's settings: ``kwargs`` over the fields (see the class docstring for the names)."""
        for name in sorted(_PROVIDER_OPTIONS & set(kwargs) - self._warned):
            self._warned.add(name)
            logger.warning("TaleHFLLM ignores the keyword argument %r, an option for hosted APIs", name)
        kwargs = {k: v for k, v in kwargs.items() if k not in _PROVIDER_OPTIONS}
        if isinstance(kwargs.get("stop"), str):
            kwargs["stop"] = [kwargs["stop"]]  # one stop string
        return self._call_settings(kwargs, framework=_FRAMEWORK_KWARGS)

    def _prompt_messages(self, prompt: str, formatted: bool) -> list[Message]:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        text = prompt if formatted else self.completion_to_prompt(prompt)
        return [{"role": "user", "content": text}]

    def _generate(self, rows: list[list[Message]], settings: CallSettings) -> list[Generation]:
        return self._generator.generate(rows, **settings.for_generate(len(rows))) if rows else []

    async def _agenerate(self, rows: list[list[Message]], settings: CallSettings) -> list[Generation]:
        return await self._generator.agenerate(rows, **settings.for_generate(len(rows))) if rows else []

    # -- chat ---------------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer a conversation under the model's chat template."""
        settings = self._call(kwargs)
        return chat_response(self._generate([to_backend_messages(messages)], settings)[0])

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Async twin of `chat` (decoding runs in a worker thread)."""
        settings = self._call(kwargs)
        return chat_response((await self._agenerate([to_backend_messages(messages)], settings))[0])

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream a chat answer; the last response carries the usage."""
        settings = self._call(kwargs)
        events = self._generator.stream(to_backend_messages(messages), **settings.for_stream())
        return pieces(events, chat_response)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """Async twin of `stream_chat`."""
        settings = self._call(kwargs)
        events = self._generator.astream(to_backend_messages(messages), **settings.for_stream())
        return apieces(events, chat_response)

    # -- completion ---------------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Answer ``prompt`` sent as one user message (``completion_to_prompt`` applies unless ``formatted``)."""
        settings = self._call(kwargs)
        return completion_response(self._generate([self._prompt_messages(prompt, formatted)], settings)[0])

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Async twin of `complete`."""
        settings = self._call(kwargs)
        return completion_response((await self._agenerate([self._prompt_messages(prompt, formatted)], settings))[0])

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Stream a completion; the last response carries the usage."""
        settings = self._call(kwargs)
        return pieces(self._generator.stream(self._prompt_messages(prompt, formatted), **settings.for_stream()),
                      completion_response)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        """Async twin of `stream_complete`."""
        settings = self._call(kwargs)
        return apieces(self._generator.astream(self._prompt_messages(prompt, formatted), **settings.for_stream()),
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
        settings = self._call(kwargs)
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
