"""Micro-batching: concurrent requests answered by one batched generation.

`MicroBatcher` runs an asyncio task that collects waiting requests for up to ``window_ms`` after
the first one arrives (or until ``max_batch_size`` are waiting), groups them by the decoding
settings one batched call must share (temperature and stop strings), and runs ONE
``generator.generate`` call per group on a single worker thread, with per-row output caps, per-row
budgets and per-row cancel events. (A group is split only where a long prompt would leave a
neighbour less room in the context window than its cap: see `MicroBatcher._fit`.) While the worker is busy, new requests queue up and form the
next batch, so a loaded server batches without waiting for the window.

A request whose cancel event is set before its batch starts is dropped; once started, the backend
ends that row at the next decoding step. If a batched call fails, each of its rows is retried
alone, so one bad request cannot fail its neighbours.

This module needs no web framework: it batches for any caller with an event loop.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..core.checks import check_number, check_positive_int
from ..core.errors import BatcherClosed, JobCancelled
from ..core.generation import BaseGenerator, Generation, Message, Sampling
from ..core.prompts import QuestionFormat

__all__ = ["BatchedGenerator", "BatcherClosed", "JobCancelled", "MicroBatcher"]


@dataclass(eq=False, slots=True)
class _Job:
    messages: list[dict[str, str]]
    max_tokens: int | None
    temperature: float
    stop: tuple[str, ...]
    budget: int | None
    cancel: threading.Event
    future: asyncio.Future[Generation] = field(repr=False)


class MicroBatcher:
    """Collects concurrent requests into batched ``generate`` calls.

    Args:
        generator: A generator whose ``generate`` takes per-row ``max_tokens``, ``budgets`` and
            ``cancel`` lists (`tale_integrations.backends.hf.HFGenerator`).
        max_batch_size: Most requests in one batch. 1 turns batching off (one request at a time).
        window_ms: How long to wait for more requests after the first one arrives.
        answer_format: Wrap-up text of the budget enforcer (the server's prompts use ``chat``).
    """

    def __init__(
        self,
        generator: Any,
        *,
        max_batch_size: int = 16,
        window_ms: float = 10.0,
        answer_format: QuestionFormat | str = QuestionFormat.CHAT,
    ) -> None:
        check_positive_int("max_batch_size", max_batch_size)
        check_number("window_ms", window_ms, low=0, high=10_000, hint=" (milliseconds)")
        self.generator = generator
        self.max_batch_size = max_batch_size
        self.window = window_ms / 1000
        self.answer_format = QuestionFormat(answer_format)
        #: How many batched calls of each size ran (for tests, logs and benchmarks).
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self._pending: collections.deque[_Job] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    @property
    def running(self) -> bool:
        """Whether the batcher takes requests."""
        return self._task is not None and not self._closing

    async def start(self) -> None:
        """Start the collecting task and the worker thread (call from the serving event loop)."""
        if self._task is not None:
            raise RuntimeError("the batcher is already started")
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tale-serve-batch")
        self._task = asyncio.create_task(self._collect(), name="tale-serve-batcher")

    async def close(self) -> None:
        """Stop taking requests, finish every request already waiting, then stop the worker."""
        if self._task is None or self._closing:
            return
        self._closing = True
        assert self._arrived is not None
        self._arrived.set()
        await self._task
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
    ) -> Generation:
        """Queue one conversation and wait for its `Generation`.

        Raises:
            BatcherClosed: the batcher is not running.
            JobCancelled: ``cancel`` was set before the request was generated.
        """
        if not self.running:
            raise BatcherClosed("the server is shutting down and takes no new requests")
        assert self._arrived is not None
        job = _Job(
            messages=[dict(m) for m in messages],
            max_tokens=max_tokens,
            temperature=self.generator.temperature if temperature is None else temperature,
            stop=tuple(stop),
            budget=budget,
            cancel=cancel if cancel is not None else threading.Event(),
            future=asyncio.get_running_loop().create_future(),
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
        groups: dict[tuple[float, tuple[str, ...]], list[_Job]] = {}
        for job in live:
            groups.setdefault((job.temperature, job.stop), []).append(job)
        loop = asyncio.get_running_loop()
        for jobs in groups.values():
            outcomes = await loop.run_in_executor(self._executor, self._generate, jobs)
            for job, outcome in zip(jobs, outcomes):
                if isinstance(outcome, Generation):
                    _settle(job.future, result=outcome)
                else:
                    _settle(job.future, error=outcome)

    def _generate(self, jobs: list[_Job]) -> list[Generation | Exception]:
        """The group's batched calls (in the worker thread), results in the group's order."""
        outcomes: dict[int, Generation | Exception] = {}
        for batch in self._fit(jobs):
            for job, outcome in zip(batch, self._generate_batch(batch)):
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
            length, cap = len(encode(job.messages)), job.max_tokens or default
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
        outcomes: list[Generation | Exception] = []
        for job in jobs:
            try:
                outcomes.extend(self._call([job]))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def _call(self, jobs: list[_Job]) -> list[Generation]:
        first = jobs[0]
        budgets = [job.budget for job in jobs]
        return self.generator.generate(
            [job.messages for job in jobs],
            max_tokens=[job.max_tokens for job in jobs],
            stop=list(first.stop) or None,
            temperature=first.temperature,
            budgets=budgets if any(b is not None for b in budgets) else None,
            answer_format=self.answer_format,
            cancel=[job.cancel for job in jobs],
        )


def _settle(future: asyncio.Future[Generation], *, result: Generation | None = None,
            error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


class BatchedGenerator(BaseGenerator):
    """A `Generator` view of a `MicroBatcher`, so the zero-shot estimator's calls join the batches.

    ``agenerate`` queues each conversation in the batcher; ``generate`` (sync, no event loop) calls
    the underlying generator directly. Calls are checked by `BaseGenerator` before they queue.

    Args:
        batcher: The running batcher.
        cancel: Cancel event shared with the request the estimate is for.
    """

    def __init__(self, batcher: MicroBatcher, *, cancel: threading.Event | None = None) -> None:
        self.batcher = batcher
        self.cancel = cancel
        self.model_name = batcher.generator.model_name

    def _generate(self, conversations: list[list[dict[str, str]]], sampling: Sampling) -> list[Generation]:
        """Generate directly with the underlying generator (outside any batch)."""
        return self.batcher.generator.generate(conversations, **sampling.to_dict())

    async def _agenerate(self, conversations: list[list[dict[str, str]]], sampling: Sampling) -> list[Generation]:
        """Queue every conversation in the batcher; results in order."""
        return list(await asyncio.gather(*(
            self.batcher.submit(c, max_tokens=sampling.max_tokens, stop=sampling.stop or (),
                                temperature=sampling.temperature, cancel=self.cancel)
            for c in conversations
        )))
