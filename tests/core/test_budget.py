"""Tests for tale_integrations.core.budget: parsing estimator replies and clamping budgets."""

from __future__ import annotations

import math

import pytest

from tale_integrations.core.budget import Budget, BudgetPolicy, OnParseFailure, parse_budget

# --- parse_budget ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Budget: [[12]]", 12),
        ("[[12]] then [[40]]", 12),
        ("The answer needs about [[250]] tokens.", 250),
        ("[[0]]", 0),
        ("[[007]]", 7),
        ("Budget:[[40]]\nBudget: [[80]]", 40),
    ],
)
def test_parse_strict(text, expected):
    assert parse_budget(text) == expected
    assert parse_budget(text, lenient=False) == expected


def test_strict_form_preferred_over_earlier_lenient_form():
    assert parse_budget("Budget: 5, no wait [[ 6 ]], final: [[40]]") == 40
    assert parse_budget("[[1,000]] or maybe [[300]]") == 300


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[ 40 ]]", 40),
        ("[[1,000]]", 1000),
        ("[[ 12,345 ]]", 12345),
        ("Budget: 40", 40),
        ("budget=7", 7),
        ("BUDGET : 90 tokens", 90),
        ("Budget: 1,500", 1500),
    ],
)
def test_parse_lenient_forms(text, expected):
    assert parse_budget(text) == expected
    assert parse_budget(text, lenient=True) == expected
    assert parse_budget(text, lenient=False) is None


def test_lenient_brackets_preferred_over_label():
    assert parse_budget("Budget: 10 ... [[ 30 ]]") == 30


@pytest.mark.parametrize(
    "text",
    ["", "I cannot estimate this.", "[[budget]]", "[[]]", "[40]", "[[-5]]", "Budget: [[-5]]", "40 tokens", "[[4 0]]"],
)
def test_parse_no_number(text):
    assert parse_budget(text) is None


def test_negative_is_not_a_budget():
    result = parse_budget("[[-5]]")
    assert result is None
    assert result != -5


def test_forty_digit_number_reads_as_cap():
    assert parse_budget("[[" + "9" * 40 + "]]") == 10**9


def test_five_thousand_digit_number_reads_as_cap():
    # Python refuses int() on > 4300 digits; the parser must not try.
    assert parse_budget("Budget: [[" + "7" * 5000 + "]]") == 10**9
    assert parse_budget("Budget: " + "7" * 5000) == 10**9


def test_nine_digits_kept_and_leading_zeros_do_not_count():
    assert parse_budget("[[999999999]]") == 999_999_999
    assert parse_budget("[[" + "0" * 30 + "42]]") == 42


@pytest.mark.parametrize("bad", [None, 40, b"[[40]]", ["[[40]]"]])
def test_parse_non_str(bad):
    with pytest.raises(TypeError):
        parse_budget(bad)


# --- Budget ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [0, -1, True, 1.5, "40"])
def test_budget_rejects_bad_tokens(tokens):
    with pytest.raises(ValueError):
        Budget(tokens=tokens)


def test_budget_none_and_to_dict():
    assert Budget(tokens=None).tokens is None
    b = Budget(tokens=40, raw=33, source="zero-shot:m", adjusted="scaled")
    assert b.to_dict() == {"tokens": 40, "raw": 33, "source": "zero-shot:m", "adjusted": "scaled"}


# --- BudgetPolicy defaults and resolve ------------------------------------------------------


def test_policy_defaults():
    p = BudgetPolicy()
    assert p.min_budget == 20
    assert p.max_budget == 1024
    assert p.scale == 1.0
    assert p.fallback_budget == 128
    assert p.on_parse_failure == "default"
    assert p.on_parse_failure is OnParseFailure.DEFAULT


def test_resolve_in_range_unchanged():
    b = BudgetPolicy().resolve(77, source="est")
    assert b == Budget(tokens=77, raw=77, source="est", adjusted=None)


def test_resolve_below_floor_raised():
    b = BudgetPolicy().resolve(5, source="est")
    assert b.tokens == 20
    assert b.raw == 5
    assert b.source == "est"
    assert b.adjusted == "raised to floor"


def test_resolve_zero_raised_to_floor():
    assert BudgetPolicy().resolve(0, source="est").tokens == 20


def test_resolve_above_cap_lowered():
    b = BudgetPolicy().resolve(5000, source="est")
    assert (b.tokens, b.raw, b.adjusted) == (1024, 5000, "lowered to cap")


def test_resolve_scale_two():
    b = BudgetPolicy(scale=2).resolve(33, source="est")
    assert (b.tokens, b.raw, b.adjusted) == (66, 33, "scaled")


def test_resolve_scale_applies_ceil():
    b = BudgetPolicy(scale=1.5).resolve(33, source="est")
    assert b.tokens == 50  # 49.5 rounded up
    assert b.adjusted == "scaled"


def test_resolve_scale_then_cap():
    b = BudgetPolicy(scale=2).resolve(600, source="est")
    assert b.tokens == 1024
    assert b.adjusted == "scaled, lowered to cap"


def test_resolve_scale_then_floor():
    b = BudgetPolicy(scale=0.5).resolve(9, source="est")
    assert b.tokens == 20
    assert b.adjusted == "scaled, raised to floor"


def test_resolve_scale_has_no_float_off_by_one():
    # ceil(raw * scale) is meant in exact arithmetic: 100 * 1.1 = 110, not 111
    # (in binary floating point 100 * 1.1 == 110.00000000000001).
    assert BudgetPolicy(min_budget=1, scale=1.1).resolve(100, source="est").tokens == 110
    assert BudgetPolicy(min_budget=1, scale=0.07).resolve(100, source="est").tokens == 7


def test_resolve_limit_lowers_cap():
    b = BudgetPolicy().resolve(500, source="est", limit=300)
    assert b.tokens == 300
    assert b.adjusted == "lowered to cap"
    assert BudgetPolicy().resolve(200, source="est", limit=300).tokens == 200
    # a limit above max_budget does not raise the cap
    assert BudgetPolicy().resolve(5000, source="est", limit=10_000).tokens == 1024


def test_resolve_limit_below_floor_wins():
    b = BudgetPolicy().resolve(50, source="est", limit=8)
    assert b.tokens == 8
    assert BudgetPolicy().resolve(3, source="est", limit=8).tokens == 8


@pytest.mark.parametrize("limit", [0, -3])
def test_resolve_non_positive_limit_still_positive(limit):
    assert BudgetPolicy().resolve(50, source="est", limit=limit).tokens == 1
    assert BudgetPolicy().resolve(None, source="est", limit=limit).tokens == 1


def test_resolve_bad_limit_and_raw_types():
    with pytest.raises(TypeError):
        BudgetPolicy().resolve(50, source="est", limit=10.5)
    with pytest.raises(TypeError):
        BudgetPolicy().resolve(50.0, source="est")
    with pytest.raises(TypeError):
        BudgetPolicy().resolve(True, source="est")


def test_resolve_parse_failure_uses_fallback():
    b = BudgetPolicy().resolve(None, source="zero-shot:m")
    assert b == Budget(tokens=128, raw=None, source="fallback", adjusted="parse failed")


def test_resolve_parse_failure_fallback_respects_limit():
    assert BudgetPolicy().resolve(None, source="est", limit=50).tokens == 50


def test_resolve_parse_failure_vanilla():
    b = BudgetPolicy(on_parse_failure="vanilla").resolve(None, source="zero-shot:m")
    assert b.tokens is None
    assert b.raw is None
    assert b.source == "zero-shot:m"
    assert b.adjusted == "parse failed"


def test_resolve_failure_text_recorded():
    b = BudgetPolicy().resolve(None, source="est", failure="estimator failed")
    assert (b.tokens, b.source, b.adjusted) == (128, "fallback", "estimator failed")
    v = BudgetPolicy(on_parse_failure=OnParseFailure.VANILLA).resolve(None, source="est", failure="timeout")
    assert (v.tokens, v.adjusted) == (None, "timeout")


RAWS = [0, 1, 2, 19, 20, 21, 99, 1023, 1024, 1025, 10**6, 10**9 - 1, 10**9, 10**12, 10**40, -1, -1000]
POLICIES = [
    BudgetPolicy(),
    BudgetPolicy(min_budget=1, max_budget=1, fallback_budget=1),
    BudgetPolicy(min_budget=1, scale=0.001, fallback_budget=1),
    BudgetPolicy(scale=2.0),
    BudgetPolicy(min_budget=5, max_budget=10**9, fallback_budget=5, scale=3.7),
]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("limit", [None, 1, 7, 500])
def test_resolved_tokens_always_positive_and_capped(policy, limit):
    cap = policy.max_budget if limit is None else min(policy.max_budget, limit)
    for raw in [*RAWS, None]:
        b = policy.resolve(raw, source="est", limit=limit)
        assert isinstance(b.tokens, int) and not isinstance(b.tokens, bool), raw
        assert 1 <= b.tokens <= cap, (raw, b)
        if raw is not None and raw >= policy.min_budget and limit is None and policy.scale == 1:
            assert b.tokens == min(raw, policy.max_budget)


def test_resolve_huge_finite_scale_is_capped_not_a_crash():
    # scale=1e308 passes validation (finite, positive); raw * scale overflows to inf.
    policy = BudgetPolicy(scale=1e308)
    assert policy.resolve(2, source="est").tokens == 1024
    assert policy.resolve(10**9 - 1, source="est").tokens == 1024


# --- BudgetPolicy validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_budget": 0}, "min_budget"),
        ({"min_budget": -5}, "min_budget"),
        ({"min_budget": True}, "min_budget"),
        ({"max_budget": 0}, "max_budget"),
        ({"max_budget": 10, "min_budget": 20, "fallback_budget": 10}, "max_budget"),
        ({"max_budget": 10**9 + 1}, "max_budget"),
        ({"fallback_budget": 10}, "fallback_budget"),
        ({"fallback_budget": 2000}, "fallback_budget"),
        ({"fallback_budget": 0}, "fallback_budget"),
        ({"scale": 0}, "scale"),
        ({"scale": -1.0}, "scale"),
        ({"scale": math.inf}, "scale"),
        ({"scale": math.nan}, "scale"),
        ({"scale": True}, "scale"),
        ({"scale": "2"}, "scale"),
        ({"on_parse_failure": "skip"}, "on_parse_failure"),
        ({"on_parse_failure": "DEFAULT"}, "on_parse_failure"),
    ],
)
def test_policy_invalid_config_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        BudgetPolicy(**kwargs)


def test_policy_accepts_string_on_parse_failure():
    assert BudgetPolicy(on_parse_failure="vanilla").on_parse_failure is OnParseFailure.VANILLA


# --- fixed ----------------------------------------------------------------------------------


def test_fixed_keeps_caller_budget_below_floor():
    b = BudgetPolicy().fixed(5)
    assert b == Budget(tokens=5, raw=5, source="fixed", adjusted=None)


def test_fixed_ignores_cap():
    assert BudgetPolicy().fixed(4000, source="caller").tokens == 4000
    assert BudgetPolicy().fixed(4000, source="caller").source == "caller"


def test_fixed_lowered_only_by_limit():
    b = BudgetPolicy().fixed(300, limit=100)
    assert (b.tokens, b.raw, b.adjusted) == (100, 300, "lowered to cap")
    assert BudgetPolicy().fixed(50, limit=100).tokens == 50
    assert BudgetPolicy().fixed(50, limit=0).tokens == 1


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, None, "50"])
def test_fixed_rejects_bad_budget(bad):
    with pytest.raises(ValueError):
        BudgetPolicy().fixed(bad)


# --- to_dict --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [
        BudgetPolicy(),
        BudgetPolicy(min_budget=5, max_budget=300, scale=2.5, on_parse_failure="vanilla", fallback_budget=64),
    ],
)
def test_policy_to_dict_round_trip(policy):
    d = policy.to_dict()
    assert set(d) == {"min_budget", "max_budget", "scale", "on_parse_failure", "fallback_budget", "lenient_parse"}
    assert type(d["on_parse_failure"]) is str
    assert BudgetPolicy(**d) == policy
    assert BudgetPolicy(**d).to_dict() == d


def test_policy_to_dict_values():
    assert BudgetPolicy(scale=2).to_dict() == {
        "min_budget": 20,
        "max_budget": 1024,
        "scale": 2,
        "on_parse_failure": "default",
        "fallback_budget": 128,
        "lenient_parse": True,
    }
