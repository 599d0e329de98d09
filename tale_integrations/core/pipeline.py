"""`TalePipeline`: estimate → clamp → prompt → generate, for one question or a batch.

The flow is written once, as a generator of model requests (`_Flow`), and driven by a short sync
runner (`invoke`, `batch`) and a short async runner (`ainvoke`, `abatch`). Each batch makes at most
two model calls: one batched estimator call and one batched answer call.
"""

from __future__ import annotations

import enum
from collections.abc import Generator as PyGenerator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .answers import AnswerKind, extract_answer
from .budget import Budget, BudgetPolicy
from .checks import check_positive_int
from .decision import ON_ESTIMATOR_ERROR, BudgetRecord, decide_budget, estimator_failure
from .estimators import BudgetEstimator, Estimate, EstimatorError, ZeroShotEstimator, get_estimator
from .flows import adrive, drive
from .generation import FinishReason, Generation, Generator, Usage
from .prompts import (
    SCRIPTS_SYSTEM_PROMPT,
    ConversationStyle,
    EstimationPrompt,
    PromptStyle,
    QuestionFormat,
    answer_messages,
    estimator_input,
    one_conversation_messages,
)

__all__ = ["Mode", "TalePipeline", "TaleResult"]


class Mode(enum.StrEnum):
    """How a question is asked."""

    #: The direct-answer baseline: no reasoning.
    DIRECT = "direct"
    #: Plain chain-of-thought, no budget.
    VANILLA = "vanilla"
    #: Budgeted chain-of-thought with the same budget for every question.
    FIXED = "fixed"
    #: TALE-EP: estimate a budget per question, then ask with it.
    TALE_EP = "tale-ep"


_ANSWER_KIND = {QuestionFormat.GSM8K: AnswerKind.NUMERIC, QuestionFormat.CLOZE: AnswerKind.NUMERIC,
                QuestionFormat.MULTIPLE_CHOICE: AnswerKind.CHOICE}


@dataclass(frozen=True, slots=True, kw_only=True)
class TaleResult:
    """The outcome of one question.

    Attributes:
        question: The question as given.
        text: The model's answer text.
        answer: The extracted final answer (``[[...]]`` or the last number for ``gsm8k``, a letter for
            ``multiple_choice``); None for ``chat`` or when nothing could be extracted.
        mode: The `Mode` used.
        budget: The resolved `Budget`, or None for direct and vanilla answers.
        estimator: Name of the estimator that produced the budget, if one ran.
        estimator_reply: The estimator's reply text, if one ran.
        estimator_usage: Token usage of the estimator call, if one ran.
        estimator_error: Why the estimator gave no number, when it gave none.
        usage: Token usage of the answer call.
        finish_reason: Why the answer ended (``"stop"`` or ``"length"``).
        model: The answering model's name.
        messages: The chat sent for the answer.
    """

    question: str
    text: str
    answer: str | None
    mode: Mode
    budget: Budget | None
    estimator: str | None
    estimator_reply: str | None
    estimator_usage: Usage | None
    usage: Usage
    finish_reason: FinishReason
    model: str
    messages: tuple[Mapping[str, str], ...]
    estimator_error: str | None = None

    @property
    def record(self) -> BudgetRecord:
        """The budget record (`core.decision.RECORD_KEYS`, the keys every integration writes)."""
        return BudgetRecord(budget=self.budget, estimator=self.estimator, estimator_reply=self.estimator_reply or None,
                            estimator_error=self.estimator_error, estimator_usage=self.estimator_usage)

    @property
    def total_usage(self) -> Usage:
        """Usage of every call made for this question (estimator included)."""
        return self.usage if self.estimator_usage is None else self.estimator_usage + self.usage

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable); the budget under `core.decision.RECORD_KEYS`."""
        return {
            "question": self.question,
            "text": self.text,
            "answer": self.answer,
            "mode": str(self.mode),
            **self.record.to_dict(),
            "usage": self.usage.to_dict(),
            "total_usage": self.total_usage.to_dict(),
            "finish_reason": self.finish_reason,
            "model": self.model,
            "messages": [dict(m) for m in self.messages],
        }


@dataclass(frozen=True, slots=True)
class _Item:
    question: str
    options: tuple[str, ...] | None
    budget: int | None


@dataclass(frozen=True, slots=True)
class _Estimate:
    """Request to the runner: estimate budgets for these questions."""

    questions: list[str]


@dataclass(frozen=True, slots=True)
class _Generate:
    """Request to the runner: generate answers for these chats."""

    prompts: list[list[dict[str, str]]]
    budgets: list[int | None]


def _item(value: Any, index: int) -> _Item:
    where = "question" if index < 0 else f"questions[{index}]"
    if isinstance(value, Mapping):
        if "question" not in value:
            raise ValueError(f"{where} is a mapping without a 'question' key")
        question, options, budget = value["question"], value.get("options"), value.get("budget")
    else:
        question, options, budget = value, None, None
    if not isinstance(question, str):
        raise TypeError(f"{where} must be a str (or a mapping with 'question'), got {type(question).__name__}")
    if not question.strip():
        raise ValueError(f"{where} is empty; pass the text of the question to answer")
    check_positive_int(f"{where}: budget", budget, optional=True)
    if options is not None:
        if isinstance(options, str) or not all(isinstance(o, str) for o in options):
            raise TypeError(f"{where}: options must be a list of strings")
        options = tuple(options)
    return _Item(question, options, budget)


class TalePipeline:
    """TALE over any `Generator`: estimate a budget, clamp it, prompt with it, generate.

    Args:
        generator: The answering model.
        mode: `Mode`: ``"tale-ep"`` (default, or ``"fixed"`` when ``budget`` is given), ``"vanilla"``,
            ``"direct"``.
        estimator: For ``tale-ep``: any `BudgetEstimator`, or a name (`get_estimator`): ``"learned"`` (the
            shipped learned estimator: no model call), ``"zero-shot"``, ``"learned:PATH"``, ``"fixed:N"``.
            Default the paper's `ZeroShotEstimator` on the answering model itself.
        budget: For ``fixed``: the budget for every question.
        policy: `BudgetPolicy` (floor, cap, scale α, fallback). Default ``BudgetPolicy()``, or
            ``BudgetPolicy.paper()`` with ``style="paper"``.
        format: `QuestionFormat` of the prompt: ``"gsm8k"`` (default), ``"multiple_choice"``, ``"cloze"``,
            ``"chat"``.
        style: `PromptStyle`: ``"default"``, or ``"paper"`` to reproduce the reference scripts: their
            system message on the answer call too, the estimator reading the question as they quote it
            (`core.prompts.estimator_input`), and ``BudgetPolicy.paper()`` unless ``policy`` is given.
            The paper's style is two calls, so ``conversation`` and ``system_prompt`` stay unset.
        conversation: `ConversationStyle`: ``"two_call"`` (the paper) or ``"one_conversation"``.
        max_tokens: Hard cap on the answer's output tokens (default 1024, the paper's). A budget is
            never larger than this cap or than the model's ``context_window``.
        temperature: Answer sampling temperature (None: the generator's default).
        stop: Stop strings for the answer call.
        system_prompt: Optional system message for the answer chat (two-call style).
        estimation_prompt: `EstimationPrompt` variant for the default estimator.
        on_estimator_error: ``"raise"`` (default: an `EstimatorError` naming the estimator) or
            ``"fallback"`` (apply the policy's parse-failure rule and record why).
    """

    def __init__(
        self,
        generator: Generator,
        *,
        mode: Mode | str | None = None,
        estimator: BudgetEstimator | str | None = None,
        budget: int | None = None,
        policy: BudgetPolicy | None = None,
        format: QuestionFormat | str = QuestionFormat.GSM8K,
        conversation: ConversationStyle | str = ConversationStyle.TWO_CALL,
        max_tokens: int | None = 1024,
        temperature: float | None = None,
        stop: Sequence[str] | None = None,
        system_prompt: str | None = None,
        estimation_prompt: EstimationPrompt | str = EstimationPrompt.SCRIPTS,
        on_estimator_error: str = "raise",
        style: PromptStyle | str = PromptStyle.DEFAULT,
    ) -> None:
        if not callable(getattr(generator, "generate", None)) or not callable(getattr(generator, "agenerate", None)):
            raise TypeError(
                f"generator must be a Generator (with generate and agenerate), got {type(generator).__name__}"
            )
        self.mode = Mode(mode) if mode is not None else (Mode.FIXED if budget is not None else Mode.TALE_EP)
        if self.mode is Mode.FIXED and budget is None:
            raise ValueError("mode='fixed' needs budget=N (a positive int)")
        if budget is not None and self.mode is not Mode.FIXED:
            raise ValueError(f"budget is only used with mode='fixed', not mode={str(self.mode)!r}")
        if estimator is not None and self.mode is not Mode.TALE_EP:
            raise ValueError(f"estimator is only used with mode='tale-ep', not mode={str(self.mode)!r}")
        check_positive_int("max_tokens", max_tokens, optional=True)
        if on_estimator_error not in ON_ESTIMATOR_ERROR:
            raise ValueError(f"on_estimator_error must be 'raise' or 'fallback', got {on_estimator_error!r}")
        self.conversation = ConversationStyle(conversation)
        if self.conversation is ConversationStyle.ONE_CONVERSATION and self.mode is not Mode.TALE_EP:
            raise ValueError("conversation='one_conversation' needs mode='tale-ep'")
        self.style = PromptStyle(style)
        if self.style is PromptStyle.PAPER:
            if self.conversation is not ConversationStyle.TWO_CALL:
                raise ValueError("style='paper' asks in two calls, as the paper does; drop conversation=")
            if system_prompt is not None:
                raise ValueError(f"style='paper' sends the scripts' system message {SCRIPTS_SYSTEM_PROMPT!r}; "
                                 "drop system_prompt=")
            system_prompt = SCRIPTS_SYSTEM_PROMPT
        self.generator = generator
        if policy is None:
            policy = BudgetPolicy.paper() if self.style is PromptStyle.PAPER else BudgetPolicy()
        self.policy = policy
        self.budget = None if budget is None else self.policy.fixed(budget).tokens
        self.format = QuestionFormat(format)
        self.estimation_prompt = EstimationPrompt(estimation_prompt)
        lenient = self.policy.lenient_parse
        if self.mode is Mode.TALE_EP and estimator is None:
            estimator = ZeroShotEstimator(generator, prompt=self.estimation_prompt, lenient=lenient)
        elif isinstance(estimator, str):
            estimator = get_estimator(estimator, generator, lenient=lenient)
        elif not lenient and getattr(estimator, "lenient", False) is True:
            raise ValueError("the policy parses budgets strictly (lenient_parse=False) but the estimator is "
                             "lenient; pass ZeroShotEstimator(..., lenient=False)")
        self.estimator = estimator
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.stop = list(stop) if stop else None
        self.system_prompt = system_prompt
        self.on_estimator_error = on_estimator_error

    # -- the flow, written once ---------------------------------------------------------------

    def _limit(self) -> int | None:
        caps = [c for c in (self.max_tokens, getattr(self.generator, "context_window", None)) if isinstance(c, int)]
        return min(caps) if caps else None

    def _budgets(self, items: list[_Item], estimates: list[Estimate] | None) -> list[Budget | None]:
        limit = self._limit()
        pending = iter(estimates or [])
        budgets: list[Budget | None] = []
        for item in items:
            if self.mode is Mode.DIRECT or (self.mode is Mode.VANILLA and item.budget is None):
                budgets.append(None)
            elif item.budget is not None or self.mode is Mode.FIXED:
                budgets.append(decide_budget(self.policy, caller=item.budget, fixed=self.budget, limit=limit))
            else:
                budgets.append(decide_budget(self.policy, estimate=next(pending), estimator=self.estimator.name,
                                             limit=limit))
        return budgets

    def _messages(self, item: _Item, budget: Budget | None, estimate: Estimate | None) -> list[dict[str, str]]:
        tokens = None if budget is None else budget.tokens
        if self.conversation is ConversationStyle.ONE_CONVERSATION and estimate is not None:
            reply = estimate.reply or (f"Budget: [[{estimate.raw}]]" if estimate.raw is not None else "")
            return one_conversation_messages(
                item.question, reply, budget=tokens, format=self.format, options=item.options,
                variant=self.estimation_prompt,
            )
        return answer_messages(
            item.question, budget=tokens, format=self.format, options=item.options,
            system_prompt=self.system_prompt, direct=self.mode is Mode.DIRECT,
        )

    def _estimate_error(self, exc: BaseException, n: int) -> list[Estimate]:
        name = getattr(self.estimator, "name", type(self.estimator).__name__)
        return estimator_failure(name, exc, self.on_estimator_error, n)

    def _flow(self, items: list[_Item]) -> PyGenerator[Any, Any, list[TaleResult]]:
        needs = [i for i, it in enumerate(items) if self.mode is Mode.TALE_EP and it.budget is None]
        estimates: list[Estimate] = []
        if needs:
            questions = [estimator_input(items[i].question, format=self.format, options=items[i].options,
                                         style=self.style) for i in needs]
            try:
                estimates = yield _Estimate(questions)
            except Exception as exc:  # the estimator's own failure, not a bug here
                estimates = self._estimate_error(exc, len(needs))
            if not isinstance(estimates, list) or len(estimates) != len(needs):
                got = len(estimates) if isinstance(estimates, list) else type(estimates).__name__
                raise EstimatorError(f"the budget estimator returned {got} estimates for {len(needs)} questions")
        by_index: dict[int, Estimate] = dict(zip(needs, estimates))
        budgets = self._budgets(items, estimates)
        prompts = [self._messages(it, b, by_index.get(i)) for i, (it, b) in enumerate(zip(items, budgets))]
        tokens = [None if b is None else b.tokens for b in budgets]
        generations: list[Generation] = yield _Generate(prompts, tokens)
        if len(generations) != len(prompts):
            raise RuntimeError(f"the generator returned {len(generations)} answers for {len(prompts)} prompts")
        kind = _ANSWER_KIND.get(self.format)
        results = []
        for i, (item, budget, prompt, gen) in enumerate(zip(items, budgets, prompts, generations)):
            est = by_index.get(i)
            results.append(
                TaleResult(
                    question=item.question,
                    text=gen.text,
                    answer=None if kind is None else extract_answer(gen.text, kind),
                    mode=self.mode,
                    budget=budget,
                    estimator=None if est is None else self.estimator.name,
                    estimator_reply=None if est is None else est.reply,
                    estimator_usage=None if est is None else est.usage,
                    estimator_error=None if est is None else est.error,
                    usage=gen.usage,
                    finish_reason=gen.finish_reason,
                    model=gen.model,
                    messages=tuple(prompt),
                )
            )
        return results

    def _settings(self, request: _Generate) -> dict[str, Any]:
        settings: dict[str, Any] = {"max_tokens": self.max_tokens, "stop": self.stop, "temperature": self.temperature}
        # Backends holding answers to their budget while decoding (HFGenerator with enforce_budget)
        # receive the budgets; others only see them in the prompt.
        if getattr(self.generator, "accepts_budgets", False) and getattr(self.generator, "enforcement", None):
            settings["budgets"] = request.budgets
            settings["answer_format"] = self.format
        return settings

    # -- runners: `core.flows` drives `_flow`, answering its requests with these ---------------

    def _answer(self, request: _Estimate | _Generate) -> list[Any]:
        if isinstance(request, _Estimate):
            return self.estimator.estimate(request.questions)
        return self.generator.generate(request.prompts, **self._settings(request))

    async def _aanswer(self, request: _Estimate | _Generate) -> list[Any]:
        if isinstance(request, _Estimate):
            return await self.estimator.aestimate(request.questions)
        return await self.generator.agenerate(request.prompts, **self._settings(request))

    def batch(self, questions: Sequence[str | Mapping[str, Any]]) -> list[TaleResult]:
        """Answer several questions with one batched estimator call and one batched answer call.

        Each question is a string, or a mapping with ``question`` and optional ``options`` (for
        multiple choice) and ``budget`` (a per-question budget that skips estimation).
        """
        items = self._items(questions)
        if not items:
            return []
        return drive(self._flow(items), self._answer)

    async def abatch(self, questions: Sequence[str | Mapping[str, Any]]) -> list[TaleResult]:
        """Async twin of `batch`."""
        items = self._items(questions)
        if not items:
            return []
        return await adrive(self._flow(items), self._aanswer)

    def invoke(
        self, question: str, *, options: Sequence[str] | None = None, budget: int | None = None
    ) -> TaleResult:
        """Answer one question.

        Args:
            question: The question text.
            options: Answer options, for the ``multiple_choice`` format.
            budget: A budget for this call only (skips estimation); not allowed in ``direct`` mode.
        """
        return self.batch([self._single(question, options, budget)])[0]

    async def ainvoke(
        self, question: str, *, options: Sequence[str] | None = None, budget: int | None = None
    ) -> TaleResult:
        """Async twin of `invoke`."""
        return (await self.abatch([self._single(question, options, budget)]))[0]

    def _single(self, question: Any, options: Sequence[str] | None, budget: int | None) -> Any:
        if isinstance(question, Mapping):
            return question
        return {"question": question, "options": options, "budget": budget} if (options or budget) else question

    def _items(self, questions: Any) -> list[_Item]:
        if isinstance(questions, (str, bytes, Mapping)) or not isinstance(questions, Sequence):
            raise TypeError(f"questions must be a list, got {type(questions).__name__}; use invoke() for one question")
        items = [_item(q, i if len(questions) > 1 else -1) for i, q in enumerate(questions)]
        for it in items:
            if it.budget is not None and self.mode is Mode.DIRECT:
                raise ValueError("a per-call budget cannot be used with mode='direct'")
            if self.format is QuestionFormat.MULTIPLE_CHOICE and not it.options:
                raise ValueError("format='multiple_choice' needs options for every question")
        return items
