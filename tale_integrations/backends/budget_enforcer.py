"""`BudgetEnforcer`: a `RowRule` (``row_rules.py``) that holds one answer to its token budget.

For a row with budget B (see `core.budget.BudgetEnforcement` for the policy):

1. steps ``0 .. R-1`` (``R = ceil(B * factor)``, shortened to leave the reserve under the cap): the
   model reasons freely and may end on its own;
2. steps ``R .. R+W-1``: the wrap-up text (``core.prompts.WRAP_UP``, W tokens) is forced;
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
from ..core.prompts import QuestionFormat, wrap_up  # noqa: E402
from .row_rules import force_token  # noqa: E402

__all__ = ["BudgetEnforcer"]


class BudgetEnforcer:
    """A `RowRule` that makes one row wrap up and answer once it reaches its reasoning budget.

    Args:
        tokenizer: The model's tokenizer (to encode the wrap-up and closing text).
        budget: The row's token budget.
        max_tokens: The row's hard cap on new tokens.
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
        self.policy = policy or BudgetEnforcement()
        opening, closing = wrap_up(format)
        self.tokenizer = tokenizer
        self.wrap_ids = tokenizer.encode(opening, add_special_tokens=False)
        self.close_ids = tokenizer.encode(closing, add_special_tokens=False) if closing else []
        self.closing = closing
        self.eos = eos_token_id
        reserve = self.policy.answer_reserve
        if len(self.wrap_ids) + len(self.close_ids) + 2 > reserve:
            raise ValueError(
                f"BudgetEnforcement.answer_reserve ({reserve}) is too small for the wrap-up text "
                f"({len(self.wrap_ids)} tokens) and closing ({len(self.close_ids)} tokens) of this tokenizer"
            )
        # Answer tokens the model may write itself before the closing is forced.
        self.free_answer = reserve - len(self.wrap_ids) - len(self.close_ids) - 1
        #: Steps of free reasoning before the wrap-up is forced.
        self.limit = self.policy.reasoning_tokens(budget, max_tokens)

    def forced_token(self, row_tokens: Sequence[int]) -> int | None:
        """The token this row must emit next, or None to let the model choose."""
        limit = self.limit
        step = len(row_tokens)
        if step < limit:
            return None
        if self.eos in row_tokens:  # ended on its own (or already closed)
            return None
        wrap = len(self.wrap_ids)
        if step < limit + wrap:
            return self.wrap_ids[step - limit]
        answer = list(row_tokens[limit + wrap :])
        if self.closing and self.closing in self.tokenizer.decode(answer, skip_special_tokens=True):
            return self.eos
        k = len(answer) - self.free_answer  # position within the forced closing, once free room is used
        if k < 0:
            return None
        if self.closing:
            # Only force the closing text if the model has not started writing it itself.
            if k < len(self.close_ids):
                return self.close_ids[k]
        return self.eos

    def apply(self, generated: Sequence[int], scores: Any) -> None:
        """`RowRule.apply`: force the wrap-up, closing or end of turn when this row's schedule says so."""
        token = self.forced_token(generated)
        if token is not None:
            force_token(scores, token)
