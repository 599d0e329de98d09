"""Batched vs sequential optimal-budget search on the embedded model, side by side in one run.

Both runs search the same GSM8K-Zero questions with greedy decoding, the same output cap and the
same token counter:

1. batched (`core.search.search` over all questions): every halving step is one batched call for
   all the questions still searching;
2. sequential: one question at a time, each step a batch of one (the reference scripts' loop).

Prints both wall times, the speed-up, and whether the two runs produced the same records (status,
budgets, answers, token counts). Greedy decoding of a left-padded batch can differ from the
unpadded one in the last float bits, which may flip a near-tie token; differing records are listed.

    python benchmarks/search_throughput.py [--questions 32] [--max-tokens 256] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from tale_integrations.backends.hf import HFGenerator
from tale_integrations.core.prompts import answer_messages
from tale_integrations.core.search import search
from tale_integrations.training.data import load_questions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=32, help="GSM8K-Zero questions to search (default 32)")
    parser.add_argument("--max-tokens", type=int, default=256, help="output cap of every answer (default 256)")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per forward pass, batched run (default 32)")
    parser.add_argument("--data-dir", help="folder holding gsm8k_zero/ (default $TALE_DATA_DIR or ../shared/data)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    items = load_questions("gsm8k-zero", data_dir=args.data_dir, limit=args.questions)
    generator = HFGenerator(max_batch_size=args.batch_size, device="cpu").load()
    generator.generate([answer_messages("What is 1 + 1?")], max_tokens=4)  # warm-up
    print(f"{len(items)} GSM8K-Zero questions, max {args.max_tokens} new tokens, {torch.get_num_threads()} threads, "
          f"{generator.model_name}", flush=True)

    start = time.perf_counter()
    batched = search(generator, items, max_tokens=args.max_tokens)
    t_batched = time.perf_counter() - start
    print(f"batched:    {t_batched:8.1f} s", flush=True)

    start = time.perf_counter()
    sequential = [search(generator, [item], max_tokens=args.max_tokens)[0] for item in items]
    t_sequential = time.perf_counter() - start
    print(f"sequential: {t_sequential:8.1f} s", flush=True)

    differing = [a.id for a, b in zip(batched, sequential) if a.to_dict() != b.to_dict()]
    calls = sum(len(r.trace) for r in batched)
    found = sum(r.status == "found" for r in batched)
    ratio = t_sequential / t_batched
    print(f"speed-up:   {ratio:8.2f}x  ({calls} answers, {found} questions with an accepted budget)")
    print(f"records:    {len(items) - len(differing)}/{len(items)} identical"
          + (f"; differing ids: {', '.join(differing)}" if differing else ""))
    same_outcome = sum(a.status == b.status and a.optimal_budget == b.optimal_budget
                       for a, b in zip(batched, sequential))
    print(f"outcomes:   {same_outcome}/{len(items)} with the same status and optimal budget")
    if args.json:
        figures = {
            "questions": len(items), "max_tokens": args.max_tokens, "batch_size": args.batch_size,
            "threads": torch.get_num_threads(), "batched_s": round(t_batched, 2),
            "sequential_s": round(t_sequential, 2),
            "speedup": round(ratio, 2), "identical_records": len(items) - len(differing), "differing_ids": differing,
            "same_outcome": same_outcome, "answers": calls, "found": found,
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                        "torch": torch.__version__},
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
