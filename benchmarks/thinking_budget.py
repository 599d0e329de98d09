"""Thinking budgets on the embedded model: fixed budgets vs unlimited thinking, and the rule's cost per step.

SmolLM2-135M-Instruct gets a chat template with a thinking block (DeepSeek-R1 style: the generation
prompt opens ``<think>``; its tokenizer has no such tokens, so both markers are several tokens each,
found by their ids and in the text). The same GSM8K-Zero questions (one batch of 16 by default) are
answered with thinking budgets of 10, 25, 50 and 100 tokens and with unlimited thinking, in two
answer modes:

- ``free``: after the block the model answers on its own, within the answer reserve (the cap is
  budget + markers + reserve; unlimited thinking gets ``--max-tokens``);
- ``enforced``: the answer after the block is also held by the budget enforcer (``--answer-budget``
  tokens, then "The final answer is [[", closed), the two rules composed as `BatchDecoder.row_rules`
  composes them.

Reported per row: thinking tokens (``usage.reasoning_tokens``, markers included) and whether each
row kept to B plus the end marker, answer tokens, answers extracted and correct, rows cut by the cap,
and the cost of the decoding-time rules: the time spent in `RowRulesProcessor` per decoding step (all
16 rows' rules), as a share of the whole step measured in the same run.

    python benchmarks/thinking_budget.py [--questions 16] [--budgets 10,25,50,100] [--reserve 64]
        [--answer-budget 16] [--max-tokens 320] [--json benchmarks/results/thinking_budget.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from tale_integrations.backends import row_rules
from tale_integrations.backends.hf import HFGenerator
from tale_integrations.backends.hf.settings import ThinkingEnforcement
from tale_integrations.core.answers import answers_match, extract_answer, gsm8k_zero_gold
from tale_integrations.core.budget import BudgetEnforcement
from tale_integrations.core.prompts import question_prompt

DATA = Path(os.environ.get("TALE_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))

#: ChatML with a thinking block: the generation prompt opens it; an earlier answer is sent without its thinking.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' %}{{ m['content'].split('</think>')[-1].lstrip() }}"
    "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)
SYSTEM = "Think step by step between <think> and </think>, then give the final answer."


def load(n: int) -> list[dict]:
    with open(DATA / "gsm8k_zero" / "test.jsonl") as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


class RuleClock:
    """Time spent in `RowRulesProcessor.__call__` (every row's rules, once per decoding step)."""

    def __init__(self) -> None:
        self.seconds, self.calls = 0.0, 0
        self._original = row_rules.RowRulesProcessor.__call__

    def __enter__(self) -> RuleClock:
        clock, original = self, self._original

        def timed(processor, input_ids, scores):
            start = time.perf_counter()
            try:
                return original(processor, input_ids, scores)
            finally:
                clock.seconds += time.perf_counter() - start
                clock.calls += 1

        row_rules.RowRulesProcessor.__call__ = timed
        return self

    def __exit__(self, *exc: object) -> None:
        row_rules.RowRulesProcessor.__call__ = self._original


def run(gen, conversations, golds, *, label, mode, budget, max_tokens, answer_budget, end_len) -> dict:
    n = len(conversations)
    kwargs = {"max_tokens": max_tokens, "thinking_budgets": [budget] * n}
    if mode == "enforced":
        kwargs["budgets"] = [answer_budget] * n
    with RuleClock() as clock:
        start = time.perf_counter()
        out = gen.generate(conversations, **kwargs)
        seconds = time.perf_counter() - start
    thinking = [g.usage.reasoning_tokens for g in out]
    answer = [g.usage.output_tokens - g.usage.reasoning_tokens for g in out]
    steps = sum(max(g.usage.output_tokens for g in out[i : i + 16]) for i in range(0, n, 16))
    answers = [extract_answer(g.text) for g in out]
    row = {
        "thinking": label, "answer": mode, "budget": budget, "max_tokens": max_tokens,
        "mean_thinking_tokens": statistics.mean(thinking), "max_thinking_tokens": max(thinking),
        # start marker in the prompt: B thinking tokens, at most 3 finishing a character, and the end marker
        "within_budget_and_marker": None if budget is None else sum(t <= budget + 3 + end_len for t in thinking) / n,
        "closed": sum(g.reasoning is not None and g.usage.reasoning_tokens < g.usage.output_tokens for g in out) / n,
        "mean_answer_tokens": statistics.mean(answer),
        "answer_extracted": sum(a is not None for a in answers) / n,
        "correct": sum(answers_match(a, gold, text=g.text) for a, gold, g in zip(answers, golds, out, strict=True)) / n,
        "hit_cap": sum(g.finish_reason == "length" for g in out) / n,
        "seconds": round(seconds, 2), "steps": steps, "step_ms": round(1000 * seconds / steps, 2),
        "rule_calls": clock.calls,
        "rule_ms_per_step": round(1000 * clock.seconds / clock.calls, 3) if clock.calls else 0.0,
    }
    row["rule_share_of_step"] = round(row["rule_ms_per_step"] / row["step_ms"], 4) if clock.calls else 0.0
    return row


def show(row: dict) -> str:
    b = "-" if row["budget"] is None else row["budget"]
    within = "-" if row["within_budget_and_marker"] is None else f"{row['within_budget_and_marker']:.0%}"
    rule = "-" if not row["rule_calls"] else f"{row['rule_ms_per_step']:.2f} ms ({row['rule_share_of_step']:.1%})"
    return (f"| {row['thinking']} | {row['answer']} | {b} | {row['mean_thinking_tokens']:.1f} | "
            f"{row['max_thinking_tokens']} | {within} | {row['closed']:.0%} | {row['mean_answer_tokens']:.1f} | "
            f"{row['answer_extracted']:.0%} | {row['correct']:.0%} | {row['hit_cap']:.0%} | {row['step_ms']:.1f} | "
            f"{rule} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--budgets", default="10,25,50,100")
    parser.add_argument("--reserve", type=int, default=64, help="ThinkingEnforcement.answer_reserve")
    parser.add_argument("--answer-budget", type=int, default=16, help="the enforced answer's budget")
    parser.add_argument("--max-tokens", type=int, default=320, help="the cap of unlimited thinking")
    parser.add_argument("--json", metavar="PATH", help="also write every row's figures here")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    items = load(args.questions)
    golds = [gsm8k_zero_gold(it["answer"]) for it in items]
    conversations = [[{"role": "system", "content": SYSTEM},
                      {"role": "user", "content": question_prompt(it["question"], format="gsm8k")}] for it in items]

    base = HFGenerator(max_batch_size=16).load()
    enforcement = BudgetEnforcement()
    thinking = ThinkingEnforcement(answer_reserve=args.reserve)
    gen = HFGenerator.from_model(base.model, base.tokenizer, model_name=base.model_name, max_batch_size=16,
                                 chat_template=THINKING_TEMPLATE, thinking=thinking, enforce_budget=enforcement)
    markers = gen.thinking_markers
    overhead = markers.overhead(markers.prompt_state(gen.encode_chat(conversations[0])))
    print(f"{gen.model_name} with a thinking template ({markers.start!r} {len(markers.start_ids)} tokens, "
          f"{markers.end!r} {len(markers.end_ids)} tokens), {len(items)} GSM8K-Zero questions in batches of 16, "
          f"greedy; answer reserve {args.reserve}, enforced answer budget {args.answer_budget}; "
          f"{platform.machine()}, {os.cpu_count()} cores (shared with other work)")
    print("| thinking | answer | B | mean thinking tokens | max | within B + end marker | block closed | "
          "mean answer tokens | answer extracted | correct | hit cap | ms / step | rules / step (share) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    gen.generate(conversations[:2], max_tokens=8)  # warm-up
    rows = []
    start = time.perf_counter()
    for mode in ("free", "enforced"):
        for budget in [*budgets, None]:
            cap = args.max_tokens if budget is None else budget + overhead + args.reserve
            row = run(gen, conversations, golds, label="unlimited" if budget is None else "fixed", mode=mode,
                      budget=budget, max_tokens=cap, answer_budget=args.answer_budget, end_len=len(markers.end_ids))
            rows.append(row)
            print(show(row), flush=True)
    seconds = time.perf_counter() - start
    budgeted = [r["rule_share_of_step"] for r in rows if r["budget"] is not None]
    print(f"rules' share of a decoding step at batch 16, budgeted runs: median {statistics.median(budgeted):.2%}, "
          f"max {max(budgeted):.2%} (target < 5%); {seconds:.0f} s in all")
    if args.json:
        out = {"benchmark": "thinking_budget", "questions": len(items), "dataset": "gsm8k-zero",
               "model": gen.model_name, "template": "ChatML, <think> opened in the generation prompt",
               "markers": {"start": markers.start, "end": markers.end, "start_tokens": len(markers.start_ids),
                           "end_tokens": len(markers.end_ids)},
               "thinking": thinking.to_dict(), "enforcement": enforcement.to_dict(),
               "answer_budget": args.answer_budget, "unlimited_max_tokens": args.max_tokens,
               "rule_share_median": statistics.median(budgeted), "rule_share_max": max(budgeted),
               "seconds": round(seconds, 1),
               "machine": {"machine": platform.machine(), "cpu_count": os.cpu_count(), "shared": True}, "rows": rows}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
