"""Answer extraction and checking for TALE evaluations (GSM8K, GSM8K-Zero, MathBench).

Models put their final answer in double brackets (``[[72]]``, ``[[B]]``). Numbers are
compared through a tiny, bounded parser to :class:`fractions.Fraction` (never ``eval``),
so ``0.5``, ``1/2`` and ``\\frac{1}{2}`` are equal. Standard library only. Every public
function raises TypeError, naming the argument, when a text argument is not a str.
"""

from __future__ import annotations

import enum
import operator
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from .checks import is_int
from .errors import TaleTypeError

__all__ = [
    "AnswerKind", "answers_match", "choices_match", "extract_answer", "extract_choice",
    "extract_numeric", "gsm8k_gold", "gsm8k_zero_gold", "is_correct", "normalize_number", "numbers_in",
]

_MAX_EXPR_CHARS, _MAX_EXPONENT, _MAX_DIGITS, _MAX_DEPTH = 200, 50, 100, 50
_REL_TOL = Fraction(1, 10**6)

_BRACKET_RE = re.compile(r"\[\[(.*?)\]\]", re.DOTALL)
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER_RE = re.compile(
    r"(?<![\w.])-?(?:(?:\d{1,3}(?:,\d{3})+(?!\d|,\d)|\d+)(?:\.\d+)?(?:/\d+)?|\.\d+)"
    r"(?:[eE][-+]?\d+)?"
)
_CHOICE_BRACKET_RE = re.compile(r"^\s*\(?([A-Da-d])(?![A-Za-z])")
_CHOICE_PHRASE_RE = re.compile(
    r"(?i:the\s+(?:correct\s+)?answer\s+is)\s*:?\s*(?i:(?:option|choice)\s+)?[*\s]*"
    r"(?:\(([A-Da-d])\)|([A-D])(?![A-Za-z0-9]))"
)
_CHOICE_LINE_RE = re.compile(r"(?<![A-Za-z0-9])([A-D])(?![A-Za-z0-9])")
_TOKEN_RE = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)(?:[eE]([-+]?\d+))?|([-+*/()]))")
_FRAC_RE = re.compile(r"\\[dt]?frac")
_WRAPPER_RE = re.compile(r"\\(?:boxed|fbox|mathrm|mathbf)\s*\{")
_LATEX_REPLACEMENTS = (
    ("\\left", ""), ("\\right", ""), ("\\cdot", "*"), ("\\times", "*"), ("\\div", "/"),
    ("\\%", ""), ("%", ""), ("\\!", ""), ("\\,", ""), ("\u00d7", "*"), ("\u00f7", "/"),
    ("\u2212", "-"), ("{", "("), ("}", ")"),
)

_OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_Number = tuple[Fraction, int | None]  # (exact value, fractional digits if written as a decimal)


class AnswerKind(enum.StrEnum):
    """The kind of answer a benchmark expects."""

    NUMERIC = "numeric"
    CHOICE = "choice"


def _require_str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


def normalize_number(s: str) -> str:
    """Normalise a numeric answer candidate.

    Drops everything up to the last ``####``, ``$`` and ``\\$``, commas used as
    thousands separators, surrounding whitespace and one trailing period.

    Args:
        s: The candidate text, e.g. ``"$1,234."`` or ``"#### 72"``.

    Returns:
        The normalised text, e.g. ``"1234"`` or ``"72"`` (possibly empty).
    """
    _require_str(s, "s")
    if "####" in s:
        s = s.rsplit("####", 1)[1]
    s = _THOUSANDS_RE.sub("", s.replace("\\$", "").replace("$", "")).strip()
    return s[:-1].rstrip() if s.endswith(".") else s


def numbers_in(text: str) -> list[str]:
    """Every number-like token of ``text``, normalised, in order (``"1,000 and 3.5."`` -> ``["1000", "3.5"]``)."""
    _require_str(text, "text")
    return [n for n in (normalize_number(m) for m in _NUMBER_RE.findall(text)) if n]


def extract_numeric(text: str) -> str | None:
    """Extract the final numeric answer from a model output.

    The last non-empty ``[[...]]`` wins, normalised; when its content is not a number
    or simple expression but contains numbers (``[[18 dollars]]``), its last number is
    used. Without brackets, the last number-like token of the text (``-3``, ``0.75``,
    ``.5``, ``1,000``, ``3/4``, ``1e-6``) is used.

    Args:
        text: The model output.

    Returns:
        The normalised answer, or None when nothing was found (never ``""``).
    """
    _require_str(text, "text")
    for content in reversed(_BRACKET_RE.findall(text)):
        if candidate := normalize_number(content):
            if _parse(candidate) is None and (numbers := _NUMBER_RE.findall(candidate)):
                candidate = normalize_number(numbers[-1])
            return candidate
    numbers = _NUMBER_RE.findall(text)
    return (normalize_number(numbers[-1]) or None) if numbers else None


def extract_choice(text: str) -> str | None:
    """Extract a multiple-choice letter (A-D) from a model output.

    Precedence: the last ``[[...]]`` whose content starts with A-D (any case) not
    followed by a letter (``[[ B ]]``, ``[[B. 6]]``, ``[[(c)]]``); else the letter after
    the last "the (correct) answer is" (uppercase, or any case in parentheses); else
    the last standalone uppercase A-D on the last non-empty line.

    Args:
        text: The model output.

    Returns:
        An uppercase letter, or None.
    """
    _require_str(text, "text")
    for content in reversed(_BRACKET_RE.findall(text)):
        if match := _CHOICE_BRACKET_RE.match(content):
            return match.group(1).upper()
    if phrases := _CHOICE_PHRASE_RE.findall(text):
        return "".join(phrases[-1]).upper()
    lines = [line for line in text.splitlines() if line.strip()]
    letters = _CHOICE_LINE_RE.findall(lines[-1]) if lines else []
    return letters[-1] if letters else None


def _matching_brace(s: str, start: int) -> int:
    depth = 0
    for i in range(start, len(s)):
        depth += {"{": 1, "}": -1}.get(s[i], 0)
        if depth == 0:
            return i
    raise ValueError("unbalanced braces")


def _frac_arg(s: str, i: int) -> tuple[str, int]:
    i = len(s) - len(s[i:].lstrip())
    if i >= len(s):
        raise ValueError("missing \\frac argument")
    if s[i] != "{":
        return s[i], i + 1  # \frac12 shorthand
    end = _matching_brace(s, i)
    return s[i + 1 : end], end + 1


def _delatex(s: str) -> str:
    while match := _WRAPPER_RE.search(s):
        end = _matching_brace(s, match.end() - 1)
        s = s[: match.start()] + s[match.end() : end] + s[end + 1 :]
    while match := _FRAC_RE.search(s):
        num, i = _frac_arg(s, match.end())
        den, i = _frac_arg(s, i)
        s = f"{s[: match.start()]}(({num})/({den})){s[i:]}"
    for old, new in _LATEX_REPLACEMENTS:
        s = s.replace(old, new)
    return s


def _tokenize(s: str) -> list[str | _Number]:
    tokens: list[str | _Number] = []
    pos, s = 0, s.rstrip()
    while pos < len(s):
        if (match := _TOKEN_RE.match(s, pos)) is None:
            raise ValueError(f"unexpected character at {pos}")
        pos = match.end()
        numeral, exponent, op = match.groups()
        if op is not None:
            tokens.append(op)
            continue
        exp = int(exponent or 0)
        if abs(exp) > _MAX_EXPONENT or len(numeral) > _MAX_DIGITS:
            raise ValueError("number too large")
        value = Fraction(numeral.rstrip(".") or "0") * Fraction(10) ** exp
        decimal = "." in numeral or exp < 0
        tokens.append((value, max(0, len(numeral.partition(".")[2]) - exp) if decimal else None))
    return tokens


def _evaluate(tokens: list[str | _Number]) -> _Number:
    """Recursive descent over + - * / and parentheses; returns (value, max decimals)."""
    pos, decimals = 0, None

    def peek() -> object:
        return tokens[pos] if pos < len(tokens) else None

    def binary(depth: int, ops: tuple[str, str], operand: Callable[[int], Fraction]) -> Fraction:
        nonlocal pos
        value = operand(depth)
        while (op := peek()) in ops:
            pos += 1
            value = _OPERATORS[op](value, operand(depth))
        return value

    def expr(depth: int) -> Fraction:
        return binary(depth, ("+", "-"), lambda d: binary(d, ("*", "/"), unary))

    def unary(depth: int) -> Fraction:
        nonlocal pos, decimals
        sign = 1
        while (op := peek()) in ("+", "-"):
            pos, sign = pos + 1, (-sign if op == "-" else sign)
        token, pos = peek(), pos + 1
        if isinstance(token, tuple):
            if token[1] is not None:
                decimals = max(decimals or 0, token[1])
            return sign * token[0]
        if token != "(" or depth >= _MAX_DEPTH:
            raise ValueError(f"unexpected {token!r}")
        value = expr(depth + 1)
        if peek() != ")":
            raise ValueError("missing ')'")
        pos += 1
        return sign * value

    result = expr(0)
    if pos != len(tokens):
        raise ValueError("trailing input")
    return result, decimals


def _parse(s: str) -> _Number | None:
    """Parse a number or simple arithmetic expression exactly; None if not possible."""
    if len(s) > _MAX_EXPR_CHARS:
        return None
    try:
        text = _delatex(normalize_number(s))
        if not text or len(text) > 2 * _MAX_EXPR_CHARS or "\\" in text:
            return None
        tokens = _tokenize(text)
        return _evaluate(tokens) if tokens else None
    except (ValueError, ZeroDivisionError):
        return None


def _close(pred: _Number, gold: _Number) -> bool:
    """Tolerance match; see :func:`answers_match` for when it applies."""
    (p_value, p_decimals), (g_value, g_decimals) = pred, gold
    if abs(p_value - g_value) > _REL_TOL * max(1, abs(g_value)):
        return False
    if g_decimals is None:
        return p_decimals is not None
    if p_decimals is not None:
        return p_decimals >= g_decimals
    den = p_value.denominator  # an exact pred only if it has no finite decimal expansion
    return pow(10, den.bit_length(), den) != 0


def answers_match(pred: str | None, gold: str, *, text: str | None = None) -> bool:
    """Check a numeric prediction against a gold answer.

    Correct when the normalised strings are equal; or ``text`` contains ``[[gold]]``
    literally (raw or normalised gold, anywhere); or both parse to the same exact
    number or ``+ - * /`` expression (``0.5 == 1/2 == \\frac{1}{2} == \\boxed{1/2}``).
    A percentage equals its number (``50% == 50``, not ``0.5``): GSM8K golds are plain
    numbers. The tolerance ``|pred - gold| <= 1e-6 * max(1, |gold|)`` only covers
    float-like decimals: a decimal pred vs an exact gold (``0.3333333`` vs ``1/3``), a
    decimal pred with at least the fractional digits of a decimal gold, or an exact
    pred with no finite decimal expansion vs a decimal gold (``1/3`` vs
    ``0.3333333``). So ``-35947633`` and ``-35947632.97`` never match ``-35947632.9663``.

    Args:
        pred: The extracted prediction; None (nothing extracted) is never correct.
        gold: The gold answer.
        text: The full model output, enabling the literal ``[[gold]]`` rule.

    Returns:
        Whether the prediction is correct.

    Raises:
        ValueError: If ``gold`` is empty after normalisation.
    """
    if pred is not None:
        _require_str(pred, "pred")
    if text is not None:
        _require_str(text, "text")
    if not (gold_norm := normalize_number(_require_str(gold, "gold"))):
        raise ValueError("gold must not be empty")
    if pred is None:
        return False
    if (pred_norm := normalize_number(pred)) == gold_norm:
        return True
    if text is not None and (f"[[{gold_norm}]]" in text or f"[[{gold.strip()}]]" in text):
        return True
    pred_num, gold_num = _parse(pred_norm), _parse(gold_norm)
    if pred_num is None or gold_num is None:
        return False
    return pred_num[0] == gold_num[0] or _close(pred_num, gold_num)


def choices_match(pred: str | None, gold: str) -> bool:
    """Compare a choice letter with the gold letter, ignoring case and surrounding spaces.

    Args:
        pred: The extracted letter, or None (never correct).
        gold: The gold letter, e.g. ``"B"``.

    Returns:
        Whether the letters are equal.

    Raises:
        ValueError: If ``gold`` is empty.
    """
    if pred is not None:
        _require_str(pred, "pred")
    if not _require_str(gold, "gold").strip():
        raise ValueError("gold must not be empty")
    return pred is not None and pred.strip().upper() == gold.strip().upper()


def gsm8k_gold(answer: str) -> str:
    """Return the gold of a GSM8K answer: the text after the last ``####``, no commas.

    Args:
        answer: The GSM8K ``answer`` field, ending with ``#### <number>``.

    Returns:
        The gold, e.g. ``"1450000"`` for ``"... #### 1,450,000"``.

    Raises:
        ValueError: If ``answer`` has no ``####`` or nothing after it.
    """
    if "####" not in _require_str(answer, "answer"):
        raise ValueError("answer has no '####' marker")
    if not (gold := answer.rsplit("####", 1)[1].replace(",", "").strip()):
        raise ValueError("answer has nothing after its '####' marker")
    return gold


def gsm8k_zero_gold(answer: float | int | str) -> str:
    """Return a GSM8K-Zero gold (a float in the data) as a plain number string.

    Args:
        answer: The gold, e.g. ``48.0``, ``2.5``, ``7`` or ``"48.0"``.

    Returns:
        ``"48"`` when whole, else a plain decimal without float noise or exponent
        (``2.5 -> "2.5"``, ``0.1 + 0.2 -> "0.3"``, ``1e-7 -> "0.0000001"``).

    Raises:
        TypeError: If ``answer`` is not an int, float or str (bool included).
        ValueError: If ``answer`` is NaN, infinite, or a string that is not a number.
    """
    if not (is_int(answer) or isinstance(answer, float | str)):
        raise TaleTypeError(f"answer must be an int, float or str, got {type(answer).__name__}")
    if isinstance(answer, int):
        return str(answer)
    # 15 significant digits drop float noise such as 0.30000000000000004.
    text = format(answer, ".15g") if isinstance(answer, float) else normalize_number(answer)
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"answer is not a number: {answer!r}") from None
    if not number.is_finite() or abs(number.adjusted()) > _MAX_DIGITS:
        raise ValueError(f"answer must be a finite number of sensible size, got {answer!r}")
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")


def _kind(kind: AnswerKind | str) -> AnswerKind:
    try:
        return AnswerKind(kind.lower() if isinstance(kind, str) else kind)
    except ValueError:
        allowed = ", ".join(repr(k.value) for k in AnswerKind)
        raise ValueError(f"kind must be one of {allowed}, got {kind!r}") from None


def extract_answer(text: str, kind: AnswerKind | str = "numeric") -> str | None:
    """Extract the final answer of the given kind from a model output.

    Args:
        text: The model output.
        kind: ``"numeric"`` (cloze) or ``"choice"`` (A-D), case-insensitive.

    Returns:
        The extracted answer, or None.

    Raises:
        ValueError: If ``kind`` is unknown.
    """
    kind = _kind(kind)
    return extract_numeric(text) if kind is AnswerKind.NUMERIC else extract_choice(text)


def is_correct(text: str, gold: str, kind: AnswerKind | str = "numeric") -> bool:
    """Extract the answer from a model output and check it against the gold.

    Args:
        text: The model output (for numeric kinds also used for the ``[[gold]]`` rule).
        gold: The gold answer (a number, or a letter A-D).
        kind: ``"numeric"`` (cloze) or ``"choice"`` (A-D), case-insensitive.

    Returns:
        Whether the output's answer is correct.

    Raises:
        ValueError: If ``kind`` is unknown or ``gold`` is empty.
    """
    kind = _kind(kind)
    pred = extract_answer(text, kind)
    if kind is AnswerKind.NUMERIC:
        return answers_match(pred, gold, text=text)
    return choices_match(pred, gold)
