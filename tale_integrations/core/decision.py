"""The budget decision, in one place: a question's estimate (or a given budget) becomes its `Budget`.

Every integration (`TalePipeline`, `TaleRunnable`, `TaleBudgetMiddleware`, `TaleQueryTransform`,
`tale serve`) decides a budget with `decide_budget` and handles an estimator that raised with
`estimator_failure`, so the rules below hold everywhere:

- a budget the caller gives for one question wins, then a fixed budget for every question; both are
  kept as given unless the model's limit is lower (`BudgetPolicy.fixed`);
- otherwise the estimate goes through the policy (`BudgetPolicy.resolve`: scale, floor, cap, the
  model's limit); an estimate without a number applies the policy's parse-failure rule, recorded as
  ``"estimator failed"`` when the estimator raised and ``"parse failed"`` when its reply had no budget;
- an estimator that raises stops the call (`EstimatorError`, naming the estimator and the way out)
  unless the caller chose ``on_estimator_error="fallback"``.

What was decided is recorded with one set of keys everywhere (`BudgetRecord.to_dict`, `RECORD_KEYS`):

| key | meaning |
|---|---|
| ``budget`` | the budget written into the prompt; None for plain chain-of-thought |
| ``budget_raw`` | the estimator's number (or the given budget) before scaling and clamping |
| ``budget_source`` | the estimator's name, ``"caller"``, ``"fixed"`` or ``"fallback"`` |
| ``budget_adjusted`` | why ``budget`` differs from ``budget_raw``: ``"scaled"``, ``"raised to floor"``, ``"lowered to cap"``, ``"parse failed"``, ``"estimator failed"`` (comma-joined) |
| ``estimator`` | the estimator's name, when one ran |
| ``estimator_reply`` | its reply text, when a model was asked |
| ``estimator_error`` | why it gave no number, when it gave none |
| ``estimator_usage`` | the tokens of its call, in the integration's own usage form |
| ``budget_via`` | ``"prompt"`` (the paper's trigger), ``"thinking"`` (a thinking model's knob), None: no budget |
| ``thinking`` | the knob, `core.thinking.ThinkingKnob.to_dict` (request ``fields``, ``adjusted``...), or None |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .budget import Budget, BudgetPolicy
from .estimators import Estimate, EstimatorError
from .generation import Usage
from .thinking import ThinkingKnob

__all__ = ["ON_ESTIMATOR_ERROR", "RECORD_KEYS", "BudgetRecord", "decide_budget", "estimator_failure"]

#: The keys of every budget record, in order.
RECORD_KEYS = ("budget", "budget_raw", "budget_source", "budget_adjusted", "estimator", "estimator_reply",
               "estimator_error", "estimator_usage", "budget_via", "thinking")


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetRecord:
    """What was decided for one question and what the estimator did (see the module's table).

    Attributes:
        budget: The decided `Budget`, or None when no budget applies (direct or vanilla asking).
        estimator: The estimator's name, when one ran.
        estimator_reply: Its reply text (None when empty).
        estimator_error: Why it gave no number.
        estimator_usage: The tokens of its call.
        thinking: The thinking knob the budget was sent through (`core.thinking.thinking_knob`), or None
            when it went into the prompt.
    """

    budget: Budget | None
    estimator: str | None = None
    estimator_reply: str | None = None
    estimator_error: str | None = None
    estimator_usage: Usage | None = None
    thinking: ThinkingKnob | None = None

    @classmethod
    def of(cls, budget: Budget | None, estimator: str | None = None, estimate: Estimate | None = None, *,
           thinking: ThinkingKnob | None = None) -> BudgetRecord:
        """The record of ``budget``, and of ``estimate`` when the estimator named ``estimator`` ran."""
        if estimate is None:
            return cls(budget=budget, thinking=thinking)
        return cls(budget=budget, estimator=estimator, estimator_reply=estimate.reply or None,
                   estimator_error=estimate.error, estimator_usage=estimate.usage, thinking=thinking)

    @property
    def budget_via(self) -> str | None:
        """``"thinking"`` when a knob carries the budget, ``"prompt"`` when the prompt does, else None."""
        if self.thinking is not None and self.thinking.applied:
            return "thinking"
        return "prompt" if self.budget is not None and self.budget.tokens is not None else None

    def to_dict(self, usage: Callable[[Usage], Any] = Usage.to_dict) -> dict[str, Any]:
        """The record under `RECORD_KEYS`; ``usage`` writes the estimator's usage in a framework's form."""
        b = self.budget
        return {
            "budget": None if b is None else b.tokens,
            "budget_raw": None if b is None else b.raw,
            "budget_source": None if b is None else b.source,
            "budget_adjusted": None if b is None else b.adjusted,
            "estimator": self.estimator,
            "estimator_reply": self.estimator_reply,
            "estimator_error": self.estimator_error,
            "estimator_usage": None if self.estimator_usage is None else usage(self.estimator_usage),
            "budget_via": self.budget_via,
            "thinking": None if self.thinking is None else self.thinking.to_dict(),
        }

#: The choices for what an estimator that raises does to the call.
ON_ESTIMATOR_ERROR = ("raise", "fallback")


def decide_budget(
    policy: BudgetPolicy,
    *,
    estimate: Estimate | None = None,
    estimator: str | None = None,
    caller: int | None = None,
    fixed: int | None = None,
    limit: int | None = None,
) -> Budget:
    """The budget of one question.

    Args:
        policy: The `BudgetPolicy`.
        estimate: The estimator's `Estimate` (needed unless ``caller`` or ``fixed`` is given).
        estimator: The estimator's name, recorded as the budget's source.
        caller: A budget the caller gave for this question (source ``"caller"``).
        fixed: The same budget for every question (source ``"fixed"``).
        limit: The model's own limit (its output cap, the room in its context); no budget exceeds it.
    """
    if caller is not None:
        return policy.fixed(caller, source="caller", limit=limit)
    if fixed is not None:
        return policy.fixed(fixed, limit=limit)
    if estimate is None:
        raise ValueError("decide_budget needs an estimate, a caller's budget or a fixed budget")
    source = estimator or "estimator"
    if estimate.raw is None:
        failure = "estimator failed" if estimate.crashed else None
        return policy.resolve(None, source=source, limit=limit, failure=failure)
    return policy.resolve(estimate.raw, source=source, limit=limit)


def estimator_failure(name: str, exc: BaseException, on_error: str, count: int = 1) -> list[Estimate]:
    """What an estimator that raised ``exc`` gives: an `EstimatorError`, or ``count`` failed estimates.

    Raises:
        EstimatorError: ``on_error`` is ``"raise"``; it names the estimator and ``exc`` (its cause).
    """
    if on_error == "raise":
        raise EstimatorError(
            f"the budget estimator {name!r} failed: {exc!r}; pass on_estimator_error='fallback' "
            "to answer with the policy's fallback instead"
        ) from exc
    return [Estimate.failed(exc) for _ in range(count)]
