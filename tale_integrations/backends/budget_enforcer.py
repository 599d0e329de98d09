"""Rules that force tokens on a row: `ForcingRule`, the one design they share, and `BudgetEnforcer`.

A forcing rule is a `RowRule` (``row_rules.py``) that lets its row run free until its policy says
a budget is spent, then forces a fixed schedule of tokens. `forced_token` derives, from the row's
tokens (`thinking.ThinkingBudget` also from the step at which its model preferred to end its turn inside
the block), the token the row must emit next (None: the model chooses); `apply` forces it. A
schedule never starts inside a character: `ForcingRule.clean_break` moves its start past a
character that a byte-level token left unfinished (at most `MAX_PARTIAL_TOKENS` tokens later).
`BudgetEnforcer` (here) holds an answer to its budget; `thinking.ThinkingBudget` holds a thinking
block to its budget and hands the answer after it to the answer's own rules (this enforcer among them).

`BudgetEnforcer`, for a row with budget B (see `core.budget.BudgetEnforcement` for the policy):

1. steps ``0 .. R-1`` (``R = ceil(B * factor)``, shortened to leave the reserve under the cap): the
   model reasons freely and may end on its own;
2. from step R (or the first whole character after it): the wrap-up text (``core.prompts.WRAP_UP``,
   W tokens) is forced;
3. then the model writes its answer; as soon as the closing text (``]]``) appears the end-of-turn
   token is forced;
4. if the reserve runs out first, the closing text and the end-of-turn token are forced.

So every row ends within ``R + answer_reserve`` tokens, with an answer in the expected format. The
state is derived from the row's own tokens at every step, so the rule holds no state that could
drift between calls; rows without a budget get no rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._optional import require

torch = require("torch", extra="hf", purpose="budget enforcement")

from ..core.budget import BudgetEnforcement  # noqa: E402
from ..core.errors import TaleValueError  # noqa: E402
from ..core.prompts import QuestionFormat, wrap_up  # noqa: E402
from .row_rules import force_token  # noqa: E402

__all__ = ["MAX_PARTIAL_TOKENS", "BudgetEnforcer", "ForcingRule"]

#: Tokens a schedule may wait for a character cut mid-way to be finished (UTF-8 has at most 4 bytes).
MAX_PARTIAL_TOKENS = 3


class ForcingRule:
    """Base of the rules that force a schedule of tokens on one row (see the module docstring).

    Args:
        tokenizer: The model's tokenizer (to encode the forced text and to see unfinished characters).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._partial: dict[tuple[int, ...], bool] = {}

    def forced_token(self, generated: Sequence[int]) -> int | None:
        """The token this row must emit next, or None to let the model choose."""
        raise NotImplementedError

    def apply(self, generated: Sequence[int], scores: Any) -> None:
        """`RowRule.apply`: force the token the schedule asks for, if any."""
        token = self.forced_token(generated)
        if token is not None:
            force_token(scores, token)

    def clean_break(self, tokens: Sequence[int], at: int, start: int = 0) -> int | None:
        """Where a schedule due at position ``at`` starts: the first position from ``at`` at which the
        text of ``tokens[start:]`` ends on a whole character, and at most `MAX_PARTIAL_TOKENS` later.
        None while that is not yet known (the row has not reached it)."""
        for p in range(at, min(len(tokens), at + MAX_PARTIAL_TOKENS) + 1):
            if p == at + MAX_PARTIAL_TOKENS or not self._ends_partial(tuple(tokens[max(start, p - 4) : p])):
                return p
        return None

    def _ends_partial(self, tail: tuple[int, ...]) -> bool:
        if tail not in self._partial:
            self._partial[tail] = bool(tail) and self.tokenizer.decode(list(tail)).endswith("\ufffd")
        return self._partial[tail]


class BudgetEnforcer(ForcingRule):
    """A `ForcingRule` that makes one row wrap up and answer once it reaches its reasoning budget.

    Args:
        tokenizer: The model's tokenizer (to encode the wrap-up and closing text).
        budget: The row's token budget.
        max_tokens: The row's hard cap on new tokens (for an answer after a thinking block: the room
            the answer has).
        eos_token_id: The token that ends a turn.
        policy: `BudgetEnforcement` (factor, answer reserve).
        format: `QuestionFormat` that decides the wrap-up text.
    """

    def __init__(
        self,
        tokenizer: Any,
        budget: int,
        *,
        max_tokens: int,
        eos_token_id: int,
        policy: BudgetEnforcement | None = None,
        format: QuestionFormat | str = QuestionFormat.GSM8K,
    ) -> None:
        super().__init__(tokenizer)
        self.policy = policy or BudgetEnforcement()
        opening, closing = wrap_up(format)
        self.wrap_ids = tokenizer.encode(opening, add_special_tokens=False)
        self.close_ids = tokenizer.encode(closing, add_special_tokens=False) if closing else []
        self.closing = closing
        self.eos = eos_token_id
        reserve = self.policy.answer_reserve
        if len(self.wrap_ids) + len(self.close_ids) + 2 > reserve:
            raise TaleValueError(
                f"BudgetEnforcement.answer_reserve ({reserve}) is too small for the wrap-up text "
                f"({len(self.wrap_ids)} tokens) and closing ({len(self.close_ids)} tokens) of this tokenizer"
            )
        # Answer tokens the model may write itself before the closing is forced.
        self.free_answer = reserve - len(self.wrap_ids) - len(self.close_ids) - 1
        #: Steps of free reasoning before the wrap-up is forced.
        self.limit = self.policy.reasoning_tokens(budget, max_tokens)

    def forced_token(self, generated: Sequence[int]) -> int | None:
        """The token this row must emit next, or None to let the model choose."""
        limit = self.limit
        step = len(generated)
        if step < limit:
            return None
        if self.eos in generated:  # ended on its own (or already closed)
            return None
        start = self.clean_break(generated, limit)
        if start is None:  # finishing a character first
            return None
        wrap = len(self.wrap_ids)
        if step < start + wrap:
            return self.wrap_ids[step - start]
        answer = list(generated[start + wrap :])
        if self.closing and self.closing in self.tokenizer.decode(answer, skip_special_tokens=True):
            return self.eos
        # Position within the forced closing, once the free room (less any wait for a character) is used.
        k = len(answer) - max(0, self.free_answer - (start - limit))
        if k < 0:
            return None
        if self.closing:
            # Only force the closing text if the model has not started writing it itself.
            if k < len(self.close_ids):
                return self.close_ids[k]
        return self.eos
