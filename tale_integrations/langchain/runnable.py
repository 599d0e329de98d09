"""`TaleRunnable`: TALE-EP as an LCEL Runnable around any LangChain chat model.

One call = estimate a budget (the paper's zero-shot estimator on the same model by default), clamp
it with the core's `BudgetPolicy`, write the budgeted chain-of-thought trigger into the last human
message, ask the model (with a hard ``max_tokens`` cap where the model takes one) and, if the
answer was cut off before giving a final answer, make one bounded repair call. The result is the
model's own `AIMessage`, so ``| StrOutputParser()`` works; what TALE did is in
``response_metadata["tale"]``.

The flow is written once (`TaleRunnable._flow`, a generator of model requests) and driven by the
core's runners (`core.flows`: sync, async, and their streaming twins); `_model_calls` answers its
model requests. A batch makes one estimator batch call and one answer batch call per distinct hard
cap (all inputs share one cap unless their budgets differ), the groups running concurrently.

Thinking models (`core.thinking`): when the wrapped model is one (``ChatOpenAI`` on a reasoning model,
``ChatAnthropic`` with extended thinking, ``ChatGoogleGenerativeAI`` on Gemini 2.5/3, ``ChatOllama`` on a
thinking family, detected from the class and name; ``ChatTaleHF`` whose chat template has a thinking
block, detected on the first call; or declared with ``thinking=``), the budget goes to
its thinking knob (`langchain._thinking`) and the question is asked without the budget trigger; the
metadata's ``budget_via`` says which, and ``thinking`` holds the knob's request fields.

Child runs carry tags: ``tale:estimate`` (and ``nostream``, so LangGraph's message streaming skips
the estimator's reply), ``tale:answer`` and ``tale:repair``; filter ``astream_events`` on them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from collections.abc import Generator as PyGenerator
from typing import Any, Literal

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable
from pydantic import ConfigDict, Field, PrivateAttr, model_validator
from typing_extensions import Self

from ..core.budget import Budget, BudgetPolicy
from ..core.decision import BudgetRecord, decide_budget, estimator_failure
from ..core.estimators import BudgetEstimator, Estimate, EstimatorError
from ..core.flows import Reply, adrive, astream_drive, drive, stream_drive
from ..core.prompts import PROMPT_VERSION, REPAIR_PROMPT, EstimationPrompt, QuestionFormat, repair_prompt
from ..core.thinking import ThinkingKnob, ThinkingPolicy
from ._adapters import (
    accepts_max_tokens,
    as_estimator,
    budgeted_messages,
    call_configs,
    check_chat_model,
    finish_reason,
    model_max_tokens,
    to_usage_metadata,
)
from ._model_calls import acall_model, astream_model, call_model, closing_chunk, stream_model
from ._runnable_parts import (
    BRACKETED,
    REPAIR_SEPARATOR,
    Children,
    EstimateRequest,
    Item,
    ModelCall,
    TaleInput,
    TaleQuestion,
    parse_input,
    total_usage,
)
from ._thinking import ThinkingTarget, thinking_target, thinks

__all__ = ["REPAIR_PROMPT", "TaleInput", "TaleQuestion", "TaleRunnable"]


class TaleRunnable(RunnableSerializable[TaleInput, AIMessage]):
    """TALE-EP (estimate a token budget, then ask with it) around any LangChain chat model.

    Input: a question string; a dict ``{"question": ..., "budget": optional int, "options": ...}``
    (a per-call budget skips estimation); or a `PromptValue` / message list from an upstream
    prompt template, whose last human message is the question (system messages and history are
    kept; only that message gets the budget instruction).

    Output: the model's `AIMessage`. ``response_metadata["tale"]`` holds ``budget`` (None for plain
    CoT after a failed estimate under ``on_parse_failure="vanilla"``), ``budget_raw``,
    ``budget_source``, ``budget_adjusted``, ``estimator``, ``estimator_reply``, ``estimator_error``,
    ``estimator_usage``, ``budget_via`` (``"prompt"`` or ``"thinking"``), ``thinking`` (the knob:
    `core.thinking.ThinkingKnob.to_dict`, or None), ``max_tokens`` (the hard cap sent, or None), ``format``,
    ``prompt_version``, then ``answer_usage``, ``repaired``, ``repair_usage`` and ``total_usage``
    (every call together). Usage values are LangChain `UsageMetadata` dicts, None where the model
    reported none. The message's own ``usage_metadata`` is its answer's (answer plus repair).

    Attributes:
        model: Any chat model, possibly wrapped (``bind``, ``with_retry``, ``with_fallbacks``).
        estimator: None (the paper's zero-shot estimator on ``model``), another chat model (zero-shot
            on it), a core `BudgetEstimator`, a Runnable / function returning a number, or a name:
            ``"learned"`` (the shipped learned estimator: no model call, zero estimator tokens),
            ``"learned:PATH"``, ``"zero-shot"``, ``"fixed:N"``. Garbage from it (no number) triggers the
            policy's parse-failure rule, recorded in ``budget_adjusted``.
        budget: A fixed budget for every call (no estimation); a dict input's ``budget`` wins.
        policy: `BudgetPolicy` (floor, cap, scale α, fallback); a dict is accepted.
        format: `QuestionFormat` of the prompt: ``"chat"`` (default: the question and the trigger),
            ``"gsm8k"`` or ``"multiple_choice"`` (needs ``options`` in the input).
        hard_cap: Also cap the answer at ``budget + answer_reserve`` output tokens, for models with
            a ``max_tokens`` setting (never above a cap the user set on the model). Never on a model
            that thinks (`langchain._thinking.thinks`): its thinking counts inside the cap.
        answer_reserve: Tokens beyond the budget for the hard cap, and the repair call's cap.
        repair: After an answer cut off by a token cap with no final answer (no ``[[...]]`` for gsm8k /
            multiple choice; any cut-off for chat), make one repair call (the conversation, the
            cut-off answer, `REPAIR_PROMPT`) capped at ``answer_reserve``. The returned content is
            the cut-off text, a blank line, then the repair's text; if the repair call fails, the
            cut-off answer is returned with ``repair_error`` in the metadata.
        on_estimator_error: ``"raise"`` (an `EstimatorError`) or ``"fallback"`` (the policy's rule).
        estimation_prompt: `EstimationPrompt` variant for the zero-shot estimator (``estimator`` None
            or a chat model).
        estimator_max_tokens: Cap on the zero-shot estimator's reply (a few tokens are expected).
        thinking: Whether the model's thinking knob carries the budget (`core.thinking.resolve_thinking`):
            None detects it from the model's class and name (a ``ChatTaleHF`` from its chat template, on
            the first call); False always writes the budget into the prompt; True, an engine name
            (``"vllm"`` for a ``ChatOpenAI`` on a vLLM server, ``"sglang"``, ``"llamacpp"``, ``"hf"``) or a
            `core.thinking.ThinkingModel` declares it. The knob wins over call arguments of the same name.
        thinking_policy: `core.thinking.ThinkingPolicy`: the answer reserve above the thinking budget in
            the output cap (on a ``ChatTaleHF``, at least its block's markers and its backend's own
            answer reserve, `HFGenerator.thinking_reserve`), and the budget thresholds of effort levels.

    Per call: ``configurable_fields`` works on every field (``budget``, ``policy``, ``estimator``...);
    ``invoke(..., **kwargs)`` passes ``kwargs`` (``temperature``, ``stop``...) to the answer calls.

    Example:
        ```python
        chain = ChatPromptTemplate.from_messages([("system", "Be precise."), ("human", "{question}")])
        chain = chain | TaleRunnable(ChatOpenAI(model="gpt-4o-mini")) | StrOutputParser()
        chain.invoke({"question": "What is 17 * 23?"})
        ```
    """

    model: Runnable
    estimator: Any = None
    budget: int | None = Field(default=None, ge=1)
    policy: BudgetPolicy = Field(default_factory=BudgetPolicy)
    format: QuestionFormat = QuestionFormat.CHAT
    hard_cap: bool = True
    answer_reserve: int = Field(default=64, ge=1)
    repair: bool = True
    on_estimator_error: Literal["raise", "fallback"] = "raise"
    estimation_prompt: EstimationPrompt = EstimationPrompt.SCRIPTS
    estimator_max_tokens: int = Field(default=64, ge=1)
    thinking: Any = None
    thinking_policy: ThinkingPolicy = Field(default_factory=ThinkingPolicy)

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    _estimator: BudgetEstimator = PrivateAttr()

    def __init__(self, model: Any = None, **kwargs: Any) -> None:
        if model is not None:
            kwargs["model"] = model
        if "model" not in kwargs:
            raise TypeError("TaleRunnable needs the chat model to wrap: TaleRunnable(ChatOpenAI(...))")
        check_chat_model(kwargs["model"])
        super().__init__(**kwargs)

    @model_validator(mode="after")
    def _build_estimator(self) -> Self:
        self._estimator = as_estimator(self.estimator, self.model, prompt=self.estimation_prompt,
                                       max_tokens=self.estimator_max_tokens)
        # a declared knob the model's class cannot carry fails here; a local model's template is read on the first call
        thinking_target(self.model, self.thinking, template=False)
        return self

    @property
    def InputType(self) -> Any:  # noqa: N802
        return TaleInput

    @property
    def OutputType(self) -> type[AIMessage]:  # noqa: N802
        return AIMessage

    # -- input ----------------------------------------------------------------------------------

    def _item(self, value: Any) -> Item:
        return parse_input(value, self.format)

    def _items(self, inputs: Sequence[Any], fail_fast: bool) -> list[Item | Exception]:
        items: list[Item | Exception] = []
        for value in inputs:
            try:
                items.append(self._item(value))
            except (TypeError, ValueError) as exc:
                if fail_fast:
                    raise
                items.append(exc)
        return items

    # -- the flow, written once -------------------------------------------------------------------

    def _budget(self, item: Item, estimate: Estimate | None) -> Budget:
        limit = model_max_tokens(self.model)  # a budget above the model's own cap could not be met
        return decide_budget(self.policy, estimate=estimate, estimator=self._estimator.name if estimate else None,
                             caller=item.budget, fixed=self.budget, limit=limit)

    def _cap(self, tokens: int | None) -> int | None:
        if tokens is None or not self.hard_cap or not accepts_max_tokens(self.model) or thinks(self.model):
            return None
        own = model_max_tokens(self.model)
        return tokens + self.answer_reserve if own is None else min(own, tokens + self.answer_reserve)

    def _knob(self, target: ThinkingTarget | None, budget: Budget) -> ThinkingKnob | None:
        if target is None or budget.tokens is None:
            return None
        return target.knob(budget, self.thinking_policy)

    def _header(self, budget: Budget, estimate: Estimate | None, cap: int | None,
                knob: ThinkingKnob | None = None) -> dict[str, Any]:
        name = None if estimate is None else self._estimator.name
        return {
            **BudgetRecord.of(budget, name, estimate, thinking=knob).to_dict(usage=to_usage_metadata),
            "max_tokens": cap, "format": str(self.format), "prompt_version": PROMPT_VERSION,
        }

    def _needs_repair(self, reply: Any) -> bool:
        if not self.repair or not isinstance(reply, BaseMessage) or finish_reason(reply) != "length":
            return False
        return self.format in (QuestionFormat.CHAT, QuestionFormat.CLOZE) or not BRACKETED.search(str(reply.text))

    def _finish(self, header: dict[str, Any], answer: AIMessage, repair: Any) -> AIMessage:
        usage, content = answer.usage_metadata, answer.content
        outcome: dict[str, Any] = {"answer_usage": answer.usage_metadata, "repaired": False, "repair_usage": None}
        if isinstance(repair, AIMessage):
            content = f"{answer.text}{REPAIR_SEPARATOR}{repair.text}"
            usage = total_usage(usage, repair.usage_metadata)
            outcome.update(repaired=True, repair_usage=repair.usage_metadata)
        elif isinstance(repair, BaseException):
            outcome["repair_error"] = f"{type(repair).__name__}: {repair}"
        outcome["total_usage"] = total_usage(header["estimator_usage"], outcome["answer_usage"], outcome["repair_usage"])
        metadata = {**answer.response_metadata, "tale": {**header, **outcome}}
        return answer.model_copy(update={"content": content, "usage_metadata": usage, "response_metadata": metadata})

    def _flow(self, items: list[Item | Exception], children: list[Children]) -> PyGenerator[Any, Any, list[Any]]:
        """Yields `_Estimate` / `_Call` requests, receives their replies, returns one result per item."""
        results: list[Any] = list(items)
        ok = [i for i, it in enumerate(items) if isinstance(it, Item)]
        need = [i for i in ok if items[i].budget is None and self.budget is None]
        estimates: dict[int, Estimate] = {}
        if need:
            try:
                got = yield EstimateRequest([items[i].question for i in need], [children[i].estimate for i in need])
                if not isinstance(got, list) or len(got) != len(need):
                    n = len(got) if isinstance(got, list) else type(got).__name__
                    raise EstimatorError(f"the estimator returned {n} estimates for {len(need)} questions")
            except Exception as exc:  # the estimator's own failure
                try:
                    got = estimator_failure(self._estimator.name, exc, self.on_estimator_error, len(need))
                except EstimatorError as error:
                    for i in need:
                        results[i] = error
                    ok = [i for i in ok if i not in set(need)]
                    got = []
            estimates = dict(zip(need, got))
        headers, prompts, caps, extras = {}, {}, {}, {}
        target = thinking_target(self.model, self.thinking) if ok else None
        for i in ok:
            item, est = items[i], estimates.get(i)
            budget = self._budget(item, est)
            knob = self._knob(target, budget)
            if knob is not None and knob.applied:  # the knob carries the budget: no trigger, no TALE cap
                caps[i], extras[i], in_prompt = None, target.call_kwargs(knob), None
                headers[i] = self._header(budget, est, knob.max_tokens, knob)
            else:
                caps[i], extras[i], in_prompt = self._cap(budget.tokens), {}, budget.tokens
                headers[i] = self._header(budget, est, caps[i], knob)
            prompts[i] = budgeted_messages(item.messages, item.index, item.question, in_prompt,
                                           format=self.format, options=item.options)
        answers: dict[int, Any] = {}
        if ok:
            replies = yield ModelCall("answer", [prompts[i] for i in ok], [children[i].answer for i in ok],
                                      [caps[i] for i in ok], [headers[i] for i in ok], [extras[i] for i in ok])
            answers = dict(zip(ok, replies))
        fix = [i for i in ok if self._needs_repair(answers[i])]
        repairs: dict[int, Any] = {}
        if fix:
            cap = self.answer_reserve if accepts_max_tokens(self.model) else None
            turn = HumanMessage(repair_prompt(self.format))
            # a thinking model's repair carries its knob (whose cap holds the thinking) instead of the small cap
            replies = yield ModelCall("repair", [[*prompts[i], answers[i], turn] for i in fix],
                                      [children[i].repair for i in fix], [None if extras[i] else cap for i in fix],
                                      [headers[i] for i in fix], [extras[i] for i in fix])
            repairs = dict(zip(fix, replies))
        for i in ok:
            answer = answers[i]
            if isinstance(answer, BaseException):
                results[i] = answer
            elif not isinstance(answer, AIMessage):
                results[i] = TypeError(f"the model returned {type(answer).__name__}, not an AIMessage")
            else:
                results[i] = self._finish(headers[i], answer, repairs.get(i))
        return results

    # -- answering the flow's requests (driven by `core.flows`) -----------------------------------

    def _answer(self, request: EstimateRequest | ModelCall, kwargs: dict[str, Any]) -> list[Any]:
        if isinstance(request, EstimateRequest):
            with call_configs(request.configs):
                return self._estimator.estimate(request.questions)
        return call_model(self.model, request, kwargs)

    async def _aanswer(self, request: EstimateRequest | ModelCall, kwargs: dict[str, Any]) -> list[Any]:
        if isinstance(request, EstimateRequest):
            with call_configs(request.configs):
                return await self._estimator.aestimate(request.questions)
        return await acall_model(self.model, request, kwargs)

    def _stream_answer(self, request: EstimateRequest | ModelCall, kwargs: dict[str, Any]) -> Iterator[Any]:
        if isinstance(request, ModelCall):
            return stream_model(self.model, request, kwargs)
        return iter([Reply(self._answer(request, kwargs))])

    async def _astream_answer(self, request: EstimateRequest | ModelCall, kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        if isinstance(request, ModelCall):
            async for event in astream_model(self.model, request, kwargs):
                yield event
        else:
            yield Reply(await self._aanswer(request, kwargs))

    # -- Runnable interface -----------------------------------------------------------------------

    @staticmethod
    def _one(results: list[Any]) -> AIMessage:
        if isinstance(results[0], BaseException):
            raise results[0]
        return results[0]

    def _invoke(self, input: Any, run_manager: Any, config: RunnableConfig, **kwargs: Any) -> AIMessage:
        flow = self._flow([self._item(input)], [Children(config, run_manager)])
        return self._one(drive(flow, lambda request: self._answer(request, kwargs)))

    async def _ainvoke(self, input: Any, run_manager: Any, config: RunnableConfig, **kwargs: Any) -> AIMessage:
        flow = self._flow([self._item(input)], [Children(config, run_manager)])
        return self._one(await adrive(flow, lambda request: self._aanswer(request, kwargs)))

    def _stream(self, inputs: Iterator[Any], run_manager: Any, config: RunnableConfig,
                **kwargs: Any) -> Iterator[AIMessageChunk]:
        flow = self._flow([self._item(next(inputs))], [Children(config, run_manager)])
        for event in stream_drive(flow, lambda request: self._stream_answer(request, kwargs)):
            yield closing_chunk(self._one(event.value)) if isinstance(event, Reply) else event

    async def _astream(self, inputs: AsyncIterator[Any], run_manager: Any, config: RunnableConfig,
                       **kwargs: Any) -> AsyncIterator[AIMessageChunk]:
        flow = self._flow([self._item(await anext(inputs))], [Children(config, run_manager)])
        async for event in astream_drive(flow, lambda request: self._astream_answer(request, kwargs)):
            yield closing_chunk(self._one(event.value)) if isinstance(event, Reply) else event

    def invoke(self, input: TaleInput, config: RunnableConfig | None = None, **kwargs: Any) -> AIMessage:
        """Answer one input (see the class docstring)."""
        return self._call_with_config(self._invoke, input, config, **kwargs)

    async def ainvoke(self, input: TaleInput, config: RunnableConfig | None = None, **kwargs: Any) -> AIMessage:
        """Async twin of `invoke`."""
        return await self._acall_with_config(self._ainvoke, input, config, **kwargs)

    def _batch(self, inputs: list[Any], run_manager: list[Any], config: list[RunnableConfig], *,
               fail_fast: bool, **kwargs: Any) -> list[Any]:
        flow = self._flow(self._items(inputs, fail_fast), [Children(c, m) for c, m in zip(config, run_manager)])
        return drive(flow, lambda request: self._answer(request, kwargs))

    async def _abatch(self, inputs: list[Any], run_manager: list[Any], config: list[RunnableConfig], *,
                      fail_fast: bool, **kwargs: Any) -> list[Any]:
        flow = self._flow(self._items(inputs, fail_fast), [Children(c, m) for c, m in zip(config, run_manager)])
        return await adrive(flow, lambda request: self._aanswer(request, kwargs))

    def batch(self, inputs: list[TaleInput], config: RunnableConfig | list[RunnableConfig] | None = None, *,
              return_exceptions: bool = False, **kwargs: Any) -> list[AIMessage]:
        """One estimator batch and one answer batch (per distinct hard cap) for all inputs."""
        if not inputs:
            return []
        return self._batch_with_config(self._batch, list(inputs), config, return_exceptions=return_exceptions,
                                       fail_fast=not return_exceptions, **kwargs)

    async def abatch(self, inputs: list[TaleInput], config: RunnableConfig | list[RunnableConfig] | None = None, *,
                     return_exceptions: bool = False, **kwargs: Any) -> list[AIMessage]:
        """Async twin of `batch`."""
        if not inputs:
            return []
        return await self._abatch_with_config(self._abatch, list(inputs), config, return_exceptions=return_exceptions,
                                              fail_fast=not return_exceptions, **kwargs)

    def stream(self, input: TaleInput, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[AIMessageChunk]:
        """The budget first (a chunk with ``response_metadata["tale"]``), then the answer's chunks.

        The last chunk adds the usage totals; adding all chunks gives the `invoke` result's metadata.
        """
        yield from self._transform_stream_with_config(iter([input]), self._stream, config, **kwargs)

    async def astream(self, input: TaleInput, config: RunnableConfig | None = None,
                      **kwargs: Any) -> AsyncIterator[AIMessageChunk]:
        """Async twin of `stream`."""

        async def single() -> AsyncIterator[Any]:
            yield input

        async for chunk in self._atransform_stream_with_config(single(), self._astream, config, **kwargs):
            yield chunk
