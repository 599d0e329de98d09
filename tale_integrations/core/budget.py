"""Token budgets: parsing an estimator's reply and turning a raw estimate into a safe budget.

`parse_budget` reads the first ``[[digits]]`` of an estimator's reply. `BudgetPolicy` owns every
number a user may want to change (the floor, the cap, the scale α, the fallback) and is the only
place a budget is clamped. The result is a `Budget` value that says where the number came from.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from .checks import check_choice, check_flag, check_int, check_number, check_positive_int, is_int
from .errors import TaleTypeError

__all__ = ["Budget", "BudgetEnforcement", "BudgetPolicy", "OnParseFailure", "parse_budget"]

# Budgets longer than this many digits are absurd; they are read as "too large" without converting
# the digits (Python refuses to convert very long digit strings, and nothing needs them).
_MAX_DIGITS = 9
_TOO_LARGE = 10**_MAX_DIGITS

_STRICT = re.compile(r"\[\[(\d+)\]\]")
_LENIENT_BRACKETS = re.compile(r"\[\[\s*(\d{1,3}(?:,\d{3})+|\d+)\s*\]\]")
_LENIENT_LABEL = re.compile(r"\bbudget\s*[:=]\s*(\d{1,3}(?:,\d{3})+|\d+)\b", re.IGNORECASE)


def _to_int(digits: str) -> int:
    digits = digits.replace(",", "").lstrip("0") or "0"
    return _TOO_LARGE if len(digits) > _MAX_DIGITS else int(digits)


def parse_budget(text: str, *, lenient: bool = True) -> int | None:
    """Read the budget from an estimator's reply.

    The paper's rule: the first ``[[<digits>]]`` in the reply. When none is present and ``lenient``
    is true, two fallbacks are tried in order: a bracketed number with spaces or thousands
    separators (``[[ 40 ]]``, ``[[1,000]]``), then a label (``Budget: 40``). A number longer than nine
    digits reads as 10**9 (the policy's cap then applies).

    Args:
        text: The estimator's reply.
        lenient: Also accept the two fallback forms.

    Returns:
        The number (possibly 0, which the policy raises to its floor), or None when no budget is found.

    Raises:
        TypeError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    match = _STRICT.search(text)
    if match is None and lenient:
        match = _LENIENT_BRACKETS.search(text) or _LENIENT_LABEL.search(text)
    return None if match is None else _to_int(match.group(1))


class OnParseFailure(enum.StrEnum):
    """What to do when the estimator gives no usable number."""

    #: Use `BudgetPolicy.fallback_budget`.
    DEFAULT = "default"
    #: Send plain chain-of-thought with no budget.
    VANILLA = "vanilla"


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    """A resolved budget for one question.

    Attributes:
        tokens: The budget written into the prompt, or None for plain chain-of-thought.
        raw: The estimator's number before scaling and clamping (None when there was none).
        source: Who produced it: the estimator's name, ``"fixed"``, ``"caller"`` or ``"fallback"``.
        adjusted: Why ``tokens`` differs from ``raw``, if it does: ``"scaled"``, ``"raised to floor"``,
            ``"lowered to cap"``, ``"parse failed"`` or ``"estimator failed"`` (comma-joined).
    """

    tokens: int | None
    raw: int | None = None
    source: str = "fixed"
    adjusted: str | None = None

    def __post_init__(self) -> None:
        check_positive_int("Budget.tokens", self.tokens, optional=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetPolicy:
    """How a raw estimate becomes the budget in the prompt.

    ``tokens = clamp(ceil(raw * scale), min_budget, min(max_budget, limit))``.

    Attributes:
        min_budget: The floor. Budgets that are too small backfire (token elasticity: GPT-4o-mini
            wrote 157 tokens under "less than 10" but 86 under "less than 50"), so estimates below
            the floor are raised to it. Default 20.
        max_budget: The cap. Default 1024, the paper's output-token limit.
        scale: α, multiplies the raw estimate before clamping (the paper's α = 2 traded tokens for
            accuracy). Default 1.0.
        on_parse_failure: `OnParseFailure`: ``"default"`` (use ``fallback_budget``) or
            ``"vanilla"`` (no budget). Default ``"default"``.
        fallback_budget: The budget used when the estimate is missing. Default 128.
        lenient_parse: Let a model estimator also read ``[[ 40 ]]``, ``[[1,000]]`` and ``Budget: 40``
            (`parse_budget`); False reads only the paper's ``[[<digits>]]``. Default True.

    `BudgetPolicy.paper` is the reference scripts' policy (no floor, strict parsing).
    """

    min_budget: int = 20
    max_budget: int = 1024
    scale: float = 1.0
    on_parse_failure: OnParseFailure | str = OnParseFailure.DEFAULT
    fallback_budget: int = 128
    lenient_parse: bool = True

    @classmethod
    def paper(cls) -> BudgetPolicy:
        """The paper's rule, as the reference scripts apply it: the raw estimate goes into the prompt.

        No floor (``min_budget=1``: only an estimate of 0 is raised, to 1, and recorded as raised), the
        paper's cap of 1024, no scaling, strict ``[[<digits>]]`` parsing. A reply with no budget is
        where the scripts write "use less than -1 tokens"; this policy asks that question with plain
        chain-of-thought instead (``on_parse_failure="vanilla"``), and the record says "parse failed".
        """
        return cls(min_budget=1, max_budget=1024, scale=1.0, on_parse_failure=OnParseFailure.VANILLA,
                   fallback_budget=128, lenient_parse=False)

    @property
    def is_paper(self) -> bool:
        """True for the policy `paper` returns."""
        return self == BudgetPolicy.paper()

    def __post_init__(self) -> None:
        for name in ("min_budget", "max_budget", "fallback_budget"):
            check_positive_int(f"BudgetPolicy.{name}", getattr(self, name))
        if self.max_budget < self.min_budget:
            raise ValueError(
                f"BudgetPolicy.max_budget ({self.max_budget}) is below min_budget ({self.min_budget}); "
                "raise max_budget or lower min_budget"
            )
        if self.max_budget > _TOO_LARGE:
            raise ValueError(f"BudgetPolicy.max_budget must be at most {_TOO_LARGE}, got {self.max_budget}")
        if not self.min_budget <= self.fallback_budget <= self.max_budget:
            raise ValueError(
                f"BudgetPolicy.fallback_budget ({self.fallback_budget}) must lie between min_budget "
                f"({self.min_budget}) and max_budget ({self.max_budget})"
            )
        check_number("BudgetPolicy.scale", self.scale, above=0)
        check_flag("BudgetPolicy.lenient_parse", self.lenient_parse)
        choices = [m.value for m in OnParseFailure]
        check_choice("BudgetPolicy.on_parse_failure", self.on_parse_failure, choices)
        object.__setattr__(self, "on_parse_failure", OnParseFailure(self.on_parse_failure))

    def _cap(self, limit: int | None) -> int:
        if limit is None:
            return self.max_budget
        if not is_int(limit):
            raise TaleTypeError(f"limit must be an int or None, got {type(limit).__name__}")
        return max(1, min(self.max_budget, limit))

    def resolve(self, raw: int | None, *, source: str, limit: int | None = None, failure: str | None = None) -> Budget:
        """Turn a raw estimate into a `Budget`.

        Args:
            raw: The estimator's number, or None when it gave none.
            source: Name of the estimator (recorded in the `Budget`).
            limit: A further cap from the model, such as the room left in its context window. When
                it is below ``min_budget``, ``limit`` wins: a budget must fit the model.
            failure: Why ``raw`` is None (default ``"parse failed"``).

        Returns:
            A `Budget`; its ``tokens`` are never zero, negative or above the cap.
        """
        cap = self._cap(limit)
        if raw is None:
            reason = failure or "parse failed"
            if self.on_parse_failure is OnParseFailure.VANILLA:
                return Budget(tokens=None, raw=None, source=source, adjusted=reason)
            return Budget(tokens=min(self.fallback_budget, cap), raw=None, source="fallback", adjusted=reason)
        if not is_int(raw):
            raise TaleTypeError(f"raw must be an int or None, got {type(raw).__name__}")
        notes = []
        value = raw
        if self.scale != 1:
            # Exact arithmetic: ceil(100 * 1.1) must be 110, not 111 from float error.
            value = min(math.ceil(raw * Fraction(str(self.scale))), _TOO_LARGE)
            notes.append("scaled")
        if value < self.min_budget:
            value = self.min_budget
            notes.append("raised to floor")
        if value > cap:
            value = cap
            notes.append("lowered to cap")
        return Budget(tokens=value, raw=raw, source=source, adjusted=", ".join(notes) or None)

    def fixed(self, tokens: int, *, source: str = "fixed", limit: int | None = None) -> Budget:
        """A budget the caller chose: validated, kept as given unless it exceeds the model's limit.

        The floor and cap of the policy apply to estimates, not to a number the caller asked for;
        only a model ``limit`` lowers it (and says so).

        Raises:
            ValueError: ``tokens`` is not a positive int.
        """
        check_positive_int("budget", tokens)
        if limit is not None and tokens > limit:
            return Budget(tokens=max(1, limit), raw=tokens, source=source, adjusted="lowered to cap")
        return Budget(tokens=tokens, raw=tokens, source=source)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (round-trips through ``BudgetPolicy(**d)``)."""
        d = dataclasses.asdict(self)
        d["on_parse_failure"] = str(self.on_parse_failure)
        return d


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetEnforcement:
    """Budget enforcement during decoding, beyond the prompt (for backends that support it).

    With a budget B the model reasons freely for ``ceil(B * factor)`` tokens; if it has not finished
    by then, the backend writes the format's wrap-up text (``core.prompts.WRAP_UP``: "The final
    answer is [[" for numeric questions), lets the model write the answer, closes it and stops,
    all within ``answer_reserve`` more tokens. An answer is never cut off by the cap: the reasoning
    phase is shortened so that the reserve always fits under ``max_tokens``.

    Attributes:
        factor: Multiplies the budget to give the free-reasoning length. Default 1.0.
        answer_reserve: Tokens for wrap-up, answer, closing and end of turn. Default 24.
    """

    factor: float = 1.0
    answer_reserve: int = 24

    def __post_init__(self) -> None:
        check_number("BudgetEnforcement.factor", self.factor, above=0)
        check_int("BudgetEnforcement.answer_reserve", self.answer_reserve, low=8)

    def reasoning_tokens(self, budget: int, max_tokens: int) -> int:
        """Free-reasoning length for ``budget`` under a hard cap of ``max_tokens`` output tokens."""
        check_positive_int("budget", budget)
        if max_tokens <= self.answer_reserve:
            raise ValueError(
                f"max_tokens ({max_tokens}) must exceed the answer reserve ({self.answer_reserve}) when "
                "budgets are enforced; raise max_tokens or lower BudgetEnforcement.answer_reserve"
            )
        return max(0, min(math.ceil(budget * Fraction(str(self.factor))), max_tokens - self.answer_reserve))

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        return dataclasses.asdict(self)
