"""tale_integrations.eval.metrics and .prices, against values computed by hand."""

from __future__ import annotations

import json
import math

import pytest

from tale_integrations.core.answers import numbers_in
from tale_integrations.eval.metrics import (
    add_reductions,
    bootstrap_interval,
    copies_format_example,
    e3,
    expense,
    restates_question,
    summarize,
)
from tale_integrations.eval.prices import DEFAULT_PRICES, Price, PriceTable, missing_price_message


def rec(correct, out, *, budget=None, finish="stop", answer="1", est=None, model="gpt-4o-mini", text="x"):
    return {
        "correct": correct, "output_tokens": out, "input_tokens": 100, "counter": "reported", "budget": budget,
        "finish_reason": finish, "answer": answer, "model": model, "text": text,
        "usage": {"input_tokens": 100, "output_tokens": out, "cached_input_tokens": 0},
        "estimator_usage": est, "estimator_model": model if est else None,
    }


HEADER = {"dataset": "d", "method": "tale-ep", "label": "TALE-EP", "model": "gpt-4o-mini"}
RECORDS = [
    rec(True, 10, budget=20, est={"input_tokens": 50, "output_tokens": 4}),
    rec(False, 30, budget=20, finish="length", answer=None),
    rec(True, 20, budget=40),
    rec(True, 40),
]


def test_summary_by_hand():
    m = summarize(RECORDS, HEADER)
    assert (m.dataset, m.method, m.label, m.model, m.n) == ("d", "tale-ep", "TALE-EP", "gpt-4o-mini", 4)
    assert m.accuracy == 0.75
    assert m.output_tokens == 25.0  # (10 + 30 + 20 + 40) / 4
    assert m.counter == "reported" and m.input_tokens == 100.0
    assert (m.estimator_input_tokens, m.estimator_output_tokens) == (50.0, 4.0)  # the one estimator call
    # Budget adherence over the 3 budgeted answers: 10<=20 yes, 30<=20 no, 20<=40 yes.
    assert m.budget_n == 3 and m.within_budget == pytest.approx(2 / 3)
    assert m.budget_abs_deviation == pytest.approx((10 / 20 + 10 / 20 + 20 / 40) / 3)  # 0.5
    assert m.budget_signed_deviation == pytest.approx((-0.5 + 0.5 - 0.5) / 3)  # -1/6
    assert m.truncation_rate == 0.25 and m.empty_rate == 0.25
    assert m.e3 == pytest.approx(0.75**2 / 25)  # 0.0225
    # gpt-4o-mini: $0.15 in, $0.60 out per 1M. Answers: 4 x 100 in, 100 out -> (60 + 60) / 1e6 over 4 questions.
    assert m.expense_answer == pytest.approx(30e-6)
    # One estimator call: 50 in, 4 out -> (7.5 + 2.4) / 1e6, over 4 questions.
    assert m.expense_estimator == pytest.approx(9.9e-6 / 4)
    assert m.expense == pytest.approx(30e-6 + 2.475e-6)
    assert m.notes == () and m.token_reduction is None and m.oracle is None


def test_recount_with_a_token_counter():
    class Words:
        name = "words"

        def count(self, text):
            return len(text.split())

    records = [rec(True, 999, text="one two three", budget=2), rec(True, 999, text="one")]
    m = summarize(records, HEADER, counter=Words())
    assert m.counter == "words" and m.output_tokens == 2.0 and m.within_budget == 0.0  # 3 > 2


def test_counter_label_when_records_disagree():
    records = [rec(True, 1), dict(rec(True, 1), counter="hf:x")]
    assert summarize(records, HEADER).counter == "mixed"


def test_unknown_price_gives_na_and_says_how_to_add_one():
    m = summarize([rec(True, 10, model="my-local-model")], dict(HEADER, model="my-local-model"))
    assert m.expense is None and m.expense_answer is None
    assert m.notes == (missing_price_message("my-local-model"),)
    assert "'my-local-model'" in m.notes[0] and "--prices FILE" in m.notes[0]
    assert '{"my-local-model": {"input": 0.15, "output": 0.60}}' in m.notes[0]
    priced = summarize([rec(True, 10, model="my-local-model")], HEADER,
                       prices=PriceTable({"my-local-model": {"input": 0, "output": 0}}))
    assert priced.expense == 0.0 and priced.notes == ()


def test_estimator_on_another_model_is_priced_at_that_model():
    record = rec(True, 0, est={"input_tokens": 1_000_000, "output_tokens": 0})
    record["usage"] = {"input_tokens": 0, "output_tokens": 0}
    record["estimator_model"] = "gpt-4o"
    answer, estimator, missing = expense([record], PriceTable())
    assert (answer, estimator, missing) == (0.0, 2.50, set())
    record["estimator_model"] = "mystery"
    answer, estimator, missing = expense([record], PriceTable())
    assert (answer, estimator, missing) == (0.0, None, {"mystery"})


def test_oracle_status_counts():
    records = [dict(rec(True, 1), oracle_status=s) for s in ("found", "found", "missing")]
    assert summarize(records, dict(HEADER, method="oracle")).oracle == {"found": 2, "missing": 1}


def test_bootstrap_interval():
    assert bootstrap_interval([1.0] * 10) == (1.0, 1.0)
    assert bootstrap_interval([0.0] * 10) == (0.0, 0.0)
    # Two values: resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the 2.5th and 97.5th
    # percentiles of 1,000 resamples are 0 and 1.
    assert bootstrap_interval([0.0, 1.0]) == (0.0, 1.0)
    values = [1.0] * 70 + [0.0] * 30
    low, high = bootstrap_interval(values, seed=3)
    assert bootstrap_interval(values, seed=3) == (low, high)  # seeded: repeatable
    assert 0.58 < low < 0.7 < high < 0.8  # normal approximation: 0.7 +- 1.96 * 0.0458 = [0.61, 0.79]
    assert all(math.isnan(x) for x in bootstrap_interval([]))
    with pytest.raises(ValueError):
        bootstrap_interval(values, confidence=1.5)


def test_e3():
    assert e3(0.5, 10) == 0.025 and e3(1.0, 0) is None


def test_token_reduction_vs_vanilla():
    vanilla = summarize([rec(True, 100)], dict(HEADER, method="vanilla"))
    tale = summarize([rec(True, 25)], HEADER)
    other = summarize([rec(True, 25)], dict(HEADER, dataset="other"))
    out = add_reductions([vanilla, tale, other])
    assert [m.token_reduction for m in out] == [0.0, 0.75, None]


def test_to_dict_is_json_with_nan_as_null():
    m = summarize([], HEADER)
    d = m.to_dict()
    assert d["n"] == 0 and d["accuracy"] is None and d["accuracy_low"] is None
    json.dumps(d)


# -- prices -----------------------------------------------------------------------------------------

def test_price_cost_with_cached_input():
    price = Price(input=1.0, output=2.0, cached_input=0.5)
    usage = {"input_tokens": 1000, "cached_input_tokens": 400, "output_tokens": 100}
    assert price.cost(usage) == pytest.approx((600 * 1 + 400 * 0.5 + 100 * 2) / 1e6)
    assert Price(input=1.0, output=2.0).cost(usage) == pytest.approx((1000 + 200) / 1e6)
    with pytest.raises(ValueError, match="non-negative"):
        Price(input=-1, output=0)


@pytest.mark.parametrize(("model", "expected"), [
    ("gpt-4o-mini", "gpt-4o-mini"),
    ("GPT-4o-mini", "gpt-4o-mini"),
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ("gpt-4o-2024-08-06", "gpt-4o"),
    ("openai:gpt-4.1-mini", "gpt-4.1-mini"),
    ("openai/gpt-4o", "gpt-4o"),
    ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "gpt-4o-mini"),
    ("o3-mini-2025-01-31", "o3-mini"),
])
def test_price_lookup(model, expected):
    assert PriceTable().lookup(model) == DEFAULT_PRICES[expected]


def test_price_lookup_misses():
    table = PriceTable()
    assert table.lookup("SmolLM2-135M-Instruct") is None and table.lookup(None) is None
    assert table.lookup("gpt-4oo") is None


def test_price_file_overrides_and_adds(tmp_path):
    path = tmp_path / "prices.json"
    prices = {"gpt-4o-mini": {"input": 1, "output": 2}, "local": {"input": 0, "output": 0}}
    path.write_text(json.dumps({"prices": prices}))
    table = PriceTable.load(path)
    assert table.lookup("gpt-4o-mini") == Price(input=1, output=2)
    assert table.lookup("local") == Price(input=0, output=0)
    assert table.lookup("gpt-4o") == DEFAULT_PRICES["gpt-4o"]
    assert PriceTable.load(path, defaults=False).lookup("gpt-4o") is None


def test_price_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        PriceTable.load(bad)
    bad.write_text(json.dumps({"m": {"input": 1}}))
    with pytest.raises(ValueError, match="'input' and 'output'"):
        PriceTable.load(bad)
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="must hold an object"):
        PriceTable.load(bad)


def test_price_table_dump_round_trips(tmp_path):
    path = tmp_path / "prices.json"
    PriceTable().dump(path)
    data = json.loads(path.read_text())
    assert data["_unit"] == "USD per 1M tokens" and data["gpt-4o-mini"] == {"input": 0.15, "output": 0.6,
                                                                              "cached_input": 0.075}
    assert PriceTable.load(path, defaults=False).prices == PriceTable().prices


def test_degenerate_answers_are_counted_beside_accuracy():
    question = "Tim rides 5 days a week, 1,200 meters a day. How many days does he ride?"
    assert numbers_in(question) == ["5", "1200"] and numbers_in("no digits") == []
    assert copies_format_example("50") and copies_format_example("50.0") and not copies_format_example("5")
    assert not copies_format_example(None)
    assert restates_question("5", question) and restates_question("1200", question)
    assert not restates_question("6000", question) and not restates_question(None, question)
    rows = [dict(rec(True, 5, answer="5"), question=question), dict(rec(False, 5, answer="50"), question=question),
            dict(rec(False, 5, answer=None), question=question), dict(rec(True, 5, answer="6000"), question=question)]
    m = summarize(rows, {**HEADER, "format": "gsm8k"})
    assert (m.copied_example_rate, m.restated_rate) == (0.25, 0.25)
    # a choice letter copying "[[A]]" cannot be told from a real answer: not counted for other formats
    m = summarize(rows, {**HEADER, "format": "multiple_choice"})
    assert (m.copied_example_rate, m.restated_rate) == (None, None)
