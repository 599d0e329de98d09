"""The server's two ways to share the model: micro-batching and continuous batching.

`ContinuousBatcher` (the default of ``tale serve``) is the event loop's face of the HF backend's
`StepScheduler`: requests, streamed or not, join the running batch at the next decoding step and
leave when they finish or their client goes away (see ``backends/hf/scheduler.py``).

`MicroBatcher` (``--scheduler microbatch``) is the earlier design, kept for comparison: an
asyncio task collects waiting requests for up to ``window_ms`` after the first one arrives (or
until ``max_batch_size`` are waiting), groups them by the decoding settings one batched call must
share (temperature and stop strings), and runs ONE ``generator.generate`` call per group on a
single worker thread, with per-row output caps, per-row budgets and per-row cancel events. (A
group is split only where a long prompt would leave a neighbour less room in the context window
than its cap: see `MicroBatcher._fit`.) While the worker is busy, new requests queue up and form
the next batch, so a loaded server batches without waiting for the window; but a request that
arrives while a batch runs waits for the whole batch to finish.

A request whose cancel event is set before its batch starts is dropped; once started, the backend
ends that row at the next decoding step. If a batched call fails, each of its rows is retried
alone, so one bad request cannot fail its neighbours.

Both take the same ``submit`` and bound their waiting queue (``max_queue``: past it, `QueueFull`).
This module needs no web framework: it batches for any caller with an event loop.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..core.checks import check_number, check_positive_int
from ..core.errors import BatcherClosed, JobCancelled, QueueFull
from ..core.generation import BaseGenerator, Generation, Message, Sampling, StreamEvent
from ..core.prompts import QuestionFormat

__all__ = ["BatchedGenerator", "BatcherClosed", "ContinuousBatcher", "JobCancelled", "MicroBatcher", "QueueFull"]

_END = object()


@dataclass(eq=False, slots=True)
class _Job:
    messages: list[dict[str, str]]
    max_tokens: int | None
    temperature: float
    stop: tuple[str, ...]
    budget: int | None
    cancel: threading.Event
    future: asyncio.Future[Generation] = field(repr=False)
    answer_rules: list[Any] = field(default_factory=list)
    thinking_budget: int | None = None
    chat_template_kwargs: Mapping[str, Any] | None = None

    def group(self) -> tuple[Any, ...]:
        """What rows of one batched call must share: temperature, stop strings, template arguments."""
        kwargs = json.dumps(dict(self.chat_template_kwargs), sort_keys=True, default=repr) \
            if self.chat_template_kwargs else None
        return self.temperature, self.stop, kwargs


class MicroBatcher:
    """Collects concurrent requests into batched ``generate`` calls.

    Args:
        generator: A generator whose ``generate`` takes per-row ``max_tokens``, ``budgets`` and
            ``cancel`` lists (`tale_integrations.backends.hf.HFGenerator`).
        max_batch_size: Most requests in one batch. 1 turns batching off (one request at a time).
        window_ms: How long to wait for more requests after the first one arrives.
        answer_format: Wrap-up text of the budget enforcer (the server's prompts use ``chat``).
        max_queue: Most requests waiting for a batch; past it `submit` raises `QueueFull`. None: no limit.
    """

    def __init__(
        self,
        generator: Any,
        *,
        max_batch_size: int = 16,
        window_ms: float = 10.0,
        answer_format: QuestionFormat | str = QuestionFormat.CHAT,
        max_queue: int | None = None,
    ) -> None:
        check_positive_int("max_batch_size", max_batch_size)
        check_number("window_ms", window_ms, low=0, high=10_000, hint=" (milliseconds)")
        self.generator = generator
        self.max_batch_size = max_batch_size
        self.max_queue = check_positive_int("max_queue", max_queue, optional=True)
        self.window = window_ms / 1000
        self.answer_format = QuestionFormat(answer_format)
        #: How many batched calls of each size ran (for tests, logs and benchmarks).
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self._pending: collections.deque[_Job] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._generating: list[_Job] = []

    @property
    def running(self) -> bool:
        """Whether the batcher takes requests."""
        return self._task is not None and not self._closing and self.alive

    @property
    def alive(self) -> bool:
        """Whether the collecting task is healthy (not started yet, running, or closed normally)."""
        task = self._task
        return task is None or not task.done() or (not task.cancelled() and task.exception() is None)

    @property
    def waiting(self) -> int:
        """Requests waiting for a batch."""
        return len(self._pending)

    def stats(self) -> dict[str, Any]:
        """``waiting``, ``batch_sizes`` (how many batched calls ran at each size) and ``alive``."""
        return {"waiting": self.waiting, "batch_sizes": dict(sorted(self.batch_sizes.items())), "alive": self.alive}

    def new_cancel(self) -> threading.Event:
        """A cancel event for `submit`."""
        return threading.Event()

    def check_room(self) -> None:
        """Raise `QueueFull` (or `BatcherClosed`) now if a request would be refused."""
        if not self.running:
            raise BatcherClosed("the server is shutting down and takes no new requests")
        if self.max_queue is not None and len(self._pending) >= self.max_queue:
            raise QueueFull(f"the server is busy: {len(self._pending)} requests are waiting (the limit is "
                            f"{self.max_queue}); retry later")

    async def start(self) -> None:
        """Start the collecting task and the worker thread (call from the serving event loop)."""
        if self._task is not None:
            raise RuntimeError("the batcher is already started")
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tale-serve-batch")
        self._task = asyncio.create_task(self._collect(), name="tale-serve-batcher")

    async def close(self, timeout: float | None = None) -> None:
        """Stop taking requests, finish every request already waiting, then stop the worker. After
        ``timeout`` seconds (None: no limit) the requests still waiting fail with `BatcherClosed` and
        those generating are cancelled (they end at their next decoding step)."""
        if self._task is None or self._closing:
            return
        self._closing = True
        assert self._arrived is not None
        self._arrived.set()
        done, _ = await asyncio.wait({self._task}, timeout=timeout)
        if not done:
            late = BatcherClosed("the server shut down before this request was finished")
            while self._pending:
                job = self._pending.popleft()
                job.cancel.set()
                _settle(job.future, error=late)
            for job in self._generating:
                job.cancel.set()
            await asyncio.wait({self._task})
        assert self._executor is not None
        self._executor.shutdown(wait=True)

    async def submit(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: Sequence[str] = (),
        budget: int | None = None,
        cancel: threading.Event | None = None,
        answer_rules: Sequence[Any] = (),
        thinking_budget: int | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> Generation:
        """Queue one conversation and wait for its `Generation`. ``answer_rules`` (decoding rules for this
        row, used once), ``thinking_budget`` and ``chat_template_kwargs`` are `HFGenerator.stream`'s.

        Raises:
            BatcherClosed: the batcher is not running.
            JobCancelled: ``cancel`` was set before the request was generated.
        """
        self.check_room()
        assert self._arrived is not None
        job = _Job(
            messages=[dict(m) for m in messages],
            max_tokens=max_tokens,
            temperature=self.generator.temperature if temperature is None else temperature,
            stop=tuple(stop),
            budget=budget,
            cancel=cancel if cancel is not None else threading.Event(),
            future=asyncio.get_running_loop().create_future(),
            answer_rules=list(answer_rules),
            thinking_budget=thinking_budget,
            chat_template_kwargs=chat_template_kwargs,
        )
        self._pending.append(job)
        self._arrived.set()
        return await job.future

    # -- the collecting task --------------------------------------------------------------------

    async def _collect(self) -> None:
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
            deadline = loop.time() + self.window
            while len(self._pending) < self.max_batch_size and not self._closing:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            batch = [self._pending.popleft() for _ in range(min(self.max_batch_size, len(self._pending)))]
            try:
                await self._run(batch)
            except BaseException as exc:  # never leave a request hanging, whatever went wrong
                for job in batch:
                    _settle(job.future, error=exc if isinstance(exc, Exception) else BatcherClosed(str(exc)))
                if not isinstance(exc, Exception):
                    raise

    async def _run(self, batch: list[_Job]) -> None:
        live = []
        for job in batch:
            if job.cancel.is_set() or job.future.done():
                _settle(job.future, error=JobCancelled("the request was cancelled before it was generated"))
            else:
                live.append(job)
        groups: dict[tuple[Any, ...], list[_Job]] = {}
        for job in live:
            groups.setdefault(job.group(), []).append(job)
        loop = asyncio.get_running_loop()
        for jobs in groups.values():
            self._generating = jobs
            try:
                outcomes = await loop.run_in_executor(self._executor, self._generate, jobs)
            finally:
                self._generating = []
            for job, outcome in zip(jobs, outcomes, strict=True):
                if isinstance(outcome, Generation):
                    _settle(job.future, result=outcome)
                else:
                    _settle(job.future, error=outcome)

    def _generate(self, jobs: list[_Job]) -> list[Generation | Exception]:
        """The group's batched calls (in the worker thread), results in the group's order."""
        outcomes: dict[int, Generation | Exception] = {}
        for batch in self._fit(jobs):
            for job, outcome in zip(batch, self._generate_batch(batch), strict=True):
                outcomes[id(job)] = outcome
        return [outcomes[id(job)] for job in jobs]

    def _fit(self, jobs: list[_Job]) -> list[list[_Job]]:
        """Split a group so that no row's output cap is cut by a longer neighbour's prompt.

        A batch is left-padded to its longest prompt, and the backend lowers every row's cap to the
        room that longest prompt leaves in the context window; so rows share a batch only when the
        longest prompt plus the largest cap fits the window (first fit, in arrival order).
        """
        window = getattr(self.generator, "context_window", None)
        encode = getattr(self.generator, "encode_chat", None)
        if not isinstance(window, int) or not callable(encode):
            return [jobs]
        default = getattr(self.generator, "max_new_tokens", 0)
        batches: list[tuple[int, int, list[_Job]]] = []  # (longest prompt, largest cap, rows)
        for job in jobs:
            length = len(encode(job.messages, chat_template_kwargs=job.chat_template_kwargs))
            cap = job.max_tokens or default
            for k, (width, top, rows) in enumerate(batches):
                if max(width, length) + max(top, cap) <= window:
                    batches[k] = (max(width, length), max(top, cap), [*rows, job])
                    break
            else:
                batches.append((length, cap, [job]))
        return [rows for _, _, rows in batches]

    def _generate_batch(self, jobs: list[_Job]) -> list[Generation | Exception]:
        """One batched call; if it fails, each row is retried alone."""
        self.batch_sizes[len(jobs)] += 1
        try:
            return list(self._call(jobs))
        except Exception as exc:
            if len(jobs) == 1:
                return [exc]
            exc_of_batch = exc
        outcomes: list[Generation | Exception] = []
        for job in jobs:
            if job.answer_rules:  # its rules saw the failed call's tokens: they cannot be run again
                outcomes.append(exc_of_batch)
                continue
            try:
                outcomes.extend(self._call([job]))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def _call(self, jobs: list[_Job]) -> list[Generation]:
        first = jobs[0]
        budgets = [job.budget for job in jobs]
        thinking = [job.thinking_budget for job in jobs]
        extra: dict[str, Any] = {}
        if any(job.answer_rules for job in jobs):
            extra["answer_rules"] = [job.answer_rules for job in jobs]
        if any(b is not None for b in thinking):
            extra["thinking_budgets"] = thinking
        if first.chat_template_kwargs:
            extra["chat_template_kwargs"] = first.chat_template_kwargs
        return self.generator.generate(
            [job.messages for job in jobs],
            max_tokens=[job.max_tokens for job in jobs],
            stop=list(first.stop) or None,
            temperature=first.temperature,
            budgets=budgets if any(b is not None for b in budgets) else None,
            answer_format=self.answer_format,
            cancel=[job.cancel for job in jobs],
            **extra,
        )


def _settle(future: asyncio.Future[Generation], *, result: Generation | None = None,
            error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


class ContinuousBatcher:
    """Continuous batching for the server: the event loop's face of a `StepScheduler`.

    ``submit`` is `MicroBatcher`'s; `open_stream` starts a streamed request whose text deltas come
    from the same batch. The scheduler's thread owns the model; the event loop only waits.

    Args:
        generator: The `HFGenerator`.
        max_rows: Most rows decoding at once. Default 16.
        max_queue: Most requests waiting to join the batch; past it `QueueFull`. Default 256.
        prefill_tokens: Most prompt tokens prefilled between two decoding steps. Default 256.
        answer_format: Wrap-up text of the budget enforcer (the server's prompts use ``chat``).
    """

    def __init__(self, generator: Any, *, max_rows: int = 16, max_queue: int = 256, prefill_tokens: int = 256,
                 answer_format: QuestionFormat | str = QuestionFormat.CHAT) -> None:
        from ..backends.hf.scheduler import StepScheduler

        self.generator = generator
        self.scheduler = StepScheduler(generator, max_rows=max_rows, max_waiting=max_queue,
                                       prefill_tokens=prefill_tokens, answer_format=answer_format)

    @property
    def max_batch_size(self) -> int:
        """Most rows decoding together."""
        return self.scheduler.max_rows

    @property
    def running(self) -> bool:
        """Whether the batcher takes requests."""
        return self.scheduler.running

    @property
    def alive(self) -> bool:
        """Whether the scheduler's loop is healthy."""
        return self.scheduler.alive

    @property
    def waiting(self) -> int:
        """Requests waiting to join the batch."""
        return self.scheduler.waiting

    def stats(self) -> dict[str, Any]:
        """The scheduler's counters (`StepScheduler.stats`)."""
        return self.scheduler.stats()

    def new_cancel(self) -> threading.Event:
        """A cancel event for `submit` and `open_stream` (it records the step it was set at)."""
        return self.scheduler.new_cancel()

    def check_room(self) -> None:
        """Raise `QueueFull` (or `BatcherClosed`) now if a request would be refused."""
        self.scheduler.check_room()

    async def start(self) -> None:
        """Load the model and start the scheduler's thread."""
        await asyncio.to_thread(self.scheduler.start)

    async def close(self, timeout: float | None = None) -> None:
        """Stop taking requests; those in flight finish, or after ``timeout`` seconds fail with `BatcherClosed`."""
        await asyncio.to_thread(self.scheduler.close, timeout)

    async def submit(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: Sequence[str] = (),
        budget: int | None = None,
        cancel: threading.Event | None = None,
        answer_rules: Sequence[Any] = (),
        thinking_budget: int | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> Generation:
        """Generate one conversation in the running batch and return its `Generation` (the arguments as
        `MicroBatcher.submit`'s).

        Raises:
            QueueFull: too many requests are waiting.
            BatcherClosed: the batcher is not running.
            JobCancelled: ``cancel`` was set before the request finished.
        """
        row = await asyncio.to_thread(self.scheduler.submit, messages, max_tokens=max_tokens,
                                      stop=list(stop) or None, temperature=temperature, budget=budget, cancel=cancel,
                                      answer_rules=answer_rules, thinking_budget=thinking_budget,
                                      chat_template_kwargs=chat_template_kwargs)
        try:
            return await row.aresult()
        finally:
            if not row.future.done() and cancel is not None:
                cancel.set()  # this coroutine was cancelled: its row leaves at the next step

    async def open_stream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: Sequence[str] = (),
        budget: int | None = None,
        cancel: threading.Event,
        answer_rules: Sequence[Any] = (),
        thinking_budget: int | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Queue one conversation and return its stream of `StreamEvent` values (the last carries the
        `Generation`). Refusals (`QueueFull`, bad arguments) raise here, before any event; closing the
        stream early sets ``cancel``, so the row leaves at the next step."""
        from ..backends.hf.streaming import TextAssembler

        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue[Any] = asyncio.Queue()

        def listener(ids: list[int]) -> None:
            loop.call_soon_threadsafe(tokens.put_nowait, ids)

        row = await asyncio.to_thread(self.scheduler.submit, messages, max_tokens=max_tokens,
                                      stop=list(stop) or None, temperature=temperature, budget=budget,
                                      cancel=cancel, listener=listener, answer_rules=answer_rules,
                                      thinking_budget=thinking_budget, chat_template_kwargs=chat_template_kwargs)
        row.future.add_done_callback(lambda _: loop.call_soon_threadsafe(tokens.put_nowait, _END))
        decoder = self.generator._decoder
        markers = getattr(decoder, "thinking", None)
        thinking = {} if markers is None else {"thinking": markers.tracker(row.prompt)}
        assembler = TextAssembler(self.generator.tokenizer, row.stop, decoder.eos_ids, **thinking)

        async def events() -> AsyncIterator[StreamEvent]:
            try:
                while (item := await tokens.get()) is not _END:
                    event = assembler.feed_event(item)
                    if event.text or event.reasoning:
                        yield event
                error = row.future.exception()
                yield assembler.finish({"error": error} if error is not None else {"generation": row.future.result()})
            finally:
                if not row.future.done():
                    cancel.set()

        return events()


class BatchedGenerator(BaseGenerator):
    """A `Generator` view of a batcher (`ContinuousBatcher` or `MicroBatcher`), so the zero-shot
    estimator's calls join the batches.

    ``agenerate`` queues each conversation in the batcher; ``generate`` (sync, no event loop) calls
    the underlying generator directly. Calls are checked by `BaseGenerator` before they queue.

    Args:
        batcher: The running batcher.
        cancel: Cancel event shared with the request the estimate is for.
        thinking_budget: The thinking budget of every call, on a model whose chat template has a
            thinking block (0: answer without thinking), or None.
    """

    def __init__(self, batcher: ContinuousBatcher | MicroBatcher, *, cancel: threading.Event | None = None,
                 thinking_budget: int | None = None) -> None:
        self.batcher = batcher
        self.cancel = cancel
        self.thinking_budget = thinking_budget
        self.model_name = batcher.generator.model_name

    def _generate(self, conversations: list[list[dict[str, str]]], sampling: Sampling) -> list[Generation]:
        """Generate directly with the underlying generator (outside any batch)."""
        thinking = {} if self.thinking_budget is None else {"thinking_budgets": [self.thinking_budget] * len(
            conversations)}
        return self.batcher.generator.generate(conversations, **sampling.to_dict(), **thinking)

    async def _agenerate(self, conversations: list[list[dict[str, str]]], sampling: Sampling) -> list[Generation]:
        """Queue every conversation in the batcher; results in order."""
        return list(await asyncio.gather(*(
            self.batcher.submit(c, max_tokens=sampling.max_tokens, stop=sampling.stop or (),
                                temperature=sampling.temperature, cancel=self.cancel,
                                thinking_budget=self.thinking_budget)
            for c in conversations
        )))
