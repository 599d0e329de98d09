"""Rules on one batch row's next-token scores: the one design of every decoding-time constraint.

A `RowRule` looks at the tokens its row has generated so far and may change that row's scores for
the next token: force a token (`force_token`) or leave only a set of tokens allowed. The budget
enforcer, the thinking budget and the structured-output constraint are rules; a row may carry
several, applied in order (`apply_rules`). Rules derive their state from the tokens they are shown
(or advance it from the tokens added since the last call), so the same rule object works under
``model.generate`` (through `RowRulesProcessor`) and under a step-by-step scheduler that calls
`apply_rules` for each of its rows.

``generated`` is what the rule owns: a rule that splits a row into parts (thinking, then answer)
shows the rules of a later part only the tokens of that part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from .._optional import require

torch = require("torch", extra="hf", purpose="decoding-time rules")
transformers = require("transformers", extra="hf", purpose="decoding-time rules")

__all__ = ["RowRule", "RowRulesProcessor", "apply_rules", "force_token"]


@runtime_checkable
class RowRule(Protocol):
    """A decoding-time constraint on one row."""

    def apply(self, generated: Sequence[int], scores: Any) -> None:
        """Change ``scores`` (this row's 1-D next-token scores, in place) given its ``generated`` tokens."""


def force_token(scores: Any, token: int) -> None:
    """Leave only ``token`` possible in one row's scores."""
    scores.fill_(-float("inf"))
    scores[token] = 0.0


def apply_rules(rules: Sequence[RowRule], generated: Sequence[int], scores: Any) -> None:
    """Apply one row's rules in order."""
    for rule in rules:
        rule.apply(generated, scores)


class RowRulesProcessor(transformers.LogitsProcessor):
    """Each row's rules as one transformers logits processor (for ``model.generate``).

    Args:
        rules: One list of rules per batch row (empty for a free row).
        prompt_length: Length of the (left-padded) prompt part of ``input_ids``.
    """

    def __init__(self, rules: Sequence[Sequence[RowRule]], prompt_length: int) -> None:
        self.rules = [list(r) for r in rules]
        self.prompt_length = prompt_length

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        rows = [i for i, r in enumerate(self.rules) if r]
        if not rows:
            return scores
        generated = input_ids[:, self.prompt_length :].tolist()
        for row in rows:
            apply_rules(self.rules[row], generated[row], scores[row])
        return scores
