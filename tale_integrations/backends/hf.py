"""A `Generator` over a local Hugging Face transformers model.

`HFGenerator` loads any local model folder (or, by default, the embedded SmolLM2-135M-Instruct),
applies the tokenizer's chat template, batches prompts with left padding, returns only the new
text, counts input and output tokens exactly from the token ids, and honours per-call
``max_tokens``, ``stop`` and ``temperature``. Weights load lazily, on the first call.

Needs the ``hf`` extra: ``pip install "tale-integrations[hf]"``.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._optional import require

torch = require("torch", extra="hf", purpose="the local Hugging Face backend")
transformers = require("transformers", extra="hf", purpose="the local Hugging Face backend")

from ..core.generation import Generation, Message, PromptTooLongError, Usage, validate_messages  # noqa: E402
from ..core.tokens import HFTokenizerCounter  # noqa: E402
from .embedded import EMBEDDED_MODEL_NAME, embedded_model_path  # noqa: E402

__all__ = ["HFGenerator"]


class _StopOnStrings(transformers.StoppingCriteria):
    """Ends each row once its new text contains a stop string (checked on a window of recent tokens)."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.stops = list(stops)
        self.prompt_length = prompt_length
        # A stop string of n characters spans at most n tokens; a little more covers the join.
        self.window = max(len(s) for s in self.stops) + 4
        self.stopped_at: dict[int, int] = {}

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        start = self.prompt_length
        for row in range(input_ids.shape[0]):
            if row in self.stopped_at:
                done[row] = True
                continue
            tail = input_ids[row, max(start, input_ids.shape[1] - self.window) :]
            text = self.tokenizer.decode(tail, skip_special_tokens=True)
            if any(s in text for s in self.stops):
                self.stopped_at[row] = input_ids.shape[1] - start
                done[row] = True
        return done


class HFGenerator:
    """A local transformers chat model as a TALE `Generator`.

    Args:
        model: A local model folder (with ``config.json``), a Hugging Face hub id (when online), or
            None for the embedded SmolLM2-135M-Instruct.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default CUDA when available, else CPU.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``; default bfloat16 on
            CUDA, float32 on CPU.
        max_new_tokens: Output cap when a call gives no ``max_tokens``. Default 512.
        max_batch_size: Prompts per forward pass; larger batches are split. Default 8.
        temperature: Default sampling temperature when a call gives none; 0 means greedy (default).
        seed: Seed for sampled decoding, for repeatable runs.
        model_name: Name reported in each `Generation`; default the folder's name.
        trust_remote_code: Allow code from the model folder to run. Off by default.
        progress: Called with one-line status messages (the embedded model's first-run conversion).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        device: str | None = None,
        dtype: Any = None,
        max_new_tokens: int = 512,
        max_batch_size: int = 8,
        temperature: float = 0.0,
        seed: int | None = None,
        model_name: str | None = None,
        trust_remote_code: bool = False,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        for name, value in (("max_new_tokens", max_new_tokens), ("max_batch_size", max_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        _check_temperature(temperature)
        self._source: str | None = None
        if model is not None:
            self._source = _check_source(model)
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self.max_batch_size = max_batch_size
        self.temperature = temperature
        self.seed = seed
        self.trust_remote_code = trust_remote_code
        self.progress = progress
        if model_name is not None:
            self.model_name = model_name
        elif self._source is None:
            self.model_name = EMBEDDED_MODEL_NAME
        else:
            self.model_name = Path(self._source).name or self._source
        self._model: Any = None
        self._tokenizer: Any = None
        self._load_lock = threading.Lock()
        self._generate_lock = threading.Lock()

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, *, model_name: str | None = None, **kwargs: Any) -> HFGenerator:
        """Wrap an already loaded model and tokenizer (no loading happens).

        Args:
            model: A transformers causal LM (or a peft model around one).
            tokenizer: Its tokenizer, with a chat template.
            model_name: Name reported in each `Generation`; default the model config's name.
            **kwargs: Any other constructor argument.
        """
        name = model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        gen = cls(model_name=name, **kwargs)
        gen._install(model, tokenizer)
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
                source = self._source or str(embedded_model_path(progress=self.progress))
                device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
                dtype = _dtype(self.dtype, device)
                try:
                    tokenizer = transformers.AutoTokenizer.from_pretrained(
                        source, trust_remote_code=self.trust_remote_code
                    )
                    model = transformers.AutoModelForCausalLM.from_pretrained(
                        source, dtype=dtype, use_safetensors=True, trust_remote_code=self.trust_remote_code
                    )
                except ImportError:
                    raise
                except Exception as exc:  # corrupt weights surface as several library-specific types
                    raise OSError(f"could not load the model from {source!r}: {exc}") from exc
                model.to(device)
                self.device = device
                self._install(model, tokenizer)
        return self

    def _install(self, model: Any, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"the tokenizer of {self.model_name!r} has no chat template; set tokenizer.chat_template "
                "(a Jinja template) before wrapping it, or use an instruct model"
            )
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.eval()
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        if not eos_ids:
            raise ValueError(f"{self.model_name!r} defines no end-of-sequence token")
        self._eos_ids = eos_ids
        self._tokenizer = tokenizer
        self._model = model
        if self.device is None:
            self.device = str(next(model.parameters()).device)

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
        """The model's maximum sequence length, prompt included."""
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
            conversation, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(encoded["input_ids"])

    # -- generation ---------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Sequence[Message]],
        *,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
    ) -> list[Generation]:
        """Generate one answer per conversation, batched. Safe to call from several threads."""
        conversations = validate_messages(prompts)
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
            raise ValueError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
        if stop is not None and (isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop)):
            raise ValueError(f"stop must be a list of non-empty strings, got {stop!r}")
        temperature = self.temperature if temperature is None else temperature
        _check_temperature(temperature)
        cap = max_tokens or self.max_new_tokens
        encoded = [self.encode_chat(c) for c in conversations]
        window = self.context_window
        for i, ids in enumerate(encoded):
            if len(ids) >= window:
                raise PromptTooLongError(
                    f"prompts[{i}] is {len(ids)} tokens, but {self.model_name!r} has a context window of "
                    f"{window} tokens (prompt and answer together); shorten the prompt"
                )
        results: list[Generation | None] = [None] * len(encoded)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), self.max_batch_size):
            chunk = order[start : start + self.max_batch_size]
            for i, gen in zip(chunk, self._generate_chunk([encoded[i] for i in chunk], cap, stop, temperature)):
                results[i] = gen
        return [r for r in results if r is not None]

    async def agenerate(
        self,
        prompts: Sequence[Sequence[Message]],
        *,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
    ) -> list[Generation]:
        """Async twin of `generate`: the computation runs in a worker thread, off the event loop."""
        return await asyncio.to_thread(self.generate, prompts, max_tokens=max_tokens, stop=stop, temperature=temperature)

    def _generate_chunk(
        self, rows: list[list[int]], cap: int, stop: Sequence[str] | None, temperature: float
    ) -> list[Generation]:
        tok, model = self._tokenizer, self._model
        width = max(len(r) for r in rows)
        max_new = min(cap, self.context_window - width)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=model.device)
        attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=model.device)
        sampling = temperature > 0
        config = transformers.GenerationConfig(
            max_new_tokens=max_new,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=None,
            top_k=None,
            pad_token_id=pad,
            eos_token_id=sorted(self._eos_ids),
        )
        criteria = _StopOnStrings(tok, stop, width) if stop else None
        with self._generate_lock, torch.inference_mode():
            if sampling and self.seed is not None:
                torch.manual_seed(self.seed)
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                generation_config=config,
                stopping_criteria=transformers.StoppingCriteriaList([criteria]) if criteria else None,
            )
        new = output[:, width:].tolist()
        results = []
        for row, (prompt, tokens) in enumerate(zip(rows, new)):
            end = next((k + 1 for k, t in enumerate(tokens) if t in self._eos_ids), None)
            reason = "stop"
            if criteria is not None and row in criteria.stopped_at and (end is None or criteria.stopped_at[row] < end):
                end = criteria.stopped_at[row]
            elif end is None:
                end, reason = len(tokens), "length"
            text = tok.decode(tokens[:end], skip_special_tokens=True)
            if stop:
                cut = min((p for p in (text.find(s) for s in stop) if p >= 0), default=-1)
                if cut >= 0:
                    text, reason = text[:cut], "stop"
            results.append(
                Generation(
                    text=text,
                    usage=Usage(input_tokens=len(prompt), output_tokens=end, counter=f"hf:{self.model_name}"),
                    finish_reason=reason,
                    model=self.model_name,
                )
            )
        return results

    def __repr__(self) -> str:
        state = "loaded" if self.is_loaded else "not loaded"
        return f"HFGenerator({self.model_name!r}, device={self.device!r}, {state})"


def _check_temperature(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 2:
        raise ValueError(f"temperature must be a number between 0 and 2 (0 = greedy), got {value!r}")


def _check_source(model: str | os.PathLike[str]) -> str:
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a path or a hub id, got {type(model).__name__}")
    source = os.fspath(model)
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"model={source!r} is not a Hugging Face model folder (no config.json in it); pass the "
                "folder that holds config.json and the safetensors weights"
            )
        return str(path)
    looks_like_hub_id = source.count("/") == 1 and not source.startswith((".", "/", "~")) and os.sep == "/"
    if not looks_like_hub_id:
        raise FileNotFoundError(
            f"model path {source!r} does not exist; pass a local Hugging Face model folder, or leave "
            f"model unset to use the embedded {EMBEDDED_MODEL_NAME}"
        )
    return source


def _dtype(dtype: Any, device: str) -> Any:
    if dtype is None:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"dtype must be one of {sorted(names)} or a torch.dtype, got {dtype!r}")
    return names[dtype]
