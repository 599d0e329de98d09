"""Prompt-only budgets vs budgets enforced while decoding, on the embedded model.

For each budget B, the same GSM8K-Zero questions are asked with the budgeted prompt
("use less than B tokens") twice: once with the budget only in the prompt (the paper), once with
`BudgetEnforcer` holding the answer to B tokens of reasoning plus the answer reserve. Plain
chain-of-thought (no budget) is the reference. Token elasticity shows in the prompt-only rows:
a smaller B does not give a shorter answer.

    python benchmarks/budget_enforcement.py [--questions 30] [--budgets 10,25,50,100] [--max-tokens 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from tale_integrations import TalePipeline
from tale_integrations.backends.hf import HFGenerator
from tale_integrations.core.answers import answers_match, gsm8k_zero_gold
from tale_integrations.core.budget import BudgetEnforcement

DATA = Path(os.environ.get("TALE_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def load(n: int) -> list[dict]:
    with open(DATA / "gsm8k_zero" / "test.jsonl") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def row(label: str, budget: int | None, reserve: int, results, golds) -> str:
    tokens = [r.usage.output_tokens for r in results]
    limit = None if budget is None else budget + reserve
    within = "-" if limit is None else f"{sum(t <= limit for t in tokens) / len(tokens):.0%}"
    within_b = "-" if budget is None else f"{sum(t <= budget for t in tokens) / len(tokens):.0%}"
    extracted = sum(r.answer is not None for r in results) / len(results)
    correct = sum(answers_match(r.answer, g, text=r.text) for r, g in zip(results, golds)) / len(results)
    capped = sum(r.finish_reason == "length" for r in results) / len(results)
    return (f"| {label} | {budget if budget is not None else '-'} | {statistics.mean(tokens):.1f} | {within_b} | {within} "
            f"| {extracted:.0%} | {correct:.0%} | {capped:.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=30)
    parser.add_argument("--budgets", default="10,25,50,100")
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    items = load(args.questions)
    questions = [it["question"] for it in items]
    golds = [gsm8k_zero_gold(it["answer"]) for it in items]

    enforcement = BudgetEnforcement()
    plain = HFGenerator(max_batch_size=16)
    enforced = HFGenerator.from_model(plain.model, plain.tokenizer, model_name=plain.model_name, max_batch_size=16,
                                      enforce_budget=enforcement)
    start = time.perf_counter()
    print(f"{plain.model_name}, {len(questions)} GSM8K-Zero questions, greedy, max_tokens {args.max_tokens}, "
          f"answer reserve {enforcement.answer_reserve}, factor {enforcement.factor}; tokens counted by the model's tokenizer; "
          f"{platform.machine()}, {os.cpu_count()} cores")
    print("| budgets | B | mean output tokens | within B | within B + reserve | answer extracted | correct | hit cap |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    vanilla = TalePipeline(plain, mode="vanilla", max_tokens=args.max_tokens).batch(questions)
    print(row("none (vanilla CoT)", None, enforcement.answer_reserve, vanilla, golds), flush=True)
    for b in budgets:
        prompt_only = TalePipeline(plain, budget=b, max_tokens=args.max_tokens).batch(questions)
        print(row("prompt only", b, enforcement.answer_reserve, prompt_only, golds), flush=True)
        held = TalePipeline(enforced, budget=b, max_tokens=args.max_tokens).batch(questions)
        print(row("enforced", b, enforcement.answer_reserve, held, golds), flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
