"""BudgetEnforcer: budgets held while decoding, answers never lost to the cap, off by default."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from tale_integrations import BudgetPolicy, TalePipeline, extract_answer  # noqa: E402
from tale_integrations.core.budget import BudgetEnforcement  # noqa: E402

PROMPT = [{"role": "user", "content": "What is 3 + 4?"}]


def test_off_by_default_and_budgets_are_not_silently_ignored(scripted_generator):
    gen = scripted_generator(" 7")
    assert gen.enforcement is None
    with pytest.raises(ValueError, match="enforce_budget=True"):
        gen.generate([PROMPT], max_tokens=60, budgets=[10])
    with pytest.raises(ValueError, match="enforce_budget=True"):
        gen.stream(PROMPT, max_tokens=60, budget=10)
    [g] = gen.generate([PROMPT], max_tokens=60, budgets=[None])
    assert g.usage.output_tokens == 60 and g.finish_reason == "length"
    # the pipeline keeps the budget in the prompt only
    result = TalePipeline(gen, budget=10, max_tokens=60).invoke("q")
    assert result.usage.output_tokens == 60


def test_enforced_budget_wraps_up_and_closes_within_the_reserve(scripted_generator):
    gen = scripted_generator(" 7", enforce_budget=True)
    [g] = gen.generate([PROMPT], max_tokens=200, budgets=[10])
    reserve = BudgetEnforcement().answer_reserve
    assert g.finish_reason == "stop"
    assert g.usage.output_tokens <= 10 + reserve
    assert g.text.startswith(" 7" * 10 + "\n\nThe final answer is [[")
    assert g.text.endswith("]]")
    assert extract_answer(g.text) == "7"


def test_rows_without_a_budget_are_left_alone(scripted_generator):
    gen = scripted_generator(" 7", enforce_budget=True)
    enforced, free = gen.generate([PROMPT, PROMPT], max_tokens=50, budgets=[10, None])
    assert enforced.finish_reason == "stop" and enforced.usage.output_tokens <= 34
    assert free.finish_reason == "length" and free.usage.output_tokens == 50
    assert "The final answer" not in free.text


def test_factor_scales_the_reasoning_phase(scripted_generator):
    gen = scripted_generator(" 7", enforce_budget=BudgetEnforcement(factor=2.0, answer_reserve=16))
    [g] = gen.generate([PROMPT], max_tokens=200, budgets=[10])
    assert g.text.startswith(" 7" * 20 + "\n\nThe final answer is [[")
    assert g.usage.output_tokens <= 20 + 16


def test_answer_is_never_lost_to_the_cap(scripted_generator):
    gen = scripted_generator(" 7", enforce_budget=True)
    [g] = gen.generate([PROMPT], max_tokens=40, budgets=[1000])
    assert g.usage.output_tokens <= 40
    assert g.finish_reason == "stop"
    assert "The final answer is [[" in g.text and g.text.endswith("]]")


def test_chat_format_wraps_up_without_brackets(scripted_generator):
    gen = scripted_generator(" 7", enforce_budget=True)
    [g] = gen.generate([PROMPT], max_tokens=100, budgets=[5], answer_format="chat")
    assert g.text.startswith(" 7" * 5 + "\n\nIn short, ")
    assert g.finish_reason == "stop" and g.usage.output_tokens <= 5 + 24


def test_a_model_that_ends_on_its_own_is_untouched(scripted_generator, tiny_tokenizer):
    gen = scripted_generator(tiny_tokenizer.eos_token, enforce_budget=True)
    [g] = gen.generate([PROMPT], max_tokens=50, budgets=[10])
    assert g.text == "" and g.usage.output_tokens == 1


def test_stream_enforces_the_budget_too(scripted_generator):
    gen = scripted_generator(" 7", enforce_budget=True)
    events = list(gen.stream(PROMPT, max_tokens=200, budget=8))
    assert "".join(e.text for e in events).endswith("]]")
    assert events[-1].final.usage.output_tokens <= 8 + 24


def test_pipeline_passes_budgets_to_an_enforcing_backend(scripted_generator):
    gen = scripted_generator(" 7", enforce_budget=True)
    result = TalePipeline(gen, budget=12, max_tokens=300).invoke("What is 3 + 4?")
    assert result.budget.tokens == 12
    assert result.usage.output_tokens <= 12 + 24
    assert result.answer == "7"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"max_tokens": 24, "budgets": [10]}, "must exceed the answer reserve"),
    ({"max_tokens": 50, "budgets": [0]}, "positive int"),
    ({"max_tokens": 50, "budgets": [10, 10]}, "one budget"),
])
def test_bad_enforcement_input(scripted_generator, kwargs, match):
    gen = scripted_generator(" 7", enforce_budget=True)
    with pytest.raises(ValueError, match=match):
        gen.generate([PROMPT], **kwargs)


@pytest.mark.parametrize(("kwargs", "match"), [({"factor": 0}, "factor"), ({"factor": float("nan")}, "factor"),
                                               ({"answer_reserve": 4}, "answer_reserve")])
def test_bad_enforcement_policy(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BudgetEnforcement(**kwargs)


def test_enforce_budget_flag_type_is_checked(tiny_model_dir):
    from tale_integrations.backends.hf import HFGenerator

    with pytest.raises(TypeError, match="enforce_budget"):
        HFGenerator(tiny_model_dir, enforce_budget="yes")


def test_policy_floor_applies_before_enforcement(scripted_generator):
    gen = scripted_generator(" 7", enforce_budget=True)
    tale = TalePipeline(gen, estimator=None, policy=BudgetPolicy(min_budget=15), max_tokens=300)
    result = tale.invoke("q", budget=15)
    assert result.usage.output_tokens <= 15 + 24


def test_the_wrap_up_waits_for_a_character_cut_by_the_budget(tiny_tokenizer):
    from tiny_models import build_chain_model

    from tale_integrations.backends.hf import HFGenerator

    # "é" is two byte-level tokens: a budget of 5 ends inside the third one
    model = build_chain_model(tiny_tokenizer, {"Ċ": "Ã", "Ã": "©", "©": "Ã"}, default=" 7")
    gen = HFGenerator.from_model(model, tiny_tokenizer, model_name="chain", enforce_budget=True)
    [odd, even] = gen.generate([PROMPT, PROMPT], max_tokens=100, budgets=[5, 4])
    assert odd.text.startswith("ééé\n\nThe final answer is [[") and odd.text.endswith("]]")
    assert even.text.startswith("éé\n\nThe final answer is [[")
    assert "\ufffd" not in odd.text and odd.usage.output_tokens <= 6 + 24
