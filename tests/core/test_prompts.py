"""Golden tests for tale_integrations.core.prompts.

The expected strings are written out literally from the reference scripts' strings (never rebuilt from the
module's own constants), so any drift in capitalisation, spacing or punctuation fails here.
"""

from __future__ import annotations

import pytest

from tale_integrations.core import prompts
from tale_integrations.core.prompts import (
    answer_messages,
    cot_trigger,
    direct_prompt,
    estimation_messages,
    one_conversation_messages,
    question_prompt,
)

QUESTION = "Janet has 3 apples and buys 5 more. How many apples does she have?"

SCRIPTS_ESTIMATION = (
    "Task: Analyze the given question and estimate the minimum number of tokens required to generate a "
    "complete and accurate response. Please Give the response by strictly following this format: "
    "[[budget]],for example: Budget: [[12]].\n"
    "\n"
    "Below is the question:\n"
    "\n"
    'Question: "Janet has 3 apples and buys 5 more. How many apples does she have?"\n'
)

FIGURE_ESTIMATION = (
    "Task: Analyze the given question and estimate the minimum number of tokens required to generate a "
    "complete and accurate response. Please Give the response by strictly following this format: "
    "[[budget]], for example, Budget: [[12]].\n"
    "\n"
    "Below is the question:\n"
    "\n"
    'Question: "Janet has 3 apples and buys 5 more. How many apples does she have?"\n'
)

NUMERIC_LINE = "Please Give the response by strictly following this format: [[answer]], for example: Answer: [[50]]."
CHOICE_LINE = "Please Give the response by strictly following this format: [[choice]],for example: Choice: [[A]]."


# --- triggers -------------------------------------------------------------------------------


def test_vanilla_trigger_exact():
    assert cot_trigger(None) == "Let's think step by step:"


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        (1, "Let's think step by step and use less than 1 tokens:"),
        (50, "Let's think step by step and use less than 50 tokens:"),
        (1024, "Let's think step by step and use less than 1024 tokens:"),
    ],
)
def test_budgeted_trigger_exact(budget, expected):
    assert cot_trigger(budget) == expected


@pytest.mark.parametrize("bad", [0, -1, True, False, 1.5, 50.0, "50"])
def test_cot_trigger_rejects_non_positive_int(bad):
    with pytest.raises(ValueError):
        cot_trigger(bad)


# --- estimation prompt ----------------------------------------------------------------------


def test_estimation_messages_scripts_default():
    assert estimation_messages(QUESTION) == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": SCRIPTS_ESTIMATION},
    ]


def test_estimation_messages_scripts_explicit():
    assert estimation_messages(QUESTION, variant="scripts")[1]["content"] == SCRIPTS_ESTIMATION


def test_estimation_messages_figure_variant():
    messages = estimation_messages(QUESTION, variant="figure")
    assert messages == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": FIGURE_ESTIMATION},
    ]
    assert messages[1]["content"] != SCRIPTS_ESTIMATION


def test_estimation_prompt_keeps_braces_in_question():
    messages = estimation_messages("What is {x} + {y}?")
    assert messages[1]["content"].endswith('Question: "What is {x} + {y}?"\n')


def test_estimation_unknown_variant():
    with pytest.raises(ValueError):
        estimation_messages(QUESTION, variant="paper")


# --- question prompts -----------------------------------------------------------------------


def test_gsm8k_vanilla_exact():
    assert question_prompt(QUESTION) == (
        "Q: Janet has 3 apples and buys 5 more. How many apples does she have?\n"
        "Please Give the response by strictly following this format: [[answer]], for example: "
        "Answer: [[50]].Let's think step by step:\n"
    )


def test_gsm8k_budgeted_exact():
    assert question_prompt(QUESTION, budget=77, format="gsm8k") == (
        "Q: Janet has 3 apples and buys 5 more. How many apples does she have?\n"
        "Please Give the response by strictly following this format: [[answer]], for example: "
        "Answer: [[50]].Let's think step by step and use less than 77 tokens:\n"
    )


def test_gsm8k_no_space_before_trigger_and_trailing_newline():
    text = question_prompt(QUESTION, budget=10)
    assert "[[50]].Let's" in text
    assert "[[50]]. Let's" not in text
    assert text.endswith("tokens:\n")
    assert not text.endswith("\n\n")


def test_direct_prompt_exact():
    assert direct_prompt(QUESTION) == (
        "Please answer the following question and give the answer directly without any reasoning process. "
        "Please Give the response by strictly following this format: [[answer]], for example: Answer: [[50]].\n"
        "Q: Janet has 3 apples and buys 5 more. How many apples does she have?"
    )


def test_multiple_choice_direct_prompt_is_the_scripts_own_string():
    # The scripts' template is "...[[A]].\n{question}\n" with {question} = stem, "\n", one line per option.
    assert direct_prompt("Which is even?", format="multiple_choice", options=["3", "4", "5", "7"]) == (
        "Please answer the following question directly and give the answer directly without any reasoning "
        "process. Please strictLy follow the format: [[choice]],for example: Choice: [[A]].\n"
        "Which is even?\nA. 3\nB. 4\nC. 5\nD. 7\n\n"
    )
    with pytest.raises(ValueError, match="options must be a non-empty list"):
        direct_prompt("Which is even?", format="multiple_choice")


def test_multiple_choice_vanilla_exact():
    text = question_prompt("What is 2 + 2?", format="multiple_choice", options=["3", "4", "5", "22"])
    assert text == (
        "What is 2 + 2?\n"
        "A. 3\n"
        "B. 4\n"
        "C. 5\n"
        "D. 22\n"
        "\n"
        "Please Give the response by strictly following this format: [[choice]],for example: Choice: [[A]].\n"
        "Let's think step by step:\n"
    )


def test_multiple_choice_budgeted_exact():
    text = question_prompt("Pick one.", budget=40, format="multiple_choice", options=("x", "y"))
    assert text == (
        "Pick one.\n"
        "A. x\n"
        "B. y\n"
        "\n"
        "Please Give the response by strictly following this format: [[choice]],for example: Choice: [[A]].\n"
        "Let's think step by step and use less than 40 tokens:\n"
    )


def test_chat_format_exact():
    assert question_prompt("Why is the sky blue?", format="chat") == "Why is the sky blue?\nLet's think step by step:\n"
    assert question_prompt("Why is the sky blue?", budget=30, format="chat") == (
        "Why is the sky blue?\nLet's think step by step and use less than 30 tokens:\n"
    )


# --- answer_messages ------------------------------------------------------------------------


def test_answer_messages_plain_and_with_system():
    expected_user = (
        "Q: 1+1?\n"
        "Please Give the response by strictly following this format: [[answer]], for example: "
        "Answer: [[50]].Let's think step by step and use less than 25 tokens:\n"
    )
    assert answer_messages("1+1?", budget=25) == [{"role": "user", "content": expected_user}]
    assert answer_messages("1+1?", budget=25, system_prompt="Be brief.") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": expected_user},
    ]


def test_answer_messages_direct():
    assert answer_messages("1+1?", direct=True) == [
        {
            "role": "user",
            "content": "Please answer the following question and give the answer directly without any reasoning "
            "process. Please Give the response by strictly following this format: [[answer]], for example: "
            "Answer: [[50]].\nQ: 1+1?",
        }
    ]


def test_answer_messages_direct_with_budget_raises():
    with pytest.raises(ValueError):
        answer_messages("1+1?", budget=50, direct=True)


# --- one conversation -----------------------------------------------------------------------


def test_one_conversation_gsm8k_exact():
    messages = one_conversation_messages(QUESTION, "Budget: [[40]]", budget=40)
    assert messages == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": SCRIPTS_ESTIMATION},
        {"role": "assistant", "content": "Budget: [[40]]"},
        {
            "role": "user",
            "content": "Now answer the question above.\n"
            "Please Give the response by strictly following this format: [[answer]], for example: "
            "Answer: [[50]].Let's think step by step and use less than 40 tokens:\n",
        },
    ]


def test_one_conversation_figure_variant_and_vanilla():
    messages = one_conversation_messages(QUESTION, "I cannot tell.", budget=None, variant="figure")
    assert messages[1] == {"role": "user", "content": FIGURE_ESTIMATION}
    assert messages[2] == {"role": "assistant", "content": "I cannot tell."}
    assert messages[3]["content"] == (
        "Now answer the question above.\n"
        "Please Give the response by strictly following this format: [[answer]], for example: "
        "Answer: [[50]].Let's think step by step:\n"
    )


def test_one_conversation_multiple_choice_exact():
    messages = one_conversation_messages(
        "What is 2 + 2?", "[[20]]", budget=20, format="multiple_choice", options=["3", "4"]
    )
    assert messages[3] == {
        "role": "user",
        "content": "Now answer the question above.\n"
        "A. 3\n"
        "B. 4\n"
        "Please Give the response by strictly following this format: [[choice]],for example: Choice: [[A]].\n"
        "Let's think step by step and use less than 20 tokens:\n",
    }


def test_one_conversation_chat_exact():
    messages = one_conversation_messages("Why?", "[[30]]", budget=30, format="chat")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[3]["content"] == (
        "Now answer the question above.\nLet's think step by step and use less than 30 tokens:\n"
    )


# --- bad input ------------------------------------------------------------------------------


EMPTY_QUESTIONS = ["", "   ", "\n\t "]


@pytest.mark.parametrize("question", EMPTY_QUESTIONS)
def test_empty_question_rejected_everywhere(question):
    with pytest.raises(ValueError):
        question_prompt(question)
    with pytest.raises(ValueError):
        direct_prompt(question)
    with pytest.raises(ValueError):
        estimation_messages(question)
    with pytest.raises(ValueError):
        answer_messages(question)
    with pytest.raises(ValueError):
        one_conversation_messages(question, "[[40]]", budget=40)


@pytest.mark.parametrize("question", [None, 42, b"bytes question", ["a list"]])
def test_non_str_question_rejected_everywhere(question):
    with pytest.raises(TypeError):
        question_prompt(question)
    with pytest.raises(TypeError):
        direct_prompt(question)
    with pytest.raises(TypeError):
        estimation_messages(question)
    with pytest.raises(TypeError):
        one_conversation_messages(question, "[[40]]", budget=40)


@pytest.mark.parametrize("options", [None, [], (), "ABCD"])
def test_multiple_choice_needs_options(options):
    with pytest.raises(ValueError):
        question_prompt("Pick one.", format="multiple_choice", options=options)
    with pytest.raises(ValueError):
        one_conversation_messages("Pick one.", "[[20]]", budget=20, format="multiple_choice", options=options)


def test_multiple_choice_too_many_options():
    with pytest.raises(ValueError):
        question_prompt("Pick one.", format="multiple_choice", options=[str(i) for i in range(11)])


@pytest.mark.parametrize("fmt", ["math", "GSM8K ", "", "mcq"])
def test_unknown_format_rejected(fmt):
    with pytest.raises(ValueError):
        question_prompt(QUESTION, format=fmt)
    with pytest.raises(ValueError):
        answer_messages(QUESTION, format=fmt)
    with pytest.raises(ValueError):
        one_conversation_messages(QUESTION, "[[40]]", budget=40, format=fmt)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_bad_budget_rejected_in_every_prompt(bad):
    with pytest.raises(ValueError):
        question_prompt(QUESTION, budget=bad)
    with pytest.raises(ValueError):
        question_prompt("Pick one.", budget=bad, format="multiple_choice", options=["a", "b"])
    with pytest.raises(ValueError):
        answer_messages(QUESTION, budget=bad, format="chat")
    with pytest.raises(ValueError):
        one_conversation_messages(QUESTION, "[[-1]]", budget=bad)


def _all_rendered_texts():
    texts = [direct_prompt(QUESTION), cot_trigger(None)]
    for budget in (None, 1, 20, 1024):
        texts.append(cot_trigger(budget))
        for fmt in ("gsm8k", "chat"):
            texts.append(question_prompt(QUESTION, budget=budget, format=fmt))
            texts.extend(m["content"] for m in answer_messages(QUESTION, budget=budget, format=fmt))
            conversation = one_conversation_messages(QUESTION, "no idea", budget=budget, format=fmt)
            texts.extend(m["content"] for m in conversation)
        texts.append(question_prompt(QUESTION, budget=budget, format="multiple_choice", options=["a", "b"]))
    for variant in ("scripts", "figure"):
        texts.extend(m["content"] for m in estimation_messages(QUESTION, variant=variant))
    return texts


def test_no_prompt_ever_says_minus_one_tokens():
    texts = _all_rendered_texts()
    assert len(texts) > 30
    for text in texts:
        assert "-1 tokens" not in text
        assert "less than 0 tokens" not in text
    # and the only way to ask for "-1" is refused
    with pytest.raises(ValueError):
        question_prompt(QUESTION, budget=-1)


def test_prompt_version_is_a_string():
    assert isinstance(prompts.PROMPT_VERSION, str) and prompts.PROMPT_VERSION
