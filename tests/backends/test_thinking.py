"""Thinking blocks on the local backend: budgets held while decoding, thinking returned apart from the
answer, exact counts (backends/thinking.py through HFGenerator), on tiny chain models whose greedy
output is an exact script (tests/tiny_models.py: `build_chain_model`)."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("torch")

from tiny_models import THINKING_CHATML, build_chain_model, build_thinking_tokenizer, build_tiny_tokenizer  # noqa: E402

from tale_integrations.backends.hf import HFGenerator  # noqa: E402
from tale_integrations.backends.hf.settings import HFSettings, ThinkingEnforcement  # noqa: E402
from tale_integrations.backends.thinking import ThinkingBudget, ThinkingMarkers  # noqa: E402
from tale_integrations.core.answers import extract_answer  # noqa: E402
from tale_integrations.core.prompts import THINKING_WRAP_UP  # noqa: E402

Q = [{"role": "user", "content": "What is 3 + 4?"}]
OPEN = {"open_thinking": True}  # the template opens the block in the prompt (DeepSeek-R1 style)
RESERVE = 8


@pytest.fixture(scope="module")
def think_tok():
    return build_thinking_tokenizer()


@pytest.fixture(scope="module")
def chain(think_tok):
    """``chain(script, default=" 7", tokenizer=..., **settings)``: an HFGenerator over a chain model."""

    def make(script: dict[str, str], *, default: str = " 7", tokenizer=None, **settings):
        tok = tokenizer or think_tok
        script = {k: tok.eos_token if v == "EOS" else v for k, v in script.items()}
        settings.setdefault("thinking", ThinkingEnforcement(answer_reserve=RESERVE))
        return HFGenerator.from_model(build_chain_model(tok, script, default=default), tok, model_name="chain",
                                      **settings)

    return make


#: Opens a block and thinks " 7" forever; once the block is closed for it, answers [[40]] and ends.
NEVER_CLOSES = {"Ċ": "<think>", "<think>": " 7", "</think>": "[[40]]", "[[40]]": "EOS"}
#: Thinks "xyz" and closes the block itself, then answers.
CLOSES_EARLY = {"Ċ": "<think>", "<think>": "x", "x": "y", "y": "z", "z": "</think>", "</think>": "[[40]]",
                "[[40]]": "EOS"}
#: Thinks "x" and ends its turn inside the block; once the block is closed for it, answers [[40]] and ends.
ENDS_INSIDE = {"Ċ": "<think>", "<think>": "x", "x": "EOS", "</think>": "[[40]]", "[[40]]": "EOS"}


def ids(tok, text):
    return tok.encode(text, add_special_tokens=False)


# -- the must-holds -------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [0, 1, 5, 12])
def test_budget_b_thinks_b_tokens_then_the_end_marker_then_the_answer(chain, budget):
    gen = chain(NEVER_CLOSES)
    [g] = gen.generate([Q], max_tokens=60, thinking_budgets=[budget])
    assert g.reasoning == " ".join(["7"] * budget)
    assert g.text == "[[40]]" and g.finish_reason == "stop" and extract_answer(g.text) == "40"
    # <think>, B thinking tokens, </think>: the reasoning; then [[40]] and the end of turn
    assert g.usage.reasoning_tokens == 1 + budget + 1
    assert g.usage.output_tokens == g.usage.reasoning_tokens + 2


def test_a_block_opened_by_the_template_is_counted_from_the_prompt(chain):
    gen = chain({"Ċ": " 7", "</think>": "[[40]]", "[[40]]": "EOS"}, chat_template_kwargs=OPEN)
    [g] = gen.generate([Q], max_tokens=60, thinking_budgets=[4])
    assert g.reasoning == "7 7 7 7" and g.text == "[[40]]"
    assert g.usage.reasoning_tokens == 4 + 1  # no start marker among the output tokens


def test_counts_are_exact_against_the_tokenizer(chain, think_tok):
    gen = chain(NEVER_CLOSES)
    [g] = gen.generate([Q], max_tokens=60, thinking_budgets=[3])
    thinking = ids(think_tok, "<think> 7 7 7</think>")
    answer = ids(think_tok, "[[40]]") + [think_tok.eos_token_id]
    assert g.usage.reasoning_tokens == len(thinking)
    assert g.usage.output_tokens == len(thinking) + len(answer)
    assert g.usage.input_tokens == len(gen.encode_chat(Q))


def test_a_model_that_closes_thinking_early_is_left_alone(chain):
    gen = chain(CLOSES_EARLY)
    [free] = gen.generate([Q], max_tokens=60)
    [budgeted] = gen.generate([Q], max_tokens=60, thinking_budgets=[10])
    assert budgeted == free
    assert free.reasoning == "xyz" and free.text == "[[40]]"
    assert free.usage.reasoning_tokens == 5 and free.usage.output_tokens == 7


def test_a_budget_that_is_exactly_spent_when_the_model_closes_is_not_forced_twice(chain):
    gen = chain(CLOSES_EARLY)
    [g] = gen.generate([Q], max_tokens=60, thinking_budgets=[3])
    assert g.reasoning == "xyz" and g.text == "[[40]]" and g.usage.reasoning_tokens == 5


def test_batch_rows_with_different_budgets_each_stop_at_their_own(chain):
    gen = chain(NEVER_CLOSES)
    budgets = [2, 7, None, 0, 4]
    out = gen.generate([Q] * len(budgets), max_tokens=40, thinking_budgets=budgets)
    for g, budget in zip(out, budgets, strict=True):
        if budget is None:  # no limit: thinks until the cap, the block never closed
            assert g.reasoning == " ".join(["7"] * 39) and g.text == "" and g.finish_reason == "length"
            assert g.usage.reasoning_tokens == g.usage.output_tokens == 40
        else:
            assert g.reasoning == " ".join(["7"] * budget) and g.text == "[[40]]"
            assert g.usage.reasoning_tokens == budget + 2
    # each row as it comes alone
    assert [gen.generate([Q], max_tokens=40, thinking_budgets=[b])[0] for b in budgets] == out


def test_streams_split_as_generate_does(chain):
    gen = chain(NEVER_CLOSES)
    events = list(gen.stream(Q, max_tokens=60, thinking_budget=5))
    [plain] = gen.generate([Q], max_tokens=60, thinking_budgets=[5])
    final = events[-1].final
    assert final == plain
    assert "".join(e.reasoning for e in events) == plain.reasoning
    assert "".join(e.text for e in events) == plain.text
    first_text = next(i for i, e in enumerate(events) if e.text)
    assert all(not e.reasoning for e in events[first_text:])  # thinking first, then the answer


async def test_astream_splits_too(chain):
    gen = chain(CLOSES_EARLY)
    events = [e async for e in gen.astream(Q, max_tokens=60, thinking_budget=10)]
    assert "".join(e.reasoning for e in events) == "xyz" and "".join(e.text for e in events) == "[[40]]"
    assert events[-1].final.usage.reasoning_tokens == 5
    [g] = await gen.agenerate([Q], max_tokens=60, thinking_budgets=[10])
    assert g == events[-1].final



# -- the end of turn inside a budgeted block ------------------------------------------------------------


def test_an_end_of_turn_inside_a_budgeted_block_closes_the_block_and_the_model_answers(chain, think_tok):
    gen = chain(ENDS_INSIDE)
    [free] = gen.generate([Q], max_tokens=60)  # no budget: no rule, the model ends inside its block
    assert free.reasoning == "x" and free.text == "" and free.finish_reason == "stop"
    assert free.usage.reasoning_tokens == free.usage.output_tokens == 3  # <think> x <|im_end|>
    [g] = gen.generate([Q], max_tokens=60, thinking_budgets=[10])
    assert g.reasoning == "x" and g.text == "[[40]]" and g.finish_reason == "stop"
    assert g.usage.reasoning_tokens == len(ids(think_tok, "<think>x</think>")) == 3
    assert g.usage.output_tokens == 3 + 2
    events = list(gen.stream(Q, max_tokens=60, thinking_budget=10))
    assert events[-1].final == g and "".join(e.text for e in events) == "[[40]]"


def test_an_end_of_turn_in_a_block_the_template_opened_closes_it_too(chain):
    gen = chain({"Ċ": "x", "x": "EOS", "</think>": "[[40]]", "[[40]]": "EOS"}, chat_template_kwargs=OPEN)
    [g] = gen.generate([Q], max_tokens=60, thinking_budgets=[10])
    assert g.reasoning == "x" and g.text == "[[40]]" and g.usage.reasoning_tokens == 2


def test_an_end_of_turn_forces_an_end_marker_of_several_tokens_whole(chain, multi_tok):
    gen = chain({"Ċ": "x", "x": "EOS", ">": "[[40]]", "[[40]]": "EOS"}, tokenizer=multi_tok, chat_template_kwargs=OPEN)
    markers = gen.thinking_markers
    assert len(markers.end_ids) > 1
    [g] = gen.generate([Q], max_tokens=60, thinking_budgets=[10])
    assert g.reasoning == "x" and g.text == "[[40]]" and g.usage.reasoning_tokens == 1 + len(markers.end_ids)


def test_an_end_of_turn_after_half_a_character_finishes_the_character_first(chain):
    # "é" is two byte-level tokens: the model wants to end after the first; the end of turn is masked,
    # its runner-up finishes the character, and only then is the end marker forced.
    gen = chain({"Ċ": "<think>", "<think>": "Ã", "Ã": "EOS", "</think>": "[[40]]", "[[40]]": "EOS"}, default="©")
    [g] = gen.generate([Q], max_tokens=60, thinking_budgets=[10])
    assert g.reasoning == "é" and g.text == "[[40]]" and g.usage.reasoning_tokens == 1 + 2 + 1


def test_each_row_of_a_batch_keeps_its_own_rule_for_the_end_of_turn(chain):
    gen = chain(ENDS_INSIDE)
    budgets = [None, 10, 0, 1, 10]
    out = gen.generate([Q] * len(budgets), max_tokens=30, thinking_budgets=budgets)
    assert [(g.reasoning, g.text) for g in out] == [("x", ""), ("x", "[[40]]"), ("", "[[40]]"), ("x", "[[40]]"),
                                                    ("x", "[[40]]")]
    assert [g.usage.reasoning_tokens for g in out] == [3, 3, 2, 3, 3]
    assert [gen.generate([Q], max_tokens=30, thinking_budgets=[b])[0] for b in budgets] == out


def test_a_model_that_closes_its_block_and_then_ends_is_left_alone(chain):
    # After the end marker nothing changes: an end of turn there ends the row, with an empty answer.
    script = {**CLOSES_EARLY, "</think>": "EOS"}
    gen = chain(script)
    [free] = gen.generate([Q], max_tokens=60)
    [budgeted] = gen.generate([Q], max_tokens=60, thinking_budgets=[10])
    assert budgeted == free
    assert free.reasoning == "xyz" and free.text == "" and free.usage.reasoning_tokens == 5


def _budget_rule(gen, think_tok, budget=10):
    decoder = gen.load()._decoder
    prompt = gen.encode_chat(Q, chat_template_kwargs=OPEN)
    [rule] = decoder.row_rules(budget=None, cap=60, answer_format="chat", thinking_budget=budget, prompt=prompt)
    assert set(rule.eos_ids.tolist()) == decoder.eos_ids == {think_tok.eos_token_id}
    return rule


def test_the_rule_masks_an_end_of_turn_the_model_does_not_prefer_and_closes_on_one_it_does(chain, think_tok):
    import torch

    gen = chain(NEVER_CLOSES)
    eos, [seven], [end] = think_tok.eos_token_id, ids(think_tok, " 7"), ids(think_tok, "</think>")
    rule = _budget_rule(gen, think_tok)
    scores = torch.zeros(len(think_tok))
    scores[seven], scores[eos] = 5.0, 4.9  # a close runner-up
    before = scores.clone()
    rule.apply([seven], scores)
    assert scores[eos] == -float("inf") and rule.closing_at is None
    scores[eos] = before[eos]
    assert torch.equal(scores, before)  # nothing else changed
    scores[eos] = 5.1  # now the model prefers to end: the end marker instead
    rule.apply([seven, seven], scores)
    assert int(scores.argmax()) == end and int(scores.isfinite().sum()) == 1 and rule.closing_at == 2
    tie = _budget_rule(gen, think_tok)
    scores = torch.zeros(len(think_tok))  # a tie is no preference: masked, not closed
    tie.apply([seven], scores)
    assert scores[eos] == -float("inf") and int(scores.isfinite().sum()) == len(think_tok) - 1
    unbudgeted = gen._decoder.row_rules(budget=None, cap=60, answer_format="chat", thinking_budget=None,
                                        prompt=gen.encode_chat(Q, chat_template_kwargs=OPEN))
    assert unbudgeted == []  # no budget: no rule at all


def _sometimes_ends(tok):
    """Inside the block " 7" leads and the end of turn is a close runner-up (p = 0.38 a step at temperature 1)."""
    import torch
    from tiny_models import build_ranking_model

    model = build_ranking_model(tok, {"": [" 7", tok.eos_token], "</think>": ["[[40]]"], "[[40]]": [tok.eos_token]})
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
        model.lm_head.weight[tok.eos_token_id, 0] = 39.5  # " 7" scores 40
    return model


def test_a_sampled_model_that_prefers_to_think_on_never_ends_inside_the_block(think_tok):
    gen = HFGenerator.from_model(_sometimes_ends(think_tok), think_tok, model_name="sampled", seed=3,
                                 thinking=ThinkingEnforcement(answer_reserve=RESERVE), chat_template_kwargs=OPEN)
    free = gen.generate([Q] * 8, max_tokens=30, temperature=1.0)
    assert sum(g.text == "" and g.finish_reason == "stop" for g in free) >= 6  # without a budget it ends inside
    out = gen.generate([Q] * 8, max_tokens=30, temperature=1.0, thinking_budgets=[6] * 8)
    assert all(g.reasoning == " ".join(["7"] * 6) and g.text == "[[40]]" for g in out), [
        (g.reasoning, g.text) for g in out]


def test_the_step_scheduler_applies_the_same_rule(chain, think_tok):
    from tale_integrations.backends.hf.scheduler import StepScheduler

    gen = chain(ENDS_INSIDE)
    budgets = [None, 10, 0, 1]
    direct = gen.generate([Q] * len(budgets), max_tokens=30, thinking_budgets=budgets)
    sampled = HFGenerator.from_model(_sometimes_ends(think_tok), think_tok, model_name="sampled", seed=3,
                                     thinking=ThinkingEnforcement(answer_reserve=RESERVE), chat_template_kwargs=OPEN)
    schedulers = [StepScheduler(gen, max_rows=4).start(), StepScheduler(sampled, max_rows=4).start()]
    try:
        rows = [schedulers[0].submit(Q, max_tokens=30, thinking_budget=b) for b in budgets]
        free = [schedulers[1].submit(Q, max_tokens=30, temperature=1.0) for _ in range(4)]
        held = [schedulers[1].submit(Q, max_tokens=30, temperature=1.0, thinking_budget=6) for _ in range(4)]
        results = [r.result(60) for r in rows]
        free_results, held_results = [r.result(60) for r in free], [r.result(60) for r in held]
    finally:
        for s in schedulers:
            s.close(timeout=60)
    assert [(g.reasoning, g.text, g.usage.reasoning_tokens, g.finish_reason) for g in results] == [
        (g.reasoning, g.text, g.usage.reasoning_tokens, g.finish_reason) for g in direct]
    assert results[0].text == "" and results[1].text == "[[40]]"
    assert sum(g.text == "" for g in free_results) >= 3
    assert all(g.reasoning == " ".join(["7"] * 6) and g.text == "[[40]]" for g in held_results)

# -- caps: the answer is never lost to the cap --------------------------------------------------------


def test_without_max_tokens_the_cap_is_raised_to_hold_budget_markers_and_reserve(chain):
    gen = chain(NEVER_CLOSES, max_new_tokens=20)
    [g] = gen.generate([Q], thinking_budgets=[30])
    assert g.usage.reasoning_tokens == 32 and g.text == "[[40]]" and g.finish_reason == "stop"


def test_a_cap_below_the_budget_shortens_the_thinking_so_the_reserve_fits(chain):
    gen = chain(NEVER_CLOSES)
    markers = gen.thinking_markers
    cap = markers.overhead("none") + RESERVE + 6
    [g] = gen.generate([Q], max_tokens=cap, thinking_budgets=[100])
    assert g.reasoning == " ".join(["7"] * 6) and g.text == "[[40]]" and g.finish_reason == "stop"


def test_a_cap_that_cannot_hold_the_markers_and_reserve_is_refused(chain):
    gen = chain(NEVER_CLOSES)
    with pytest.raises(ValueError, match=r"max_tokens=10 leaves no room to think.*answer_reserve"):
        gen.generate([Q], max_tokens=10, thinking_budgets=[5])


def test_a_thinking_budget_on_a_model_without_a_thinking_block_is_refused(scripted_generator):
    gen = scripted_generator(" 7")
    assert gen.thinking_markers is None
    with pytest.raises(ValueError, match="thinking block"):
        gen.generate([Q], max_tokens=20, thinking_budgets=[5])
    with pytest.raises(ValueError, match="thinking block"):
        gen.stream(Q, max_tokens=20, thinking_budget=5)
    [g] = gen.generate([Q], max_tokens=3)  # and nothing changes without one
    assert g.reasoning is None and g.usage.reasoning_tokens == 0 and g.text == " 7 7 7"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"thinking_budgets": [5, 5]}, "one thinking budget"),
    ({"thinking_budgets": [-1]}, "each thinking budget"),
    ({"thinking_budgets": "5"}, "one thinking budget"),
    ({"chat_template_kwargs": {"add_generation_prompt": False}}, "sets them itself"),
    ({"chat_template_kwargs": ["enable_thinking"]}, "dict of template arguments"),
])
def test_bad_thinking_input(chain, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        chain(NEVER_CLOSES).generate([Q], max_tokens=40, **kwargs)


# -- hint, characters, markers ------------------------------------------------------------------------


def test_the_wrap_up_hint_is_written_inside_the_block_and_counts_as_thinking(chain, think_tok):
    gen = chain({"Ċ": " 7", "</think>": "[[40]]", "[[40]]": "EOS"}, chat_template_kwargs=OPEN,
                thinking=ThinkingEnforcement(answer_reserve=RESERVE, hint_at=0.5))
    [g] = gen.generate([Q], max_tokens=120, thinking_budgets=[100])
    hint = ids(think_tok, THINKING_WRAP_UP)
    assert len(hint) < 50
    assert g.reasoning.startswith(" ".join(["7"] * 50) + THINKING_WRAP_UP.rstrip())
    assert g.reasoning.endswith(" ".join(["7"] * (50 - len(hint)))) and g.text == "[[40]]"
    assert g.usage.reasoning_tokens == 100 + 1  # the hint's tokens are part of the 100
    [short] = gen.generate([Q], max_tokens=80, thinking_budgets=[40])  # no room for the hint: none
    assert THINKING_WRAP_UP.strip() not in short.reasoning and short.usage.reasoning_tokens == 41


def test_a_character_cut_by_the_budget_is_finished_before_the_end_marker(chain):
    # "é" is two byte-level tokens: a budget of 5 ends inside the third one
    gen = chain({"Ċ": "<think>", "<think>": "Ã", "Ã": "©", "©": "Ã", "</think>": "[[40]]", "[[40]]": "EOS"})
    [g] = gen.generate([Q], max_tokens=60, thinking_budgets=[5])
    assert g.reasoning == "ééé" and g.text == "[[40]]"
    assert g.usage.reasoning_tokens == 1 + 6 + 1
    [even] = gen.generate([Q], max_tokens=60, thinking_budgets=[4])
    assert even.reasoning == "éé" and even.usage.reasoning_tokens == 1 + 4 + 1


@pytest.fixture(scope="module")
def multi_tok():
    """The tiny tokenizer with the thinking template but no marker tokens: each marker is several tokens."""
    tok = build_tiny_tokenizer()
    tok.chat_template = THINKING_CHATML
    return tok


def test_markers_spelled_in_several_tokens_are_forced_whole(chain, multi_tok):
    gen = chain({"Ċ": " 7", ">": "[[40]]", "[[40]]": "EOS"}, tokenizer=multi_tok, chat_template_kwargs=OPEN)
    markers = gen.thinking_markers
    assert len(markers.end_ids) > 1
    [g] = gen.generate([Q], max_tokens=60, thinking_budgets=[3])
    assert g.reasoning == "7 7 7" and g.text == "[[40]]"
    assert g.usage.reasoning_tokens == 3 + len(markers.end_ids)
    events = list(gen.stream(Q, max_tokens=60, thinking_budget=3))
    assert all("<" not in e.reasoning for e in events)  # a marker in the making is never shown as thinking
    assert "".join(e.reasoning for e in events) == g.reasoning and events[-1].final == g


def test_a_marker_the_model_spells_in_other_tokens_is_found_in_the_text(chain, multi_tok):
    # </think> as < / t h i n k > (the tokenizer's own spelling has "in" as one token)
    script = {"Ċ": "x", "x": "<", "<": "/", "/": "t", "t": "h", "h": "i", "i": "n", "n": "k", "k": ">",
              ">": "[[40]]", "[[40]]": "EOS"}
    gen = chain(script, tokenizer=multi_tok, chat_template_kwargs=OPEN)
    [g] = gen.generate([Q], max_tokens=60, thinking_budgets=[30])
    assert g.reasoning == "x" and g.text == "[[40]]" and g.usage.reasoning_tokens == 9
    events = list(gen.stream(Q, max_tokens=60, thinking_budget=30))
    assert "".join(e.reasoning for e in events) == "x" and "".join(e.text for e in events) == "[[40]]"


def test_markers_can_be_given(chain, multi_tok):
    gen = chain({"Ċ": "x", "x": "STOP", "STOP": " 7", " 7": "EOS"}, tokenizer=multi_tok,
                thinking=ThinkingEnforcement(markers=("x", "STOP"), answer_reserve=RESERVE))
    assert repr(gen.thinking_markers) == "ThinkingMarkers('x', 'STOP')"
    [g] = gen.generate([Q], max_tokens=20)
    assert g.reasoning == "" and g.text == "7" and g.usage.reasoning_tokens == 2


def test_thinking_none_leaves_the_block_in_the_text(chain):
    gen = chain(CLOSES_EARLY, thinking=None)
    [g] = gen.generate([Q], max_tokens=20)
    assert g.reasoning is None and g.text == "<think>xyz</think>[[40]]"
    with pytest.raises(ValueError, match="thinking block"):
        gen.generate([Q], max_tokens=20, thinking_budgets=[2])


# -- chat template arguments ------------------------------------------------------------------------------


def test_chat_template_kwargs_reach_the_template_per_call_and_by_default(chain, think_tok):
    gen = chain(NEVER_CLOSES)
    off = gen.encode_chat(Q, chat_template_kwargs={"enable_thinking": False})
    assert think_tok.decode(off).endswith("<think>\n\n</think>\n\n")
    assert gen.thinking_markers.prompt_state(off) == "closed"
    assert gen.thinking_markers.prompt_state(gen.encode_chat(Q, chat_template_kwargs=OPEN)) == "open"
    assert gen.thinking_markers.prompt_state(gen.encode_chat(Q)) == "none"
    by_default = chain(NEVER_CLOSES, chat_template_kwargs={"enable_thinking": False})
    assert by_default.encode_chat(Q) == off
    assert by_default.encode_chat(Q, chat_template_kwargs={"enable_thinking": True}) == gen.encode_chat(Q)
    assert HFSettings(chat_template_kwargs={"enable_thinking": False}).to_dict()["chat_template_kwargs"] == {
        "enable_thinking": False}


def test_thinking_turned_off_by_the_template_has_no_reasoning(chain):
    # The template closed an empty block: the output is all answer, and a thinking budget has nothing to hold.
    gen = chain({"Ċ": "[[40]]", "[[40]]": "EOS"})
    [g] = gen.generate([Q], max_tokens=20, thinking_budgets=[3], chat_template_kwargs={"enable_thinking": False})
    assert g.reasoning is None and g.text == "[[40]]" and g.usage.reasoning_tokens == 0


# -- answer rules see the answer only ------------------------------------------------------------------


def test_the_budget_enforcer_holds_the_answer_after_the_thinking(chain):
    gen = chain({"Ċ": "<think>", "<think>": " 7", "</think>": " 7"}, enforce_budget=True,
                thinking=ThinkingEnforcement(answer_reserve=40))
    [g] = gen.generate([Q], max_tokens=200, thinking_budgets=[4], budgets=[3])
    assert g.reasoning == "7 7 7 7"
    assert g.text.startswith("7 7 7\n\nThe final answer is [[") and g.text.endswith("]]")
    assert extract_answer(g.text) == "7" and g.finish_reason == "stop"


def test_stop_strings_apply_to_the_answer_only(chain):
    gen = chain({"Ċ": "<think>", "<think>": " 7", "</think>": "[[40]]", "[[40]]": " 7"})
    [g] = gen.generate([Q], max_tokens=60, thinking_budgets=[3], stop=[" 7"])
    assert g.reasoning == "7 7 7" and g.text == "[[40]]" and g.finish_reason == "stop"
    assert g.usage.output_tokens == 1 + 3 + 1 + 2  # the stop string's token is counted, not returned
    events = list(gen.stream(Q, max_tokens=60, thinking_budget=3, stop=[" 7"]))
    assert events[-1].final == g and "".join(e.text for e in events) == "[[40]]"


class _NoSeven:
    """An answer rule that forbids " 7" and records the tokens it is shown."""

    def __init__(self, seven: int) -> None:
        self.seven, self.seen = seven, []

    def apply(self, generated, scores):
        self.seen.append(list(generated))
        scores[self.seven] = -float("inf")


def test_answer_rules_never_see_nor_shape_the_thinking(chain, think_tok):
    gen = chain({"Ċ": "<think>", "<think>": " 7", " 7": " 7", "</think>": " 7", "[[40]]": "EOS"}, default="[[40]]")
    [seven] = ids(think_tok, " 7")
    rule = _NoSeven(seven)
    [g] = gen.generate([Q], max_tokens=60, thinking_budgets=[3], answer_rules=[[rule]])
    assert g.reasoning == "7 7 7"  # the rule did not touch the thinking
    assert g.text == "[[40]]"  # but shaped the answer (the model wanted " 7")
    assert rule.seen[0] == [] and all(seven not in s for s in rule.seen)


# -- the pieces a step scheduler uses -------------------------------------------------------------------


def test_row_rules_and_finish_give_the_split_to_any_decoding_loop(chain, think_tok):
    import torch

    gen = chain(NEVER_CLOSES).load()
    decoder, prompt = gen._decoder, gen.encode_chat(Q)
    [rule] = decoder.row_rules(budget=None, cap=40, answer_format="chat", thinking_budget=2, prompt=prompt)
    assert isinstance(rule, ThinkingBudget) and rule.limit == 2
    assert decoder.row_rules(budget=None, cap=40, answer_format="chat", prompt=prompt) == []
    tokens: list[int] = []
    script = ids(think_tok, "<think> 7 7 7 7[[40]]") + [think_tok.eos_token_id]  # what the model would pick
    while len(tokens) < 10:
        scores = torch.zeros(len(think_tok))
        rule.apply(tokens, scores)
        forced = int(scores.argmax()) if int(scores.isfinite().sum()) == 1 else None
        tokens.append(forced if forced is not None else script[min(len(tokens), len(script) - 1)])
        if tokens[-1] == think_tok.eos_token_id:
            break
    g = decoder.finish(prompt, tokens, None, None)
    assert g.reasoning == "7 7" and g.usage.reasoning_tokens == 4


def test_markers_are_read_from_the_template(think_tok, multi_tok):
    assert ThinkingMarkers.detect(think_tok).end == "</think>"
    assert ThinkingMarkers.detect(build_tiny_tokenizer()) is None
    assert ThinkingMarkers.detect(think_tok, chat_template="{{ messages }}") is None
    assert ThinkingMarkers.detect(multi_tok, markers=("<t>", "</t>")).start == "<t>"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"markers": ("<think>",)}, "two non-empty strings"),
    ({"markers": ("<think>", " ")}, "two non-empty strings"),
    ({"answer_reserve": 0}, "answer_reserve"),
    ({"hint_at": 1.0}, "hint_at"),
    ({"hint_at": 0}, "hint_at"),
])
def test_bad_thinking_enforcement(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ThinkingEnforcement(**kwargs)


def test_thinking_setting_type_is_checked():
    with pytest.raises(TypeError, match="ThinkingEnforcement"):
        HFSettings(thinking={"answer_reserve": 8})
    assert HFSettings().to_dict()["thinking"] == {"markers": None, "answer_reserve": 256, "hint_at": None}


def test_concurrent_rows_keep_their_own_trackers(chain):
    gen = chain(NEVER_CLOSES)

    async def both():
        return await asyncio.gather(gen.agenerate([Q], max_tokens=40, thinking_budgets=[1]),
                                    gen.agenerate([Q], max_tokens=40, thinking_budgets=[6]))

    (a,), (b,) = asyncio.run(both())
    assert a.usage.reasoning_tokens == 3 and b.usage.reasoning_tokens == 8


# -- after a forced end marker -----------------------------------------------------------------------------


def test_a_row_closed_by_force_answers_before_it_may_end(chain, think_tok):
    """A model that would end its turn right after a forced end marker (its answer left inside the thinking) is
    held to answer: its end of turn is masked until the answer has some text."""
    script = {"Ċ": "<think>", "<think>": " 7", " 7": " 7", "</think>": "EOS", "[[40]]": "EOS"}
    gen = chain(script, default="[[40]]")
    [g] = gen.generate([Q], max_tokens=60, thinking_budgets=[2])
    assert g.reasoning == "7 7"
    assert g.text == "[[40]]" and g.finish_reason == "stop"  # the runner-up, then the end of turn it wanted
    assert g.usage.output_tokens == g.usage.reasoning_tokens + 2
    [s] = [e.final for e in gen.stream(Q, max_tokens=60, thinking_budget=2) if e.final is not None]
    assert s == g
    from tale_integrations.backends.hf.scheduler import StepScheduler

    scheduler = StepScheduler(gen, max_rows=2).start()
    try:
        rows = [scheduler.submit(Q, max_tokens=60, thinking_budget=b) for b in (2, None)]
        held, free = [r.result(60) for r in rows]
    finally:
        scheduler.close(timeout=60)
    assert held == g
    assert free.text == "" and free.finish_reason == "length"  # no budget: thinks to the cap


def test_a_row_that_closes_by_itself_may_still_end_at_once(chain):
    script = {**CLOSES_EARLY, "</think>": "EOS"}
    [g] = chain(script).generate([Q], max_tokens=60, thinking_budgets=[10])
    assert g.text == "" and g.reasoning == "xyz"  # its own close: nothing after it changes
