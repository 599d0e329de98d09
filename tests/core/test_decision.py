"""tale_integrations.core.decision: the one budget decision and the estimator-error rule."""

from __future__ import annotations

import pytest

from tale_integrations.core.budget import BudgetPolicy
from tale_integrations.core.decision import decide_budget, estimator_failure
from tale_integrations.core.estimators import Estimate, EstimatorError

POLICY = BudgetPolicy(min_budget=20, max_budget=500, fallback_budget=128)


def test_a_callers_budget_wins_then_a_fixed_one_then_the_estimate():
    est = Estimate(raw=90)
    assert decide_budget(POLICY, estimate=est, estimator="e", caller=7, fixed=50).to_dict() == {
        "tokens": 7, "raw": 7, "source": "caller", "adjusted": None}
    assert decide_budget(POLICY, estimate=est, estimator="e", fixed=50).source == "fixed"
    assert decide_budget(POLICY, estimate=est, estimator="e").to_dict() == {
        "tokens": 90, "raw": 90, "source": "e", "adjusted": None}


def test_the_policy_and_the_models_limit_apply_to_estimates_and_only_the_limit_to_given_budgets():
    assert decide_budget(POLICY, estimate=Estimate(raw=5), estimator="e").adjusted == "raised to floor"
    assert decide_budget(POLICY, estimate=Estimate(raw=900), estimator="e", limit=300).tokens == 300
    assert decide_budget(POLICY, caller=5).tokens == 5  # a caller's number is not raised to the floor
    low = decide_budget(POLICY, fixed=400, limit=100)
    assert (low.tokens, low.raw, low.adjusted) == (100, 400, "lowered to cap")


def test_a_missing_number_records_whether_the_estimator_raised_or_its_reply_had_none():
    parsed = decide_budget(POLICY, estimate=Estimate(raw=None, reply="no idea"), estimator="e")
    assert (parsed.tokens, parsed.source, parsed.adjusted) == (128, "fallback", "parse failed")
    crashed = decide_budget(POLICY, estimate=Estimate.failed(TimeoutError("slow")), estimator="e")
    assert (crashed.tokens, crashed.adjusted) == (128, "estimator failed")
    # an error message that merely reads like a crash is not one (no string protocol)
    lookalike = Estimate(raw=None, error="estimator failed: but only in its words")
    assert decide_budget(POLICY, estimate=lookalike, estimator="e").adjusted == "parse failed"
    vanilla = BudgetPolicy(on_parse_failure="vanilla")
    assert decide_budget(vanilla, estimate=Estimate.failed(OSError()), estimator="e").tokens is None


def test_nothing_to_decide_from_is_an_error():
    with pytest.raises(ValueError, match="needs an estimate"):
        decide_budget(POLICY)


def test_estimator_failure_raises_with_the_cause_or_stands_in_per_question():
    cause = ConnectionError("down")
    with pytest.raises(EstimatorError, match="'zero-shot:m' failed.*on_estimator_error='fallback'") as info:
        estimator_failure("zero-shot:m", cause, "raise")
    assert info.value.__cause__ is cause
    out = estimator_failure("zero-shot:m", cause, "fallback", 3)
    assert len(out) == 3 and all(e.crashed and e.raw is None and "ConnectionError" in e.error for e in out)
