"""Tests for tale_integrations.core.answers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tale_integrations.core.answers import (
    AnswerKind,
    answers_match,
    choices_match,
    extract_answer,
    extract_choice,
    extract_numeric,
    gsm8k_gold,
    gsm8k_zero_gold,
    is_correct,
    normalize_number,
)

DATA_DIR = Path(
    os.environ.get("TALE_DATA_DIR", Path(__file__).resolve().parents[2].parent / "shared" / "data")
)


def _load_jsonl(relative: str) -> list[dict]:
    path = DATA_DIR / relative
    if not path.is_file():
        pytest.skip(f"data file {path} missing (set TALE_DATA_DIR)")
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# --- normalisation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("$1,234.", "1234"), ("  72  ", "72"), ("#### 72", "72"), ("\\$5", "5"),
        ("Janet sells 9 eggs.\n#### 18", "18"), ("1,450,000", "1450000"), ("-3.", "-3"),
        ("0.75", "0.75"), ("3/4", "3/4"), ("", ""),
        ("1,0000", "1,0000"),  # not a thousands separator
    ],
)
def test_normalize_number(raw: str, expected: str) -> None:
    assert normalize_number(raw) == expected


# --- numeric extraction ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("First [[5]], then I corrected it: [[7]].", "7"),
        ("The answer is [[12]]. Check: 3 * 4 = 12, plus 99 spare.", "12"),
        ("[[ 42 ]]", "42"),
        ("It costs [[$1,234.]]", "1234"),
        ("[[#### 72]]", "72"),
        ("[[18 dollars]]", "18"),
        ("[[\\frac{1}{2}]]", "\\frac{1}{2}"),
        ("[[]] so the total is 4", "4"),
        ("Total: $1,234.", "1234"),
        ("Step 1: 16 - 3 - 4 = 9\n#### 72", "72"),
        ("The temperature is -3 degrees", "-3"),
        ("16-3-4=9", "9"),
        ("The ratio is 0.75", "0.75"),
        ("About .5 of it", ".5"),
        ("She ate 3/4 of the pie.", "3/4"),
        ("We had 1,000, then 2", "2"),
        ("The population was 1,000,000.", "1000000"),
        ("It weighs 5kg", "5"),
    ],
)
def test_extract_numeric(text: str, expected: str) -> None:
    assert extract_numeric(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "no digits here", "[[]]", "[[ $ ]]", "A - B"])
def test_extract_numeric_none(text: str) -> None:
    assert extract_numeric(text) is None


# --- multiple choice extraction --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[B]]", "B"),
        ("[[b]]", "B"), ("[[ C ]]", "C"), ("[[B. 6]]", "B"), ("[[(d)]]", "D"),
        ("Maybe [[A]]... no, [[C]]", "C"),
        ("[[C]] because the answer is A", "C"),
        ("[[Bob]] hmm\nThe answer is D.", "D"),
        ("The answer is B", "B"),
        ("the correct answer is (c).", "C"),
        ("The answer is A. Wait, the correct answer is **D**", "D"),
        ("The answer is: option B", "B"),
        ("I compute 6.\nSo A or C\n\n", "C"),
        ("Let me think.\nB", "B"),
    ],
)
def test_extract_choice(text: str, expected: str) -> None:
    assert extract_choice(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "\n\n", "The answer is a bit unclear", "[[E]]", "Bad Dogs", "A\nnothing here", "[[6]]"],
)
def test_extract_choice_none(text: str) -> None:
    assert extract_choice(text) is None


# --- numeric matching ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("72", "72"), ("0.5", "1/2"),
        ("\\frac{1}{2}", "0.5"),
        ("\\dfrac{1}{2}", "1/2"),
        ("\\tfrac12", "0.5"),
        ("\\boxed{\\frac{3}{4}}", "0.75"),
        ("\\boxed{18}", "18"),
        ("50%", "50"),
        ("50\\%", "50"),
        ("1,000", "1000"),
        ("1000", "1,000"),
        ("3.0", "3"),
        ("72", "72.00"),
        ("72.", "72"),
        ("\\$18", "18"),
        (".5", "0.5"),
        ("1e3", "1000"),
        ("2.5e-1", "1/4"),
        ("2*(3+4)-1", "13"),
        ("-(-2)", "2"),
        ("3 \\times 4", "12"),
        ("-31/3", "-31/3"),
        ("-62/6", "-31/3"),
        ("0.3333333", "1/3"),  # float noise within 1e-6
        ("1/3", "0.3333333"),
        ("0.30000000000000004", "0.3"),
        ("-35947632.96630001", "-35947632.9663"),
    ],
)
def test_answers_match_equivalent(pred: str, gold: str) -> None:
    assert answers_match(pred, gold)


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("7", "71"), ("71", "7"), ("1/3", "0.33"), ("0.33", "1/3"),
        ("50%", "0.5"),
        ("-35947633", "-35947632.9663"),  # integer vs decimal gold: exact only
        ("-35947632.97", "-35947632.9663"),  # less precise than the gold
        ("0", "-1/1255515"),  # tolerance never applies to exact forms
        ("1/0", "1"),
        ("eighteen", "18"),
        ("1 2", "12"),
        ("2+", "2"),
        ("9" * 201, "9" * 201 + "0"),
        ("1e999", "1"),
        ("1e60", "1" + "0" * 60),  # exponents beyond 50 are rejected, not evaluated
        ("(" * 60 + "1" + ")" * 60, "1"),
        ("__import__('os')", "0"),
        ("2**3", "8"),
    ],
)
def test_answers_match_not_equivalent(pred: str, gold: str) -> None:
    assert not answers_match(pred, gold)


@pytest.mark.parametrize("gold", ["0", "72", "1/2"])
def test_answers_match_none_prediction_is_wrong(gold: str) -> None:
    assert answers_match(None, gold, text=f"[[{gold}]]") is False


@pytest.mark.parametrize("gold", ["", "  ", "$", "#### "])
def test_answers_match_empty_gold(gold: str) -> None:
    with pytest.raises(ValueError, match="gold"):
        answers_match("1", gold)


def test_answers_match_literal_gold_in_text() -> None:
    text = "I think [[1,000]] is right; the units are 1000 dollars, i.e. 1000 apples"
    assert answers_match("apples", "1,000", text=text)
    assert answers_match("apples", "1000", text="[[1000]] apples")
    assert not answers_match("apples", "1000", text="1000 apples")
    assert not answers_match("apples", "1000")


def test_answers_match_identical_strings_without_numbers() -> None:
    assert answers_match("x+1", "x+1")
    assert not answers_match("x+1", "x+2")


# --- choice matching -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [("B", "B", True), ("b", "B", True), (" c ", "C", True), ("A", "B", False), (None, "A", False)],
)
def test_choices_match(pred: str | None, gold: str, expected: bool) -> None:
    assert choices_match(pred, gold) is expected


# --- gold parsing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\n#### 18", "18"),
        ("... #### 1,450,000", "1450000"),
        ("x\n#### -10", "-10"),
        ("a #### 1 b #### 2", "2"),
        ("####5", "5"),
    ],
)
def test_gsm8k_gold(answer: str, expected: str) -> None:
    assert gsm8k_gold(answer) == expected


@pytest.mark.parametrize("answer", ["no marker here", "", "steps\n####   "])
def test_gsm8k_gold_errors(answer: str) -> None:
    with pytest.raises(ValueError, match="answer"):
        gsm8k_gold(answer)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (48.0, "48"), (2.5, "2.5"), (7.22, "7.22"), (0.85, "0.85"), (-3.0, "-3"), (7, "7"),
        (0.1 + 0.2, "0.3"), (1e-7, "0.0000001"), (1e20, "100000000000000000000"),
        ("48.0", "48"), ("2.50", "2.5"), ("1,000", "1000"),
    ],
)
def test_gsm8k_zero_gold(answer: float | int | str, expected: str) -> None:
    assert gsm8k_zero_gold(answer) == expected


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (True, TypeError), (None, TypeError), ([48.0], TypeError),
        (float("nan"), ValueError), (float("inf"), ValueError), ("forty-eight", ValueError),
        ("", ValueError), ("nan", ValueError), ("1e999999999", ValueError),
    ],
)
def test_gsm8k_zero_gold_errors(answer: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="answer"):
        gsm8k_zero_gold(answer)  # type: ignore[arg-type]


# --- kinds and the combined helpers ----------------------------------------------------


def test_answer_kind_values() -> None:
    assert [kind.value for kind in AnswerKind] == ["numeric", "choice"]
    assert AnswerKind("choice") is AnswerKind.CHOICE


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("so [[B]] and 6", "choice", "B"),
        ("so [[B]] and 6", AnswerKind.CHOICE, "B"),
        ("so [[B. 6]]", "numeric", "6"),
        ("so [[B. 6]]", "CHOICE", "B"),
        ("The total is 12", AnswerKind.NUMERIC, "12"),
        ("nothing", "numeric", None),
    ],
)
def test_extract_answer(text: str, kind: AnswerKind | str, expected: str | None) -> None:
    assert extract_answer(text, kind) == expected


def test_extract_answer_default_kind_is_numeric() -> None:
    assert extract_answer("so [[B. 6]]") == "6"
    assert is_correct("so [[B. 6]]", "6")


def test_non_numeric_last_bracket_still_wins() -> None:
    assert extract_numeric("I computed 7, so [[seven]]") == "seven"
    assert not is_correct("I computed 7, so [[seven]]", "7")


@pytest.mark.parametrize(
    ("text", "gold", "kind", "expected"),
    [
        ("So the answer is [[72]].", "72", "numeric", True),
        ("So the answer is [[72.0]].", "72", "numeric", True),
        ("So the answer is [[71]].", "72", "numeric", False),
        ("[[1,000]] then a stray 5", "1000", "numeric", True),
        ("No number at all", "0", "numeric", False),
        ("Thus [[b]]", "B", "choice", True),
        ("Thus [[C]]", "B", "choice", False),
        ("I cannot decide", "B", "choice", False),
    ],
)
def test_is_correct(text: str, gold: str, kind: str, expected: bool) -> None:
    assert is_correct(text, gold, kind) is expected


@pytest.mark.parametrize("kind", ["cloze", "", 3, None])
def test_unknown_kind(kind: object) -> None:
    with pytest.raises(ValueError, match=r"kind.*'numeric', 'choice'"):
        extract_answer("[[1]]", kind)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind"):
        is_correct("[[1]]", "1", kind)  # type: ignore[arg-type]


# --- type errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: extract_numeric(42), "text"),
        (lambda: extract_numeric(None), "text"),
        (lambda: extract_choice(b"[[B]]"), "text"),
        (lambda: normalize_number(1.5), "s"),
        (lambda: answers_match(5, "5"), "pred"),
        (lambda: answers_match("5", 5), "gold"),
        (lambda: answers_match("5", "5", text=["[[5]]"]), "text"),
        (lambda: choices_match(1, "A"), "pred"),
        (lambda: choices_match("A", None), "gold"),
        (lambda: gsm8k_gold(72), "answer"),
        (lambda: extract_answer(7, "numeric"), "text"),
        (lambda: is_correct(7, "7"), "text"),
        (lambda: is_correct("[[7]]", 7), "gold"),
    ],
)
def test_type_errors(call: object, name: str) -> None:
    with pytest.raises(TypeError, match=rf"\b{name}\b"):
        call()  # type: ignore[operator]


def test_choices_match_empty_gold() -> None:
    with pytest.raises(ValueError, match="gold"):
        choices_match("A", "  ")


# --- real data -------------------------------------------------------------------------


def test_every_gsm8k_test_gold_parses_and_matches() -> None:
    rows = _load_jsonl("gsm8k/test.jsonl")
    assert len(rows) > 1000
    for row in rows:
        gold = gsm8k_gold(row["answer"])
        assert gold and "," not in gold and "####" not in gold
        assert is_correct(f"... so the answer is [[{gold}]]", gold), gold
        assert answers_match(extract_numeric(row["answer"]), gold), row["answer"]


def test_every_gsm8k_zero_gold_parses_and_matches() -> None:
    rows = _load_jsonl("gsm8k_zero/test.jsonl")
    assert len(rows) > 2000
    for row in rows:
        gold = gsm8k_zero_gold(row["answer"])
        assert float(gold) == row["answer"], (gold, row["answer"])
        assert "e" not in gold.lower() and not gold.endswith(".0")
        assert is_correct(f"... so the answer is [[{gold}]]", gold), gold
        assert is_correct(f"I get {row['answer']!r}.", gold), (row["answer"], gold)


def test_gsm8k_known_golds() -> None:
    golds = [gsm8k_gold(row["answer"]) for row in _load_jsonl("gsm8k/test.jsonl")]
    assert golds[0] == "18"
    assert "1450000" in golds and "-10" in golds


def test_mathbench_cloze_golds_self_match() -> None:
    rows = _load_jsonl("mathbench/arithmetic_cloze_en.jsonl")
    for row in rows:
        gold = row["answer"]
        assert extract_numeric(f"The result is {gold}.") == gold
        assert is_correct(f"[[{gold}]]", gold)
    assert rows[0]["answer"] == "-35947632.9663"
    assert not answers_match("-35947633", rows[0]["answer"])


def test_mathbench_choice_golds() -> None:
    rows = _load_jsonl("mathbench/middle_single_choice_en.jsonl")
    for row in rows:
        gold = row["answer"]
        assert len(row["options"]) == 4
        assert is_correct(f"The correct answer is ({gold.lower()}).", gold, AnswerKind.CHOICE)
        wrong = next(letter for letter in "ABCD" if letter != gold)
        assert not is_correct(f"[[{wrong}]]", gold, "choice")
