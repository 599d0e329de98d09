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
"""

from __future__ import annotations

from .budget import Budget, BudgetPolicy
from .estimators import Estimate, EstimatorError

__all__ = ["ON_ESTIMATOR_ERROR", "decide_budget", "estimator_failure"]

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
