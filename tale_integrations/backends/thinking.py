"""Thinking blocks: their markers, where a row's thinking ends, and the rule that holds it to a budget.

A thinking model writes ``<think> ... </think>`` (or its own markers) before its answer. The block
may be opened by the chat template in the prompt (DeepSeek-R1 style), or by the model's first
tokens (Qwen3 style); a template may also close an empty block in the prompt to turn thinking off
(Qwen3's ``enable_thinking=False``). Three pieces, used by every decoding path alike:

- `ThinkingMarkers`: the start and end markers, read from the chat template (`ThinkingMarkers.detect`,
  `KNOWN_MARKERS`) or given, and whether a prompt leaves a block open (`ThinkingMarkers.prompt_state`).
- `ThinkingTracker`: where one row's thinking starts and ends, advanced over its tokens as they
  come. A marker the tokenizer holds as one token is found by its id; one spelled in several tokens
  is also found in the decoded text, since the model may spell it with other tokens. The split of a
  finished row (`ThinkingMarkers.split`) is the same tracker run over all of its tokens.
- `ThinkingBudget`: a `ForcingRule` (``budget_enforcer.py``, the design it shares with the answer's
  `BudgetEnforcer`) for one row with a thinking budget B. It counts the tokens inside the block;
  at ``hint_at * B`` it may force `core.prompts.THINKING_WRAP_UP` (those tokens count as thinking);
  once B tokens are spent it forces the end marker, after finishing a character cut mid-way (at
  most `MAX_PARTIAL_TOKENS` more tokens). Inside a budgeted block the row cannot end its turn: when
  an end-of-turn token scores above every other token (greedy decoding would pick it) the model is
  taken to be done thinking, and the end marker is forced from that step, as at the budget (a cut
  character finished first); the answer follows. Otherwise the end-of-turn tokens are set to -inf
  inside the block, so neither greedy nor sampled decoding picks one. After a forced end marker
  the row may not end its turn before its answer has some text (the first few answer tokens). A
  model that closes the block itself is left alone, and so is everything after its own end marker,
  and a row without a budget (the rule then exists only for the answer rules, and its model may end
  inside the block). The answer after
  the block is shown to the row's answer rules (the budget enforcer, a structured-output
  constraint) as if it were the whole output: they never see, nor constrain, the thinking. The
  row's output cap is set above ``overhead + B + answer_reserve`` (`ThinkingMarkers.overhead`), so
  the answer keeps at least its reserve.

Token accounting (`ThinkingSplit`): the reasoning tokens are every output token up to and including
the end marker (and the start marker when the model writes it), so that ``output_tokens =
reasoning_tokens + answer tokens``. A block that is never closed is all reasoning, and the answer is
empty: with a budget only the cap can leave one open (the model's end of turn inside it becomes the
end marker), without a budget the model may also end its turn inside it. The reasoning text is the
text between the markers, stripped of surrounding whitespace; the answer's leading whitespace is
dropped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .._optional import require

torch = require("torch", extra="hf", purpose="thinking budgets")

from ..core.checks import check_int, check_number  # noqa: E402
from ..core.errors import TaleValueError  # noqa: E402
from ..core.prompts import THINKING_WRAP_UP  # noqa: E402
from .budget_enforcer import MAX_PARTIAL_TOKENS, ForcingRule  # noqa: E402
from .row_rules import RowRule, apply_rules, force_token  # noqa: E402

__all__ = ["KNOWN_MARKERS", "PromptState", "ThinkingBudget", "ThinkingMarkers", "ThinkingSplit", "ThinkingTracker"]

#: Marker pairs looked for in a chat template, in order (Qwen3, DeepSeek-R1, SmolLM3...; Claude-style; Cohere).
KNOWN_MARKERS: tuple[tuple[str, str], ...] = (
    ("<think>", "</think>"), ("<thinking>", "</thinking>"), ("<|START_THINKING|>", "<|END_THINKING|>"),
)

#: Answer tokens after a forced end marker during which a row may not end its turn while its answer is blank.
BLANK_ANSWER_TOKENS = 4

#: How a prompt leaves the thinking: ``"open"`` (the template opened a block), ``"closed"`` (it closed
#: an empty one: no thinking), ``"none"`` (the model may open one with its first tokens).
PromptState = Literal["open", "closed", "none"]


@dataclass(frozen=True, slots=True)
class ThinkingSplit:
    """A finished row's output, split (see the module docstring for the accounting).

    Attributes:
        reasoning: The thinking text, or None when the row had no thinking block.
        answer_start: Index of the first answer token in the row's tokens.
        reasoning_tokens: Output tokens of the thinking block, markers included.
    """

    reasoning: str | None
    answer_start: int
    reasoning_tokens: int


class ThinkingMarkers:
    """The start and end markers of one tokenizer's thinking blocks.

    Args:
        tokenizer: The model's tokenizer.
        start: The text that opens a block (``"<think>"``).
        end: The text that closes it (``"</think>"``).
    """

    def __init__(self, tokenizer: Any, start: str, end: str) -> None:
        for name, value in (("start", start), ("end", end)):
            if not isinstance(value, str) or not value.strip():
                raise TaleValueError(f"the thinking {name} marker must be a non-empty string, got {value!r}")
        self.tokenizer, self.start, self.end = tokenizer, start, end
        self.start_ids = tuple(tokenizer.encode(start, add_special_tokens=False))
        self.end_ids = tuple(tokenizer.encode(end, add_special_tokens=False))
        #: Whether the end marker is also looked for in the text (it is not one token).
        self.end_in_text = len(self.end_ids) > 1
        self._window = max(len(self.end_ids), len(end)) + 2
        self._opening_window = max(len(self.start_ids), len(start)) + 4

    @classmethod
    def detect(cls, tokenizer: Any, *, chat_template: Any = None,
               markers: Sequence[str] | None = None) -> ThinkingMarkers | None:
        """The markers of a model: ``markers`` (start, end) when given, else the first `KNOWN_MARKERS`
        pair that the chat template (``chat_template``, else the tokenizer's) holds; None for a model
        without a thinking block."""
        if markers is not None:
            start, end = markers
            return cls(tokenizer, start, end)
        template = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
        text = template if isinstance(template, str) else str(template or "")
        for start, end in KNOWN_MARKERS:
            if start in text and end in text:
                return cls(tokenizer, start, end)
        return None

    def __repr__(self) -> str:
        return f"ThinkingMarkers({self.start!r}, {self.end!r})"

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def prompt_state(self, prompt: Sequence[int] | None) -> PromptState:
        """Whether ``prompt`` (token ids, assistant turn opened) ends inside a block, after an empty
        closed one, or neither (``"none"`` too when no prompt is given)."""
        if not prompt:
            return "none"
        tail = list(prompt[-(len(self.start_ids) + len(self.end_ids) + 16) :])
        text = self.tokenizer.decode(tail, skip_special_tokens=False).rstrip()
        if text.endswith(self.start):
            return "open"
        return "closed" if text.endswith(self.end) else "none"

    def overhead(self, state: PromptState) -> int:
        """Output tokens of a budgeted block beyond its budget: the start marker (when the model
        writes it), a character finished past the budget, and the end marker."""
        return (len(self.start_ids) if state == "none" else 0) + MAX_PARTIAL_TOKENS + len(self.end_ids)

    def limit(self, budget: int | None, state: PromptState, max_tokens: int | None, answer_reserve: int) -> int | None:
        """Thinking tokens a row may spend: its budget, shortened so that the overhead and the answer
        reserve fit under ``max_tokens`` (never below 0); None without a budget or when the prompt
        turned thinking off."""
        if budget is None or state == "closed":
            return None
        if max_tokens is None:
            return budget
        return max(0, min(budget, max_tokens - self.overhead(state) - answer_reserve))

    def tracker(self, prompt: Sequence[int] | None = None) -> ThinkingTracker:
        """A `ThinkingTracker` for a row whose prompt is ``prompt``."""
        return ThinkingTracker(self, self.prompt_state(prompt))

    def split(self, prompt: Sequence[int] | None, tokens: Sequence[int]) -> ThinkingSplit:
        """The thinking and the answer of a finished row (its new ``tokens``, cut where it ended)."""
        tracker = self.tracker(prompt)
        tracker.advance(tokens)
        reasoning = tracker.reasoning_text(tokens)
        if tracker.answer_start is None:  # never closed (or never decided): all thinking, or all answer
            if tracker.content_start is None:
                return ThinkingSplit(None, 0, 0)
            return ThinkingSplit(reasoning.strip(), len(tokens), len(tokens))
        return ThinkingSplit(None if reasoning is None else reasoning.strip(), tracker.answer_start,
                             tracker.answer_start)


class ThinkingTracker:
    """Where one row's thinking block starts and ends, advanced over its tokens as they come.

    Args:
        markers: The model's `ThinkingMarkers`.
        state: How the row's prompt leaves the thinking (`ThinkingMarkers.prompt_state`).

    Attributes:
        content_start: Index of the first token inside the block; None while no block is open.
        content_end: Index of the end marker's first token, when it was found by its ids.
        answer_start: Index of the first answer token; None until the block is closed (or it is
            known that the row writes none).
    """

    def __init__(self, markers: ThinkingMarkers, state: PromptState) -> None:
        self.markers, self.state = markers, state
        self.reset()

    def reset(self) -> None:
        self.scanned = 0
        self.content_start: int | None = 0 if self.state == "open" else None
        self.content_end: int | None = None
        self.answer_start: int | None = 0 if self.state == "closed" else None

    @property
    def thinking(self) -> bool:
        """Whether the row is inside its block now."""
        return self.content_start is not None and self.answer_start is None

    @property
    def thought(self) -> bool:
        """Whether the row opened a block (or its prompt did)."""
        return self.content_start is not None

    def advance(self, tokens: Sequence[int]) -> None:
        """Take in the row's tokens (all of them so far: the tracker looks only at those it has not seen)."""
        if len(tokens) < self.scanned:  # another sequence: start over
            self.reset()
        while self.scanned < len(tokens) and self.answer_start is None:
            k = self.scanned
            self.scanned += 1
            if self.content_start is None:
                self._opening(tokens, k)
            else:
                self._closing(tokens, k)
        self.scanned = max(self.scanned, len(tokens))

    def _opening(self, tokens: Sequence[int], k: int) -> None:
        m = self.markers
        ids = m.start_ids
        if k < len(ids) and tuple(tokens[: k + 1]) == ids[: k + 1]:
            if k + 1 == len(ids):
                self.content_start = k + 1
            return
        text = m.decode(tokens[: k + 1]).lstrip()
        if text.startswith(m.start):
            self.content_start = k + 1
        elif not (m.start.startswith(text.rstrip("\ufffd")) and k < m._opening_window):
            self.answer_start = 0  # the row answers without thinking

    def _closing(self, tokens: Sequence[int], k: int) -> None:
        m, start = self.markers, self.content_start
        n = len(m.end_ids)
        if k + 1 - n >= start and tuple(tokens[k + 1 - n : k + 1]) == m.end_ids:
            self.content_end, self.answer_start = k + 1 - n, k + 1
        elif m.end_in_text and m.end in m.decode(tokens[max(start, k + 1 - m._window) : k + 1]):
            self.answer_start = k + 1

    def reasoning_text(self, tokens: Sequence[int]) -> str | None:
        """The text inside the block so far, unstripped (cut before the end marker); None without a block."""
        if self.content_start is None:
            return None
        end = self.content_end if self.content_end is not None else (
            self.answer_start if self.answer_start is not None else len(tokens))
        text = self.markers.decode(tokens[self.content_start : end])
        if self.content_end is None:
            cut = text.find(self.markers.end)
            if cut >= 0:
                text = text[:cut]
        return text


class ThinkingBudget(ForcingRule):
    """A `RowRule` that holds one row's thinking block to a budget (see the module docstring).

    Args:
        markers: The model's `ThinkingMarkers`.
        budget: Tokens the row may spend inside the block (0: close it at once); None for no limit
            (the rule then only shows the answer rules the answer).
        prompt: The row's prompt ids (whether the template opened the block); None: the model opens it.
        max_tokens: The row's output cap; the budget is shortened so that the overhead and
            ``answer_reserve`` fit under it.
        answer_reserve: Output tokens kept for the answer after the block.
        hint_at: Fraction of the budget (above 0, below 1) at which `core.prompts.THINKING_WRAP_UP`
            is written into the block, when it fits before the budget is spent; None for no hint.
        answer_rules: The rules of the answer after the block, shown only the answer's tokens.
        eos_ids: The tokens that end a turn, which a budgeted row may not emit inside its block
            (`hf.decoding.eos_ids_of`: the generation config's and the tokenizer's); None: the
            tokenizer's end-of-sequence token.
    """

    def __init__(self, markers: ThinkingMarkers, *, budget: int | None, prompt: Sequence[int] | None = None,
                 max_tokens: int | None = None, answer_reserve: int = 0, hint_at: float | None = None,
                 answer_rules: Sequence[RowRule] = (), eos_ids: Iterable[int] | None = None) -> None:
        super().__init__(markers.tokenizer)
        check_int("thinking_budget", budget, low=0, optional=True)
        check_number("hint_at", hint_at, above=0, high=1, optional=True)
        self.markers = markers
        self.tracker = markers.tracker(prompt)
        #: Thinking tokens before the end marker is forced (None: no limit).
        self.limit = markers.limit(budget, self.tracker.state, max_tokens, answer_reserve)
        self.hint_ids: tuple[int, ...] = ()
        self.hint_step: int | None = None
        if hint_at is not None and self.limit is not None:
            hint = tuple(markers.tokenizer.encode(THINKING_WRAP_UP, add_special_tokens=False))
            step = math.floor(hint_at * self.limit)
            if step + MAX_PARTIAL_TOKENS + len(hint) <= self.limit:
                self.hint_ids, self.hint_step = hint, step
        self.answer_rules = list(answer_rules)
        if eos_ids is None:
            eos = markers.tokenizer.eos_token_id
            eos_ids = () if eos is None else (eos,)
        self.eos_ids = torch.tensor(sorted(set(eos_ids)), dtype=torch.long)
        #: The step at which the model wanted to end its turn inside the block (the end marker is
        #: forced from there); None while it has not.
        self.closing_at: int | None = None
        #: The step at which the end marker began to be forced (the block did not close by the
        #: model's own choice); None while it has not.
        self.forced_at: int | None = None

    def forced_token(self, generated: Sequence[int]) -> int | None:
        """The token this row must emit next (hint or end marker), or None to let the model choose."""
        tracker = self.tracker
        tracker.advance(generated)
        if self.limit is None or not tracker.thinking:
            return None
        first, step = tracker.content_start, len(generated)
        if self.closing_at is not None and step < self.closing_at:  # another sequence
            self.closing_at = None
        due = first + self.limit if self.closing_at is None else min(first + self.limit, self.closing_at)
        if self.closing_at is None and self.hint_step is not None and step >= first + self.hint_step:
            start = self.clean_break(generated, first + self.hint_step, first)
            if start is None:
                return None
            if step < start + len(self.hint_ids):
                return self.hint_ids[step - start]
        if step < due:
            return None
        start = self.clean_break(generated, due, first)
        if start is None or step - start >= len(self.markers.end_ids):
            return None
        if self.forced_at is None or self.forced_at > start:
            self.forced_at = start
        return self.markers.end_ids[step - start]

    def apply(self, generated: Sequence[int], scores: Any) -> None:
        """`RowRule.apply`: force the hint or the end marker when due, keep the end of turn out of a
        budgeted block (the end marker instead, when the model wants to end); in the answer, apply the
        answer rules."""
        token = self.forced_token(generated)
        if token is None and self.limit is not None and self.tracker.thinking and len(self.eos_ids):
            token = self._no_end_of_turn(generated, scores)
        if token is not None:
            force_token(scores, token)
            return
        tracker = self.tracker
        if self.forced_at is not None and len(generated) < self.forced_at:  # another sequence
            self.forced_at = None
        if self.forced_at is not None and tracker.answer_start is not None:
            self._no_empty_answer(generated[tracker.answer_start :], scores)
        if not self.answer_rules:
            return
        if tracker.answer_start is not None:
            apply_rules(self.answer_rules, generated[tracker.answer_start :], scores)
        elif not tracker.thought and not generated:
            # The first token may open a block or begin the answer: the answer rules shape it, but
            # the start marker stays possible.
            first = self.markers.start_ids[0]
            kept = scores[first].clone()
            apply_rules(self.answer_rules, [], scores)
            scores[first] = kept

    def _no_empty_answer(self, answer: Sequence[int], scores: Any) -> None:
        """After a forced end marker: no end of turn until the answer has some text (the model may
        have meant to stop with its thinking; the answer it was closed for comes first)."""
        if len(answer) >= BLANK_ANSWER_TOKENS or (answer and self.markers.tokenizer.decode(answer).strip()):
            return
        if self.eos_ids.device != scores.device:
            self.eos_ids = self.eos_ids.to(scores.device)
        scores[self.eos_ids] = -float("inf")

    def _no_end_of_turn(self, generated: Sequence[int], scores: Any) -> int | None:
        """Inside the block: mask the end-of-turn tokens; if one of them was above every other token,
        the model is done thinking, and the end marker is due from this step (its first token, or None
        while a cut character is finished)."""
        if self.eos_ids.device != scores.device:
            self.eos_ids = self.eos_ids.to(scores.device)
        ends = scores[self.eos_ids]
        scores[self.eos_ids] = -float("inf")
        if self.closing_at is not None or not bool(ends.max() > scores.max()):
            return None
        self.closing_at = len(generated)
        return self.forced_token(generated)
