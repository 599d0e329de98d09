"""One batch through ``model.generate`` for `HFGenerator`: its settings, stopping criteria and
budget enforcer, the fast path's prefill and cache, and the `Generation` of each row."""

from __future__ import annotations

import threading
from typing import Any

from .._optional import require

torch = require("torch", extra="hf", purpose="the local Hugging Face backend")
transformers = require("transformers", extra="hf", purpose="the local Hugging Face backend")

from ..core.budget import BudgetEnforcement  # noqa: E402
from ..core.generation import Generation, Usage  # noqa: E402
from ..core.prompts import QuestionFormat  # noqa: E402
from ._hf_cache import CACHE_KWARG, growing_cache, layout, prefill, shared_prefix  # noqa: E402
from ._hf_cpu import release_free_memory  # noqa: E402
from ._hf_stream import RowLimits, StopOnStrings, TokenQueue  # noqa: E402
from .budget_enforcer import BudgetEnforcer  # noqa: E402

__all__ = ["BatchDecoding"]


class BatchDecoding:
    """`HFGenerator`'s decoding of one batch of encoded prompts (a mixin: it reads the loaded model,
    tokenizer and settings from the generator)."""

    _model: Any
    _tokenizer: Any
    _fast_path: bool
    _eos_ids: set[int]
    _eos: int
    _generate_lock: threading.Lock
    enforcement: BudgetEnforcement | None
    seed: int | None
    model_name: str
    context_window: int

    def _run(
        self,
        rows: list[list[int]],
        caps: list[int],
        stop: list[str] | None,
        temperature: float,
        budgets: list[int | None],
        answer_format: QuestionFormat | str,
        streamer: TokenQueue | None = None,
        cancel: list[threading.Event | None] | None = None,
    ) -> list[Generation]:
        tok, model = self._tokenizer, self._model
        width = max(len(r) for r in rows)
        # Each row's own room: positions come from the attention mask, so padding costs a row nothing.
        window = self.context_window
        caps = [min(cap, window - len(r)) for cap, r in zip(caps, rows)]
        max_new = max(caps)
        pad = tok.pad_token_id
        device = model.device
        shared = shared_prefix(rows) if self._fast_path else 0
        ids, mask = layout(rows, width, pad, shared)
        input_ids = torch.tensor(ids, device=device)
        attention = torch.tensor(mask, device=device)
        sampling = temperature > 0
        config = transformers.GenerationConfig(
            max_new_tokens=max_new, do_sample=sampling, temperature=temperature if sampling else None,
            top_p=None, top_k=None, pad_token_id=pad, eos_token_id=sorted(self._eos_ids),
        )
        criteria = transformers.StoppingCriteriaList()
        stop_criterion = StopOnStrings(tok, stop, width) if stop else None
        if stop_criterion:
            criteria.append(stop_criterion)
        if streamer is not None:
            criteria.append(streamer.criterion())
        limits = None
        if len(set(caps)) > 1 or (cancel and any(e is not None for e in cancel)):
            limits = RowLimits(caps, width, cancel)
            criteria.append(limits)
        processors = transformers.LogitsProcessorList()
        if self.enforcement is not None and any(b is not None for b in budgets):
            processors.append(BudgetEnforcer(
                tok, budgets, prompt_length=width, max_tokens=caps, eos_token_id=self._eos,
                policy=self.enforcement, format=answer_format,
            ))
        with self._generate_lock, torch.inference_mode():
            if sampling and self.seed is not None:
                torch.manual_seed(self.seed)
            cache = {}
            if self._fast_path:
                # Shared prefix once, the rest in buckets of similar length, into a cache that grows in place.
                cache[CACHE_KWARG] = growing_cache(model, capacity=width + max_new)
                prefill(model, rows, width, pad, cache[CACHE_KWARG], shared)
                if device.type == "cpu":
                    release_free_memory()
            output = model.generate(
                input_ids=input_ids, attention_mask=attention, generation_config=config,
                stopping_criteria=criteria, logits_processor=processors, streamer=streamer, **cache,
            )
        new = output[:, width:].tolist()
        ends = [limits.cancelled_at.get(row, cap) if limits else cap for row, cap in enumerate(caps)]
        return [
            self._finish(row, prompt, tokens[: ends[row]], stop, stop_criterion)
            for row, (prompt, tokens) in enumerate(zip(rows, new))
        ]

    def _finish(self, row: int, prompt: list[int], tokens: list[int], stop: list[str] | None,
                criterion: StopOnStrings | None) -> Generation:
        end = next((k + 1 for k, t in enumerate(tokens) if t in self._eos_ids), None)
        reason = "stop"
        if criterion is not None and row in criterion.stopped_at and (end is None or criterion.stopped_at[row] < end):
            end = criterion.stopped_at[row]
        elif end is None:
            end, reason = len(tokens), "length"
        text = self._tokenizer.decode(tokens[:end], skip_special_tokens=True)
        if stop:
            cut = min((p for p in (text.find(s) for s in stop) if p >= 0), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
        return Generation(
            text=text,
            usage=Usage(input_tokens=len(prompt), output_tokens=end, counter=f"hf:{self.model_name}"),
            finish_reason=reason,
            model=self.model_name,
        )
