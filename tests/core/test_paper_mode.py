"""Golden tests of both prompt styles, written from the reference scripts' strings.

Every expected string below is copied from the scripts' Python literals (TALE's exact strings), with
each newline written out, and compared byte for byte with what `TalePipeline` sends: the estimation
call, the vanilla, budgeted and direct answer calls, for every dataset family (GSM8K and GSM8K-Zero
share one template; MathBench arithmetic is a cloze prompt in paper mode; MathBench multiple choice),
in the default style and in paper style.
"""

from __future__ import annotations

import pytest

from tale_integrations.core.budget import BudgetPolicy, OnParseFailure
from tale_integrations.core.estimators import ZeroShotEstimator
from tale_integrations.core.generation import FunctionGenerator
from tale_integrations.core.pipeline import TalePipeline
from tale_integrations.core.prompts import PAPER_CHAT_TEMPLATE, estimator_input

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}

# -- the scripts' literals ---------------------------------------------------------------------
ESTIMATION = (
    "Task: Analyze the given question and estimate the minimum number of tokens required to generate a complete "
    "and accurate response. Please Give the response by strictly following this format: [[budget]],for example: "
    "Budget: [[12]].\n\nBelow is the question:\n\nQuestion: \"{question}\"\n"
)
GSM8K_REASONING = (
    "Q: {question}\nPlease Give the response by strictly following this format: [[answer]], for example: "
    "Answer: [[50]].Let's think step by step:\n"
)
GSM8K_DIRECT = (
    "Please answer the following question and give the answer directly without any reasoning process. Please Give "
    "the response by strictly following this format: [[answer]], for example: Answer: [[50]].\nQ: {question}"
)
CHOICE_REASONING = (
    "{question}\nPlease Give the response by strictly following this format: [[choice]],for example: "
    "Choice: [[A]].\nLet's think step by step:\n"
)
CHOICE_DIRECT = (
    "Please answer the following question directly and give the answer directly without any reasoning process. "
    "Please strictLy follow the format: [[choice]],for example: Choice: [[A]].\n{question}\n"
)
CLOZE_REASONING = "Q: {question}\nLet's think step by step:\n"
CLOZE_DIRECT = "Please answer the following question and give the answer directly\nQ: {question}"


def budgeted(prompt: str, budget: int) -> str:
    """The scripts build the budgeted prompt by replacing the vanilla trigger line."""
    assert prompt.count("Let's think step by step:\n") == 1
    trigger = f"Let's think step by step and use less than {budget} tokens:\n"
    return prompt.replace("Let's think step by step:\n", trigger)


WORD = "Natalia sold clips to 48 of her friends in April. How many clips did she sell in April?"
ARITH = "Evaluate (-5456)/6696*(-297)/(-22)."
STEM = "Harry gets H and Terry gets T. What is H-T?"
OPTIONS = ["6", "-10", "-6", "10"]
# The scripts' {question} for multiple choice: the stem, a newline, one line per option each ending in one.
CHOICE_QUESTION = STEM + "\nA. 6\nB. -10\nC. -6\nD. 10\n"

# family -> (pipeline format in each style, the question item, {question} of the answer templates,
#            the answer templates (reasoning, direct) in paper style, what the estimator quotes in paper style)
FAMILIES = {
    "gsm8k": ("gsm8k", "gsm8k", WORD, WORD, (GSM8K_REASONING, GSM8K_DIRECT), GSM8K_REASONING.format(question=WORD)),
    "mathbench-arithmetic": ("gsm8k", "cloze", ARITH, ARITH, (CLOZE_REASONING, CLOZE_DIRECT),
                             CLOZE_REASONING.format(question=ARITH)),
    "mathbench-middle": ("multiple_choice", "multiple_choice", {"question": STEM, "options": OPTIONS},
                         CHOICE_QUESTION, (CHOICE_REASONING, CHOICE_DIRECT), CHOICE_QUESTION),
}
# Default style: MathBench arithmetic is asked with the GSM8K template (its [[answer]] line helps extraction).
DEFAULT_TEMPLATES = {"gsm8k": (GSM8K_REASONING, GSM8K_DIRECT), "mathbench-arithmetic": (GSM8K_REASONING, GSM8K_DIRECT),
                     "mathbench-middle": (CHOICE_REASONING, CHOICE_DIRECT)}
DEFAULT_ESTIMATOR_SEES = {"gsm8k": WORD, "mathbench-arithmetic": ARITH, "mathbench-middle": STEM}


class Recorder:
    """Answers an estimation chat with ``estimate`` and anything else with ``[[1]]``; keeps every chat."""

    def __init__(self, estimate: str = "[[5]]") -> None:
        self.estimate, self.sent = estimate, []
        self.generator = FunctionGenerator(self, model_name="scripted")

    def __call__(self, messages, **_):
        self.sent.append([dict(m) for m in messages])
        return self.estimate if "estimate the minimum number of tokens" in messages[-1]["content"] else "[[1]]"


def ask(style: str, fmt: str, item, mode: str, estimate: str = "[[5]]", **kwargs) -> tuple[Recorder, object]:
    rec = Recorder(estimate)
    pipe = TalePipeline(rec.generator, mode=mode, format=fmt, style=style, **kwargs)
    item = item if isinstance(item, dict) else {"question": item}
    return rec, pipe.batch([item])[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_paper_style_sends_the_scripts_strings(family):
    _, fmt, item, question, (reasoning, direct), quoted = FAMILIES[family]
    rec, result = ask("paper", fmt, item, "tale-ep")
    estimation, answer = rec.sent
    assert estimation == [SYSTEM, {"role": "user", "content": ESTIMATION.format(question=quoted)}]
    assert answer == [SYSTEM, {"role": "user", "content": budgeted(reasoning.format(question=question), 5)}]
    assert result.budget.tokens == 5 and result.budget.raw == 5 and result.budget.adjusted is None

    rec, _ = ask("paper", fmt, item, "vanilla")
    assert rec.sent == [[SYSTEM, {"role": "user", "content": reasoning.format(question=question)}]]
    rec, _ = ask("paper", fmt, item, "direct")
    assert rec.sent == [[SYSTEM, {"role": "user", "content": direct.format(question=question)}]]
    rec, _ = ask("paper", fmt, item, "fixed", budget=7)
    assert rec.sent == [[SYSTEM, {"role": "user", "content": budgeted(reasoning.format(question=question), 7)}]]


@pytest.mark.parametrize("family", FAMILIES)
def test_default_style_keeps_the_strings_and_changes_only_what_the_docs_list(family):
    fmt, _, item, question, _, _ = FAMILIES[family]
    question = CHOICE_QUESTION if fmt == "multiple_choice" else (item if isinstance(item, str) else item["question"])
    reasoning, direct = DEFAULT_TEMPLATES[family]
    rec, result = ask("default", fmt, item, "tale-ep")
    estimation, answer = rec.sent
    # the estimator reads the question alone; no system message on the answer call; the floor of 20 applies
    sees = DEFAULT_ESTIMATOR_SEES[family]
    assert estimation == [SYSTEM, {"role": "user", "content": ESTIMATION.format(question=sees)}]
    assert answer == [{"role": "user", "content": budgeted(reasoning.format(question=question), 20)}]
    assert (result.budget.raw, result.budget.tokens, result.budget.adjusted) == (5, 20, "raised to floor")
    rec, _ = ask("default", fmt, item, "vanilla")
    assert rec.sent == [[{"role": "user", "content": reasoning.format(question=question)}]]
    rec, _ = ask("default", fmt, item, "direct")
    assert rec.sent == [[{"role": "user", "content": direct.format(question=question)}]]


def test_the_estimator_input_function_matches_the_golden_table():
    assert estimator_input(WORD, format="gsm8k", style="paper") == GSM8K_REASONING.format(question=WORD)
    assert estimator_input(ARITH, format="cloze", style="paper") == CLOZE_REASONING.format(question=ARITH)
    assert estimator_input(STEM, format="multiple_choice", options=OPTIONS, style="paper") == CHOICE_QUESTION
    assert estimator_input("Why?", format="chat", style="paper") == "Why?"
    for fmt in ("gsm8k", "cloze", "chat"):
        assert estimator_input(WORD, format=fmt) == WORD
    assert estimator_input(STEM, format="multiple_choice", options=OPTIONS) == STEM


def test_paper_policy_keeps_small_estimates_and_parses_strictly():
    policy = BudgetPolicy.paper()
    assert policy.is_paper and not BudgetPolicy().is_paper
    assert (policy.min_budget, policy.max_budget, policy.scale, policy.lenient_parse) == (1, 1024, 1.0, False)
    assert policy.on_parse_failure is OnParseFailure.VANILLA
    for raw in (1, 5, 19, 1024):
        budget = policy.resolve(raw, source="zero-shot:m")
        assert (budget.tokens, budget.raw, budget.adjusted) == (raw, raw, None)
    assert policy.resolve(0, source="zero-shot:m").tokens == 1  # "less than 0 tokens" is never written
    assert policy.resolve(5000, source="zero-shot:m").adjusted == "lowered to cap"
    failed = policy.resolve(None, source="zero-shot:m")
    assert (failed.tokens, failed.adjusted) == (None, "parse failed")
    assert BudgetPolicy(**policy.to_dict()) == policy


@pytest.mark.parametrize("reply", ["Budget: 40", "[[ 40 ]]", "[[1,000]]", "I think about forty."])
def test_paper_style_asks_a_reply_without_a_strict_budget_with_plain_cot_and_records_why(reply):
    rec, result = ask("paper", "gsm8k", WORD, "tale-ep", estimate=reply)
    assert rec.sent[1] == [SYSTEM, {"role": "user", "content": GSM8K_REASONING.format(question=WORD)}]
    assert result.budget.tokens is None and result.budget.raw is None and result.budget.adjusted == "parse failed"
    # the default style reads the same replies leniently, or falls back to its default budget
    _, default = ask("default", "gsm8k", WORD, "tale-ep", estimate=reply)
    assert default.budget.tokens is not None


def test_paper_style_refuses_settings_it_would_silently_change():
    gen = Recorder().generator
    with pytest.raises(ValueError, match="system_prompt"):
        TalePipeline(gen, style="paper", system_prompt="Be brief.")
    with pytest.raises(ValueError, match="two calls"):
        TalePipeline(gen, style="paper", conversation="one_conversation")
    with pytest.raises(ValueError, match="lenient"):
        TalePipeline(gen, style="paper", estimator=ZeroShotEstimator(gen))
    with pytest.raises(ValueError, match="'default', 'paper'|PromptStyle|is not a valid"):
        TalePipeline(gen, style="papers")
    # a strict estimator is accepted, and an explicit policy wins over the style's
    TalePipeline(gen, style="paper", estimator=ZeroShotEstimator(gen, lenient=False))
    assert TalePipeline(gen, style="paper", policy=BudgetPolicy()).policy == BudgetPolicy()


def test_paper_chat_template_renders_the_scripts_raw_prompt():
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(PAPER_CHAT_TEMPLATE)
    prompt = GSM8K_REASONING.format(question=WORD)
    rendered = template.render(messages=[SYSTEM, {"role": "user", "content": prompt}], add_generation_prompt=True)
    assert rendered == f"You are a helpful assistant.\nUser: {prompt}\nAssistant:"
