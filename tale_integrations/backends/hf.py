"""A `Generator` over a local Hugging Face transformers model.

`HFGenerator` loads a local model folder, a merged TALE-PT checkpoint, a base model plus a LoRA
adapter, or by default the embedded SmolLM2-135M-Instruct. It applies the chat template, batches
prompts with left padding (one forward pass per step for the whole batch), returns only the new
text, counts tokens exactly from the ids, honours per-call ``max_tokens``, ``stop`` and
``temperature``, streams token by token, and can hold answers to their budget while decoding
(`BudgetEnforcer`, off by default). Weights load lazily, on first use.

Needs the ``hf`` extra: ``pip install "tale-integrations[hf]"``.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .._optional import require

torch = require("torch", extra="hf", purpose="the local Hugging Face backend")
transformers = require("transformers", extra="hf", purpose="the local Hugging Face backend")

from ..core.budget import BudgetEnforcement  # noqa: E402
from ..core.generation import Generation, Message, PromptTooLongError, StreamEvent, validate_messages  # noqa: E402
from ..core.prompts import QuestionFormat  # noqa: E402
from ..core.tokens import HFTokenizerCounter  # noqa: E402
from ._hf_cache import supports_fast_path  # noqa: E402
from ._hf_cpu import can_pack, pack_linears  # noqa: E402
from ._hf_decode import BatchDecoding  # noqa: E402
from ._hf_loading import check_device, check_source, load_checkpoint, resolve_dtype  # noqa: E402
from ._hf_stream import TextAssembler, TokenQueue, is_done, stream_text  # noqa: E402
from .embedded import EMBEDDED_MODEL_NAME, embedded_model_path  # noqa: E402

__all__ = ["HFGenerator"]


class HFGenerator(BatchDecoding):
    """A local transformers chat model as a TALE `Generator`.

    Args:
        model: A local model folder (with ``config.json``), a merged TALE-PT checkpoint, a LoRA adapter
            folder (its base is read from ``adapter_config.json``), a hub id (when online), or None
            for the embedded SmolLM2-135M-Instruct.
        adapter: A PEFT LoRA adapter folder to apply on top of ``model`` (or on the base it names).
        merge: Merge the adapter into the weights after loading (faster decoding).
        device: ``"cpu"``, ``"cuda"`` (all GPUs, ``device_map="auto"``), ``"cuda:1"``...; default
            CUDA when available, else CPU.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"auto"`` or a ``torch.dtype``; default
            bfloat16 on CUDA, float32 on CPU.
        max_new_tokens: Output cap when a call gives no ``max_tokens``. Default 512.
        max_batch_size: Prompts per forward pass; larger batches are split. Default 16.
        temperature: Default sampling temperature; 0 means greedy (the default).
        seed: Seed for sampled decoding, for repeatable runs.
        enforce_budget: Hold answers to their budget while decoding: True for the default
            `BudgetEnforcement`, or one of your own. Off by default (the paper only prompts).
        model_name: Name reported in each `Generation`; default the folder's name.
        trust_remote_code: Allow code from the model folder to run. Off by default.
        pack_weights: On CPU, keep the linear layers' weights in oneDNN's packed layout (1.3-1.6x
            faster decoding in the same memory; inference only, see ``_hf_cpu``). Default: on for float32
            models this object loads on CPU, off for `from_model` (whose model stays as given).
        progress: Called with one-line status messages (the embedded model's first-run conversion).
        chat_template: A Jinja chat template used instead of the tokenizer's own (which is left as it
            is), e.g. ``core.prompts.PAPER_CHAT_TEMPLATE`` (the reference scripts' raw prompt). Default:
            the model's.
    """

    #: Tells `TalePipeline` that `generate` takes per-prompt ``budgets``.
    accepts_budgets = True

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        adapter: str | os.PathLike[str] | None = None,
        merge: bool = False,
        device: str | None = None,
        dtype: Any = None,
        max_new_tokens: int = 512,
        max_batch_size: int = 16,
        temperature: float = 0.0,
        seed: int | None = None,
        enforce_budget: bool | BudgetEnforcement = False,
        model_name: str | None = None,
        trust_remote_code: bool = False,
        pack_weights: bool | None = None,
        progress: Callable[[str], None] | None = None,
        chat_template: str | None = None,
    ) -> None:
        if chat_template is not None and (not isinstance(chat_template, str) or not chat_template.strip()):
            raise ValueError("chat_template must be a non-empty Jinja template string, or None for the model's own")
        for name, value in (("max_new_tokens", max_new_tokens), ("max_batch_size", max_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        _check_temperature(temperature)
        if device is not None:
            check_device(device)  # a missing GPU is an error now, not a silent CPU run later
            resolve_dtype(dtype, device)  # validates dtype early
        elif dtype is not None:
            resolve_dtype(dtype, "cpu")
        if pack_weights is not None and not isinstance(pack_weights, bool):
            raise TypeError(f"pack_weights must be True, False or None (automatic), got {pack_weights!r}")
        if isinstance(enforce_budget, BudgetEnforcement):
            self.enforcement: BudgetEnforcement | None = enforce_budget
        elif isinstance(enforce_budget, bool):
            self.enforcement = BudgetEnforcement() if enforce_budget else None
        else:
            raise TypeError(f"enforce_budget must be a bool or a BudgetEnforcement, got {type(enforce_budget).__name__}")
        self._source = check_source(model, adapter)
        self.merge = merge
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self.max_batch_size = max_batch_size
        self.temperature = temperature
        self.seed = seed
        self.trust_remote_code = trust_remote_code
        self.pack_weights = pack_weights
        self.progress = progress
        self.chat_template = chat_template
        if model_name is not None:
            self.model_name = model_name
        elif self._source.adapter is not None:
            self.model_name = Path(self._source.adapter).name
        elif self._source.base is None:
            self.model_name = EMBEDDED_MODEL_NAME
        else:
            self.model_name = Path(self._source.base).name or self._source.base
        self._model: Any = None
        self._tokenizer: Any = None
        self._load_lock = threading.Lock()
        self._generate_lock = threading.Lock()

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, *, model_name: str | None = None, **kwargs: Any) -> HFGenerator:
        """Wrap an already loaded model (plain or peft) and its tokenizer; nothing is loaded.

        ``model_name`` defaults to the model config's name; ``kwargs`` are other constructor arguments.
        """
        name = model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        gen = cls(model_name=name, **kwargs)
        gen._install(model, tokenizer, pack=bool(gen.pack_weights))
        return gen

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
                base = self._source.base or str(embedded_model_path(progress=self.progress))
                device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
                model, tokenizer = load_checkpoint(
                    base, self._source.adapter, device=device, dtype=resolve_dtype(self.dtype, device),
                    merge=self.merge, trust_remote_code=self.trust_remote_code,
                )
                self._install(model, tokenizer, pack=self.pack_weights is not False)
        return self

    def _install(self, model: Any, tokenizer: Any, *, pack: bool) -> None:
        if self.chat_template is None and not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"the tokenizer of {self.model_name!r} has no chat template; set tokenizer.chat_template "
                "(a Jinja template) before wrapping it, or use an instruct model"
            )
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        model.eval()
        if pack:
            if can_pack(model):
                pack_linears(model)
            elif self.pack_weights:
                raise ValueError(
                    "pack_weights=True needs a float32 model on CPU without an unmerged adapter, and a PyTorch "
                    "build with oneDNN; pass pack_weights=None to pack only where it applies"
                )
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        if not eos_ids:
            raise ValueError(f"{self.model_name!r} defines no end-of-sequence token")
        self._eos_ids = eos_ids
        self._eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else min(eos_ids)
        self._fast_path = supports_fast_path(model)
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
            config = transformers.AutoConfig.from_pretrained(self._source.base, trust_remote_code=self.trust_remote_code)
        else:
            config = self.model.config
        window = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        return int(window) if window else 2048

    def token_counter(self) -> HFTokenizerCounter:
        """A `TokenCounter` with this model's tokenizer."""
        return HFTokenizerCounter(self.tokenizer, name=self.model_name)

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of one conversation under the chat template, with the assistant turn opened."""
        conversation = validate_messages([messages])[0]
        encoded = self.tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=True, chat_template=self.chat_template
        )
        return list(encoded["input_ids"])

    # -- generation ---------------------------------------------------------------------------

    def _prepare(self, prompts: Any, max_tokens: Any, stop: Any, temperature: Any, budgets: Any) -> tuple:
        conversations = validate_messages(prompts)
        if max_tokens is None or isinstance(max_tokens, int):
            caps = [max_tokens] * len(conversations)
        elif isinstance(max_tokens, Sequence) and len(max_tokens) == len(conversations):
            caps = list(max_tokens)
        else:
            raise ValueError(f"max_tokens must be a positive int, None, or one of those per prompt; got {max_tokens!r}")
        for cap in caps:
            if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
                raise ValueError(f"max_tokens must be a positive int or None, got {cap!r}")
        caps = [cap or self.max_new_tokens for cap in caps]
        if stop is not None and (isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop)):
            raise ValueError(f"stop must be a list of non-empty strings, got {stop!r}")
        temperature = self.temperature if temperature is None else temperature
        _check_temperature(temperature)
        if budgets is not None:
            if self.enforcement is None and any(b is not None for b in budgets):
                raise ValueError(
                    "budgets are only enforced by a generator made with enforce_budget=True; without it, put the "
                    "budget in the prompt (TalePipeline does) and pass budgets=None"
                )
            if isinstance(budgets, (str, bytes)) or len(budgets) != len(conversations):
                raise ValueError(f"budgets must give one budget (or None) per prompt, got {budgets!r}")
            for b in budgets:
                if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
                    raise ValueError(f"each budget must be a positive int or None, got {b!r}")
        for i, conversation in enumerate(conversations):
            if not any(m["content"].strip() for m in conversation):
                raise ValueError(f"prompts[{i}] is empty: every message has empty content; pass the text to answer")
        encoded = [self.encode_chat(c) for c in conversations]
        window = self.context_window
        for i, ids in enumerate(encoded):
            if len(ids) >= window:
                raise PromptTooLongError(
                    f"prompts[{i}] is {len(ids)} tokens, but {self.model_name!r} has a context window of "
                    f"{window} tokens (prompt and answer together); shorten the prompt"
                )
        return encoded, caps, list(stop) if stop else None, temperature

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
    ) -> list[Generation]:
        """Generate one answer per conversation, batched. Safe to call from several threads.

        Beyond the `Generator` protocol: ``max_tokens`` may give one cap per prompt; ``budgets``
        (one per prompt, None for none) are enforced while decoding when the generator was made with
        ``enforce_budget``; ``answer_format`` picks the enforcer's wrap-up text; ``cancel`` (one
        event per prompt) ends a row early once its event is set (a server's disconnected client).
        """
        if isinstance(prompts, Sequence) and not isinstance(prompts, (str, bytes)) and len(prompts) == 0:
            return []
        encoded, caps, stop, temperature = self._prepare(prompts, max_tokens, stop, temperature, budgets)
        budgets = list(budgets) if budgets is not None else [None] * len(encoded)
        if cancel is not None and len(cancel) != len(encoded):
            raise ValueError("cancel must give one event (or None) per prompt")
        cancel = list(cancel) if cancel is not None else [None] * len(encoded)
        results: list[Generation | None] = [None] * len(encoded)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), self.max_batch_size):
            chunk = order[start : start + self.max_batch_size]
            generations = self._run(
                [encoded[i] for i in chunk], [caps[i] for i in chunk], stop, temperature, [budgets[i] for i in chunk],
                answer_format, cancel=[cancel[i] for i in chunk],
            )
            for i, gen in zip(chunk, generations):
                results[i] = gen
        return [r for r in results if r is not None]

    async def agenerate(
        self,
        prompts: Sequence[Sequence[Message]],
        *,
        max_tokens: int | Sequence[int | None] | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
        budgets: Sequence[int | None] | None = None,
        answer_format: QuestionFormat | str = QuestionFormat.GSM8K,
        cancel: Sequence[threading.Event | None] | None = None,
    ) -> list[Generation]:
        """Async twin of `generate`: the computation runs in a worker thread, off the event loop."""
        return await asyncio.to_thread(
            self.generate, prompts, max_tokens=max_tokens, stop=stop, temperature=temperature, budgets=budgets,
            answer_format=answer_format, cancel=cancel,
        )

    def stream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
        budget: int | None = None,
        answer_format: QuestionFormat | str = QuestionFormat.GSM8K,
    ) -> Iterator[StreamEvent]:
        """Stream one answer token by token.

        Yields `StreamEvent` values whose texts join to the final text; the last one carries the
        complete `Generation` (usage, finish reason). Text that might be the start of a stop string
        is held back until it is known not to be. Closing the iterator early stops the generation.
        Bad arguments raise here, before the first event.
        """
        prepared = self._prepare([messages], max_tokens, stop, temperature, [budget])
        return self._stream(*prepared, budget, answer_format)

    def _start_stream(self, encoded: list[list[int]], caps: list[int], stop: list[str] | None, temperature: float,
                      budget: int | None, answer_format: QuestionFormat | str) -> tuple[TokenQueue, threading.Thread, dict]:
        """Run one generation in a worker thread that pushes its new tokens into a queue."""
        tokens = TokenQueue()
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["generation"] = self._run(encoded, caps, stop, temperature, [budget], answer_format,
                                                  streamer=tokens)[0]
            except BaseException as exc:  # handed to the consumer, never lost in the thread
                outcome["error"] = exc
            finally:
                tokens.finish()

        thread = threading.Thread(target=work, name="tale-hf-stream", daemon=True)
        thread.start()
        return tokens, thread, outcome

    def _stream(self, encoded: list[list[int]], caps: list[int], stop: list[str] | None, temperature: float,
                budget: int | None, answer_format: QuestionFormat | str) -> Iterator[StreamEvent]:
        tokens, thread, outcome = self._start_stream(encoded, caps, stop, temperature, budget, answer_format)
        try:
            yield from stream_text(self._tokenizer, tokens, stop, self._eos_ids, outcome)
        finally:
            tokens.cancel()
            thread.join()

    async def astream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
        budget: int | None = None,
        answer_format: QuestionFormat | str = QuestionFormat.GSM8K,
    ) -> AsyncIterator[StreamEvent]:
        """Async twin of `stream`: decoding runs in a worker thread and the event loop only waits on
        its token queue; leaving the loop early (or cancelling the task) stops the generation."""
        encoded, caps, stop, temperature = await asyncio.to_thread(
            self._prepare, [messages], max_tokens, stop, temperature, [budget]
        )
        tokens, thread, outcome = self._start_stream(encoded, caps, stop, temperature, budget, answer_format)
        assembler = TextAssembler(self._tokenizer, stop, self._eos_ids)
        try:
            while not is_done(item := await asyncio.to_thread(tokens.queue.get)):
                if delta := assembler.feed(item):
                    yield StreamEvent(text=delta)
            yield assembler.finish(outcome)
        finally:
            tokens.cancel()
            await asyncio.to_thread(thread.join)

    def __repr__(self) -> str:
        state = "loaded" if self.is_loaded else "not loaded"
        return f"HFGenerator({self.model_name!r}, device={self.device!r}, {state})"


def _check_temperature(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 2:
        raise ValueError(f"temperature must be a number between 0 and 2 (0 = greedy), got {value!r}")
