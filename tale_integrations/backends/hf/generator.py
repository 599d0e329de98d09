"""`HFGenerator`: a `Generator` over a local Hugging Face transformers model.

It loads a local model folder, a merged TALE-PT checkpoint, a base model plus a LoRA adapter, or by
default the embedded SmolLM2-135M-Instruct (``loading.py``). It applies the chat template, batches
prompts with left padding (one forward pass per step for the whole batch; ``decoding.py``), returns
only the new text, counts tokens exactly from the ids, honours per-call ``max_tokens``, ``stop``
and ``temperature``, streams token by token (``streaming.py``), and can hold answers to their
budget while decoding (`BudgetEnforcer`, off by default). On a model whose chat template has a
thinking block (``<think>``...) it returns the thinking apart from the answer (`Generation.reasoning`,
``usage.reasoning_tokens``) and holds it to a per-prompt thinking budget (``backends/thinking.py``).
Weights load lazily, on first use. Its settings are one `HFSettings` (``settings.py``); its fast
path has one switch (``fast_path.py``).

Needs the ``hf`` extra: ``pip install "tale-integrations[hf]"``.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..._optional import require

torch = require("torch", extra="hf", purpose="the local Hugging Face backend")
transformers = require("transformers", extra="hf", purpose="the local Hugging Face backend")

from ...core.budget import BudgetEnforcement  # noqa: E402
from ...core.checks import check_int, check_positive_int  # noqa: E402
from ...core.errors import PromptTooLongError, TaleTypeError, TaleValueError  # noqa: E402
from ...core.generation import Generation, Message, StreamEvent, validate_messages  # noqa: E402
from ...core.prompts import QuestionFormat  # noqa: E402
from ...core.tokens import HFTokenizerCounter  # noqa: E402
from ..embedded import EMBEDDED_MODEL_NAME, embedded_model_path  # noqa: E402
from ..row_rules import RowRule  # noqa: E402
from ..thinking import ThinkingMarkers  # noqa: E402
from . import fast_path  # noqa: E402
from .decoding import BatchDecoder  # noqa: E402
from .loading import check_device, check_source, config_window, load_checkpoint, resolve_dtype  # noqa: E402
from .settings import CallSettings, HFSettings, check_template_kwargs  # noqa: E402
from .streaming import TokenQueue, astream_events, stream_events  # noqa: E402

__all__ = ["HFGenerator"]


def _setting(name: str) -> property:
    return property(lambda self: getattr(self.settings, name), doc=f"`HFSettings.{name}` (read-only).")


class HFGenerator:
    """A local transformers chat model as a TALE `Generator`.

    Args:
        model: Shorthand for ``settings.model``: a model folder, checkpoint, adapter folder or hub id;
            None for the embedded SmolLM2-135M-Instruct (see `HFSettings`).
        settings: All the settings at once; default `HFSettings()`.
        progress: Called with one-line status messages (the embedded model's first-run conversion).
        **overrides: Any `HFSettings` field by name (``device="cpu"``, ``max_new_tokens=256``,
            ``enforce_budget=True``...), applied over ``settings``. An unknown name is a TypeError.

    The settings are checked here, paths and device included; the weights load on first use or
    `load`. They read back as ``generator.settings``, and most of them as attributes too
    (``generator.max_new_tokens``...).
    """

    #: Tells `TalePipeline` that `generate` takes per-prompt ``budgets``.
    accepts_budgets = True

    merge = _setting("merge")
    dtype = _setting("dtype")
    max_new_tokens = _setting("max_new_tokens")
    max_batch_size = _setting("max_batch_size")
    temperature = _setting("temperature")
    seed = _setting("seed")
    trust_remote_code = _setting("trust_remote_code")
    pack_weights = _setting("pack_weights")
    chat_template = _setting("chat_template")

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        settings: HFSettings | None = None,
        progress: Callable[[str], None] | None = None,
        **overrides: Any,
    ) -> None:
        if settings is not None and not isinstance(settings, HFSettings):
            raise TaleTypeError(f"settings must be an HFSettings, got {type(settings).__name__}")
        if model is not None:
            overrides["model"] = model
        self._settings = s = (settings or HFSettings()).updated("HFGenerator", overrides)
        if s.device is not None:
            check_device(s.device)  # a missing GPU is an error now, not a silent CPU run later
        self._fast_path_enabled = fast_path.is_enabled(s.fast_path)
        if s.pack_weights and not self._fast_path_enabled:
            raise TaleValueError(f"pack_weights=True, but {fast_path.ENV_VAR} turns the fast path off")
        self._source = check_source(s.model, s.adapter, allow_unfinished=s.allow_unfinished)
        self.progress = progress
        #: The device the model runs on: as set until the weights load, then where they are.
        self.device = s.device
        if s.model_name is not None:
            self.model_name = s.model_name
        elif self._source.adapter is not None:
            self.model_name = Path(self._source.adapter).name
        elif self._source.base is None:
            self.model_name = EMBEDDED_MODEL_NAME
        else:
            self.model_name = Path(self._source.base).name or self._source.base
        self._model: Any = None
        self._tokenizer: Any = None
        self._decoder: BatchDecoder | None = None
        #: Whether batches take the fast path's cache (set when the model is installed).
        self._fast_path = False
        self._load_lock = threading.Lock()
        self._generate_lock = threading.Lock()  # one batch on the model at a time

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, *, model_name: str | None = None, **kwargs: Any) -> HFGenerator:
        """Wrap an already loaded model (plain or peft) and its tokenizer; nothing is loaded.

        ``model_name`` defaults to the model config's name; ``kwargs`` are other constructor arguments.
        The model's weights are packed only with ``pack_weights=True`` (it stays as given otherwise).
        """
        name = model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        gen = cls(model_name=name, **kwargs)
        gen._install(model, tokenizer, loaded_here=False)
        return gen

    @property
    def settings(self) -> HFSettings:
        """The generator's settings (fixed when it is made)."""
        return self._settings

    @property
    def enforcement(self) -> BudgetEnforcement | None:
        """The budget enforcement of ``enforce_budget``, or None when budgets are not enforced."""
        return self.settings.enforcement

    # -- loading ------------------------------------------------------------------------------

    @property
    def is_loaded(self) -> bool:
        """Whether the weights are in memory."""
        return self._model is not None

    def load(self) -> HFGenerator:
        """Load the weights now (otherwise the first call does). Returns self."""
        if self._model is not None:
            return self
        with self._load_lock:
            if self._model is None:
                s = self.settings
                base = self._source.base or str(embedded_model_path(progress=self.progress))
                device = s.device or ("cuda" if torch.cuda.is_available() else "cpu")
                model, tokenizer = load_checkpoint(
                    base, self._source.adapter, device=device, dtype=resolve_dtype(s.dtype, device), merge=s.merge,
                    trust_remote_code=s.trust_remote_code,
                )
                self._install(model, tokenizer, loaded_here=True)
        return self

    def _install(self, model: Any, tokenizer: Any, *, loaded_here: bool) -> None:
        if self.chat_template is None and not getattr(tokenizer, "chat_template", None):
            raise TaleValueError(
                f"the tokenizer of {self.model_name!r} has no chat template; set tokenizer.chat_template "
                "(a Jinja template) before wrapping it, or use an instruct model"
            )
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        model.eval()
        cache_path = fast_path.prepare_model(model, enabled=self._fast_path_enabled, pack_weights=self.pack_weights,
                                             loaded_here=loaded_here)
        thinking = self.settings.thinking
        markers = None if thinking is None else ThinkingMarkers.detect(
            tokenizer, chat_template=self.chat_template, markers=thinking.markers)
        self._decoder = BatchDecoder(model, tokenizer, model_name=self.model_name, enforcement=self.enforcement,
                                     seed=self.seed, lock=self._generate_lock, thinking=markers,
                                     thinking_enforcement=thinking)
        self._fast_path = cache_path
        self._tokenizer = tokenizer
        self._model = model
        self.device = str(model.device)

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (loads the model if needed)."""
        return self.load()._tokenizer

    @property
    def model(self) -> Any:
        """The transformers model (loads it if needed)."""
        return self.load()._model

    @property
    def context_window(self) -> int:
        """The model's maximum sequence length, prompt included (read from the config; no weights load)."""
        if self._model is not None:
            config = self._model.config
        elif self._source.base is not None and Path(self._source.base, "config.json").is_file():
            config = transformers.AutoConfig.from_pretrained(self._source.base,
                                                             trust_remote_code=self.trust_remote_code)
        else:
            config = self.model.config
        return config_window(config)

    def token_counter(self) -> HFTokenizerCounter:
        """A `TokenCounter` with this model's tokenizer."""
        return HFTokenizerCounter(self.tokenizer, name=self.model_name)

    @property
    def thinking_markers(self) -> ThinkingMarkers | None:
        """The markers of the model's thinking block, read from its chat template (or `HFSettings.thinking`),
        or None for a model without one (loads the model if needed)."""
        return self.load()._decoder.thinking

    @property
    def thinking_reserve(self) -> int | None:
        """Output tokens a thinking budget needs above itself in a row's cap: the block's markers
        (`ThinkingMarkers.overhead`, the start marker included) and `ThinkingEnforcement.answer_reserve`;
        None for a model without a thinking block (loads the model if needed). A thinking knob for this
        model (`core.thinking.ThinkingPolicy.answer_reserve`) keeps at least this much for its budget to hold."""
        markers = self.thinking_markers
        return None if markers is None else markers.overhead("none") + self.settings.thinking.answer_reserve

    def encode_chat(self, messages: Sequence[Message], *,
                    chat_template_kwargs: Mapping[str, Any] | None = None) -> list[int]:
        """Token ids of one conversation under the chat template, with the assistant turn opened.

        ``chat_template_kwargs`` (e.g. ``{"enable_thinking": False}``) go over `HFSettings.chat_template_kwargs`.
        """
        conversation = validate_messages([messages])[0]
        extra = {**(self.settings.chat_template_kwargs or {}),
                 **(check_template_kwargs("chat_template_kwargs", chat_template_kwargs) or {})}
        encoded = self.tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=True, chat_template=self.chat_template,
            **extra,
        )
        return list(encoded["input_ids"])

    # -- generation ---------------------------------------------------------------------------

    def _prepare(self, prompts: Any, max_tokens: Any, stop: Any, temperature: Any, budgets: Any,
                 thinking_budgets: Any = None, chat_template_kwargs: Any = None) -> tuple:
        """Check one call and encode its prompts: (ids per prompt, cap per prompt, stop list, temperature)."""
        conversations = validate_messages(prompts)
        per_prompt = isinstance(max_tokens, Sequence) and not isinstance(max_tokens, (str, bytes))
        if per_prompt and len(max_tokens) != len(conversations):
            raise TaleValueError(
                f"max_tokens must be a positive int, None, or one of those per prompt; got {max_tokens!r}"
            )
        caps = list(max_tokens) if per_prompt else [max_tokens] * len(conversations)
        caps = [check_positive_int("max_tokens", cap, optional=True) for cap in caps]
        if thinking_budgets is not None:
            if isinstance(thinking_budgets, (str, bytes)) or not isinstance(thinking_budgets, Sequence) or len(
                    thinking_budgets) != len(conversations):
                raise TaleValueError(
                    f"thinking_budgets must give one thinking budget (or None) per prompt, got {thinking_budgets!r}")
            for b in thinking_budgets:
                check_int("each thinking budget", b, low=0, optional=True)
        call = CallSettings(stop=stop, temperature=self.temperature if temperature is None else temperature)
        if budgets is not None:
            if self.enforcement is None and any(b is not None for b in budgets):
                raise TaleValueError(
                    "budgets are only enforced by a generator made with enforce_budget=True; without it, put the "
                    "budget in the prompt (TalePipeline does) and pass budgets=None"
                )
            if isinstance(budgets, (str, bytes)) or len(budgets) != len(conversations):
                raise TaleValueError(f"budgets must give one budget (or None) per prompt, got {budgets!r}")
            for b in budgets:
                check_positive_int("each budget", b, optional=True)
        for i, conversation in enumerate(conversations):
            if not any(m["content"].strip() for m in conversation):
                raise TaleValueError(f"prompts[{i}] is empty: every message has empty content; pass the text to answer")
        encoded = [self.encode_chat(c, chat_template_kwargs=chat_template_kwargs) for c in conversations]
        window = self.context_window
        for i, ids in enumerate(encoded):
            if len(ids) >= window:
                raise PromptTooLongError(
                    f"prompts[{i}] is {len(ids)} tokens, but {self.model_name!r} has a context window of "
                    f"{window} tokens (prompt and answer together); shorten the prompt"
                )
        if thinking_budgets is not None:
            caps = self._thinking_caps(encoded, caps, thinking_budgets)
        caps = [cap or self.max_new_tokens for cap in caps]
        return encoded, caps, list(call.stop) if call.stop else None, call.temperature

    def _thinking_caps(self, encoded: list[list[int]], caps: list[int | None],
                       thinking_budgets: Sequence[int | None]) -> list[int | None]:
        """The caps of rows with a thinking budget: one a call left unset is raised to hold the budget,
        the markers and the answer reserve; one it set must hold the markers and the reserve (the
        budget is then shortened to fit, while decoding)."""
        markers, policy = self._decoder.thinking, self.settings.thinking
        if markers is None:
            if any(b is not None for b in thinking_budgets):
                raise TaleValueError(
                    f"thinking budgets need a chat template with a thinking block, and {self.model_name!r} has "
                    "none; give its markers with thinking=ThinkingEnforcement(markers=(start, end)), or pass no "
                    "thinking budget"
                )
            return caps
        out = list(caps)
        for i, (ids, cap, budget) in enumerate(zip(encoded, caps, thinking_budgets, strict=True)):
            state = markers.prompt_state(ids)
            if budget is None or state == "closed":
                continue
            least = markers.overhead(state) + policy.answer_reserve
            if cap is None:
                out[i] = max(self.max_new_tokens, least + budget)
            elif cap <= least:
                raise TaleValueError(
                    f"max_tokens={cap} leaves no room to think for prompts[{i}]: closing its thinking block and "
                    f"keeping ThinkingEnforcement.answer_reserve={policy.answer_reserve} tokens for the answer takes "
                    f"{least}, and thinking_budget={budget} needs {least + budget} in all; raise max_tokens (or leave "
                    "it unset), or lower answer_reserve"
                )
        return out

    def generate(
        self,
        prompts: Sequence[Sequence[Message]],
        *,
        max_tokens: int | Sequence[int | None] | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
        budgets: Sequence[int | None] | None = None,
        answer_format: QuestionFormat | str = QuestionFormat.GSM8K,
        cancel: Sequence[threading.Event | None] | None = None,
        answer_rules: Sequence[Sequence[RowRule]] | None = None,
        thinking_budgets: Sequence[int | None] | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> list[Generation]:
        """Generate one answer per conversation, batched. Safe to call from several threads.

        Beyond the `Generator` protocol: ``max_tokens`` may give one cap per prompt; ``budgets``
        (one per prompt, None for none) are enforced while decoding when the generator was made with
        ``enforce_budget``; ``answer_format`` picks the enforcer's wrap-up text; ``cancel`` (one
        event per prompt) ends a row early once its event is set (a server's disconnected client);
        ``answer_rules`` (one list per prompt) are extra decoding-time `RowRule` values for each answer
        (a structured-output constraint, for example).

        On a model with a thinking block: ``thinking_budgets`` (one per prompt, None for no limit;
        0 closes the block at once) hold each prompt's thinking, and the cap of a prompt with a budget
        is raised to hold it, the markers and `ThinkingEnforcement.answer_reserve` when ``max_tokens``
        is not given (a given cap must hold the markers and the reserve; the budget is shortened to
        fit it). ``chat_template_kwargs`` (e.g. ``{"enable_thinking": False}``) go to the chat
        template, over `HFSettings.chat_template_kwargs`.
        """
        if isinstance(prompts, Sequence) and not isinstance(prompts, (str, bytes)) and len(prompts) == 0:
            return []
        encoded, caps, stop, temperature = self._prepare(prompts, max_tokens, stop, temperature, budgets,
                                                         thinking_budgets, chat_template_kwargs)
        budgets = list(budgets) if budgets is not None else [None] * len(encoded)
        if cancel is not None and len(cancel) != len(encoded):
            raise TaleValueError("cancel must give one event (or None) per prompt")
        cancel = list(cancel) if cancel is not None else [None] * len(encoded)
        if answer_rules is not None and len(answer_rules) != len(encoded):
            raise TaleValueError("answer_rules must give one list of rules (possibly empty) per prompt")
        extra = [list(r) for r in answer_rules] if answer_rules is not None else [[] for _ in encoded]
        thinking = list(thinking_budgets) if thinking_budgets is not None else [None] * len(encoded)
        results: list[Generation | None] = [None] * len(encoded)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), self.max_batch_size):
            chunk = order[start : start + self.max_batch_size]
            generations = self._decoder.run(
                [encoded[i] for i in chunk], [caps[i] for i in chunk], stop, temperature, [budgets[i] for i in chunk],
                answer_format, cache_path=self._fast_path, cancel=[cancel[i] for i in chunk],
                answer_rules=[extra[i] for i in chunk], thinking_budgets=[thinking[i] for i in chunk],
            )
            for i, gen in zip(chunk, generations):
                results[i] = gen
        return [r for r in results if r is not None]

    async def agenerate(self, prompts: Sequence[Sequence[Message]], **kwargs: Any) -> list[Generation]:
        """Async twin of `generate`, with the same keyword arguments: ``generate`` runs in a worker
        thread, so decoding never blocks the event loop (concurrent calls queue on the model)."""
        return await asyncio.to_thread(self.generate, prompts, **kwargs)

    def _decode_one(self, prepared: tuple, budget: int | None, answer_format: QuestionFormat | str,
                    answer_rules: Sequence[RowRule],
                    thinking_budget: int | None) -> Callable[[TokenQueue], Generation]:
        """The decoding of one prepared prompt, feeding its tokens to the queue it is given (for streams)."""
        encoded, caps, stop, temperature = prepared

        def decode(tokens: TokenQueue) -> Generation:
            return self._decoder.run(encoded, caps, stop, temperature, [budget], answer_format,
                                     cache_path=self._fast_path, streamer=tokens, answer_rules=[list(answer_rules)],
                                     thinking_budgets=[thinking_budget])[0]

        return decode

    def _tracker(self, prepared: tuple) -> Any:
        markers = self._decoder.thinking
        return None if markers is None else markers.tracker(prepared[0][0])

    def stream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
        budget: int | None = None,
        answer_format: QuestionFormat | str = QuestionFormat.GSM8K,
        answer_rules: Sequence[RowRule] = (),
        thinking_budget: int | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> Iterator[StreamEvent]:
        """Stream one answer token by token.

        Yields `StreamEvent` values whose texts join to the final text (and whose ``reasoning``
        deltas join to its thinking, on a model with a thinking block); the last one carries the
        complete `Generation` (usage, finish reason). Text that might be the start of a stop string
        is held back until it is known not to be. Closing the iterator early stops the generation.
        Bad arguments raise here, before the first event. ``thinking_budget`` and
        ``chat_template_kwargs`` are as in `generate`.
        """
        prepared = self._prepare([messages], max_tokens, stop, temperature, [budget],
                                 None if thinking_budget is None else [thinking_budget], chat_template_kwargs)
        decode = self._decode_one(prepared, budget, answer_format, answer_rules, thinking_budget)
        return stream_events(self._tokenizer, prepared[2], self._decoder.eos_ids, decode, self._tracker(prepared))

    async def astream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
        budget: int | None = None,
        answer_format: QuestionFormat | str = QuestionFormat.GSM8K,
        answer_rules: Sequence[RowRule] = (),
        thinking_budget: int | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Async twin of `stream`: decoding runs in a worker thread and the event loop only waits on
        its token queue; leaving the loop early (or cancelling the task) stops the generation."""
        prepared = await asyncio.to_thread(self._prepare, [messages], max_tokens, stop, temperature, [budget],
                                           None if thinking_budget is None else [thinking_budget], chat_template_kwargs)
        decode = self._decode_one(prepared, budget, answer_format, answer_rules, thinking_budget)
        async for event in astream_events(self._tokenizer, prepared[2], self._decoder.eos_ids, decode,
                                          self._tracker(prepared)):
            yield event

    def __repr__(self) -> str:
        state = "loaded" if self.is_loaded else "not loaded"
        return f"HFGenerator({self.model_name!r}, device={self.device!r}, {state})"

