"""`BudgetEnforcer`: a transformers logits processor that holds each answer to its token budget.

Per batch row with budget B (see `core.budget.BudgetEnforcement` for the policy):

1. steps ``0 .. R-1`` (``R = ceil(B * factor)``, shortened to leave the reserve under the cap): the
   model reasons freely and may end on its own;
2. steps ``R .. R+W-1``: the wrap-up text (``core.prompts.WRAP_UP``, W tokens) is forced;
3. then the model writes its answer; as soon as the closing text (``]]``) appears the end-of-turn
   token is forced;
4. if the reserve runs out first, the closing text and the end-of-turn token are forced.

So every row ends within ``R + answer_reserve`` tokens, with an answer in the expected format. The
state of each row is derived from its own tokens at every step, so the processor holds no state
that could drift between calls; rows without a budget are left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._optional import require

torch = require("torch", extra="hf", purpose="budget enforcement")
transformers = require("transformers", extra="hf", purpose="budget enforcement")

from ..core.budget import BudgetEnforcement  # noqa: E402
from ..core.prompts import QuestionFormat, wrap_up  # noqa: E402

__all__ = ["BudgetEnforcer"]


class BudgetEnforcer(transformers.LogitsProcessor):
    """Force each row to wrap up and answer once it reaches its reasoning budget.

    Args:
        tokenizer: The model's tokenizer (to encode the wrap-up and closing text).
        budgets: One budget per batch row; None leaves that row unconstrained.
        prompt_length: Length of the (left-padded) prompt part of ``input_ids``.
        max_tokens: The generation's hard cap on new tokens (one for all rows, or one per row).
        eos_token_id: The token that ends a turn.
        policy: `BudgetEnforcement` (factor, answer reserve).
        format: `QuestionFormat` that decides the wrap-up text.
    """

    def __init__(
        self,
        tokenizer: Any,
        budgets: Sequence[int | None],
        *,
        prompt_length: int,
        max_tokens: int | Sequence[int],
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
        self.prompt_length = prompt_length
        caps = [max_tokens] * len(budgets) if isinstance(max_tokens, int) else list(max_tokens)
        self.limits = [
            None if b is None else self.policy.reasoning_tokens(b, cap) for b, cap in zip(budgets, caps)
        ]

    def forced_token(self, row_tokens: list[int], limit: int) -> int | None:
        """The token this row must emit next, or None to let the model choose."""
        step = len(row_tokens)
        if step < limit:
            return None
        if self.eos in row_tokens:  # ended on its own (or already closed)
            return None
        wrap = len(self.wrap_ids)
        if step < limit + wrap:
            return self.wrap_ids[step - limit]
        answer = row_tokens[limit + wrap :]
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

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        generated = input_ids[:, self.prompt_length :].tolist()
        for row, limit in enumerate(self.limits):
            if limit is None:
                continue
            token = self.forced_token(generated[row], limit)
            if token is not None:
                scores[row, :] = -float("inf")
                scores[row, token] = 0.0
        return scores
