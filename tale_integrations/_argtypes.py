"""argparse value types shared by every ``tale`` subcommand, over `core.checks` (one wording, one place)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from .core.checks import check_int, check_number, check_positive_int
from .core.errors import TaleValueError

__all__ = ["add_wait_argument", "convert", "non_negative_int", "positive_int", "temperature"]


def convert(text: str, parse: Callable[[str], Any], check: Callable[..., Any], **limits: Any) -> Any:
    """Parse a command-line value and check it with a `core.checks` function (for an argparse ``type=``).

    Text that does not parse goes to the check as given, so it is refused with the same message. The
    check's "value must be a positive int, got 0" reads "expected a positive int, got 0", after the
    option name argparse puts in front.
    """
    try:
        value = parse(text)
    except ValueError:
        value = text
    try:
        return check("value", value, **limits)
    except TaleValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("value must be ", "expected ", 1)) from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return convert(text, int, check_positive_int)


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return convert(text, int, check_int, low=0)


def temperature(text: str) -> float:
    """A sampling temperature between 0 (greedy) and 2."""
    return float(convert(text, float, check_number, low=0, high=2, hint=" (0 = greedy)"))


def add_wait_argument(parser: argparse.ArgumentParser, what: str = "run") -> None:
    """``--wait [SECONDS]``: when another process is writing the same {what}, wait for it instead of stopping."""
    parser.add_argument(
        "--wait", nargs="?", const=True, default=False, type=lambda text: convert(text, float, check_number, low=0),
        metavar="SECONDS",
        help=f"if another process is writing the same {what}, wait for it to finish (at most SECONDS if given) "
             "instead of stopping with an error",
    )
