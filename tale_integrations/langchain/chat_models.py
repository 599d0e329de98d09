"""`ChatTaleHF`: a LangChain chat model over the local transformers backend (`HFGenerator`).

What it adds over a pipeline wrapper: only new text comes back (never the prompt); token usage is
exact, counted from the ids; per-call ``max_tokens``, ``stop``, ``temperature`` and ``budget`` are
honoured and unknown per-call settings raise; ``ainvoke`` and ``astream`` are truly async;
``batch``, ``abatch``, ``generate`` and ``agenerate`` answer all inputs with one batched backend
call, with the usual callbacks for every input.

Messages: system, human and AI messages keep their roles, and any message may come last. A
`ToolMessage` becomes the user turn ``"Tool result (<name>): <content>"`` and an AI message's tool
calls are appended to its text as ``"Tool call (<name>): <json args>"``, so agent histories run
without tools bound. List content is joined from its text parts; images, audio and files raise
ValueError.

Tools and structured output (``_tools.py``): ``bind_tools`` (tool choice ``"auto"``, ``"any"``, a
name or ``"none"``) offers tools through the chat template when it renders them, else through the
generic tool prompt; replies come back with ``tool_calls`` (with ids), ``invalid_tool_calls`` and,
streamed, ``tool_call_chunks``. ``with_structured_output`` takes ``method="json_schema"``,
``"function_calling"`` or ``"json_mode"`` and ``include_raw``. With ``constrain=True`` (or
``strict=True`` per binding) the output is held to its JSON schema while decoding (the
``constrain`` extra), and such a turn gets no token budget, so a budget never cuts its JSON.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from langchain_core.caches import BaseCache
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, LLMResult
from pydantic import ConfigDict

from .._hf_fields import HFModelFields
from ._chat_batching import PENDING, PendingBatch
from ._chat_messages import PROVIDER, reasoning_kwargs, response_metadata, to_conversation, to_turns, usage_metadata
from ._tools import (
    TOOL_KWARGS,
    ToolTurn,
    bind_tools,
    delta_chunk,
    message_fields,
    openai_tools,
    tool_turn,
    with_structured_output,
)

if TYPE_CHECKING:
    from langchain_core.runnables import Runnable

    from ..backends.hf.settings import CallSettings
    from ..core.generation import Generation, StreamEvent
    from ..core.tools import ToolStreamParser

__all__ = ["ChatTaleHF"]

#: Keywords LangChain itself passes with a call: its routing flag (``invoke(..., stream=True)``).
_FRAMEWORK_KWARGS = frozenset({"stream"})
# Keywords of BaseChatModel.generate that configure tracing, not the model.
_TRACING_KWARGS = frozenset(
    {"tags", "metadata", "run_name", "run_id", "ls_structured_output_format", "structured_output_format"}
)


# -- the chat model -----------------------------------------------------------------------------


class ChatTaleHF(HFModelFields, BaseChatModel):
    """A local Hugging Face chat model (transformers) for LangChain, with exact token usage.

    Constructing it loads no weights: they load on the first call (or ``chat.generator.load()``).
    To wrap an `HFGenerator` you already built (a model in memory, say), use `from_generator`.
    Unknown constructor arguments raise, so a misspelt setting is never silently ignored. The model's
    settings (``model_path``, ``adapter_path``, ``merge_adapter``, ``device``, ``dtype``,
    ``temperature``, ``max_batch_size``, ``seed``, ``enforce_budget``, ``budget``) are
    `HFModelFields`', held as `TaleHFLLM` holds them: checked once, and after construction each reads
    back what the generator runs with, but ``max_tokens``: left None, it means the generator's cap
    (to LangChain code a set ``max_tokens`` is a cap the user chose).

    Attributes:
        max_tokens: Default cap on new tokens per answer. Default: the generator's ``max_new_tokens`` (512).
        stop: Default stop strings; the answer ends before the first one and never contains it.
        streaming: Route ``invoke`` through the streaming path, so callbacks see every token.
        constrain: Hold tool calls and structured output to their JSON schema while decoding (needs
            the ``constrain`` extra); ``strict=`` of ``bind_tools`` / ``with_structured_output``
            overrides it per binding. Off by default.

    Per call (``invoke(..., max_tokens=64)`` or ``bind``): ``max_tokens`` (alias ``max_new_tokens``),
    ``stop``, ``temperature``, ``budget``, ``answer_format`` (the enforcer's wrap-up style),
    ``thinking_budget`` and ``chat_template_kwargs`` (e.g. ``{"enable_thinking": False}``); anything
    else raises TypeError.

    Thinking models (a chat template with a ``<think>`` block): the reply's content is the answer
    alone; the thinking comes as ``additional_kwargs["reasoning_content"]`` (so ``content_blocks``
    starts with a ``"reasoning"`` block) and its tokens as ``usage_metadata["output_token_details"]
    ["reasoning"]``; streamed chunks carry the thinking deltas the same way. ``thinking_budget``
    (a field, or per call) holds the thinking to that many tokens while decoding.

    Example:
        ```python
        chat = ChatTaleHF(model_path="path/to/model", max_tokens=256)
        reply = chat.invoke("What is 2 + 3?", max_tokens=64)
        reply.usage_metadata  # exact counts from the model's own tokenizer
        ```
    """

    cap_field: ClassVar[str] = "max_tokens"

    max_tokens: int | None = None
    stop: list[str] | None = None
    streaming: bool = False
    constrain: bool = False

    # Unknown arguments raise (BaseChatModel's own config ignores them), so a misspelt setting never passes silently.
    model_config = ConfigDict(extra="forbid")

    @property
    def model_name(self) -> str:
        """The model's name as the backend reports it (known without loading the weights)."""
        return self._generator.model_name

    @property
    def _llm_type(self) -> str:
        return PROVIDER

    @property
    def _identifying_params(self) -> dict[str, Any]:
        names = ("model_path", "adapter_path", "temperature", "max_tokens", "stop", "enforce_budget", "budget",
                 "thinking_budget")
        return {"model_name": self.model_name, **{name: getattr(self, name) for name in names}}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        from ..backends.hf.settings import CALL_ARGUMENTS

        model = kwargs.get("model")  # not supported per call (it raises), but the trace still names it
        params = LangSmithParams(ls_provider=PROVIDER, ls_model_type="chat",
                                 ls_model_name=model if isinstance(model, str) else self.model_name)
        with contextlib.suppress(Exception):  # invalid settings raise from the call itself
            settings = self._call(stop, {k: v for k, v in kwargs.items() if k in CALL_ARGUMENTS})
            params["ls_temperature"] = settings.temperature
            if settings.max_tokens is not None:
                params["ls_max_tokens"] = settings.max_tokens
            if settings.stop:
                params["ls_stop"] = list(settings.stop)
        return params

    def _call(self, stop: list[str] | None, kwargs: dict[str, Any]) -> CallSettings:
        """This call's settings: ``stop`` and ``kwargs`` over the fields (an unknown keyword raises TypeError)."""
        return self._call_settings(kwargs, stop=stop, framework=_FRAMEWORK_KWARGS)

    # -- generation -----------------------------------------------------------------------------

    def _result(self, generation: Generation) -> ChatResult:
        message = AIMessage(content=generation.text, additional_kwargs=reasoning_kwargs(generation.reasoning),
                            usage_metadata=usage_metadata(generation),
                            response_metadata=response_metadata(generation))
        llm_output = {"token_usage": usage_metadata(generation), "model_name": generation.model}
        return ChatResult(generations=[ChatGeneration(message=message)], llm_output=llm_output)

    def _combine_llm_outputs(self, llm_outputs: list[dict | None]) -> dict:
        outputs = [o for o in llm_outputs if o]
        keys = ("input_tokens", "output_tokens", "total_tokens")
        usage = {k: sum(o["token_usage"][k] for o in outputs) for k in keys}
        return {"token_usage": usage, "model_name": outputs[0]["model_name"]} if outputs else {}

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        turn = self._tool_turn(kwargs)
        conversation, settings = to_conversation(messages), self._call(stop, kwargs)
        if turn is not None:
            generation = self._generator.generate(
                [turn.conversation(to_turns(messages))], **turn.settings(settings).for_generate(1),
                answer_rules=[turn.rules(self._generator, settings)])[0]
            return self._turn_result(turn, generation)
        pending = PENDING.get()
        generation = pending.take(self._generator, conversation, settings) if pending else None
        if generation is None:
            generation = self._generator.generate([conversation], **settings.for_generate(1))[0]
        return self._result(generation)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        turn = self._tool_turn(kwargs)
        conversation, settings = to_conversation(messages), self._call(stop, kwargs)
        if turn is not None:
            generation = (await self._generator.agenerate(
                [turn.conversation(to_turns(messages))], **turn.settings(settings).for_generate(1),
                answer_rules=[turn.rules(self._generator, settings)]))[0]
            return self._turn_result(turn, generation)
        pending = PENDING.get()
        generation = await pending.atake(self._generator, conversation, settings) if pending else None
        if generation is None:
            generation = (await self._generator.agenerate([conversation], **settings.for_generate(1)))[0]
        return self._result(generation)

    @staticmethod
    def _chunk(text: str, final: Generation | None, reasoning: str = "") -> ChatGenerationChunk:
        # Thinking deltas ride in additional_kwargs["reasoning_content"], which aggregating the chunks joins.
        thinking = reasoning_kwargs(reasoning or None)
        if final is None:
            return ChatGenerationChunk(message=AIMessageChunk(content=text, additional_kwargs=thinking))
        # Usage and model name ride on the last chunk only, so aggregating the chunks counts them once.
        return ChatGenerationChunk(message=AIMessageChunk(
            content=text, additional_kwargs=thinking, usage_metadata=usage_metadata(final),
            response_metadata=response_metadata(final), chunk_position="last",
        ))

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        turn = self._tool_turn(kwargs)
        conversation, settings = to_conversation(messages), self._call(stop, kwargs)
        if turn is not None:
            parser = turn.stream_parser()
            events = self._generator.stream(turn.conversation(to_turns(messages)),
                                            **turn.settings(settings).for_stream(),
                                            answer_rules=turn.rules(self._generator, settings))
            for event in events:
                for chunk in self._turn_chunks(parser, event):
                    if run_manager:
                        run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk
            return
        for event in self._generator.stream(conversation, **settings.for_stream()):
            if event.text or event.reasoning or event.final is not None:
                chunk = self._chunk(event.text, event.final, event.reasoning)
                if run_manager:  # LangChain's stream() reports tokens itself and passes no run_manager
                    run_manager.on_llm_new_token(event.text, chunk=chunk)
                yield chunk

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        turn = self._tool_turn(kwargs)
        conversation, settings = to_conversation(messages), self._call(stop, kwargs)
        if turn is not None:
            parser = turn.stream_parser()
            events = self._generator.astream(turn.conversation(to_turns(messages)),
                                             **turn.settings(settings).for_stream(),
                                             answer_rules=turn.rules(self._generator, settings))
            async for event in events:
                for chunk in self._turn_chunks(parser, event):
                    if run_manager:
                        await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk
            return
        async for event in self._generator.astream(conversation, **settings.for_stream()):
            if event.text or event.reasoning or event.final is not None:
                chunk = self._chunk(event.text, event.final, event.reasoning)
                if run_manager:
                    await run_manager.on_llm_new_token(event.text, chunk=chunk)
                yield chunk

    # -- tools and structured output (``_tools.py``) -------------------------------------------------

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any) -> Runnable:
        """Bind tools (BaseTool, typed function, pydantic model or OpenAI tool dict) to this model.

        Args:
            tools: The tools.
            tool_choice: ``"auto"``/None (call a tool or answer in text), ``"any"``/``"required"``/True
                (call one), a tool's name (call that one) or ``"none"`` (answer in text; the tools
                are not offered).
            **kwargs: ``strict`` (hold the call to its schema while decoding; default the model's
                ``constrain``), ``parallel_tool_calls`` (accepted; a constrained turn makes one
                call), and other keywords bound with them.

        Raises:
            SchemaError: a tool schema that is not JSON Schema (or, constrained, not enforceable).
            TaleValueError: ``tool_choice`` names a tool that is not bound.
        """
        return bind_tools(self, tools, tool_choice=tool_choice, **kwargs)

    def with_structured_output(self, schema: Any = None, *, include_raw: bool = False,
                               **kwargs: Any) -> Runnable:
        """A Runnable whose output follows ``schema``: ``method`` is ``"json_schema"`` (default),
        ``"function_calling"`` or ``"json_mode"``; ``include_raw`` and ``strict`` as LangChain
        defines them (see ``_tools.with_structured_output``)."""
        return with_structured_output(self, schema, include_raw=include_raw, **kwargs)

    def _tool_turn(self, kwargs: dict[str, Any]) -> ToolTurn | None:
        """Pop this call's tool keywords from ``kwargs``: the turn they describe, or None for a plain turn."""
        options = {k: kwargs.pop(k) for k in TOOL_KWARGS if k in kwargs}
        return tool_turn(self, options) if options else None

    def _turn_result(self, turn: ToolTurn, generation: Generation) -> ChatResult:
        result = self._result(generation)
        message = result.generations[0].message
        fields = message_fields(turn.reply(generation.text))
        result.generations[0] = ChatGeneration(message=message.model_copy(update=fields))
        return result

    def _turn_chunks(self, parser: ToolStreamParser | None, event: StreamEvent) -> list[ChatGenerationChunk]:
        """The chunks of one stream event of a tool turn: thinking, text and ``tool_call_chunks``; usage on the last."""
        if parser is None:
            deltas = [AIMessageChunk(content=event.text)] if event.text else []
        else:
            deltas = [delta_chunk(d) for d in parser.feed(event.text)]
            if event.final is not None:
                deltas += [delta_chunk(d) for d in parser.finish()[0]]
        if event.reasoning:
            deltas.insert(0, AIMessageChunk(content="", additional_kwargs=reasoning_kwargs(event.reasoning)))
        reasoning = getattr(event, "reasoning", "") or ""
        chunks = [ChatGenerationChunk(message=m) for m in deltas]
        if reasoning and event.final is None:
            chunks.insert(0, self._chunk("", None, reasoning))
        if event.final is not None:
            chunks.append(self._chunk("", event.final, reasoning))
        return chunks

    # -- true batching: the inherited methods, run inside one pending batch -----------------------

    @contextlib.contextmanager
    def _batching(self, inputs: Sequence[Any], stop: Any, kwargs: dict[str, Any]) -> Iterator[None]:
        """While inside, the inputs that LangChain runs one by one share one backend call.

        Not with an LLM cache, which may answer some of them without the model.
        """
        pending = None
        cache = self.cache if isinstance(self.cache, BaseCache) else get_llm_cache()
        if len(inputs) > 1 and (self.cache is False or cache is None):
            conversations = []
            for value in inputs:
                with contextlib.suppress(Exception):  # a bad input fails later, alone, in its own call
                    conversations.append(to_conversation(self._convert_input(value).to_messages()))
            with contextlib.suppress(Exception):
                settings = self._call(stop, {k: v for k, v in kwargs.items() if k not in _TRACING_KWARGS})
                pending = PendingBatch(self._generator, conversations, settings) if len(conversations) > 1 else None
        token = PENDING.set(pending) if pending else None
        try:
            yield
        finally:
            if token is not None:
                PENDING.reset(token)

    def generate(self, messages: list[list[BaseMessage]], stop: list[str] | None = None, callbacks: Any = None,
                 **kwargs: Any) -> LLMResult:
        """`BaseChatModel.generate` (callbacks for each message list), with one batched backend call."""
        with self._batching(messages, stop, kwargs):
            return super().generate(messages, stop, callbacks, **kwargs)

    async def agenerate(self, messages: list[list[BaseMessage]], stop: list[str] | None = None,
                        callbacks: Any = None, **kwargs: Any) -> LLMResult:
        """Async twin of `generate`."""
        with self._batching(messages, stop, kwargs):
            return await super().agenerate(messages, stop, callbacks, **kwargs)

    def batch(self, inputs: list[Any], config: Any = None, *, return_exceptions: bool = False,
              **kwargs: Any) -> list[Any]:
        """Answer all inputs with one batched backend call; configs and callbacks stay per input."""
        with self._batching(inputs, kwargs.get("stop"), kwargs):
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    async def abatch(self, inputs: list[Any], config: Any = None, *, return_exceptions: bool = False,
                     **kwargs: Any) -> list[Any]:
        """Async twin of `batch`."""
        with self._batching(inputs, kwargs.get("stop"), kwargs):
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    # -- token counting -------------------------------------------------------------------------

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with the model's own tokenizer (no special tokens)."""
        return list(self._generator.tokenizer.encode(text, add_special_tokens=False))

    def get_num_tokens(self, text: str) -> int:
        """Number of tokens in ``text`` with the model's own tokenizer."""
        return self._generator.token_counter().count(text)

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Length of the chat-templated prompt with the assistant turn opened: the call's ``input_tokens``."""
        if not tools:
            return len(self._generator.encode_chat(to_conversation(messages),
                                                   chat_template_kwargs=self.chat_template_kwargs))
        turn = tool_turn(self, {"tools": openai_tools(tools)})
        conversation = turn.conversation(to_turns(messages))
        if turn.template_tools is None:
            return len(self._generator.encode_chat(conversation))
        generator = self._generator
        encoded = generator.tokenizer.apply_chat_template(
            conversation, tools=turn.template_tools, add_generation_prompt=True, tokenize=True, return_dict=True,
            chat_template=generator.chat_template,
        )
        return len(encoded["input_ids"])
