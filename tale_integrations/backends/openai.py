"""A `Generator` over the official ``openai`` SDK: OpenAI, vLLM, ``tale serve`` or any compatible server.

`OpenAIGenerator` sends one chat-completions request per conversation. ``generate`` runs a batch's
requests concurrently on a bounded thread pool over the sync client; ``agenerate`` is truly async
(``AsyncOpenAI``, ``asyncio.gather`` under a semaphore). Timeouts and bounded retries with
exponential backoff are the SDK's own (``timeout``, ``max_retries``); an error the SDK gives up on
propagates to the caller, it is never retried forever (the paper's scripts retried forever).

Usage is the provider's (``counter="reported"``), cached and reasoning tokens included (the reference
scripts discarded it). A server that returns no usage is counted with ``core.tokens.counter_for(model)``
and the counter is named in the `Usage`, never a silent zero.

Calls are checked once, before any request, by `BaseGenerator` (core/generation.py).

Thinking models (`core.thinking`): OpenAI's reasoning models are recognised by name; a thinking model
on vLLM, SGLang or llama.cpp is declared with ``thinking="vllm"`` (``"sglang"``, ``"llamacpp"``).
``generate(..., thinking_budgets=[...])`` then sends each budget through the engine's knob
(``reasoning_effort`` and ``max_completion_tokens``; ``thinking_token_budget``...), fields the SDK has
no argument for going into ``extra_body``. The reasoning text a server returns (``message.reasoning``
on vLLM, ``reasoning_content`` on SGLang and llama.cpp) becomes `Generation.reasoning`.

Needs the ``openai`` extra: ``pip install "tale-integrations[openai]"``.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from .._optional import require

openai = require("openai", extra="openai", purpose="the OpenAI backend")

from ..core.budget import Budget  # noqa: E402
from ..core.checks import check_choice, check_int, check_positive_int  # noqa: E402
from ..core.errors import TaleValueError  # noqa: E402
from ..core.generation import (  # noqa: E402
    BaseGenerator,
    Generation,
    Message,
    Sampling,
    Usage,
    validate_messages,
)
from ..core.thinking import (  # noqa: E402
    Engine,
    ThinkingKnob,
    ThinkingModel,
    ThinkingPolicy,
    resolve_thinking,
    thinking_knob,
)
from ..core.tokens import TokenCounter, counter_for  # noqa: E402

__all__ = ["OpenAIGenerator", "uses_max_completion_tokens"]

# The o-series (o1, o3-mini, o4-mini...) and the gpt-5 family refuse ``max_tokens`` and take
# ``max_completion_tokens`` (which also bounds their hidden reasoning tokens).
_COMPLETION_TOKENS_MODELS = re.compile(r"^(o\d|gpt-5)")

# Chat framing per message and for the assistant reply's priming, in OpenAI's published counting
# recipe; only used to count a request whose server reported no usage.
_TOKENS_PER_MESSAGE = 3
_REPLY_PRIMING = 3

TokenParam = Literal["max_tokens", "max_completion_tokens"]

#: Engines whose knob an OpenAI-compatible chat-completions request can carry.
THINKING_ENGINES = (Engine.OPENAI, Engine.VLLM, Engine.SGLANG, Engine.LLAMACPP)
#: The arguments ``chat.completions.create`` names; other knob fields travel in ``extra_body``.
_CREATE_ARGS = frozenset(inspect.signature(openai.resources.chat.completions.Completions.create).parameters)


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) \
            else value
    return out


def uses_max_completion_tokens(model: str) -> bool:
    """Whether ``model`` takes ``max_completion_tokens`` rather than ``max_tokens``.

    The rule: names starting ``o<digit>`` (o1, o3-mini, o4-mini...) or ``gpt-5``, after any
    ``provider/`` prefix and ``ft:`` (fine-tuned) marker, case-insensitive.
    """
    name = model.strip().lower().rsplit("/", 1)[-1].removeprefix("ft:")
    return bool(_COMPLETION_TOKENS_MODELS.match(name))


class OpenAIGenerator(BaseGenerator):
    """A chat-completions endpoint as a TALE `Generator`.

    Args:
        model: The model name sent with every request (``"gpt-4o-mini"``, a vLLM served name...).
        base_url: The API's base URL, e.g. ``"http://127.0.0.1:8000/v1"``; default the SDK's
            (``$OPENAI_BASE_URL``, else OpenAI).
        api_key: The API key; default the SDK's (``$OPENAI_API_KEY``).
        client: A ready ``openai.OpenAI`` client (then ``base_url``, ``api_key``, ``timeout`` and
            ``max_retries`` are not used for it). When only ``async_client`` is given, the sync
            client is built with its settings, and the reverse.
        async_client: A ready ``openai.AsyncOpenAI`` client.
        temperature: Default sampling temperature (None: the server's default).
        max_tokens: Default output cap when a call gives none (None: the server's default).
        seed: Sent with every request, for repeatable sampling where the server supports it.
        n: Must be 1: a `Generator` returns one generation per prompt.
        timeout: Seconds before a request times out (None: the SDK's default, 600 s).
        max_retries: Retries, with exponential backoff, of connection errors, 408, 409, 429 and
            5xx answers (the SDK's rule). Default 2.
        max_concurrency: Requests in flight at once for one batch. Default 16.
        max_tokens_param: Force ``"max_tokens"`` or ``"max_completion_tokens"``; default chosen by
            `uses_max_completion_tokens` from the model name.
        extra_body: Extra JSON fields for every request (server-specific options, such as
            ``{"tale_budget": "auto"}`` for ``tale serve``).
        token_counter: Counts a request whose server reported no usage; default
            ``counter_for(model)``.
        thinking: Whether and how the model thinks (`core.thinking.resolve_thinking`): None detects
            OpenAI's reasoning models by name; False never uses a knob; True declares an OpenAI
            reasoning model; ``"vllm"``, ``"sglang"`` or ``"llamacpp"`` declares a thinking model on that
            server; a `core.thinking.ThinkingModel` gives the row itself.
        thinking_policy: `core.thinking.ThinkingPolicy` (answer reserve, effort thresholds) for the knob.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: Any = None,
        async_client: Any = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        n: int = 1,
        timeout: float | None = None,
        max_retries: int = 2,
        max_concurrency: int = 16,
        max_tokens_param: TokenParam | None = None,
        extra_body: Mapping[str, Any] | None = None,
        token_counter: TokenCounter | None = None,
        thinking: Any = None,
        thinking_policy: ThinkingPolicy | None = None,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model must be a non-empty model name, got {model!r}")
        if n != 1:
            raise ValueError(
                f"n must be 1, got {n!r}: a Generator returns exactly one generation per prompt; "
                "repeat the prompt in the batch to sample it several times"
            )
        Sampling(max_tokens=max_tokens, temperature=temperature)  # the defaults obey the per-call rules
        check_positive_int("max_concurrency", max_concurrency)
        check_int("seed", seed, optional=True)
        check_int("max_retries", max_retries, low=0)
        check_choice("max_tokens_param", max_tokens_param, (None, "max_tokens", "max_completion_tokens"))
        self.model_name = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.seed = seed
        self.max_concurrency = max_concurrency
        self.max_tokens_param: TokenParam = max_tokens_param or (
            "max_completion_tokens" if uses_max_completion_tokens(model) else "max_tokens"
        )
        self.extra_body = dict(extra_body) if extra_body else None
        self.token_counter = token_counter
        if thinking_policy is not None and not isinstance(thinking_policy, ThinkingPolicy):
            raise TypeError(f"thinking_policy must be a ThinkingPolicy, got {type(thinking_policy).__name__}")
        self.thinking_policy = thinking_policy or ThinkingPolicy()
        self.thinking = thinking
        settings: dict[str, Any] = {"max_retries": max_retries}
        if base_url is not None:
            settings["base_url"] = base_url
        if api_key is not None:
            settings["api_key"] = api_key
        if timeout is not None:
            settings["timeout"] = timeout
        template = client if client is not None else async_client
        if template is not None:
            # One ready client gives its twin the same endpoint, key, timeout and retries.
            settings = {"base_url": template.base_url, "api_key": template.api_key,
                        "timeout": template.timeout, "max_retries": template.max_retries}
        self.client = client if client is not None else openai.OpenAI(**settings)
        self.async_client = async_client if async_client is not None else openai.AsyncOpenAI(**settings)

    @property
    def thinking(self) -> ThinkingModel | None:
        """The knob-table row of the model (`core.thinking.ThinkingModel`), or None: not a thinking model.

        Set it with the values the ``thinking`` argument takes (``generator.thinking = "vllm"``).
        """
        return self._thinking

    @thinking.setter
    def thinking(self, declared: Any) -> None:
        row = resolve_thinking(declared, self.model_name,
                               engine=Engine.OPENAI if declared is None or declared is True else None)
        if row is not None and row.engine not in THINKING_ENGINES:
            raise TaleValueError(
                f"thinking={declared!r}: an OpenAI-compatible request cannot carry the {row.engine} knob; "
                f"OpenAIGenerator takes {', '.join(THINKING_ENGINES)} (use that engine's own client otherwise)"
            )
        self._thinking = row

    def thinking_knob(self, budget: Budget | int | None, *, max_tokens: int | None = None,
                      cap: bool = True) -> ThinkingKnob | None:
        """The knob one request with thinking budget ``budget`` carries (None: not a thinking model).

        ``max_tokens`` (else the generator's default cap) is the output limit the knob stays under.
        """
        if self._thinking is None:
            return None
        limit = self.max_tokens if max_tokens is None else max_tokens
        return thinking_knob(self._thinking, budget, model=self.model_name, policy=self.thinking_policy,
                             limit=limit, cap=cap)

    @classmethod
    def paper(cls, model: str, **kwargs: Any) -> OpenAIGenerator:
        """The paper's sampling settings (Han et al. 2024): temperature 0.1, seed 1024, max 1024 tokens.

        ``kwargs`` are other constructor arguments and may override any of the three.
        """
        settings: dict[str, Any] = {"temperature": 0.1, "seed": 1024, "max_tokens": 1024}
        settings.update(kwargs)
        return cls(model, **settings)

    # -- translation ----------------------------------------------------------------------------

    def request(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
        knob: ThinkingKnob | None = None,
    ) -> dict[str, Any]:
        """The keyword arguments of ``chat.completions.create`` for one conversation.

        With an applied ``knob`` (`thinking_knob`), its fields replace the output cap: those
        ``create`` names are arguments, the rest join ``extra_body``.
        """
        kwargs: dict[str, Any] = {"model": self.model_name, "messages": [dict(m) for m in messages]}
        cap = self.max_tokens if max_tokens is None else max_tokens
        extra: dict[str, Any] = dict(self.extra_body or {})
        if knob is not None and knob.applied:
            for key, value in knob.fields.items():
                if key in _CREATE_ARGS:
                    kwargs[key] = value
                else:
                    extra = _merge(extra, {key: value})
        elif cap is not None:
            kwargs[self.max_tokens_param] = cap
        temperature = self.temperature if temperature is None else temperature
        if temperature is not None:
            kwargs["temperature"] = temperature
        if self.seed is not None:
            kwargs["seed"] = self.seed
        if stop:
            kwargs["stop"] = list(stop)
        if extra:
            kwargs["extra_body"] = extra
        return kwargs

    def _counter(self) -> TokenCounter:
        if self.token_counter is None:
            self.token_counter = counter_for(self.model_name)
        return self.token_counter

    def _usage(self, usage: Any, messages: Sequence[Message], text: str) -> Usage:
        prompt = getattr(usage, "prompt_tokens", None)
        completion = getattr(usage, "completion_tokens", None)
        if isinstance(prompt, int) and isinstance(completion, int):
            prompt_details = getattr(usage, "prompt_tokens_details", None)
            completion_details = getattr(usage, "completion_tokens_details", None)
            return Usage(
                input_tokens=prompt,
                output_tokens=completion,
                cached_input_tokens=getattr(prompt_details, "cached_tokens", None) or 0,
                # SGLang also reports it at the top level of usage
                reasoning_tokens=getattr(completion_details, "reasoning_tokens", None)
                or getattr(usage, "reasoning_tokens", None) or 0,
                counter="reported",
            )
        counter = self._counter()
        framing = _TOKENS_PER_MESSAGE * len(messages) + _REPLY_PRIMING
        return Usage(
            input_tokens=framing + sum(counter.count(m["content"]) for m in messages),
            output_tokens=counter.count(text),
            counter=counter.name,
        )

    def _generation(self, response: Any, messages: Sequence[Message]) -> Generation:
        if not getattr(response, "choices", None):
            raise ValueError(f"the server answered {self.model_name!r} with no choices: {response!r}")
        choice = response.choices[0]
        message = choice.message
        text = (message.content if message is not None else None) or ""
        # vLLM names the thinking text ``reasoning``; SGLang, llama.cpp and older vLLM ``reasoning_content``
        reasoning = getattr(message, "reasoning", None) or getattr(message, "reasoning_content", None)
        return Generation(
            text=text,
            usage=self._usage(getattr(response, "usage", None), messages, text),
            finish_reason="length" if choice.finish_reason == "length" else "stop",
            model=getattr(response, "model", None) or self.model_name,
            reasoning=reasoning if isinstance(reasoning, str) and reasoning else None,
        )

    # -- the Generator protocol -----------------------------------------------------------------

    def _thinking_requests(self, prompts: Any, max_tokens: Any, stop: Any, temperature: Any,
                           thinking_budgets: Any) -> tuple[list[list[dict[str, str]]], list[dict[str, Any]]]:
        conversations = validate_messages(prompts)
        sampling = Sampling(max_tokens=max_tokens, stop=stop, temperature=temperature)
        if self._thinking is None:
            raise TaleValueError(
                f"thinking_budgets need a thinking model, and {self.model_name!r} is not one here; declare it "
                "with OpenAIGenerator(..., thinking='vllm') (or 'sglang', 'llamacpp', True for OpenAI)"
            )
        if isinstance(thinking_budgets, (str, bytes)) or not isinstance(thinking_budgets, Sequence) or \
                len(thinking_budgets) != len(conversations):
            raise TaleValueError(f"thinking_budgets must give one budget (or None) per prompt, got "
                                 f"{thinking_budgets!r}")
        settings = sampling.to_dict()
        knobs = [b if isinstance(b, ThinkingKnob) else self.thinking_knob(b, max_tokens=sampling.max_tokens)
                 for b in thinking_budgets]
        requests = [self.request(c, **settings, knob=k) for c, k in zip(conversations, knobs, strict=True)]
        return conversations, requests

    def generate(self, prompts: Sequence[Sequence[Message]], *, max_tokens: int | None = None,
                 stop: Sequence[str] | None = None, temperature: float | None = None,
                 thinking_budgets: Sequence[Budget | int | ThinkingKnob | None] | None = None) -> list[Generation]:
        """One `Generation` per conversation (the `Generator` protocol).

        Beyond it: ``thinking_budgets`` gives each conversation a thinking budget (None: unlimited)
        sent through the model's knob (`thinking_knob`), or the `core.thinking.ThinkingKnob` to send
        as it is; ``max_tokens`` is then the output limit the knob stays under, and the cap of a row
        whose knob was not applied. Refused for a model that is not a thinking model.
        """
        if thinking_budgets is None:
            return super().generate(prompts, max_tokens=max_tokens, stop=stop, temperature=temperature)
        conversations, requests = self._thinking_requests(prompts, max_tokens, stop, temperature, thinking_budgets)
        return self._one_each(conversations, self._send(requests, conversations)) if conversations else []

    async def agenerate(self, prompts: Sequence[Sequence[Message]], *, max_tokens: int | None = None,
                        stop: Sequence[str] | None = None, temperature: float | None = None,
                        thinking_budgets: Sequence[Budget | int | ThinkingKnob | None] | None = None,
                        ) -> list[Generation]:
        """Async twin of `generate`."""
        if thinking_budgets is None:
            return await super().agenerate(prompts, max_tokens=max_tokens, stop=stop, temperature=temperature)
        conversations, requests = self._thinking_requests(prompts, max_tokens, stop, temperature, thinking_budgets)
        return self._one_each(conversations, await self._asend(requests, conversations)) if conversations else []

    def _generate(self, conversations: list[list[dict[str, str]]], sampling: Sampling) -> list[Generation]:
        """One request per conversation, at most ``max_concurrency`` at once; results in order.

        Raises:
            openai.OpenAIError: the first request that failed after the SDK's retries (the rest
                of the batch is cancelled).
        """
        return self._send([self.request(c, **sampling.to_dict()) for c in conversations], conversations)

    def _send(self, requests: list[dict[str, Any]], conversations: list[list[dict[str, str]]]) -> list[Generation]:
        if len(requests) == 1:  # no pool for a single request
            return [self._generation(self.client.chat.completions.create(**requests[0]), conversations[0])]
        workers = min(self.max_concurrency, len(requests))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tale-openai")
        try:
            futures = [pool.submit(self.client.chat.completions.create, **r) for r in requests]
            return [self._generation(f.result(), c) for f, c in zip(futures, conversations, strict=True)]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    async def _agenerate(self, conversations: list[list[dict[str, str]]], sampling: Sampling) -> list[Generation]:
        """Async twin of `_generate` over ``AsyncOpenAI``: concurrent requests under a semaphore."""
        return await self._asend([self.request(c, **sampling.to_dict()) for c in conversations], conversations)

    async def _asend(self, requests: list[dict[str, Any]],
                     conversations: list[list[dict[str, str]]]) -> list[Generation]:
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(request: dict[str, Any], messages: list[dict[str, str]]) -> Generation:
            async with gate:
                response = await self.async_client.chat.completions.create(**request)
            return self._generation(response, messages)

        tasks = [asyncio.ensure_future(one(r, c)) for r, c in zip(requests, conversations, strict=True)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def __repr__(self) -> str:
        return f"OpenAIGenerator({self.model_name!r}, base_url={str(self.client.base_url)!r})"
