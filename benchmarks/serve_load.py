"""`tale serve` under load: micro-batching against one request at a time, side by side in one run.

Starts the server twice on a free loopback port (127.0.0.1 only), each time over the same loaded
embedded SmolLM2-135M-Instruct model: once with micro-batching (``--batch-size``, default 16) and
once with ``max_batch_size=1``. Each time, ``--requests`` concurrent chat requests (default 64;
short GSM8K-style questions, greedy, ``max_tokens`` 32) are sent at once with ``openai.AsyncOpenAI``.
Every request is counted: answered, failed or lost. Prints requests/s, tokens/s and the ratio.

The run is bounded: each phase stops after ``--timeout`` seconds (reported as lost requests) and
the servers are shut down before the script exits.

    python benchmarks/serve_load.py [--requests 64] [--max-tokens 32] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import openai
import torch
import uvicorn

from tale_integrations.backends.hf import HFGenerator
from tale_integrations.serve import create_app

QUESTIONS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "A box holds 12 eggs. How many eggs are in 4 boxes?",
    "Sara had 20 dollars and spent 7. How much money is left?",
    "A train travels 60 miles per hour for 3 hours. How far does it go?",
    "There are 24 students split equally into 6 groups. How many students are in each group?",
    "A shirt costs 15 dollars. How much do 3 shirts cost?",
    "Ben read 9 pages on Monday and 14 pages on Tuesday. How many pages did he read?",
    "A farmer has 30 chickens and sells 12. How many chickens are left?",
    "Each bag has 8 marbles. How many marbles are in 7 bags?",
    "Lisa is 11 years old. Her brother is 4 years older. How old is her brother?",
    "A pizza has 8 slices. If 3 people eat 2 slices each, how many slices are left?",
    "Mark runs 5 km every day. How many km does he run in a week?",
    "A shop sold 45 cups in the morning and 38 in the afternoon. How many cups were sold?",
    "There are 100 pencils shared by 4 classes equally. How many pencils does each class get?",
    "Anna has 6 red pens and twice as many blue pens. How many pens does she have?",
    "A bus has 40 seats and 27 are taken. How many seats are free?",
]


@dataclass
class Phase:
    name: str
    batch_size: int
    sent: int = 0
    answered: int = 0
    failed: int = 0
    tokens: int = 0
    seconds: float = 0.0
    texts: dict[int, str] = field(default_factory=dict)
    batches: collections.Counter[int] = field(default_factory=collections.Counter)

    @property
    def lost(self) -> int:
        return self.sent - self.answered - self.failed

    @property
    def rps(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


class Server:
    """The app under uvicorn on 127.0.0.1, in a thread."""

    def __init__(self, app: Any) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}/v1"

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=120)


async def load(url: str, phase: Phase, n: int, max_tokens: int, timeout: float) -> None:
    client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=timeout)

    async def one(i: int) -> None:
        try:
            r = await client.chat.completions.create(
                model="smol", max_tokens=max_tokens, temperature=0,
                messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
        except Exception as exc:  # counted, never lost
            phase.failed += 1
            print(f"  request {i} failed: {exc!r}")
            return
        phase.answered += 1
        phase.tokens += r.usage.completion_tokens
        phase.texts[i] = r.choices[0].message.content

    phase.sent = n
    start = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), timeout)
    except TimeoutError:
        print(f"  {phase.name}: stopped after {timeout:.0f} s")
    phase.seconds = time.perf_counter() - start
    await client.close()


def run_phase(gen: HFGenerator, phase: Phase, args: argparse.Namespace) -> None:
    app = create_app(gen, max_batch_size=phase.batch_size, batch_window_ms=args.window_ms, served_model_name="smol")
    with Server(app) as url:
        asyncio.run(load(url, phase, args.requests, args.max_tokens, args.timeout))
    phase.batches = app.state.batcher.batch_sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=64, help="concurrent requests per phase (default 64)")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of each request (default 32)")
    parser.add_argument("--batch-size", type=int, default=16, help="max_batch_size when batching (default 16)")
    parser.add_argument("--window-ms", type=float, default=10.0, help="batch window (default 10 ms)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per phase (default 900)")
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    gen = HFGenerator(max_batch_size=max(args.batch_size, 1)).load()
    gen.generate([[{"role": "user", "content": QUESTIONS[0]}]], max_tokens=4)  # warm-up, not timed
    print(f"model {gen.model_name} on {gen.device}; torch threads {torch.get_num_threads()}; "
          f"{os.cpu_count()} CPUs; {platform.processor() or platform.machine()}; Python {platform.python_version()}")
    print(f"{args.requests} concurrent requests per phase, max_tokens {args.max_tokens}, greedy\n")

    phases = [Phase(f"micro-batched (max_batch_size={args.batch_size})", args.batch_size),
              Phase("one at a time (max_batch_size=1)", 1)]
    for phase in phases:
        print(f"running: {phase.name} ...", flush=True)
        run_phase(gen, phase, args)

    print(f"\n{'mode':<40} {'answered':>9} {'failed':>6} {'lost':>4} {'seconds':>8} {'req/s':>7} {'tokens/s':>9}")
    for p in phases:
        print(f"{p.name:<40} {p.answered:>5}/{p.sent:<3} {p.failed:>6} {p.lost:>4} {p.seconds:>8.1f} "
              f"{p.rps:>7.2f} {p.tps:>9.1f}")
    batched, serial = phases
    for p in phases:
        print(f"batch sizes, {p.name}: {dict(sorted(p.batches.items()))}")
    same = sum(batched.texts.get(i) == serial.texts.get(i) for i in range(args.requests))
    print(f"identical answers in both modes: {same}/{args.requests} (greedy; batching pads prompts, which can "
          "change low-order float bits)")
    if serial.rps and serial.tps:
        print(f"ratio micro-batched / one at a time: {batched.rps / serial.rps:.2f}x requests/s, "
              f"{batched.tps / serial.tps:.2f}x tokens/s")
    if batched.lost or serial.lost or batched.failed or serial.failed:
        raise SystemExit("some requests were not answered")


if __name__ == "__main__":
    main()
