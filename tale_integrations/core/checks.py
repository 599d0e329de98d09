"""Argument checks shared by the whole package: one wording, one place.

Each check returns the value it accepted and raises `TaleValueError` (a ``ValueError``) naming the
argument, what it must be and what it got. ``bool`` is never accepted as a number (``True`` is an
``int`` to Python, never a budget to us). ``error`` lets a caller raise its own subclass (a
`DatasetError`, say) with the same message.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import TaleValueError

__all__ = [
    "check_choice", "check_flag", "check_int", "check_number", "check_positive_int", "is_int", "is_number",
]


def is_int(value: Any) -> bool:
    """Whether ``value`` is an ``int`` and not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether ``value`` is a finite ``int`` or ``float`` and not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _describe(kind: str, low: float | None, high: float | None, above: float | None) -> str:
    """``"a positive int"``, ``"an int from 1 to 9"``, ``"a number >= 0.5"``..."""
    if kind == "int" and high is None and above is None and low in (0, 1):
        return "a positive int" if low == 1 else "a non-negative int"
    text = "an int" if kind == "int" else "a number"
    if above == 0 and low is None and high is None:
        return f"a positive {kind}"
    if low is not None and high is not None:
        return f"{text} from {low} to {high}"
    bounds = [f"{sign} {bound}" for sign, bound in ((">", above), (">=", low), ("<=", high)) if bound is not None]
    if bounds:
        return f"{text} {' and '.join(bounds)}"
    return text if kind == "int" else "a finite number"


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    integer: bool = False,
    optional: bool = False,
    hint: str = "",
    error: type[Exception] = TaleValueError,
) -> Any:
    """A finite number (an ``int`` when ``integer``) within ``[low, high]`` and ``> above`` (each bound
    optional); None too when ``optional``.

    ``hint`` is added after what the value must be, e.g. ``" (questions searched together)"``.
    """
    if value is None and optional:
        return value
    if (is_int(value) if integer else is_number(value)) and (low is None or value >= low) and (
        high is None or value <= high) and (above is None or value > above):
        return value
    what = _describe("int" if integer else "number", low, high, above)
    raise error(f"{name} must be {what}{' or None' if optional else ''}{hint}, got {value!r}")


def check_int(name: str, value: Any, **bounds: Any) -> Any:
    """An ``int`` (never a ``bool``): `check_number` with ``integer=True`` and the same keywords."""
    return check_number(name, value, integer=True, **bounds)


def check_positive_int(name: str, value: Any, **options: Any) -> Any:
    """An ``int >= 1``: budgets, caps, sizes, counts (``optional``, ``hint``, ``error`` as in `check_number`)."""
    if (type(value) is int and value >= 1) or (value is None and options.get("optional")):  # the common cases
        return value
    return check_number(name, value, integer=True, low=1, **options)


def check_flag(name: str, value: Any, *, optional: bool = False, error: type[Exception] = TaleValueError) -> Any:
    """A ``bool`` (None too when ``optional``)."""
    if (value is None and optional) or isinstance(value, bool):
        return value
    raise error(f"{name} must be True or False{' or None' if optional else ''}, got {value!r}")


def check_choice(name: str, value: Any, choices: Any, *, error: type[Exception] = TaleValueError) -> Any:
    """One of ``choices`` (compared with ``==``)."""
    if value in choices:
        return value
    listed = ", ".join(repr(c) for c in choices)
    raise error(f"{name} must be one of {listed}, got {value!r}")
