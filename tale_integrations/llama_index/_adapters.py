"""Adapters between LlamaIndex and the core: any LlamaIndex LLM as a core `Generator`, estimators
whose prompt is a LlamaIndex template, and reading token usage from LlamaIndex responses.

`LlamaIndexGenerator` translates core chat batches into ``llm.chat`` calls (one batched
``batch_chat`` call when the LLM has one, as `TaleHFLLM` does) and the responses back into
`Generation` values with the usage the LLM reported. `LlamaIndexEstimator` is the paper's zero-shot
estimator with its prompt held as a LlamaIndex `ChatPromptTemplate`, so query engines can expose it
through ``get_prompts``/``update_prompts``. `as_estimator` turns whatever a user passes (an LLM, a
core estimator or generator, an int, a function) into a core `BudgetEstimator`.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from llama_index.core.base.llms.base import BaseLLM
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.prompts import ChatPromptTemplate
from llama_index.core.prompts.mixin import PromptDictType, PromptMixin

from ..core.estimators import BudgetEstimator, FixedEstimator, FunctionEstimator, ZeroShotEstimator, get_estimator
from ..core.generation import BaseGenerator, FinishReason, Generation, Message, Sampling, Usage
from ..core.prompts import (
    ESTIMATION_PROMPT_FIGURE,
    ESTIMATION_PROMPT_SCRIPTS,
    ESTIMATION_SYSTEM_PROMPT,
    EstimationPrompt,
)
from ._llm_messages import to_backend_messages

__all__ = [
    "LlamaIndexEstimator",
    "LlamaIndexGenerator",
    "as_estimator",
    "estimation_template",
    "to_chat_messages",
    "update_prompts_nested",
    "usage_from_response",
]

_INPUT_KEYS = ("prompt_tokens", "input_tokens", "prompt_token_count")
_OUTPUT_KEYS = ("completion_tokens", "output_tokens", "candidates_token_count")
_LENGTH_REASONS = frozenset({"length", "max_tokens", "MAX_TOKENS"})


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


def usage_from_response(response: Any) -> Usage | None:
    """The token usage a LlamaIndex ``ChatResponse``/``CompletionResponse`` reports, or None.

    Reads the places ``TokenCountingHandler`` reads, in its order: ``raw["usage"]`` (or
    ``raw["usage_metadata"]``, as a dict or an object), then ``additional_kwargs``; keys
    ``prompt_tokens|input_tokens|prompt_token_count`` and
    ``completion_tokens|output_tokens|candidates_token_count``. The counter is ``raw["token_counter"]``
    when the LLM names it (`TaleHFLLM` does), else ``"reported"``.
    """
    if response is None:
        return None
    raw = getattr(response, "raw", None)
    usage = None
    if raw is not None:
        usage = _get(raw, "usage")
        if usage is None:
            usage = _get(raw, "usage_metadata")
    if not usage:
        usage = getattr(response, "additional_kwargs", None)
    if not usage:
        return None
    if not isinstance(usage, Mapping):
        usage = usage.model_dump() if hasattr(usage, "model_dump") else vars(usage)
    n_in = next((usage[k] for k in _INPUT_KEYS if isinstance(usage.get(k), int)), None)
    n_out = next((usage[k] for k in _OUTPUT_KEYS if isinstance(usage.get(k), int)), None)
    if n_in is None and n_out is None:
        return None
    counter = _get(raw, "token_counter") if raw is not None else None
    return Usage(input_tokens=n_in or 0, output_tokens=n_out or 0,
                 counter=counter if isinstance(counter, str) else "reported")


def _finish_reason(response: Any) -> FinishReason:
    raw = getattr(response, "raw", None)
    reason = _get(raw, "finish_reason") if raw is not None else None
    if reason is None and raw is not None:  # OpenAI-shaped raw responses
        choices = _get(raw, "choices")
        if choices:
            reason = _get(choices[0], "finish_reason")
    return "length" if reason in _LENGTH_REASONS else "stop"


def to_chat_messages(messages: Sequence[Message]) -> list[ChatMessage]:
    """Core ``{"role", "content"}`` dicts as LlamaIndex chat messages."""
    return [ChatMessage(role=MessageRole(m["role"]), content=m["content"]) for m in messages]


def _cut(text: str, stop: Sequence[str] | None) -> tuple[str, bool]:
    """``text`` cut before the first stop string (LLMs that ignore ``stop`` still honour the contract)."""
    cuts = [i for i in (text.find(s) for s in stop or () if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class LlamaIndexGenerator(BaseGenerator):
    """Any LlamaIndex LLM as a core `Generator` (the seam the core estimators and pipeline use).

    Each conversation becomes one ``llm.chat`` call; an LLM with ``batch_chat``/``abatch_chat``
    (`TaleHFLLM`) answers a whole batch in one call. The calls go through the LLM's own callbacks
    and instrumentation, so ``TokenCountingHandler`` on the LLM's callback manager counts them.
    Calls are checked by `BaseGenerator` before the LLM sees them.

    Args:
        llm: The LlamaIndex LLM.
        forward_settings: Pass ``max_tokens``, ``stop`` and ``temperature`` to ``chat`` as keyword
            arguments when set (`TaleHFLLM` and the OpenAI-style LLMs honour them). Turn off for an
            LLM that rejects unknown keyword arguments. Stop strings are cut from the text either way.
        counter: A core `TokenCounter` used when the LLM reports no usage (the prompt count then
            covers the message texts only, not the chat template); without one such usage is zero
            with ``counter="none"``.
    """

    def __init__(self, llm: BaseLLM, *, forward_settings: bool = True, counter: Any = None) -> None:
        if not isinstance(llm, BaseLLM):
            raise TypeError(f"llm must be a LlamaIndex LLM, got {type(llm).__name__}")
        if counter is not None and not (callable(getattr(counter, "count", None)) and hasattr(counter, "name")):
            raise TypeError(f"counter must be a TokenCounter (with name and count(text)), got {type(counter).__name__}")
        self.llm = llm
        self.forward_settings = forward_settings
        self.counter = counter

    @property
    def model_name(self) -> str:
        """The LLM's model name (read without loading a local model's weights)."""
        for name in ("model_name", "model"):
            value = getattr(self.llm, name, None)
            if isinstance(value, str) and value:
                return value
        return self.llm.metadata.model_name

    def _kwargs(self, sampling: Sampling) -> dict[str, Any]:
        if not self.forward_settings:
            return {}
        return {k: v for k, v in sampling.to_dict().items() if v is not None and v != []}  # temperature 0 is kept

    def _generation(self, response: Any, messages: list[dict[str, str]], stop: Sequence[str] | None) -> Generation:
        text, was_cut = _cut(response.message.content or "", stop)
        usage = usage_from_response(response)
        if usage is None:
            if self.counter is not None:
                usage = Usage(input_tokens=sum(self.counter.count(m["content"]) for m in messages),
                              output_tokens=self.counter.count(text), counter=self.counter.name)
            else:
                usage = Usage(counter="none")
        raw = getattr(response, "raw", None)
        model = _get(raw, "model") if raw is not None else None
        return Generation(text=text, usage=usage, finish_reason="stop" if was_cut else _finish_reason(response),
                          model=model if isinstance(model, str) else self.model_name)

    def _generate(self, conversations: list[list[dict[str, str]]], sampling: Sampling) -> list[Generation]:
        """Answer each conversation with ``llm.chat`` (or one ``llm.batch_chat``), in order."""
        kwargs = self._kwargs(sampling)
        chats = [to_chat_messages(row) for row in conversations]
        batch = getattr(self.llm, "batch_chat", None)
        responses = batch(chats, **kwargs) if callable(batch) else [self.llm.chat(c, **kwargs) for c in chats]
        return [self._generation(r, row, sampling.stop) for r, row in zip(responses, conversations, strict=True)]

    async def _agenerate(self, conversations: list[list[dict[str, str]]], sampling: Sampling) -> list[Generation]:
        """Async twin of `_generate`: ``abatch_chat`` when the LLM has it, else concurrent ``achat`` calls."""
        kwargs = self._kwargs(sampling)
        chats = [to_chat_messages(row) for row in conversations]
        batch = getattr(self.llm, "abatch_chat", None)
        if callable(batch):
            responses = await batch(chats, **kwargs)
        else:
            responses = await asyncio.gather(*(self.llm.achat(c, **kwargs) for c in chats))
        return [self._generation(r, row, sampling.stop) for r, row in zip(responses, conversations, strict=True)]


def estimation_template(variant: EstimationPrompt | str = EstimationPrompt.SCRIPTS) -> ChatPromptTemplate:
    """The paper's budget-estimation chat (core strings) as a LlamaIndex template with ``{question}``."""
    scripts = EstimationPrompt(variant) is EstimationPrompt.SCRIPTS
    text = ESTIMATION_PROMPT_SCRIPTS if scripts else ESTIMATION_PROMPT_FIGURE
    return ChatPromptTemplate.from_messages([("system", ESTIMATION_SYSTEM_PROMPT), ("user", text)])


class LlamaIndexEstimator(ZeroShotEstimator):
    """The paper's zero-shot estimator over a LlamaIndex LLM (or a core `Generator`), with its prompt
    held as a LlamaIndex `ChatPromptTemplate` (``prompt_template``) that can be replaced.

    Args:
        model: A LlamaIndex LLM (wrapped in a `LlamaIndexGenerator`) or a core `Generator`.
        prompt: `EstimationPrompt` variant of the default template (``"scripts"`` or ``"figure"``).
        prompt_template: A template with a ``{question}`` variable, replacing the default.
        max_tokens: Cap on the estimator's reply. Default 64.
        temperature: Sampling temperature of the estimator call (None: the model's default).
        lenient: Also accept ``[[ 40 ]]``, ``[[1,000]]`` and ``Budget: 40``.
    """

    def __init__(
        self,
        model: Any,
        *,
        prompt: EstimationPrompt | str = EstimationPrompt.SCRIPTS,
        prompt_template: ChatPromptTemplate | None = None,
        max_tokens: int = 64,
        temperature: float | None = None,
        lenient: bool = True,
    ) -> None:
        generator = LlamaIndexGenerator(model) if isinstance(model, BaseLLM) else model
        super().__init__(generator, prompt=prompt, max_tokens=max_tokens, temperature=temperature, lenient=lenient)
        self.prompt_template = prompt_template if prompt_template is not None else estimation_template(self.prompt)
        check_template(self.prompt_template, required=("question",), name="the estimation prompt")

    @property
    def llm(self) -> BaseLLM | None:
        """The LlamaIndex LLM behind the estimator, if it is one."""
        return self.generator.llm if isinstance(self.generator, LlamaIndexGenerator) else None

    def messages(self, question: str) -> list[dict[str, str]]:
        """The estimation chat for ``question``, rendered from ``prompt_template``."""
        if not isinstance(question, str):
            raise TypeError(f"question must be a str, got {type(question).__name__}")
        if not question.strip():
            raise ValueError("question is empty; pass the text of the question to answer")
        return to_backend_messages(self.prompt_template.format_messages(question=question))


def check_template(template: Any, *, required: Sequence[str], name: str) -> None:
    """Raise a clear error when ``template`` is not a LlamaIndex prompt or lacks a variable."""
    variables = getattr(template, "template_vars", None)
    if variables is None or not callable(getattr(template, "format", None)):
        raise TypeError(f"{name} must be a LlamaIndex prompt template, got {type(template).__name__}")
    missing = [v for v in required if v not in variables]
    if missing:
        raise ValueError(f"{name} must use the variable(s) {', '.join('{' + v + '}' for v in missing)}; "
                         f"it has {sorted(set(variables))}")


def as_estimator(estimator: Any) -> BudgetEstimator:
    """Whatever a user passes as an estimator, as a core `BudgetEstimator`.

    - a LlamaIndex LLM, or a core `Generator`: the paper's zero-shot estimator on it (`LlamaIndexEstimator`);
    - a core estimator (``name``, ``estimate``, ``aestimate``): itself;
    - a positive int: the same budget for every question (`FixedEstimator`; the policy still clamps it);
    - a function ``question -> int | None``: `FunctionEstimator`;
    - a name: ``"learned"`` (the shipped learned estimator, no model call), ``"learned:PATH"``,
      ``"fixed:N"`` (`core.estimators.get_estimator`; ``"zero-shot"`` is resolved by the caller, which
      knows the LLM).

    Raises:
        TypeError: none of these.
    """
    if isinstance(estimator, str):
        return get_estimator(estimator)
    if isinstance(estimator, BaseLLM):
        return LlamaIndexEstimator(estimator)
    if isinstance(estimator, int) and not isinstance(estimator, bool):
        return FixedEstimator(estimator)
    if all(callable(getattr(estimator, m, None)) for m in ("estimate", "aestimate")) and hasattr(estimator, "name"):
        return estimator
    if all(callable(getattr(estimator, m, None)) for m in ("generate", "agenerate")):
        return LlamaIndexEstimator(estimator)
    if callable(estimator):
        return FunctionEstimator(estimator, name=getattr(estimator, "__name__", "function"))
    raise TypeError(
        "estimator must be a LlamaIndex LLM, a core BudgetEstimator or Generator, a positive int or a "
        f"function question -> int | None; got {type(estimator).__name__}"
    )


def update_prompts_nested(module: PromptMixin, prompts: PromptDictType) -> None:
    """``update_prompts`` that accepts any depth of ``a:b:c`` keys (LlamaIndex's own splits once)."""
    own = {k: v for k, v in prompts.items() if ":" not in k}
    if own:
        module._update_prompts(own)
    modules = module._get_prompt_modules()
    grouped: dict[str, PromptDictType] = defaultdict(dict)
    for key, prompt in prompts.items():
        name, sep, rest = key.partition(":")
        if sep:
            if name not in modules:
                raise ValueError(f"unknown prompt key {key!r}; known keys: {sorted(module.get_prompts())}")
            grouped[name][rest] = prompt
    for name, sub in grouped.items():
        update_prompts_nested(modules[name], sub)
