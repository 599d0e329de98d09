"""One batch of encoded prompts through ``model.generate``, and a `Generation` for each row.

`BatchDecoder` holds what stays fixed for a loaded model (model, tokenizer, end-of-turn ids, budget
enforcement, thinking markers, seed); `HFGenerator` makes one when it installs its model and hands it
each batch with that batch's caps, stop strings and budgets. Per batch it builds the generation
config, the stopping criteria (stop strings, per-row caps and cancellation: `StopOnStrings`,
`RowLimits`), each row's rules (`row_rules`: the thinking budget, the budget enforcer), and on the
fast path the prefilled cache (``fast_path.py``); afterwards (`finish`) it cuts each row at its end
of turn or stop string, splits off its thinking, and counts its tokens exactly.

On a model with a thinking block (``backends/thinking.py``) stop strings apply to the answer only:
they are neither looked for nor cut inside the thinking.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from ..._optional import require
from ...core.budget import BudgetEnforcement
from ...core.errors import TaleValueError
from ...core.generation import Generation, Usage
from ...core.prompts import QuestionFormat
from ..budget_enforcer import BudgetEnforcer
from ..row_rules import RowRule, RowRulesProcessor
from ..thinking import ThinkingBudget, ThinkingMarkers, ThinkingTracker
from .fast_path import batch_inputs, prefilled_cache
from .loading import config_window
from .settings import ThinkingEnforcement
from .streaming import TokenQueue

torch = require("torch", extra="hf", purpose="the local Hugging Face backend")
transformers = require("transformers", extra="hf", purpose="the local Hugging Face backend")

__all__ = ["BatchDecoder", "RowLimits", "StopOnStrings", "eos_ids_of"]


class StopOnStrings(transformers.StoppingCriteria):
    """Ends each row once its new text contains a stop string (checked on a window of recent tokens).

    ``trackers`` (one per row, None for a row without thinking) keep the check to each row's answer.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_length: int,
                 trackers: Sequence[ThinkingTracker | None] | None = None) -> None:
        self.tokenizer = tokenizer
        self.stops = list(stops)
        self.prompt_length = prompt_length
        self.trackers = list(trackers) if trackers is not None else None
        # A stop string of n characters spans at most n tokens; a little more covers the join.
        self.window = max(len(s) for s in self.stops) + 4
        self.stopped_at: dict[int, int] = {}

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row in range(input_ids.shape[0]):
            if row in self.stopped_at:
                done[row] = True
                continue
            start = self.prompt_length
            tracker = self.trackers[row] if self.trackers is not None else None
            if tracker is not None:
                tracker.advance(input_ids[row, start:].tolist())
                if tracker.answer_start is None:  # still thinking (or not yet known)
                    continue
                start += tracker.answer_start
            tail = input_ids[row, max(start, input_ids.shape[1] - self.window) :]
            text = self.tokenizer.decode(tail, skip_special_tokens=True)
            if any(s in text for s in self.stops):
                self.stopped_at[row] = input_ids.shape[1] - self.prompt_length
                done[row] = True
        return done


class RowLimits(transformers.StoppingCriteria):
    """Per-row output caps and cancellation, for batches whose rows asked for different limits."""

    def __init__(self, caps: Sequence[int], prompt_length: int,
                 cancel: Sequence[threading.Event | None] | None) -> None:
        self.caps = list(caps)
        self.prompt_length = prompt_length
        self.cancel = list(cancel) if cancel is not None else [None] * len(self.caps)
        self.cancelled_at: dict[int, int] = {}

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        produced = input_ids.shape[1] - self.prompt_length
        done = []
        for row, (cap, event) in enumerate(zip(self.caps, self.cancel)):
            if event is not None and event.is_set():
                self.cancelled_at.setdefault(row, produced)
            done.append(produced >= cap or row in self.cancelled_at)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def eos_ids_of(model: Any, tokenizer: Any, model_name: str) -> set[int]:
    """The ids that end a turn: the generation config's end-of-sequence ids and the tokenizer's."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if not ids:
        raise TaleValueError(f"{model_name!r} defines no end-of-sequence token")
    return ids


class BatchDecoder:
    """Decodes batches of encoded prompts with one loaded model, one batch at a time (under ``lock``).

    Args:
        model: The transformers model, in eval mode.
        tokenizer: Its tokenizer, with a padding token.
        model_name: Name reported in each `Generation` (and its token counter).
        enforcement: Budget enforcement while decoding, or None (budgets are then refused upstream).
        seed: Seed set before each sampled batch, for repeatable runs.
        lock: Held while a batch runs on the model (its owner's, shared by all its calls).
        thinking: The model's thinking markers (`ThinkingMarkers.detect`), or None for a model
            without a thinking block (then thinking budgets are refused).
        thinking_enforcement: How thinking budgets are held (answer reserve, hint); default
            `ThinkingEnforcement()`.
    """

    def __init__(self, model: Any, tokenizer: Any, *, model_name: str, enforcement: BudgetEnforcement | None,
                 seed: int | None, lock: threading.Lock, thinking: ThinkingMarkers | None = None,
                 thinking_enforcement: ThinkingEnforcement | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.model_name, self.enforcement, self.seed = model_name, enforcement, seed
        self.thinking = thinking
        self.thinking_enforcement = thinking_enforcement or ThinkingEnforcement()
        self.eos_ids = eos_ids_of(model, tokenizer, model_name)
        self.eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else min(self.eos_ids)
        self.window = config_window(model.config)
        self.lock = lock

    def run(
        self,
        rows: list[list[int]],
        caps: list[int],
        stop: list[str] | None,
        temperature: float,
        budgets: list[int | None],
        answer_format: QuestionFormat | str,
        *,
        cache_path: bool,
        streamer: TokenQueue | None = None,
        cancel: list[threading.Event | None] | None = None,
        answer_rules: list[Sequence[RowRule]] | None = None,
        thinking_budgets: list[int | None] | None = None,
    ) -> list[Generation]:
        """One `Generation` per row, in order; ``cache_path`` takes the fast path's cache (``fast_path.py``).

        ``answer_rules`` (one list per row) are extra `RowRule` values for each row's answer;
        ``thinking_budgets`` (one per row, None for no limit) hold each row's thinking block.
        """
        tok, model = self.tokenizer, self.model
        width = max(len(r) for r in rows)
        # Each row's own room: positions come from the attention mask, so padding costs a row nothing.
        caps = [min(cap, self.window - len(r)) for cap, r in zip(caps, rows)]
        max_new = max(caps)
        pad = tok.pad_token_id
        ids, mask, shared = batch_inputs(rows, width, pad, cache_path=cache_path)
        sampling = temperature > 0
        config = transformers.GenerationConfig(
            max_new_tokens=max_new, do_sample=sampling, temperature=temperature if sampling else None,
            top_p=None, top_k=None, pad_token_id=pad, eos_token_id=sorted(self.eos_ids),
        )
        criteria = transformers.StoppingCriteriaList()
        stop_criterion = None
        if stop:  # on a thinking model, the stop strings apply to each row's answer
            trackers = [self.thinking.tracker(r) for r in rows] if self.thinking is not None else None
            stop_criterion = StopOnStrings(tok, stop, width, trackers)
        if stop_criterion:
            criteria.append(stop_criterion)
        if streamer is not None:
            criteria.append(streamer.criterion())
        limits = None
        if len(set(caps)) > 1 or (cancel and any(e is not None for e in cancel)):
            limits = RowLimits(caps, width, cancel)
            criteria.append(limits)
        processors = transformers.LogitsProcessorList()
        extra = answer_rules if answer_rules is not None else [()] * len(rows)
        thinking = thinking_budgets if thinking_budgets is not None else [None] * len(rows)
        rules = [self.row_rules(budget=b, cap=cap, answer_format=answer_format, answer_rules=more, thinking_budget=t,
                                prompt=prompt)
                 for b, cap, more, t, prompt in zip(budgets, caps, extra, thinking, rows, strict=True)]
        if any(rules):
            processors.append(RowRulesProcessor(rules, width))
        input_ids, attention = torch.tensor(ids, device=model.device), torch.tensor(mask, device=model.device)
        with self.lock, torch.inference_mode():
            if sampling and self.seed is not None:
                torch.manual_seed(self.seed)
            cache = prefilled_cache(model, rows, width, pad, shared, width + max_new) if cache_path else {}
            output = model.generate(
                input_ids=input_ids, attention_mask=attention, generation_config=config, stopping_criteria=criteria,
                logits_processor=processors, streamer=streamer, **cache,
            )
        new = output[:, width:].tolist()
        ends = [limits.cancelled_at.get(row, cap) if limits else cap for row, cap in enumerate(caps)]
        stopped = stop_criterion.stopped_at if stop_criterion else {}
        return [
            self.finish(prompt, tokens[: ends[row]], stop, stopped.get(row))
            for row, (prompt, tokens) in enumerate(zip(rows, new))
        ]

    def row_rules(self, *, budget: int | None, cap: int, answer_format: QuestionFormat | str,
                  answer_rules: Sequence[RowRule] = (), thinking_budget: int | None = None,
                  prompt: Sequence[int] | None = None) -> list[RowRule]:
        """The decoding-time rules of one row: its budget enforcer (when enforcing) and ``answer_rules``;
        on a model with a thinking block, inside a `ThinkingBudget` that holds the thinking to
        ``thinking_budget`` (None: no limit) and shows them only the answer after it.

        ``prompt`` (the row's prompt ids) tells whether the template opened the block; without it
        the model is taken to open the block itself.

        Raises:
            ValueError: a thinking budget for a model without a thinking block.
        """
        thinking, policy = self.thinking, self.thinking_enforcement
        if thinking is None and thinking_budget is not None:
            raise TaleValueError(
                f"thinking_budget={thinking_budget} needs a chat template with a thinking block, and "
                f"{self.model_name!r} has none; give the markers with "
                "HFSettings(thinking=ThinkingEnforcement(markers=(start, end)))"
            )
        state = thinking.prompt_state(prompt) if thinking is not None else "closed"
        limit = thinking.limit(thinking_budget, state, cap, policy.answer_reserve) if thinking is not None else None
        rules: list[RowRule] = []
        if self.enforcement is not None and budget is not None:
            # The answer's room: the cap less the longest the thinking block can be.
            room = cap if limit is None else cap - thinking.overhead(state) - limit
            rules.append(BudgetEnforcer(self.tokenizer, budget, max_tokens=room, eos_token_id=self.eos,
                                        policy=self.enforcement, format=answer_format))
        rules.extend(answer_rules)
        if state == "closed" or (limit is None and not rules):
            return rules
        return [ThinkingBudget(thinking, budget=thinking_budget, prompt=prompt, max_tokens=cap,
                               answer_reserve=policy.answer_reserve, hint_at=policy.hint_at, answer_rules=rules,
                               eos_ids=self.eos_ids)]

    def finish(self, prompt: Sequence[int], tokens: list[int], stop: Sequence[str] | None,
               stopped_at: int | None = None) -> Generation:
        """The `Generation` of one row: its new ``tokens`` cut at the end of turn, or at ``stopped_at``
        (where a stop string was seen) when that comes first; its thinking split off (``reasoning``,
        ``usage.reasoning_tokens``: ``backends/thinking.py``); the answer cut before any stop string."""
        end = next((k + 1 for k, t in enumerate(tokens) if t in self.eos_ids), None)
        reason = "stop"
        if stopped_at is not None and (end is None or stopped_at < end):
            end = stopped_at
        elif end is None:
            end, reason = len(tokens), "length"
        reasoning, answer_start, reasoning_tokens = None, 0, 0
        if self.thinking is not None:
            split = self.thinking.split(prompt, tokens[:end])
            reasoning, answer_start, reasoning_tokens = split.reasoning, split.answer_start, split.reasoning_tokens
        text = self.tokenizer.decode(tokens[answer_start:end], skip_special_tokens=True)
        if reasoning is not None:
            text = text.lstrip()
        if stop:
            cut = min((p for p in (text.find(s) for s in stop) if p >= 0), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
        return Generation(
            text=text,
            usage=Usage(input_tokens=len(prompt), output_tokens=end, reasoning_tokens=reasoning_tokens,
                        counter=f"hf:{self.model_name}"),
            finish_reason=reason,
            model=self.model_name,
            reasoning=reasoning,
        )
