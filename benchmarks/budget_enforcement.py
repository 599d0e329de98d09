"""Prompt-only budgets vs budgets enforced while decoding, on the embedded model.

For each budget B, the same GSM8K-Zero questions are asked with the budgeted prompt
("use less than B tokens") twice: once with the budget only in the prompt (the paper), once with
`BudgetEnforcer` holding the answer to B tokens of reasoning plus the answer reserve. Plain
chain-of-thought (no budget) is the reference. Token elasticity shows in the prompt-only rows:
a smaller B does not give a shorter answer.

    python benchmarks/budget_enforcement.py [--questions 30] [--budgets 10,25,50,100] [--max-tokens 256]
        [--json benchmarks/results/budget_enforcement.json]
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


def figures(label: str, budget: int | None, reserve: int, results, golds) -> dict:
    """The raw figures of one row (shares as fractions)."""
    tokens = [r.usage.output_tokens for r in results]
    n = len(tokens)
    return {
        "budgets": label, "budget": budget, "mean_output_tokens": statistics.mean(tokens),
        "within_budget": None if budget is None else sum(t <= budget for t in tokens) / n,
        "within_budget_and_reserve": None if budget is None else sum(t <= budget + reserve for t in tokens) / n,
        "answer_extracted": sum(r.answer is not None for r in results) / n,
        "correct": sum(answers_match(r.answer, g, text=r.text) for r, g in zip(results, golds, strict=True)) / n,
        "hit_cap": sum(r.finish_reason == "length" for r in results) / n,
    }


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
    parser.add_argument("--json", metavar="PATH", help="also write every row's raw figures here")
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
    rows = []

    def report(label: str, budget: int | None, results) -> None:
        print(row(label, budget, enforcement.answer_reserve, results, golds), flush=True)
        rows.append(figures(label, budget, enforcement.answer_reserve, results, golds))

    vanilla = TalePipeline(plain, mode="vanilla", max_tokens=args.max_tokens).batch(questions)
    report("none (vanilla CoT)", None, vanilla)
    for b in budgets:
        report("prompt only", b, TalePipeline(plain, budget=b, max_tokens=args.max_tokens).batch(questions))
        report("enforced", b, TalePipeline(enforced, budget=b, max_tokens=args.max_tokens).batch(questions))
    seconds = time.perf_counter() - start
    print(f"({seconds:.0f} s)")
    if args.json:
        out = {"benchmark": "budget_enforcement", "questions": len(questions), "dataset": "gsm8k-zero",
               "max_tokens": args.max_tokens, "enforcement": enforcement.to_dict(), "seconds": round(seconds, 1),
               "machine": {"machine": platform.machine(), "cpu_count": os.cpu_count()}, "rows": rows}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
