"""tale_integrations.eval.methods: names, the prompt each method sends, budgets, the oracle."""

from __future__ import annotations

import asyncio

import pytest

from tale_integrations.core.answers import AnswerKind
from tale_integrations.core.estimators import FixedEstimator
from tale_integrations.core.generation import FunctionGenerator, Generation, Usage
from tale_integrations.core.prompts import baseline_messages
from tale_integrations.core.search import SearchItem, search_to_file
from tale_integrations.eval.datasets import Example
from tale_integrations.eval.methods import Method, MethodKind, MethodRunner, OracleBudgets, parse_methods

Q = "What is 2 + 3?"
NUMERIC_LINE = "Please Give the response by strictly following this format: [[answer]], for example: Answer: [[50]]."
CHOICE_LINE = "Please Give the response by strictly following this format: [[choice]],for example: Choice: [[A]]."
COD_SYSTEM = (
    "Think step by step, but only keep minimum draft for each thinking step, with 5 words at most. "
    "Return the answer at the end of the response after a separator ####."
)


def ex(i: int, gold: str = "5", **kw) -> Example:
    return Example(id=f"t:{i}", question=f"Q{i}: {Q}", gold=gold, kind=kw.pop("kind", AnswerKind.NUMERIC), line=i, **kw)


# -- names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "kind", "param", "label"), [
    ("direct", MethodKind.DIRECT, None, "Direct"),
    ("vanilla", MethodKind.VANILLA, None, "Vanilla CoT"),
    ("cot", MethodKind.VANILLA, None, "Vanilla CoT"),
    ("tale-ep", MethodKind.TALE_EP, None, "TALE-EP"),
    ("Fixed:50", MethodKind.FIXED, 50, "Fixed B=50"),
    ("tale-pt", MethodKind.TALE_PT, None, "TALE-PT"),
    ("oracle", MethodKind.ORACLE, None, "Oracle budget"),
    ("be-concise", MethodKind.BE_CONCISE, None, "Be concise"),
    ("ccot:100", MethodKind.CCOT, 100, "CCoT-100"),
    ("cod", MethodKind.COD, None, "Chain of Draft"),
])
def test_parse_method(text, kind, param, label):
    method = Method.parse(text)
    assert (method.kind, method.param, method.label) == (kind, param, label)
    assert Method.parse(method.name) == method and str(method) == method.name


@pytest.mark.parametrize(("text", "message"), [
    ("fixed", "needs a budget in tokens"), ("ccot", "needs a length in words"), ("vanilla:3", "takes no number"),
    ("fixed:0", "needs a budget"), ("fixed:abc", "bad number"), ("magic", "unknown method 'magic'; choose from"),
])
def test_parse_method_errors(text, message):
    with pytest.raises(ValueError, match=message):
        Method.parse(text)


def test_parse_methods_list():
    assert [m.name for m in parse_methods("vanilla, tale-ep,fixed:50")] == ["vanilla", "tale-ep", "fixed:50"]
    with pytest.raises(ValueError, match="listed twice"):
        parse_methods("vanilla,cot")
    with pytest.raises(ValueError, match="no method"):
        parse_methods(" , ")


# -- baseline prompt strings (golden) ------------------------------------------------------------

def test_be_concise_prompt():
    assert baseline_messages("be-concise", Q) == [{"role": "user", "content": (
        f"Q: {Q}\n{NUMERIC_LINE}Let's think step by step:\nBe concise.\n")}]


def test_ccot_prompt():
    assert baseline_messages("ccot", Q, words=100) == [{"role": "user", "content": (
        f"Q: {Q}\n{NUMERIC_LINE}Let's think a bit step by step and limit the answer length to 100 words.\n")}]
    assert baseline_messages("ccot", "Which?", format="multiple_choice", options=["1", "2"], words=50) == [
        {"role": "user", "content": (
            f"Which?\nA. 1\nB. 2\n\n{CHOICE_LINE}\n"
            "Let's think a bit step by step and limit the answer length to 50 words.\n")}]
    with pytest.raises(ValueError, match="words=N"):
        baseline_messages("ccot", Q)


def test_chain_of_draft_prompt():
    assert baseline_messages("cod", Q) == [
        {"role": "system", "content": COD_SYSTEM}, {"role": "user", "content": f"Q: {Q}"}]
    assert baseline_messages("cod", "Which?", format="multiple_choice", options=["1", "2"])[1] == {
        "role": "user", "content": "Which?\nA. 1\nB. 2"}
    with pytest.raises(ValueError, match="baseline must be one of"):
        baseline_messages("tot", Q)


# -- what each method sends ----------------------------------------------------------------------

def test_direct_vanilla_and_tale_pt(scripted):
    model = scripted({"Q1": ("[[5]]", 7)})
    direct = MethodRunner("direct", model.generator).run([ex(1)])[0]
    assert model.sent[-1][-1]["content"].startswith("Please answer the following question and give the answer directly")
    assert direct.budget is None and direct.answer == "5" and direct.usage.output_tokens == 7
    vanilla = MethodRunner("vanilla", model.generator).run([ex(1)])[0]
    vanilla_prompt = model.sent[-1]
    assert vanilla_prompt[-1]["content"] == f"Q: Q1: {Q}\n{NUMERIC_LINE}Let's think step by step:\n"
    tale_pt = MethodRunner("tale-pt", model.generator).run([ex(1)])[0]
    assert model.sent[-1] == vanilla_prompt  # same prompt, only the label differs
    assert tale_pt.budget is None and vanilla.budget is None


def test_fixed_budget(scripted):
    model = scripted({"Q1": ("[[5]]", 7)})
    out = MethodRunner("fixed:50", model.generator).run([ex(1)])[0]
    assert model.sent[-1][-1]["content"].endswith("Let's think step by step and use less than 50 tokens:\n")
    assert (out.budget, out.budget_source, out.estimator) == (50, "fixed", None)


def test_fixed_budget_above_max_tokens_is_lowered(scripted):
    model = scripted({"Q1": ("[[5]]", 7)})
    out = MethodRunner("fixed:50", model.generator, max_tokens=32).run([ex(1)])[0]
    assert (out.budget, out.budget_raw, out.budget_adjusted) == (32, 50, "lowered to cap")


def test_tale_ep_estimates_then_answers_in_two_batched_calls(scripted):
    model = scripted({"Q1": ("[[5]]", 7), "Q2": ("[[5]]", 9)}, estimate="Budget: [[30]]")
    outs = MethodRunner("tale-ep", model.generator).run([ex(1), ex(2)])
    assert len(model.calls) == 2 and len(model.calls[0]) == 2  # estimator batch, then answer batch
    assert "estimate the minimum number of tokens" in model.calls[0][0][-1]["content"]
    assert model.calls[1][0][-1]["content"].endswith("use less than 30 tokens:\n")
    out = outs[0]
    assert (out.budget, out.budget_raw, out.estimator, out.estimator_model) == (
        30, 30, "zero-shot:gpt-4o-mini", "gpt-4o-mini")
    assert out.estimator_reply == "Budget: [[30]]" and out.estimator_usage.output_tokens == 5


def test_tale_ep_small_estimate_is_raised_to_the_floor(scripted):
    model = scripted({"Q1": ("[[5]]", 7)}, estimate="[[5]]")
    out = MethodRunner("tale-ep", model.generator).run([ex(1)])[0]
    assert (out.budget, out.budget_raw, out.budget_adjusted) == (20, 5, "raised to floor")


def test_tale_ep_with_any_estimator(scripted):
    model = scripted({"Q1": ("[[5]]", 7)})
    runner = MethodRunner("tale-ep", model.generator, estimator=FixedEstimator(77))
    out = runner.run([ex(1)])[0]
    assert (out.budget, out.estimator, out.estimator_model) == (77, "fixed:77", None)
    assert out.estimator_usage.output_tokens == 0
    assert len(model.calls) == 1  # no estimator model call


@pytest.mark.parametrize(("method", "expected_end"), [
    ("be-concise", "Let's think step by step:\nBe concise.\n"),
    ("ccot:40", "limit the answer length to 40 words.\n"),
    ("cod", f"Q: Q1: {Q}"),
])
def test_baselines_send_their_prompts_and_extract_answers(scripted, method, expected_end):
    model = scripted({"Q1": ("draft; draft\n#### 5", 6)})
    out = MethodRunner(method, model.generator).run([ex(1)])[0]
    assert model.sent[-1][-1]["content"].endswith(expected_end)
    assert out.answer == "5" and out.budget is None and out.usage.output_tokens == 6


def test_multiple_choice_direct_shows_the_options(scripted):
    model = scripted({"Q1": ("[[B]]", 3)})
    item = ex(1, gold="B", kind=AnswerKind.CHOICE, options=("4", "5"))
    out = MethodRunner("direct", model.generator, format="multiple_choice").run([item])[0]
    # The scripts' own multiple-choice direct prompt: its instruction, the stem, the option lines, a blank line.
    assert model.sent[-1][-1]["content"] == (
        "Please answer the following question directly and give the answer directly without any reasoning "
        "process. Please strictLy follow the format: [[choice]],for example: Choice: [[A]].\n"
        f"Q1: {Q}\nA. 4\nB. 5\n\n"
    )
    assert out.answer == "B"
    MethodRunner("vanilla", model.generator, format="multiple_choice").run([item])
    assert model.sent[-1][-1]["content"] == f"Q1: {Q}\nA. 4\nB. 5\n\n{CHOICE_LINE}\nLet's think step by step:\n"


def test_arun_matches_run(scripted):
    model = scripted({"Q1": ("[[5]]", 7), "Q2": ("[[5]]", 9)})
    for method in ("tale-ep", "cod", "fixed:10"):
        runner = MethodRunner(method, model.generator)
        assert asyncio.run(runner.arun([ex(1), ex(2)])) == runner.run([ex(1), ex(2)])
    assert MethodRunner("vanilla", model.generator).run([]) == []


# -- oracle ----------------------------------------------------------------------------------------

def _search_file(tmp_path):
    """A greedy search: Q1 vanilla 40 tokens -> budget 20 gives 16 (accept) -> 10 gives 18 (reject): optimum 20;
    Q2's vanilla answer is wrong."""
    def fn(messages, **kw):
        content = messages[-1]["content"]
        if "Q2" in content:
            return Generation(text="[[0]]", usage=Usage(output_tokens=30), finish_reason="stop", model="s")
        tokens = 18 if "less than 10 tokens" in content else 16 if "less than 20 tokens" in content else 40
        return Generation(text="[[5]]", usage=Usage(output_tokens=tokens), finish_reason="stop", model="s")

    items = [SearchItem(id="t:1", question=f"Q1: {Q}", gold="5"),
             SearchItem(id="other:9", question=f"Q2: {Q}", gold="5")]
    path = tmp_path / "search.jsonl"
    records = search_to_file(FunctionGenerator(fn, model_name="s"), items, str(path))
    assert [r.optimal_budget for r in records] == [20, None]
    return path


def test_oracle_uses_the_searched_budget(scripted, tmp_path):
    oracle = OracleBudgets.from_file(str(_search_file(tmp_path)))
    assert oracle.lookup(ex(1)) == (20, "found")
    assert oracle.lookup(ex(2)) == (None, "vanilla_wrong")  # matched by question text: its id differs
    assert oracle.lookup(ex(3)) == (None, "missing")
    model = scripted({"Q1": ("[[5]]", 7), "Q2": ("[[5]]", 7), "Q3": ("[[5]]", 7)})
    outs = MethodRunner("oracle", model.generator, oracle=oracle).run([ex(1), ex(2), ex(3)])
    prompts = [c[-1]["content"] for c in model.calls[0]]
    assert prompts[0].endswith("use less than 20 tokens:\n")
    assert prompts[1].endswith("Let's think step by step:\n") and prompts[2].endswith("Let's think step by step:\n")
    assert [(o.budget, o.budget_source, o.oracle_status) for o in outs] == [
        (20, "caller", "found"), (None, None, "vanilla_wrong"), (None, None, "missing")]


def test_oracle_needs_a_search_file(scripted):
    with pytest.raises(ValueError, match="--search-file"):
        MethodRunner("oracle", scripted({}).generator)
