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
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.program.streaming_utils import process_streaming_content_incremental
from llama_index.core.types import PydanticProgramMode

from .._hf_fields import HFModelFields
from ..core.generation import Generation, Message
from ._llm_messages import (
    TOOL_RESULT_PREFIX,
    apieces,
    chat_response,
    completion_response,
    pieces,
    to_backend_messages,
    to_turns,
)
from ._tools import (
    ToolTurn,
    atool_stream,
    get_tool_calls,
    pop_tool_turn,
    prepare_chat_with_tools,
    response_format_for,
    single_call,
    structured_text,
    tool_response,
    tool_stream,
)

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Generator

    from llama_index.core.llms.llm import ToolSelection
    from llama_index.core.prompts import BasePromptTemplate
    from llama_index.core.tools.types import BaseTool
    from llama_index.core.types import Model

    from ..backends.hf.settings import CallSettings

__all__ = ["TOOL_RESULT_PREFIX", "TaleHFLLM", "to_backend_messages"]

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

#: Keyword arguments LlamaIndex itself passes (``complete(prompt, formatted=True)``); accepted silently.
_FRAMEWORK_KWARGS = frozenset({"formatted"})
#: Options for hosted APIs that LlamaIndex components pass to any LLM (``DocumentContextExtractor``
#: sends ``extra_headers``); a local model has no use for them: ignored, with one warning per name.
_PROVIDER_OPTIONS = frozenset({"extra_headers"})


class TaleHFLLM(HFModelFields, FunctionCallingLLM):
    """A local Hugging Face chat model as a LlamaIndex function-calling LLM (``metadata.is_chat_model``
    and ``is_function_calling_model`` are True: ``FunctionAgent`` runs on it, and so does ``ReActAgent``).

    The backend `HFGenerator` is created with the LLM (paths and dtype are checked then) but loads
    its weights on first use. Reading `metadata` loads them too, unless ``context_window`` is given,
    because the context window comes from the model's config; ``as_query_engine(llm=...)`` reads it.
    Wrap an already built or loaded generator with `from_generator`. Query engines replace the LLM's
    ``callback_manager`` with ``Settings.callback_manager``: attach token counters there.

    Per-call keyword arguments of ``chat``/``complete``/``stream_*``/``a*``/``batch_*``:
    ``max_tokens`` (alias ``max_new_tokens``), ``stop`` (a string or list of strings), ``temperature``,
    ``budget`` (needs ``enforce_budget``), ``answer_format`` (the enforcer's wrap-up style),
    ``thinking_budget`` and ``chat_template_kwargs`` (e.g. ``{"enable_thinking": False}``), as for
    `ChatTaleHF`; any other raises TypeError naming it, except ``extra_headers``, an option for hosted
    APIs that LlamaIndex's ``DocumentContextExtractor`` passes, which is ignored with one logged warning.

    The model's settings (``model_path``, ``adapter_path``, ``merge_adapter``, ``device``, ``dtype``,
    ``temperature``, ``max_batch_size``, ``seed``, ``enforce_budget``, ``budget``) are
    `HFModelFields`', held as `ChatTaleHF` holds them: checked once, and after construction each
    reads back what the generator runs with.

    Tools (``_tools.py``): ``chat_with_tools`` / ``achat_with_tools`` / ``stream_chat_with_tools`` /
    ``astream_chat_with_tools`` (``tool_choice`` ``"auto"``, ``"required"``, ``"none"`` or a tool's name;
    ``tool_required``; ``strict``) offer ``BaseTool`` values through the chat template when it renders
    tools, else through the generic tool prompt; the reply's calls come back as `ToolCallBlock` values,
    which `get_tool_calls_from_response` reads. ``structured_predict`` and its async and streaming
    twins (and ``as_structured_llm``) ask for the output class's JSON Schema (``response_format``) in
    the default program mode. With ``constrain=True`` (or ``strict=True`` per call) tool calls and
    structured output are held to their schema while decoding (the ``constrain`` extra), and such a
    turn gets no token budget, so a budget never cuts its JSON.

    Responses carry the generated text only; ``raw`` is ``{"usage": {"prompt_tokens",
    "completion_tokens", "total_tokens"}, "model", "finish_reason", "token_counter"}`` and
    ``additional_kwargs`` repeats the three counts. Streams yield ``delta`` per piece and the text so
    far; the last response carries the usage.

    Thinking models (a chat template with a ``<think>`` block): the answer is the text; a chat
    response's message starts with a ``ThinkingBlock`` holding the thinking (``num_tokens``: its
    tokens), a completion carries it as ``additional_kwargs["thinking"]``, stream pieces carry the
    new thinking as ``additional_kwargs["thinking_delta"]`` (as LlamaIndex agents read it), and the
    counts add ``reasoning_tokens`` (``raw["usage"]["completion_tokens_details"]`` too).
    ``thinking_budget`` (a field, or per call) holds the thinking to that many tokens while decoding.

    Attributes:
        model_name: Name reported in responses and metadata; default the backend's (the folder's name).
        max_new_tokens: Default output cap per call; also ``metadata.num_output``. Default: the
            generator's ``max_new_tokens`` (512), read back after construction.
        context_window: Override the context window in `metadata` (skips loading the model to read it).
        constrain: Hold tool calls and structured output to their JSON schema while decoding (needs the
            ``constrain`` extra); a call's ``strict=`` overrides it. Off by default.
    """

    cap_field: ClassVar[str] = "max_new_tokens"

    model_name: str | None = None
    max_new_tokens: int | None = None
    context_window: int | None = Field(default=None, gt=0)
    constrain: bool = False

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
            is_function_calling_model=True,
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

    def _generate(self, rows: list[list[Message]], settings: CallSettings,
                  rules: list[list[Any]] | None = None) -> list[Generation]:
        return self._generator.generate(rows, **settings.for_generate(len(rows)), answer_rules=rules) if rows else []

    async def _agenerate(self, rows: list[list[Message]], settings: CallSettings,
                         rules: list[list[Any]] | None = None) -> list[Generation]:
        return await self._generator.agenerate(rows, **settings.for_generate(len(rows)),
                                               answer_rules=rules) if rows else []

    def _tool_turn(self, kwargs: dict[str, Any]) -> ToolTurn | None:
        """Pop this call's tool keywords from ``kwargs``: the turn they describe, or None for a plain turn."""
        return pop_tool_turn(self._generator, kwargs, constrain=self.constrain)

    # -- chat ---------------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer a conversation under the model's chat template (with tools or a ``response_format``
        when given: see the class docstring)."""
        turn = self._tool_turn(kwargs)
        settings = self._call(kwargs)
        if turn is not None:
            held = turn.settings(settings)
            generation = self._generate([turn.conversation(to_turns(messages))], held,
                                        [turn.rules(self._generator, held)])[0]
            return tool_response(turn, chat_response(generation))
        return chat_response(self._generate([to_backend_messages(messages)], settings)[0])

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Async twin of `chat` (decoding runs in a worker thread)."""
        turn = self._tool_turn(kwargs)
        settings = self._call(kwargs)
        if turn is not None:
            held = turn.settings(settings)
            generation = (await self._agenerate([turn.conversation(to_turns(messages))], held,
                                                [turn.rules(self._generator, held)]))[0]
            return tool_response(turn, chat_response(generation))
        return chat_response((await self._agenerate([to_backend_messages(messages)], settings))[0])

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream a chat answer; the last response carries the usage (and, with tools, the parsed calls)."""
        turn = self._tool_turn(kwargs)
        settings = self._call(kwargs)
        if turn is not None:
            held = turn.settings(settings)
            events = self._generator.stream(turn.conversation(to_turns(messages)), **held.for_stream(),
                                            answer_rules=turn.rules(self._generator, held))
            return tool_stream(turn, pieces(events, chat_response))
        events = self._generator.stream(to_backend_messages(messages), **settings.for_stream())
        return pieces(events, chat_response)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """Async twin of `stream_chat`."""
        turn = self._tool_turn(kwargs)
        settings = self._call(kwargs)
        if turn is not None:
            held = turn.settings(settings)
            events = self._generator.astream(turn.conversation(to_turns(messages)), **held.for_stream(),
                                             answer_rules=turn.rules(self._generator, held))
            return atool_stream(turn, apieces(events, chat_response))
        events = self._generator.astream(to_backend_messages(messages), **settings.for_stream())
        return apieces(events, chat_response)

    # -- function calling and structured output (``_tools.py``) --------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: Any = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The `chat` arguments that offer ``tools``: ``tool_choice`` (``"auto"``/None, ``"required"``,
        ``"none"``, a tool's name or OpenAI's dict naming one; ``tool_required=True`` with no choice is
        ``"required"``) and ``strict`` (hold the call to its schema; default ``constrain``)."""
        return prepare_chat_with_tools(tools, user_msg, chat_history, tool_required=tool_required,
                                       tool_choice=tool_choice, strict=strict, kwargs=kwargs)

    def _validate_chat_with_tools_response(self, response: ChatResponse, tools: Sequence[BaseTool],
                                           allow_parallel_tool_calls: bool = False, **kwargs: Any) -> ChatResponse:
        """Keep only the first tool call unless ``allow_parallel_tool_calls``."""
        return response if allow_parallel_tool_calls else single_call(response)

    def get_tool_calls_from_response(self, response: ChatResponse, error_on_no_tool_call: bool = True,
                                     **kwargs: Any) -> list[ToolSelection]:
        """The tool calls of a response (its `ToolCallBlock` values; calls that cannot be run are not among
        them but in ``message.additional_kwargs["invalid_tool_calls"]``).

        Raises:
            ValueError: no call that can be run, and ``error_on_no_tool_call``.
        """
        return get_tool_calls(response, error_on_no_tool_call=error_on_no_tool_call)

    def _structured_call(self, output_cls: type[Model], prompt: BasePromptTemplate, llm_kwargs: dict[str, Any] | None,
                         prompt_args: dict[str, Any]) -> tuple[list[ChatMessage], dict[str, Any]]:
        messages = self._extend_messages(prompt.format_messages(llm=self, **prompt_args))
        return messages, {**(llm_kwargs or {}), "response_format": response_format_for(output_cls)}

    @dispatcher.span
    def structured_predict(self, output_cls: type[Model], prompt: BasePromptTemplate,
                           llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any) -> Model:
        """An ``output_cls`` from one call asked for its JSON Schema (held to it while decoding with
        ``constrain``/``strict``); other ``pydantic_program_mode`` values take LlamaIndex's program.

        Raises:
            ValueError: the reply does not parse as ``output_cls`` (pydantic's ``ValidationError``).
        """
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return super().structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        messages, kwargs = self._structured_call(output_cls, prompt, llm_kwargs, prompt_args)
        return output_cls.model_validate_json(structured_text(self.chat(messages, **kwargs)))

    @dispatcher.span
    async def astructured_predict(self, output_cls: type[Model], prompt: BasePromptTemplate,
                                  llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any) -> Model:
        """Async twin of `structured_predict`."""
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return await super().astructured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        messages, kwargs = self._structured_call(output_cls, prompt, llm_kwargs, prompt_args)
        return output_cls.model_validate_json(structured_text(await self.achat(messages, **kwargs)))

    def _structured_stream_call(self, output_cls: type[Model], prompt: BasePromptTemplate,
                                llm_kwargs: dict[str, Any] | None = None,
                                **prompt_args: Any) -> Generator[Any, None, None]:
        # stream_structured_predict's source of partial objects: the JSON as it streams, in the default mode.
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return super()._structured_stream_call(output_cls, prompt, llm_kwargs, **prompt_args)
        messages, kwargs = self._structured_call(output_cls, prompt, llm_kwargs, prompt_args)

        def partial_objects() -> Generator[Any, None, None]:
            current = None
            for response in self.stream_chat(messages, **kwargs):
                current = process_streaming_content_incremental(response, output_cls, current)
                yield current

        return partial_objects()

    async def _structured_astream_call(self, output_cls: type[Model], prompt: BasePromptTemplate,
                                       llm_kwargs: dict[str, Any] | None = None,
                                       **prompt_args: Any) -> AsyncGenerator[Any, None]:
        if self.pydantic_program_mode != PydanticProgramMode.DEFAULT:
            return await super()._structured_astream_call(output_cls, prompt, llm_kwargs, **prompt_args)
        messages, kwargs = self._structured_call(output_cls, prompt, llm_kwargs, prompt_args)

        async def partial_objects() -> AsyncGenerator[Any, None]:
            current = None
            async for response in await self.astream_chat(messages, **kwargs):
                current = process_streaming_content_incremental(response, output_cls, current)
                yield current

        return partial_objects()

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
