"""The pipeline's own overhead per question, against a generator that returns at once.

Compares, side by side in one run, the hand-written minimum (build the budgeted prompt, make one
batched generator call) with `TalePipeline` doing the whole job (estimation prompts, parsing the
estimate, clamping, answer prompts, answer extraction, result values), in TALE-EP, fixed-budget and
vanilla modes, batched, async and one question at a time. "overhead" is the pipeline's time per
question minus the baseline's; the model itself costs nothing here, so this is all our own code.

    python benchmarks/core_overhead.py [--questions 2000] [--repeats 5] [--json benchmarks/results/core_overhead.json]

Each path runs ``--repeats`` times; the table shows the median, ``--json`` keeps every run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from pathlib import Path

from tale_integrations import Generation, TalePipeline, Usage
from tale_integrations.core.prompts import answer_messages

_ESTIMATE = Generation(text="Budget: [[42]]", usage=Usage(input_tokens=90, output_tokens=6), finish_reason="stop", model="instant")
_ANSWER = Generation(text="3 + 4 = 7. [[7]]", usage=Usage(input_tokens=60, output_tokens=12), finish_reason="stop", model="instant")


class InstantGenerator:
    """Returns canned generations at once: the cost of a model call is zero."""

    model_name = "instant"

    def generate(self, prompts, *, max_tokens=None, stop=None, temperature=None):
        reply = _ESTIMATE if "estimate the minimum" in prompts[0][-1]["content"] else _ANSWER
        return [reply] * len(prompts)

    async def agenerate(self, prompts, **kwargs):
        return self.generate(prompts, **kwargs)


def timed(repeats: int, fn, per: int) -> list[float]:
    """Seconds per question of each of ``repeats`` runs of ``fn`` (which answers ``per`` questions)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) / per)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", metavar="PATH", help="also write every run's figures here")
    args = parser.parse_args()
    n, gen = args.questions, InstantGenerator()
    questions = [f"Tom has {i} apples and buys 4 more. How many apples does he have?" for i in range(n)]
    # The baseline is what a user would write by hand: build the budgeted prompt, call the model.
    runs = {"hand-built prompt + generator call":
            timed(args.repeats, lambda: gen.generate([answer_messages(q, budget=42) for q in questions]), n)}
    for label, tale in [
        ("TALE-EP batch (estimate + answer)", TalePipeline(gen)),
        ("fixed budget batch", TalePipeline(gen, budget=50)),
        ("vanilla CoT batch", TalePipeline(gen, mode="vanilla")),
    ]:
        runs[label] = timed(args.repeats, lambda t=tale: t.batch(questions), n)
    tale = TalePipeline(gen)
    subset = questions[: max(1, n // 10)]
    runs["TALE-EP invoke, one at a time"] = timed(args.repeats, lambda: [tale.invoke(q) for q in subset], len(subset))
    runs["TALE-EP abatch"] = timed(args.repeats, lambda: asyncio.run(tale.abatch(questions)), n)

    median = {label: statistics.median(times) for label, times in runs.items()}
    direct = median["hand-built prompt + generator call"]
    print(f"python {platform.python_version()} on {platform.machine()} ({platform.processor() or 'cpu'}), "
          f"{n} questions, median of {args.repeats}")
    print(f"{'path':<36} {'us/question':>12} {'overhead us':>12} {'ratio':>8}")
    for label, seconds in median.items():
        us = seconds * 1e6
        print(f"{label:<36} {us:>12.1f} {us - direct * 1e6:>12.1f} {seconds / direct:>8.1f}x")
    if args.json:
        out = {"settings": {"questions": n, "repeats": args.repeats, "python": platform.python_version()},
               "us_per_question": {label: [round(t * 1e6, 2) for t in times] for label, times in runs.items()},
               "median_us": {label: round(t * 1e6, 2) for label, t in median.items()}}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
