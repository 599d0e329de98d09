"""TALE on the server side: ``tale_budget`` rewrites the last user message into the budgeted prompt,
or, on a model whose chat template has a thinking block, becomes its thinking budget.

``tale_budget: N`` uses N as given; ``tale_budget: "auto"`` first estimates one: by default by asking
the served model itself (`ZeroShotEstimator`, the paper's TALE-EP; its call joins the running batch),
or with the estimator the server was started with (``tale serve --estimator learned``: no model call),
and clamps it with `BudgetPolicy().resolve`, capped by the request's output limit. The prompt text
comes from ``core.prompts.question_prompt(..., format="chat")``: no prompt string lives here.

On a thinking model the budget goes through the knob table's local row (`core.thinking.thinking_knob`):
it is the thinking block's budget, held while decoding, and the prompt stays as the client sent it
(``budget_via: "thinking"`` in the ``tale`` object). When the request's output cap cannot hold it
with the answer's reserve, the prompt carries it instead and the knob's ``adjusted`` says why.

The response's ``usage`` is the answer call only; the estimator's usage is reported inside the
``tale`` object, so a client can add the two (as `TaleResult.total_usage` does).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ..core.budget import Budget, BudgetPolicy
from ..core.decision import BudgetRecord, decide_budget
from ..core.estimators import BudgetEstimator, ZeroShotEstimator
from ..core.generation import Usage
from ..core.prompts import QuestionFormat, question_prompt
from ..core.thinking import ThinkingKnob, ThinkingModel, ThinkingPolicy, thinking_knob
from .batcher import BatchedGenerator, ContinuousBatcher, MicroBatcher

__all__ = ["TalePlan", "openai_usage", "plan_budget"]


def openai_usage(usage: Usage) -> dict[str, Any]:
    """A `Usage` in the OpenAI shape, with the thinking tokens (part of ``completion_tokens``) under
    ``completion_tokens_details.reasoning_tokens``."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class TalePlan:
    """The budget chosen for a request and the conversation that carries it.

    Attributes:
        messages: The conversation with its last user message rewritten (unchanged when the
            budget is None).
        budget: The resolved `Budget`.
        estimator: The estimator's name when one ran.
        estimator_reply: Its reply text.
        estimator_usage: Its token usage.
        estimator_error: Why it gave no number, when it gave none.
        enforce: Whether the answer is held to the budget while decoding.
        thinking: The thinking knob that carries the budget instead of the prompt (`core.thinking`),
            or one that could not be applied (its ``adjusted`` says why); None when none was tried.
    """

    messages: list[dict[str, Any]]
    budget: Budget
    estimator: str | None = None
    estimator_reply: str | None = None
    estimator_usage: Usage | None = None
    estimator_error: str | None = None
    enforce: bool = False
    thinking: ThinkingKnob | None = None

    @property
    def thinks(self) -> bool:
        """Whether the budget went to the thinking block (the knob was applied) instead of the prompt."""
        return self.thinking is not None and self.thinking.applied

    @property
    def thinking_budget(self) -> int | None:
        """The thinking budget the knob carries, or None."""
        return self.thinking.budget if self.thinks else None  # type: ignore[union-attr]

    @property
    def enforced_budget(self) -> int | None:
        """The budget to pass to the backend's answer enforcer, or None (none asked, or the budget is
        the thinking block's)."""
        return self.budget.tokens if self.enforce and not self.thinks else None

    def to_dict(self) -> dict[str, Any]:
        """The ``tale`` object of a response: the budget record (`core.decision.RECORD_KEYS`), usage in
        OpenAI's form, and whether the budget was enforced."""
        record = BudgetRecord(budget=self.budget, estimator=self.estimator,
                              estimator_reply=self.estimator_reply or None, estimator_error=self.estimator_error,
                              estimator_usage=self.estimator_usage, thinking=self.thinking)
        return {**record.to_dict(usage=openai_usage), "enforced": self.enforce or self.thinks}


async def plan_budget(
    messages: list[dict[str, Any]],
    budget: int | str,
    *,
    batcher: ContinuousBatcher | MicroBatcher,
    limit: int,
    enforce: bool = False,
    cancel: threading.Event | None = None,
    policy: BudgetPolicy | None = None,
    estimator: BudgetEstimator | None = None,
    thinking: ThinkingModel | None = None,
    thinking_policy: ThinkingPolicy | None = None,
    model: str = "",
) -> TalePlan:
    """Resolve ``tale_budget`` and rewrite the last user message with it, or, on a model that thinks,
    hand it to the thinking block.

    Args:
        messages: The request's conversation (not modified).
        budget: A positive int, or ``"auto"`` to estimate one with the served model.
        batcher: Where the estimator's call is queued.
        limit: The request's output cap; an estimated budget is never above it.
        enforce: Hold the answer to the budget while decoding.
        cancel: The request's cancel event (the estimate stops when the client goes away).
        policy: Clamping rules for estimates (default `BudgetPolicy()`).
        estimator: The estimator for ``"auto"`` (default: zero-shot on the served model, asked to answer
            without thinking when ``thinking`` is given).
        thinking: The knob-table row (`core.thinking`) of a model whose chat template has a thinking
            block: the budget becomes its thinking budget (`thinking_knob`, within ``limit`` and the
            policy's answer reserve), and the prompt is left as it is; if the knob cannot hold it, the
            prompt carries it after all (the knob's ``adjusted`` says why).
        thinking_policy: The answer reserve the knob keeps (default `ThinkingPolicy()`).
        model: The served model's name (recorded in the knob).
    """
    policy = policy or BudgetPolicy()
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    question = messages[last]["content"]
    name = reply = usage = error = None
    if budget == "auto":
        # on a model that thinks, the estimate is asked for without thinking (its cap is for the number)
        chosen = estimator or ZeroShotEstimator(BatchedGenerator(batcher, cancel=cancel,
                                                                 thinking_budget=None if thinking is None else 0))
        [estimate] = await chosen.aestimate([question])
        name, reply, usage, error = chosen.name, estimate.reply, estimate.usage, estimate.error
        resolved = decide_budget(policy, estimate=estimate, estimator=chosen.name, limit=limit)
    else:
        assert isinstance(budget, int)
        resolved = decide_budget(policy, caller=budget)
    knob = None
    if thinking is not None and resolved.tokens is not None:
        knob = thinking_knob(thinking, resolved, model=model, policy=thinking_policy, limit=limit)
    rewritten = [dict(m) for m in messages]
    if resolved.tokens is not None and (knob is None or not knob.applied):
        rewritten[last] = {"role": "user", "content": question_prompt(question, budget=resolved.tokens,
                                                                      format=QuestionFormat.CHAT)}
    return TalePlan(
        messages=rewritten, budget=resolved, estimator=name, estimator_reply=reply,
        estimator_usage=usage, estimator_error=error, enforce=enforce and resolved.tokens is not None,
        thinking=knob,
    )
