"""`StepScheduler`: continuous batching for `HFGenerator`, one decoding step at a time.

One thread owns the model and loops; each turn of the loop is:

1. **Boundary.** Newly submitted requests enter the waiting queue (FIFO); any request whose cancel
   event is set leaves, wherever it is (waiting, half prefilled or decoding).
2. **Prefill, chunked.** Up to ``prefill_tokens`` prompt tokens of waiting requests run through the
   model, one request at a time into a cache of its own, in chunks, so a long prompt is spread over
   several turns and the running rows keep decoding. The leading tokens a prompt shares with the
   last prompt prefilled (a chat template's system turn) are copied from that prompt's cache, not
   computed again. A request whose prompt is done samples its first token from the last chunk and,
   unless that already ends it, joins the batch.
3. **One decoding step** for every row of the batch: one forward pass over one token per row.

The batch keeps every layer's keys and values in one buffer of ``max_rows`` slots by columns (on
CPU in pages that take memory only once written). All rows write the same column at each step; a
row's prompt is copied into its slot so that it ends at that column (left padding that no pass
ever computes), with an attention mask from each row's first column and positions from its own
length, so every token keeps the position it has in its own prompt. A finished row's slot takes
the last row (one row copied, never the batch); the buffer is laid out afresh only when the
columns run out or a newcomer's prompt is longer than the columns before the current one.

Rows carry their own cap, stop strings, temperature (0: greedy) and `RowRule` list (budget
enforcer, other decoding-time rules: ``BatchDecoder.row_rules``); a finished row's `Generation` is
``BatchDecoder.finish``'s, so its text, finish reason and usage are what ``HFGenerator.generate``
gives. Admission is bounded: past ``max_waiting`` requests not yet decoding, `submit` raises
`QueueFull`. A failed forward pass fails the rows in it and the loop goes on; if the loop itself
fails, every request is failed and `alive` turns False.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ..._optional import require
from ...core.checks import check_positive_int
from ...core.errors import BatcherClosed, JobCancelled, QueueFull, TaleValueError
from ...core.generation import Generation, Message
from ...core.prompts import QuestionFormat
from ..row_rules import RowRule, apply_rules
from .cache import CACHE_KWARG, growing_cache, lazy_zeros, prefill, shared_prefix, supports_fast_path

torch = require("torch", extra="hf", purpose="the local Hugging Face backend")
require("transformers", extra="hf", purpose="the local Hugging Face backend")
from transformers.cache_utils import DynamicCache, DynamicLayer  # noqa: E402

__all__ = ["CancelEvent", "QueueFull", "Row", "StepScheduler"]

#: Fewest free columns the batch buffer is given beyond what its rows still need (fewer re-layouts).
MIN_HEADROOM = 256
#: Fewest leading tokens a prompt must share with the last prompt prefilled for their cache to be reused.
MIN_SHARED_PREFIX = 8


class CancelEvent(threading.Event):
    """A cancel event that remembers the scheduler's step count when it was set (see `StepScheduler.stats`)."""

    def __init__(self, scheduler: StepScheduler | None = None) -> None:
        super().__init__()
        self._scheduler = scheduler
        #: `StepScheduler.steps` when the event was first set, or None.
        self.set_at_step: int | None = None

    def set(self) -> None:
        if self.set_at_step is None and self._scheduler is not None:
            self.set_at_step = self._scheduler.steps
        super().set()


class Row:
    """One request in the scheduler: its settings, its tokens so far and its result.

    ``future`` holds the `Generation` (or the error); `result` and `aresult` wait for it. ``listener``,
    when given, is called from the scheduler's thread with each new token id (a one-item list).
    """

    __slots__ = ("id", "prompt", "cap", "stop", "temperature", "rules", "cancel", "listener", "future",
                 "generated", "stopped_at", "stop_window", "thinking", "slot", "start", "staged", "prefilled",
                 "freed_at_step")

    def __init__(self, *, id: int, prompt: list[int], cap: int, stop: list[str] | None, temperature: float,
                 rules: list[RowRule], cancel: threading.Event, listener: Callable[[list[int]], None] | None) -> None:
        self.id, self.prompt, self.cap, self.stop, self.temperature = id, prompt, cap, stop, temperature
        self.rules, self.cancel, self.listener = rules, cancel, listener
        self.future: concurrent.futures.Future[Generation] = concurrent.futures.Future()
        self.generated: list[int] = []
        self.stopped_at: int | None = None
        # A stop string of n characters spans at most n tokens; a little more covers the join.
        self.stop_window = max(len(s) for s in stop) + 4 if stop else 0
        #: On a model with a thinking block, where the answer starts (stop strings apply to the answer only).
        self.thinking: Any = None
        self.slot = -1  # the batch slot while decoding
        self.start = 0  # the first column of its prompt in the batch buffer
        self.staged: Any = None  # its own cache while its prompt is prefilled
        self.prefilled = 0  # prompt tokens prefilled so far
        self.freed_at_step: int | None = None

    def result(self, timeout: float | None = None) -> Generation:
        """Wait for the `Generation` (raises the row's error: `JobCancelled`, `BatcherClosed`...)."""
        return self.future.result(timeout)

    async def aresult(self) -> Generation:
        """Async twin of `result`."""
        return await asyncio.wrap_future(self.future)


class _SlotLayer(DynamicLayer):
    """One layer of the batch buffer as a cache layer for one forward pass: writes the new keys and
    values at column ``t`` of the first ``rows`` slots and hands attention columns ``lo`` to ``t``."""

    def __init__(self, keys: Any, values: Any) -> None:
        super().__init__()
        self.keys_buffer, self.values_buffer = keys, values
        self.is_initialized = True
        self.rows = self.lo = self.t = 0

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        end = self.t + key_states.shape[-2]
        self.keys_buffer[: self.rows, :, self.t : end] = key_states
        self.values_buffer[: self.rows, :, self.t : end] = value_states
        return self.keys_buffer[: self.rows, :, self.lo : end], self.values_buffer[: self.rows, :, self.lo : end]

    def get_seq_length(self, *args: Any, **kwargs: Any) -> int:
        return self.t - self.lo

    def get_mask_sizes(self, query_length: int, *args: Any, **kwargs: Any) -> tuple[int, int]:
        return self.t - self.lo + query_length, 0


class StepScheduler:
    """Continuous batching over a loaded `HFGenerator` (see the module docstring).

    Args:
        generator: The `HFGenerator`; its weights load when the scheduler starts.
        max_rows: Most rows decoding at once (prefilling rows count). Default 16.
        max_waiting: Most requests submitted but not yet decoding; past it `submit` raises `QueueFull`.
        prefill_tokens: Most prompt tokens prefilled between two decoding steps. Default 256.
        answer_format: Wrap-up text of the budget enforcer (a server's prompts use ``chat``).

    Start it with `start`, stop it with `close`. `submit` is thread-safe and returns a `Row`.
    """

    def __init__(
        self,
        generator: Any,
        *,
        max_rows: int = 16,
        max_waiting: int = 256,
        prefill_tokens: int = 256,
        answer_format: QuestionFormat | str = QuestionFormat.CHAT,
    ) -> None:
        self.generator = generator
        self.max_rows = check_positive_int("max_rows", max_rows)
        self.max_waiting = check_positive_int("max_waiting", max_waiting)
        self.prefill_tokens = check_positive_int("prefill_tokens", prefill_tokens)
        self.answer_format = QuestionFormat(answer_format)
        #: Decoding steps run so far.
        self.steps = 0
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._inbox: list[Row] = []  # submitted, not yet seen by the loop (under _cond)
        self._queued = 0  # submitted and not yet decoding, finished or dropped (under _cond)
        self._pending: collections.deque[Row] = collections.deque()
        self._prefilling: Row | None = None
        self._rows: list[Row] = []  # the batch, by slot
        self._closing = self._abort = False
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._counts: collections.Counter[str] = collections.Counter()
        self._cancel_lags: collections.deque[int] = collections.deque(maxlen=256)
        self._batch_sizes: collections.Counter[int] = collections.Counter()
        # the batch buffer: one (keys, values) per layer, shaped (max_rows, heads, columns, head_dim)
        self._layers: list[_SlotLayer] = []
        self._cache: Any = None
        self._columns = 0
        self._t = 0  # the column the next step writes
        self._rng: Any = None
        self._prefix: tuple[list[int], list[tuple[Any, Any]]] | None = None  # the last prompt and its cache
        if getattr(generator, "is_loaded", False):
            self._check_model()  # refuse a model it cannot run now, not when it starts

    # -- state --------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the scheduler takes requests (started, not closing, not dead)."""
        return self._thread is not None and not self._closing and self.alive

    @property
    def alive(self) -> bool:
        """Whether the loop is healthy: not started yet, or running. False once it failed."""
        return self._error is None and (self._thread is None or self._thread.is_alive() or self._closing)

    @property
    def error(self) -> BaseException | None:
        """What stopped the loop, if it failed."""
        return self._error

    @property
    def waiting(self) -> int:
        """Requests submitted and not yet decoding."""
        return self._queued

    def stats(self) -> dict[str, Any]:
        """Counters and state: ``steps``, ``decoding`` (rows now), ``waiting``, ``finished``,
        ``cancelled``, ``failed``, ``refused`` (queue full), ``prefilled_tokens`` (prompt tokens computed),
        ``reused_prefix_tokens`` (prompt tokens taken from another prompt's cache), ``prefill_passes`` (prefill
        calls: one chunk of one prompt, or one group of prompts), ``cancel_lags`` (for each
        recent row cancelled
        while decoding with a `CancelEvent`: the steps it ran after its event was set; one at most, the
        step in flight), ``batch_sizes`` (how many steps ran at each batch size), ``alive``, ``error``."""
        return {
            "steps": self.steps, "decoding": len(self._rows), "waiting": self._queued,
            "finished": self._counts["finished"], "cancelled": self._counts["cancelled"],
            "failed": self._counts["failed"], "refused": self._counts["refused"],
            "prefilled_tokens": self._counts["prefilled"], "reused_prefix_tokens": self._counts["reused"],
            "prefill_passes": self._counts["prefill_passes"],
            "cancel_lags": list(self._cancel_lags), "batch_sizes": dict(sorted(self._batch_sizes.items())),
            "alive": self.alive, "error": None if self._error is None else repr(self._error),
        }

    def new_cancel(self) -> CancelEvent:
        """A cancel event for `submit` that records when it was set (`stats`' ``cancel_lags``)."""
        return CancelEvent(self)

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> StepScheduler:
        """Load the model and start the loop's thread. Returns self.

        Raises:
            ValueError: the model's cache layers are not all full attention (sliding windows,
                linear attention): use the micro-batcher for it.
        """
        if self._thread is not None:
            raise RuntimeError("the scheduler is already started")
        self._check_model()
        model = self.generator.model
        self._rng = torch.Generator(device=model.device)
        seed = self.generator.seed
        self._rng.manual_seed(seed if seed is not None else torch.seed())
        self._thread = threading.Thread(target=self._run, name="tale-step-scheduler", daemon=True)
        self._thread.start()
        return self

    def _check_model(self) -> None:
        if not supports_fast_path(self.generator.load().model):
            raise TaleValueError(
                f"the continuous scheduler needs a model whose cache layers are all full attention; "
                f"{self.generator.model_name!r} has others: serve it with the micro-batcher (--scheduler microbatch)")

    def close(self, timeout: float | None = None) -> None:
        """Stop taking requests and let those already submitted finish; after ``timeout`` seconds (None:
        no limit) fail the rest with `BatcherClosed`. Then the loop's thread ends."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is None:
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._cond:
                self._abort = True
                self._cond.notify_all()
            self._thread.join()

    # -- submitting ---------------------------------------------------------------------------

    def check_room(self) -> None:
        """Raise `QueueFull` (or `BatcherClosed`) now if a request would be refused (a cheap early check)."""
        if not self.running:
            raise BatcherClosed(self._closed_message())
        if self._queued >= self.max_waiting:
            self._counts["refused"] += 1
            raise QueueFull(f"the server is busy: {self._queued} requests are waiting (the limit is "
                            f"{self.max_waiting}); retry later")

    def submit(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = None,
        budget: int | None = None,
        answer_rules: Sequence[RowRule] = (),
        cancel: threading.Event | None = None,
        listener: Callable[[list[int]], None] | None = None,
        thinking_budget: int | None = None,
        chat_template_kwargs: Any = None,
    ) -> Row:
        """Queue one conversation; returns its `Row` (wait with ``row.result()`` or ``await row.aresult()``).

        The arguments are `HFGenerator.stream`'s (checked the same way) plus ``cancel`` (the row leaves
        at the next step boundary once it is set) and ``listener`` (called with each new token id).

        Raises:
            QueueFull: ``max_waiting`` requests are already waiting.
            BatcherClosed: the scheduler is not running.
            ValueError: a bad argument, or a prompt too long for the context window.
        """
        self.check_room()
        thinking: dict[str, Any] = {}
        if thinking_budget is not None or chat_template_kwargs is not None:
            thinking = {"thinking_budgets": None if thinking_budget is None else [thinking_budget],
                        "chat_template_kwargs": chat_template_kwargs}
        [ids], [cap], stop_list, temp = self.generator._prepare([messages], max_tokens, stop, temperature, [budget],
                                                                **thinking)
        if len(ids) < 2:
            raise TaleValueError("the chat-templated prompt is a single token; the scheduler needs at least two "
                                 "(use a chat template that wraps the messages)")
        decoder = self.generator._decoder
        cap = min(cap, decoder.window - len(ids))
        markers = getattr(decoder, "thinking", None)
        own = {"thinking_budget": thinking_budget, "prompt": ids} if markers is not None or thinking else {}
        rules = decoder.row_rules(budget=budget, cap=cap, answer_format=self.answer_format,
                                  answer_rules=list(answer_rules), **own)
        row = Row(id=next(self._ids), prompt=list(ids), cap=cap, stop=stop_list, temperature=float(temp),
                  rules=rules, cancel=cancel if cancel is not None else threading.Event(), listener=listener)
        if markers is not None:
            row.thinking = markers.tracker(row.prompt)
        with self._cond:
            self.check_room()  # again: others may have queued while this prompt was encoded
            self._queued += 1
            self._inbox.append(row)
            self._cond.notify_all()
        return row

    def _closed_message(self) -> str:
        if self._error is not None:
            return f"the decoding scheduler stopped after an internal error ({type(self._error).__name__})"
        return "the server is shutting down and takes no new requests"

    # -- the loop -----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while self._turn():
                    pass
        except BaseException as exc:  # the loop failed: nobody is left waiting on it
            self._error = exc
            self._fail_everyone(BatcherClosed(self._closed_message()))
        finally:
            self._release()

    def _turn(self) -> bool:
        """One turn of the loop; False when the loop should end."""
        with self._cond:
            while not (self._inbox or self._pending or self._prefilling or self._rows or self._closing):
                self._cond.wait()
            self._pending.extend(self._inbox)
            self._inbox.clear()
            if self._abort:
                self._fail_everyone(BatcherClosed("the server shut down before this request was finished"))
                return False
            if self._closing and not (self._pending or self._prefilling or self._rows):
                return False
        self._drop_cancelled()
        self._prefill()
        if self._rows:
            self._step()
        return True

    def _unqueue(self) -> None:
        with self._cond:
            self._queued -= 1

    def _settle(self, row: Row, *, result: Generation | None = None, error: BaseException | None = None) -> None:
        row.freed_at_step = self.steps
        if row.future.done():
            return
        if error is not None:
            row.future.set_exception(error)
        else:
            row.future.set_result(result)  # type: ignore[arg-type]

    def _fail_everyone(self, error: BaseException) -> None:
        with self._cond:
            rows = [*self._inbox, *self._pending, *([self._prefilling] if self._prefilling else []), *self._rows]
            self._inbox.clear()
            self._queued = 0
        self._pending.clear()
        self._prefilling = None
        self._rows.clear()
        for row in rows:
            self._counts["failed"] += 1
            self._settle(row, error=error)
        self._release()

    def _drop_cancelled(self) -> None:
        cancelled = JobCancelled("the request was cancelled (its client went away)")
        for row in [r for r in self._pending if r.cancel.is_set()]:
            self._pending.remove(row)
            self._unqueue()
            self._counts["cancelled"] += 1
            self._settle(row, error=cancelled)
        row = self._prefilling
        if row is not None and row.cancel.is_set():
            self._prefilling = None
            self._unqueue()
            self._counts["cancelled"] += 1
            self._settle(row, error=cancelled)
        for row in [r for r in self._rows if r.cancel.is_set()]:
            at = getattr(row.cancel, "set_at_step", None)
            if at is not None:
                self._cancel_lags.append(self.steps - at)
            self._leave(row)
            self._counts["cancelled"] += 1
            self._settle(row, error=cancelled)

    # -- prefill ------------------------------------------------------------------------------

    def _prefill(self) -> None:
        """Prefill up to ``prefill_tokens`` prompt tokens of waiting requests (the oldest first): a long
        prompt alone, chunk by chunk over several turns; short ones together, in one group."""
        budget = self.prefill_tokens
        while budget > 0:
            if self._prefilling is None:
                group = self._next_group(budget)
                if not group:
                    return
                if len(group) > 1:
                    budget -= self._prefill_group(group)
                    continue
                row = self._prefilling = group[0]
                row.staged = growing_cache(self.generator.model, capacity=len(row.prompt))
                self._reuse_prefix(row)
            row = self._prefilling
            take = min(budget, len(row.prompt) - 1 - row.prefilled)
            budget -= max(take, 1)
            try:
                self._prefill_chunk(row, take)
            except Exception as exc:  # this request's prompt failed; the others go on
                self._prefilling = None
                self._unqueue()
                self._counts["failed"] += 1
                self._settle(row, error=exc)
                continue
            if row.prefilled < len(row.prompt) - 1:
                return  # the rest of this prompt in the next turns
            self._prefilling = None
            self._unqueue()
            kv = [(layer.keys[0], layer.values[0]) for layer in row.staged.layers]
            row.staged = None
            self._join(row, kv)

    def _next_group(self, budget: int) -> list[Row]:
        """The waiting requests to prefill next: the oldest, and after it those that fit ``budget``
        tokens together (and free rows), in order."""
        group: list[Row] = []
        tokens = 0
        while self._pending and len(self._rows) + len(group) < self.max_rows:
            length = len(self._pending[0].prompt) - 1
            if group and tokens + length > budget:
                break
            group.append(self._pending.popleft())
            tokens += length
            if tokens > budget:  # a long prompt: alone, in chunks
                break
        return group

    def _prefill_group(self, group: list[Row]) -> int:
        """Prefill several prompts (all but their last tokens) in batched passes, the prefix they share
        once (``cache.prefill``), and join them; returns the tokens it took."""
        prompts = [row.prompt for row in group]
        model, width = self.generator.model, max(len(p) for p in prompts)
        shared = shared_prefix(prompts)
        cache = growing_cache(model, capacity=width)
        try:
            with self.generator._decoder.lock:
                prefill(model, prompts, width, self.generator.tokenizer.pad_token_id, cache, shared)
            self._counts["prefill_passes"] += 1
        except Exception as exc:  # these requests' prompts failed; the others go on
            for row in group:
                self._unqueue()
                self._counts["failed"] += 1
                self._settle(row, error=exc)
            return sum(len(p) - 1 for p in prompts)
        device = cache.layers[0].keys.device
        self._counts["prefilled"] += sum(len(p) - 1 for p in prompts) - shared * (len(group) - 1)
        self._counts["reused"] += shared * (len(group) - 1)
        for i, row in enumerate(group):
            # its columns in the batch cache: the shared prefix, then (after padding) its own tokens
            columns = torch.tensor([*range(shared), *range(shared + width - len(row.prompt), width - 1)],
                                   device=device)
            kv = [(layer.keys[i].index_select(1, columns), layer.values[i].index_select(1, columns))
                  for layer in cache.layers]
            self._unqueue()
            self._join(row, kv)
        return sum(len(p) - 1 for p in prompts) - shared * (len(group) - 1)

    def _reuse_prefix(self, row: Row) -> None:
        """Start a row's cache with the leading tokens it shares with the last prompt prefilled (at least
        `MIN_SHARED_PREFIX`)."""
        if self._prefix is None:
            return
        ids, cache = self._prefix
        limit, shared = min(len(ids), len(row.prompt)) - 1, 0
        while shared < limit and ids[shared] == row.prompt[shared]:
            shared += 1
        if shared < MIN_SHARED_PREFIX:
            return
        for layer, (keys, values) in zip(row.staged.layers, cache, strict=True):
            layer.update(keys[None, :, :shared], values[None, :, :shared])
        row.prefilled = shared
        self._counts["reused"] += shared

    def _prefill_chunk(self, row: Row, take: int) -> None:
        if take <= 0:
            return
        model, start = self.generator.model, row.prefilled
        ids = torch.tensor([row.prompt[start : start + take]], device=model.device)
        positions = torch.arange(start, start + take, device=model.device)[None]
        with self.generator._decoder.lock:
            model(input_ids=ids, position_ids=positions, use_cache=True, logits_to_keep=1,
                  **{CACHE_KWARG: row.staged})
        row.prefilled += take
        self._counts["prefilled"] += take
        self._counts["prefill_passes"] += 1

    # -- the batch buffer ---------------------------------------------------------------------

    def _needed(self, extra: int = 0) -> int:
        """Columns the rows still need past the current one, at least `MIN_HEADROOM`."""
        left = max((r.cap - len(r.generated) for r in self._rows), default=0)
        return max(left, extra, MIN_HEADROOM) + 1

    def _layout(self, t: int, columns: int, like: Sequence[tuple[Any, Any]]) -> None:
        """Lay the buffer out afresh with ``columns`` columns, the current column moved to ``t`` (rows keep
        their columns before it, shifted alike). ``like`` gives each layer's keys and values to copy the
        dtype, device and shape of."""
        shift = t - self._t
        layers = []
        for i, (k, v) in enumerate(like):
            shape = (self.max_rows, k.shape[1], columns, k.shape[-1])
            keys, values = lazy_zeros(k, shape), lazy_zeros(v, shape)
            if self._layers:
                old, n = self._layers[i], len(self._rows)
                lo = min(r.start for r in self._rows) if self._rows else self._t
                keys[:n, :, lo + shift : t] = old.keys_buffer[:n, :, lo : self._t]
                values[:n, :, lo + shift : t] = old.values_buffer[:n, :, lo : self._t]
            layers.append(_SlotLayer(keys, values))
        for row in self._rows:
            row.start += shift
        self._layers, self._columns, self._t = layers, columns, t
        self._cache = DynamicCache(config=self.generator.model.config)
        self._cache.layers = layers

    def _join(self, row: Row, kv: list[tuple[Any, Any]]) -> None:
        """Copy a prefilled row (``kv``: each layer's keys and values of all but its prompt's last token,
        shaped heads x tokens x dim) into the next free slot, ending just before the current column: the
        next step computes its last prompt token and samples its first new one."""
        self._prefix = (row.prompt, kv)
        length = len(row.prompt) - 1
        like = [(k[None], v[None]) for k, v in kv]
        if not self._layers:
            self._t = 0
            self._layout(length, length + self._needed(row.cap), like)
        elif self._t < length:  # a prompt longer than the columns before the current one
            self._layout(length, self._columns + length - self._t, like)
        slot, t = len(self._rows), self._t
        for layer, (k, v) in zip(self._layers, kv, strict=True):
            layer.keys_buffer[slot, :, t - length : t] = k
            layer.values_buffer[slot, :, t - length : t] = v
        row.slot, row.start = slot, t - length
        self._rows.append(row)

    def _leave(self, row: Row) -> None:
        """Free a row's slot: the last row moves into it."""
        last = self._rows.pop()
        if last is not row:
            slot, t = row.slot, self._t
            for layer in self._layers:
                layer.keys_buffer[slot, :, last.start : t] = layer.keys_buffer[last.slot, :, last.start : t]
                layer.values_buffer[slot, :, last.start : t] = layer.values_buffer[last.slot, :, last.start : t]
            last.slot = slot
            self._rows[slot] = last
        row.slot = -1
        if not self._rows:
            self._release()

    def _release(self) -> None:
        """Drop the batch buffer (its memory goes back to the system)."""
        self._layers, self._cache, self._columns, self._t = [], None, 0, 0

    # -- decoding -----------------------------------------------------------------------------

    def _step(self) -> None:
        """One decoding step for every row of the batch."""
        rows = self._rows
        if self._t + 1 > self._columns:  # out of columns: move the live ones to the front
            lo = min(r.start for r in rows)
            like = [(layer.keys_buffer, layer.values_buffer) for layer in self._layers]
            self._layout(self._t - lo, self._t - lo + self._needed(), like)
        model, device, t = self.generator.model, self.generator.model.device, self._t
        lo = min(r.start for r in rows)
        # a row's next input: its last new token, or at its first step its prompt's last token
        ids = torch.tensor([[r.generated[-1] if r.generated else r.prompt[-1]] for r in rows], device=device)
        positions = torch.tensor([[len(r.prompt) + len(r.generated) - 1] for r in rows], device=device)
        starts = torch.tensor([r.start for r in rows], device=device)
        mask = (torch.arange(lo, t + 1, device=device)[None, :] >= starts[:, None])[:, None, None, :]
        for layer in self._layers:
            layer.rows, layer.lo, layer.t = len(rows), lo, t
        try:
            with self.generator._decoder.lock:
                out = model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True,
                            **{CACHE_KWARG: self._cache})
        except Exception as exc:  # the step failed: its rows fail, the loop goes on
            for row in list(rows):
                self._counts["failed"] += 1
                self._settle(row, error=exc)
            self._rows = []
            self._release()
            return
        self._t += 1
        self.steps += 1
        self._batch_sizes[len(rows)] += 1
        self._take_tokens(list(rows), out.logits[:, -1, :])

    def _take_tokens(self, rows: list[Row], logits: Any) -> None:
        """Choose each row's next token from its scores, hand it on, and finish the rows that are done."""
        scores = logits.float()
        greedy = scores.argmax(-1).tolist()
        decoder = self.generator._decoder
        for i, row in enumerate(rows):
            try:
                if row.rules or row.temperature > 0:
                    own = scores[i]
                    apply_rules(row.rules, row.generated, own)
                    if row.temperature > 0:
                        probs = torch.softmax(own / row.temperature, dim=-1)
                        token = int(torch.multinomial(probs, 1, generator=self._rng))
                    else:
                        token = int(own.argmax())
                else:
                    token = greedy[i]
                row.generated.append(token)
                if row.listener is not None:
                    row.listener([token])
                if not self._done(row, token):
                    continue
                generation = decoder.finish(row.prompt, row.generated, row.stop, row.stopped_at)
            except Exception as exc:  # this row's rules or listener failed; the others go on
                self._counts["failed"] += 1
                self._finish(row, error=exc)
                continue
            self._counts["finished"] += 1
            self._finish(row, result=generation)

    def _done(self, row: Row, token: int) -> bool:
        if token in self.generator._decoder.eos_ids:
            return True
        if row.stop:
            start = 0
            if row.thinking is not None:  # stop strings apply to the answer, after the thinking
                row.thinking.advance(row.generated)
                start = row.thinking.answer_start
            if start is not None:
                tail = row.generated[max(start, len(row.generated) - row.stop_window) :]
                if any(s in self.generator.tokenizer.decode(tail, skip_special_tokens=True) for s in row.stop):
                    row.stopped_at = len(row.generated)
                    return True
        return len(row.generated) >= row.cap

    def _finish(self, row: Row, *, result: Generation | None = None, error: BaseException | None = None) -> None:
        if row.slot >= 0:
            self._leave(row)
        self._settle(row, result=result, error=error)
