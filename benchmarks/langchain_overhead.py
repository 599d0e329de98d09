"""TaleRunnable's own cost next to calling the chat model directly, and its async concurrency.

Part 1 (overhead): the model is a tiny `BaseChatModel` that answers at once with a fixed message,
so every microsecond measured is LangChain's and TALE's code: callbacks, child runs, the budget
policy, the prompt rewrite, metadata. Compared side by side:

- ``model.invoke`` (one call) against ``TaleRunnable(model, budget=40).invoke`` (one model call:
  the wrapper's own cost) and ``TaleRunnable(model).invoke`` (estimate + answer: two model calls,
  compared with two direct calls);
- ``model.batch`` of 32 against ``TaleRunnable.batch`` of 32 (one estimator batch, one answer batch).

Part 2 (concurrency): the model sleeps ``--latency`` seconds in ``_agenerate`` (asyncio.sleep).
One ``ainvoke`` makes two sequential calls (estimate, then answer); ``--concurrency`` concurrent
``ainvoke`` calls must take well under twice that if they really overlap (target: < 2x).

    python benchmarks/langchain_overhead.py [--calls 2000] [--repeats 5] [--latency 0.1] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from tale_integrations.langchain import TaleRunnable

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"


class InstantChat(BaseChatModel):
    """Answers every call at once with the same message (usage and model name included)."""

    max_tokens: int | None = None
    latency: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "instant-chat"

    def _result(self) -> ChatResult:
        message = AIMessage(
            content="Budget: [[40]]. 3 + 4 = 7. The answer is [[7]].",
            usage_metadata={"input_tokens": 50, "output_tokens": 20, "total_tokens": 70},
            response_metadata={"model_name": "instant", "finish_reason": "stop"},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        if self.latency:
            time.sleep(self.latency)
        return self._result()

    async def _agenerate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                         **kwargs: Any) -> ChatResult:
        if self.latency:
            await asyncio.sleep(self.latency)
        return self._result()


def per_call_us(fn: Callable[[], Any], calls: int, repeats: int, per: int = 1) -> float:
    """Best-of-``repeats`` microseconds per item, ``fn`` handling ``per`` items per run."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls // per):
            fn()
        best = min(best, (time.perf_counter() - start) / (calls // per * per))
    return best * 1e6


def overhead(calls: int, repeats: int) -> None:
    model = InstantChat()
    fixed, tale = TaleRunnable(model, budget=40), TaleRunnable(model)
    batch = [QUESTION] * 32
    rows = [
        ("model.invoke (1 call, baseline)", per_call_us(lambda: model.invoke(QUESTION), calls, repeats), 1),
        ("TaleRunnable(budget=40).invoke (1 call)", per_call_us(lambda: fixed.invoke(QUESTION), calls, repeats), 1),
        ("TaleRunnable.invoke (estimate + answer)", per_call_us(lambda: tale.invoke(QUESTION), calls, repeats), 2),
        ("model.batch(32), per question", per_call_us(lambda: model.batch(batch), calls, repeats, 32), 1),
        ("TaleRunnable.batch(32), per question", per_call_us(lambda: tale.batch(batch), calls, repeats, 32), 2),
    ]
    base = rows[0][1]
    print(f"\n## Overhead: a model that answers at once ({calls} calls, best of {repeats})\n")
    print("| path | model calls | µs/question | µs over direct calls | ratio to direct calls |")
    print("|---|---:|---:|---:|---:|")
    for name, us, n in rows:
        direct = base * n if "batch" not in name else rows[3][1] * n
        print(f"| {name} | {n} | {us:.0f} | {us - direct:.0f} | {us / direct:.2f}x |")


async def concurrency(latency: float, n: int) -> None:
    model = InstantChat(latency=latency)
    tale = TaleRunnable(model)
    await tale.ainvoke(QUESTION)  # warm up

    async def wall(coro_fn: Callable[[], Any], repeats: int = 3) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            await coro_fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    single = await wall(lambda: tale.ainvoke(QUESTION))
    gathered = await wall(lambda: asyncio.gather(*(tale.ainvoke(f"{QUESTION} ({i})") for i in range(n))))
    batched = await wall(lambda: tale.abatch([f"{QUESTION} ({i})" for i in range(n)]))
    direct_single = await wall(lambda: model.ainvoke(QUESTION))
    print(f"\n## Concurrency: a model with {latency * 1000:.0f} ms latency (asyncio.sleep), median of 3\n")
    print("| path | wall time (s) | ratio to one TaleRunnable.ainvoke |")
    print("|---|---:|---:|")
    print(f"| model.ainvoke, 1 call | {direct_single:.3f} | {direct_single / single:.2f}x |")
    print(f"| TaleRunnable.ainvoke, 1 question (2 calls) | {single:.3f} | 1.00x |")
    print(f"| {n} concurrent TaleRunnable.ainvoke | {gathered:.3f} | {gathered / single:.2f}x |")
    print(f"| TaleRunnable.abatch of {n} | {batched:.3f} | {batched / single:.2f}x |")
    verdict = "PASS" if gathered < 2 * single else "FAIL"
    print(f"\n{n} concurrent calls took {gathered / single:.2f}x one call (target < 2x): {verdict}; "
          f"run one after another they would take about {n:.0f}x.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    print(f"Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    overhead(args.calls, args.repeats)
    asyncio.run(concurrency(args.latency, args.concurrency))


if __name__ == "__main__":
    main()
