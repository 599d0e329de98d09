"""Model prices for the expense metric, as an editable table (USD per 1M tokens).

The defaults are the providers' published list prices (`PRICES_AS_OF`); prices change, so a user
passes a JSON file that adds or overrides entries::

    {"gpt-4o-mini": {"input": 0.15, "output": 0.60, "cached_input": 0.075},
     "my-local-model": {"input": 0, "output": 0}}

A model is found by its exact name, then without a ``provider:`` / ``provider/`` prefix or ``ft:``,
then by the longest table entry it starts with (``gpt-4o-mini-2024-07-18`` → ``gpt-4o-mini``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.checks import check_number
from ..core.files import atomic_write_text

__all__ = ["DEFAULT_PRICES", "PRICES_AS_OF", "Price", "PriceTable", "missing_price_message"]

#: When the default prices were taken from the providers' pricing pages.
PRICES_AS_OF = "2025-06"


@dataclass(frozen=True, slots=True, kw_only=True)
class Price:
    """USD per 1M tokens.

    Attributes:
        input: Prompt tokens.
        output: Generated tokens (reasoning tokens included).
        cached_input: Prompt tokens served from the provider's cache; None means the input price.
    """

    input: float
    output: float
    cached_input: float | None = None

    def __post_init__(self) -> None:
        for name in ("input", "output", "cached_input"):
            check_number(f"Price.{name}", getattr(self, name), low=0, optional=name == "cached_input",
                         hint=" (a non-negative price in USD per 1M tokens)")

    def cost(self, usage: Mapping[str, Any]) -> float:
        """USD for one call's usage (a ``Usage.to_dict()``: input, cached input and output tokens)."""
        inputs = int(usage.get("input_tokens") or 0)
        cached = min(inputs, int(usage.get("cached_input_tokens") or 0))
        cached_price = self.input if self.cached_input is None else self.cached_input
        return ((inputs - cached) * self.input + cached * cached_price + int(usage.get("output_tokens") or 0)
                * self.output) / 1_000_000

    def to_dict(self) -> dict[str, float]:
        """Plain-dict form (the JSON file's entry)."""
        d = {"input": self.input, "output": self.output}
        if self.cached_input is not None:
            d["cached_input"] = self.cached_input
        return d


DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o-mini": Price(input=0.15, output=0.60, cached_input=0.075),
    "gpt-4o": Price(input=2.50, output=10.00, cached_input=1.25),
    "gpt-4.1": Price(input=2.00, output=8.00, cached_input=0.50),
    "gpt-4.1-mini": Price(input=0.40, output=1.60, cached_input=0.10),
    "gpt-4.1-nano": Price(input=0.10, output=0.40, cached_input=0.025),
    "gpt-4-turbo": Price(input=10.00, output=30.00),
    "gpt-3.5-turbo": Price(input=0.50, output=1.50),
    "o1": Price(input=15.00, output=60.00, cached_input=7.50),
    "o3": Price(input=2.00, output=8.00, cached_input=0.50),
    "o3-mini": Price(input=1.10, output=4.40, cached_input=0.55),
    "o4-mini": Price(input=1.10, output=4.40, cached_input=0.275),
}


def missing_price_message(model: str) -> str:
    """What to tell a user whose model has no price."""
    return (
        f"no price for model {model!r}, so its expense is shown as n/a. Add it to a JSON price file, e.g. "
        f'{{"{model}": {{"input": 0.15, "output": 0.60}}}} (USD per 1M tokens; 0 for a free local model), '
        "and pass it with --prices FILE"
    )


def _price(name: str, entry: Any) -> Price:
    if not isinstance(entry, Mapping):
        raise ValueError(f'price of {name!r} must be an object like {{"input": 0.15, "output": 0.6}}, got {entry!r}')
    unknown = set(entry) - {"input", "output", "cached_input"}
    if unknown or "input" not in entry or "output" not in entry:
        raise ValueError(
            f"price of {name!r} must have 'input' and 'output' (and optionally 'cached_input'), USD per 1M tokens; "
            f"got keys {sorted(entry)}"
        )
    return Price(**entry)


class PriceTable:
    """Prices by model name.

    Args:
        prices: Entries to use on top of the defaults (or instead of them with ``defaults=False``).
        defaults: Start from `DEFAULT_PRICES`.
    """

    def __init__(self, prices: Mapping[str, Price | Mapping[str, Any]] | None = None, *, defaults: bool = True) -> None:
        self.prices: dict[str, Price] = dict(DEFAULT_PRICES) if defaults else {}
        for name, entry in (prices or {}).items():
            self.prices[str(name).lower()] = entry if isinstance(entry, Price) else _price(name, entry)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, defaults: bool = True) -> PriceTable:
        """Read a JSON price file (``{"model": {"input": .., "output": ..}}``, optionally under ``"prices"``)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if isinstance(data, Mapping) and isinstance(data.get("prices"), Mapping):
            data = data["prices"]
        if not isinstance(data, Mapping):
            raise ValueError(f"{path} must hold an object mapping model names to prices")
        return cls({k: v for k, v in data.items() if not str(k).startswith("_")}, defaults=defaults)

    def lookup(self, model: str | None) -> Price | None:
        """The price of ``model``, or None when the table has none."""
        if not model:
            return None
        name = model.strip().lower()
        candidates = [name, name.split(":", 1)[-1] if ":" in name and not name.startswith("ft:") else name]
        candidates.append(candidates[-1].rsplit("/", 1)[-1])
        candidates.append(candidates[-1].removeprefix("ft:").split(":", 1)[0])
        for candidate in candidates:
            if candidate in self.prices:
                return self.prices[candidate]
        base = candidates[-1]
        matches = [k for k in self.prices if base.startswith(k + "-")]
        return self.prices[max(matches, key=len)] if matches else None

    def to_dict(self) -> dict[str, dict[str, float]]:
        """The table in its JSON file form."""
        return {name: price.to_dict() for name, price in sorted(self.prices.items())}

    def dump(self, path: str | os.PathLike[str]) -> None:
        """Write the table as a JSON file a user can edit."""
        atomic_write_text(path, json.dumps({"_unit": "USD per 1M tokens", "_as_of": PRICES_AS_OF, **self.to_dict()},
                                           indent=2) + "\n")
