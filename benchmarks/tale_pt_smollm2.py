"""The whole TALE-PT loop on the embedded SmolLM2-135M-Instruct and GSM8K-Zero, on CPU.

1. split GSM8K-Zero by a seeded hash of the question (`split_by_hash`): a train side and a
   disjoint held-out side;
2. search the optimal budget of the train questions (vanilla CoT first; wrong answers are skipped).
   SmolLM2-135M answers few GSM8K-Zero questions correctly, so each question can be sampled
   ``--samples`` times at ``--temperature`` (one independent search per sample, ids ``QID#k``),
   keeping every sample whose search found a budget;
3. LoRA SFT on (prompt without budget -> answer under the optimal budget); with ``--dpo`` also DPO;
4. answer the held-out questions with vanilla CoT (base model) and with the TALE-PT model (the
   same budget-free prompt), greedy; report ACC (95% Wilson interval) and mean output tokens beside
   the paper's Table 5 (Llama-3.1-8B-Instruct, GSM8K-Zero), with the degenerate answers beside ACC:
   the share that copies the prompt's format example (50) and the share whose number already stands
   in the question (GSM8K-Zero's questions contain their answer);
5. the same two models on the first ``--test-questions`` GSM8K test questions, whose answers are not
   in the question.

Several seeds, then their spread: run the command once per seed, then ``--summarize`` reads every
``seed-*`` folder of one setting and writes ``benchmarks/results/tale_pt_smollm2.json``.

Every stage resumes: the search file, the training folders and the per-model answer files live
under ``runs/tale_pt_smollm2/seed-N/`` (gitignored), and rerunning the same command continues a
killed run. Results go to ``results.json`` there.

    python benchmarks/tale_pt_smollm2.py --seed 0             # full size (~1 h budget on 2 cores)
    python benchmarks/tale_pt_smollm2.py --questions 4 --max-tokens 16   # a smoke run of every stage
    python benchmarks/tale_pt_smollm2.py --attempts 4 --summarize        # spread over the seeds run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from tale_integrations.core.answers import AnswerKind, answers_match, extract_answer
from tale_integrations.core.prompts import PROMPT_VERSION, answer_messages
from tale_integrations.core.records import RecordFile
from tale_integrations.core.search import SearchStatus, search_to_file
from tale_integrations.core.tokens import TiktokenCounter
from tale_integrations.eval.metrics import copies_format_example, restates_question
from tale_integrations.training.data import budget_stats, load_questions, sample_items, split_by_hash

#: The paper's Table 5, GSM8K-Zero rows (Llama-3.1-8B-Instruct; tokens counted with cl100k_base).
PAPER = {"vanilla CoT": (65.04, 251.08), "TALE-PT SFT": (78.43, 77.85), "TALE-PT DPO": (78.41, 113.41)}
RUNS = Path(__file__).resolve().parents[1] / "runs" / "tale_pt_smollm2"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0, help="split, sampling and training seed (default 0)")
    p.add_argument("--train-questions", type=int, default=300, help="train-side questions searched (default 300)")
    p.add_argument("--samples", type=int, default=2, help="searches per train question (default 2)")
    p.add_argument("--temperature", type=float, default=0.7,
                   help="sampling temperature when --samples or --attempts > 1")
    p.add_argument("--attempts", type=int, default=1,
                   help="answers sampled per halved budget in the search (default 1, the paper; see core.search)")
    p.add_argument("--eval-questions", type=int, default=160, help="held-out questions evaluated (default 160)")
    p.add_argument("--test-questions", type=int, default=160,
                   help="first GSM8K test questions also evaluated (default 160; 0: none)")
    p.add_argument("--summarize", action="store_true",
                   help="only read the finished seeds of this setting and write their spread")
    p.add_argument("--questions", type=int, help="shorthand: this many train and held-out questions (smoke runs)")
    p.add_argument("--held-out", type=float, default=0.2, help="held-out share of the hash split (default 0.2)")
    p.add_argument("--max-tokens", type=int, default=256, help="output cap of every answer (default 256)")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per forward pass (default 32)")
    p.add_argument("--epochs", type=int, default=3, help="SFT epochs (default 3, the paper's)")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="SFT learning rate (default 1e-3: ~10x the paper's 1e-4, for ~50x fewer examples)")
    p.add_argument("--micro-batch-size", type=int, default=4, help="training micro-batch (default 4)")
    p.add_argument("--dpo", action="store_true", help="also train and evaluate TALE-PT DPO")
    p.add_argument("--dpo-lr", type=float, default=1e-4, help="DPO learning rate (default 1e-4; paper 3e-5)")
    p.add_argument("--data-dir", help="folder holding gsm8k_zero/ (default $TALE_DATA_DIR or ../shared/data)")
    p.add_argument("--results-dir", type=Path, default=RUNS, help=f"where runs go (default {RUNS})")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    if args.questions:
        args.train_questions = args.eval_questions = args.test_questions = args.questions
    return args


class Clock:
    """Stage timings of this invocation (a resumed stage only counts its remaining work)."""

    def __init__(self) -> None:
        self.start, self.stages = time.perf_counter(), {}

    def run(self, name: str, fn: Any, *a: Any, **kw: Any) -> Any:
        print(f"[{self.elapsed():7.0f}s] {name} ...", flush=True)
        t = time.perf_counter()
        out = fn(*a, **kw)
        self.stages[name] = round(time.perf_counter() - t, 1)
        print(f"[{self.elapsed():7.0f}s] {name} done in {self.stages[name]:.0f}s", flush=True)
        return out

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class StepLines:
    """Wraps a generator to print one line per batched search step (progress for a long stage)."""

    def __init__(self, generator: Any) -> None:
        self.generator, self.model_name, self.step = generator, generator.model_name, 0

    def generate(self, prompts: Any, **kwargs: Any) -> Any:
        self.step, started = self.step + 1, time.perf_counter()
        out = self.generator.generate(prompts, **kwargs)
        seconds = time.perf_counter() - started
        print(f"    search step {self.step}: {len(prompts)} answers in {seconds:.0f}s", flush=True)
        return out

    async def agenerate(self, prompts: Any, **kwargs: Any) -> Any:
        return await self.generator.agenerate(prompts, **kwargs)


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a proportion, in percent."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(100 * (centre - half), 2), round(100 * (centre + half), 2)]


def evaluate(generator: Any, items: list[Any], path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Greedy answers to the budget-free prompt, stored per question (resumable), and their metrics."""
    header = {"kind": "tale-pt-eval", "model": generator.model_name, "max_tokens": args.max_tokens,
              "prompt_version": PROMPT_VERSION, "ids": [it.id for it in items]}
    store = RecordFile(path, header)
    todo = [it for it in items if it.id not in store]
    chunk = args.batch_size * 2
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        gens = generator.generate([answer_messages(it.question) for it in part], max_tokens=args.max_tokens,
                                  temperature=0.0)
        for it, g in zip(part, gens):
            answer = extract_answer(g.text, AnswerKind.NUMERIC)
            correct = answers_match(answer, it.gold, text=g.text)
            store.append({"id": it.id, "text": g.text, "answer": answer, "tokens": g.usage.output_tokens,
                          "correct": correct, "finish_reason": g.finish_reason})
        print(f"    {generator.model_name}: {min(start + chunk, len(todo))}/{len(todo)} answered", flush=True)
    rows = [store.records[it.id] for it in items]
    cl100k = TiktokenCounter()
    n, k = len(rows), sum(r["correct"] for r in rows)
    copied = [copies_format_example(r["answer"]) for r in rows]
    restated = [restates_question(r["answer"], it.question) for r, it in zip(rows, items, strict=True)]
    return {
        "questions": n,
        "acc": round(100 * k / n, 2),
        "acc_95": wilson(k, n),
        "copied_example": round(sum(copied) / n, 4),
        "restated_number": round(sum(restated) / n, 4),
        "correct_and_restated": round(sum(r["correct"] and x for r, x in zip(rows, restated, strict=True)) / n, 4),
        "gold_in_question": round(sum(restates_question(it.gold, it.question) for it in items) / n, 4),
        "mean_output_tokens": round(sum(r["tokens"] for r in rows) / n, 2),
        "mean_output_tokens_cl100k": round(sum(cl100k.count(r["text"]) for r in rows) / n, 2),
        "truncated": round(sum(r["finish_reason"] == "length" for r in rows) / n, 4),
    }


def train_stage(clock: Clock, method: str, search_file: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    from tale_integrations.training.data import load_dpo_data, load_sft_data

    load = load_sft_data if method == "sft" else load_dpo_data
    try:
        _, stats = load(search_file)
    except ValueError as exc:  # no usable record (a smoke run, or an unlucky search)
        print(f"    {method} skipped: {exc}", flush=True)
        return {"skipped": str(exc)}
    if method == "sft":
        from tale_integrations.training.sft import SFTConfig, train_sft

        config = SFTConfig(learning_rate=args.lr, epochs=args.epochs, micro_batch_size=args.micro_batch_size,
                           seed=args.seed, save_every=10)
        result = clock.run("train sft", train_sft, None, search_file, out, config, merge=True)
    else:
        from tale_integrations.training.dpo import DPOConfig, train_dpo

        config = DPOConfig(learning_rate=args.dpo_lr, micro_batch_size=max(1, args.micro_batch_size // 2),
                           seed=args.seed, save_every=10)
        result = clock.run("train dpo", train_dpo, None, search_file, out, config, merge=True)
    print(f"    {method}: {stats.summary()}; {result.steps} steps, final loss {result.final_loss}", flush=True)
    return {"data": stats.to_dict(), "steps": result.steps, "final_loss": result.final_loss,
            "hyperparameters": config.to_dict(), "out_dir": str(out)}


def summarize(args: argparse.Namespace) -> int:
    """Spread over the finished seeds of one setting (same --attempts): per seed, and median / min / max."""
    suffix = f"-attempts-{args.attempts}" if args.attempts > 1 else ""
    runs = sorted(args.results_dir.glob(f"seed-*{suffix}/results.json"))
    runs = [json.loads(p.read_text()) for p in runs if p.parent.name.endswith(suffix) and
            (suffix or "-attempts-" not in p.parent.name)]
    if not runs:
        raise SystemExit(f"no finished seed under {args.results_dir} with --attempts {args.attempts}")
    keys = ("acc", "mean_output_tokens", "mean_output_tokens_cl100k", "copied_example", "restated_number", "truncated")
    spread: dict[str, Any] = {}
    for table in ("evaluation", "evaluation_gsm8k_test"):
        per_method: dict[str, Any] = {}
        for run in runs:
            methods = run[table]["methods"] if table == "evaluation_gsm8k_test" else run[table]
            for name, m in methods.items():
                per_method.setdefault(name, {k: [] for k in keys + ("token_ratio",)})
                for k in keys:
                    per_method[name][k].append(m[k])
                base = methods["vanilla CoT"]["mean_output_tokens"]
                per_method[name]["token_ratio"].append(round(m["mean_output_tokens"] / base, 4))
        spread[table] = {name: {k: {"runs": v, "median": statistics.median(v), "min": min(v), "max": max(v)}
                                for k, v in d.items()} for name, d in per_method.items()}
    out = {"benchmark": "tale_pt_smollm2", "seeds": [r["seed"] for r in runs], "attempts": args.attempts,
           "per_seed": [{"seed": r["seed"], "search": r["search"], "evaluation": r["evaluation"],
                         "evaluation_gsm8k_test": r["evaluation_gsm8k_test"],
                         "training": {k: {x: v.get(x) for x in ("data", "steps", "final_loss", "hyperparameters")}
                                      for k, v in r["training"].items()},
                         "seconds": r["total_seconds_this_invocation"],
                         "torch_threads": r["machine"]["torch_threads"]} for r in runs],
           "spread": spread, "settings": {k: v for k, v in runs[0]["settings"].items() if k not in ("seed", "threads")},
           "machine": {k: v for k, v in runs[0]["machine"].items() if k != "torch_threads"},
           "paper_table5_gsm8k_zero_llama31_8b": runs[0]["paper_table5_gsm8k_zero_llama31_8b"]}
    target = Path(__file__).resolve().parent / "results" / "tale_pt_smollm2.json"
    target.write_text(json.dumps(out, indent=1) + "\n")
    for table, title in (("evaluation", "GSM8K-Zero held-out"), ("evaluation_gsm8k_test", "GSM8K test")):
        print(f"\n{title}, seeds {out['seeds']}: median [min, max]")
        for name, d in spread[table].items():
            shown = ("acc", "mean_output_tokens", "token_ratio", "copied_example", "restated_number")
            cells = "  ".join(f"{k} {d[k]['median']:.3g} [{d[k]['min']:.3g}, {d[k]['max']:.3g}]" for k in shown)
            print(f"  {name:<14} {cells}")
    print(f"\nwritten: {target}")
    return 0


def main() -> int:
    args = parse_args()
    if args.summarize:
        return summarize(args)
    import torch
    from transformers.utils import logging as hf_logging

    from tale_integrations.backends.hf import HFGenerator

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.samples > 1 or args.attempts > 1) and args.temperature <= 0:
        raise SystemExit("--samples > 1 and --attempts > 1 need --temperature > 0")
    run_dir = args.results_dir / (f"seed-{args.seed}" + (f"-attempts-{args.attempts}" if args.attempts > 1 else ""))
    run_dir.mkdir(parents=True, exist_ok=True)
    clock = Clock()

    questions = load_questions("gsm8k-zero", data_dir=args.data_dir)
    train, held = split_by_hash(questions, seed=args.seed, held_out=args.held_out)
    train, held = train[: args.train_questions], held[: args.eval_questions]
    if len(held) < args.eval_questions:
        raise SystemExit(f"the held-out side has only {len(held)} questions; raise --held-out")
    if len(held) < 150:
        print(f"note: {len(held)} held-out questions (< 150): a smoke run, not a full-size one", flush=True)
    print(f"GSM8K-Zero: {len(train)} train questions x {args.samples} samples, {len(held)} held-out; seed "
          f"{args.seed}; max {args.max_tokens} tokens; {torch.get_num_threads()} threads; results in {run_dir}",
          flush=True)

    # 1-2. vanilla CoT on the train side, then the budget search (one resumable file)
    sampling = args.samples > 1 or args.attempts > 1
    searcher = HFGenerator(max_batch_size=args.batch_size, device="cpu", seed=args.seed).load()
    search_file = run_dir / "search.jsonl"
    items = sample_items(train, args.samples)
    records = clock.run("search", search_to_file, StepLines(searcher), items, str(search_file),
                        max_tokens=args.max_tokens, temperature=args.temperature if sampling else None,
                        attempts=args.attempts)
    found = [r for r in records if r.status is SearchStatus.FOUND]
    search_summary = {
        "searches": len(records), "questions": len(train), "samples": args.samples, "attempts": args.attempts,
        "temperature": args.temperature if sampling else 0.0,
        "status": {str(s): sum(r.status is s for r in records) for s in SearchStatus},
        "vanilla_acc_train": round(100 * sum(r.trace[0].correct for r in records) / len(records), 2),
        "questions_with_a_budget": len({r.id.split("#")[0] for r in found}),
        "optimal_budget": budget_stats(r.optimal_budget for r in found),
        "vanilla_tokens_found": budget_stats(r.vanilla_tokens for r in found),
        "optimal_tokens_found": budget_stats(r.optimal_tokens for r in found),
    }
    print(f"    search: {search_summary['status']}, vanilla ACC on train {search_summary['vanilla_acc_train']}%",
          flush=True)
    del searcher

    # 3. TALE-PT training
    training = {"sft": train_stage(clock, "sft", search_file, run_dir / "sft", args)}
    if args.dpo:
        training["dpo"] = train_stage(clock, "dpo", search_file, run_dir / "dpo", args)

    # 4. held-out evaluation: vanilla CoT (base) vs TALE-PT (budget-free prompt)
    models = {"vanilla CoT": None}
    for method, name in (("sft", "TALE-PT SFT"), ("dpo", "TALE-PT DPO")):
        if method in training and "skipped" not in training[method]:
            models[name] = run_dir / method / "merged"
    test = load_questions("gsm8k-test", data_dir=args.data_dir)[: args.test_questions]
    evaluation, evaluation_test = {}, {}
    for name, path in models.items():
        generator = HFGenerator(path, max_batch_size=args.batch_size, device="cpu",
                                model_name=None if path is None else f"tale-pt-{path.parent.name}")
        slug = name.lower().replace(" ", "-")
        evaluation[name] = clock.run(f"evaluate {name}", evaluate, generator, held, run_dir / f"eval-{slug}.jsonl",
                                     args)
        if test:
            evaluation_test[name] = clock.run(f"evaluate {name} on GSM8K test", evaluate, generator, test,
                                              run_dir / f"eval-gsm8k-test-{slug}.jsonl", args)

    results = {
        "benchmark": "tale_pt_smollm2", "seed": args.seed, "model": "SmolLM2-135M-Instruct (embedded)",
        "dataset": "gsm8k-zero", "split": {"held_out_share": args.held_out, "train_questions": len(train),
                                           "eval_questions": len(held)},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "search": search_summary, "training": training, "evaluation": evaluation,
        "evaluation_gsm8k_test": {"questions": len(test), "methods": evaluation_test},
        "paper_table5_gsm8k_zero_llama31_8b": {k: {"acc": a, "mean_output_tokens_cl100k": t}
                                               for k, (a, t) in PAPER.items()},
        "token_counters": {"mean_output_tokens": "SmolLM2 tokenizer (generated ids)",
                           "mean_output_tokens_cl100k": "tiktoken cl100k_base on the answer text (the paper's)"},
        "stage_seconds_this_invocation": clock.stages, "total_seconds_this_invocation": round(clock.elapsed(), 1),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__},
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    for title, table in (("GSM8K-Zero held-out", evaluation), ("GSM8K test", evaluation_test)):
        if not table:
            continue
        print(f"\n{title}\n{'method':<14} {'ACC':>8} {'95% CI':>15} {'tokens':>8} {'cl100k':>8} {'copied':>7} "
              f"{'restated':>8}   paper (Llama-3.1-8B, GSM8K-Zero): ACC / cl100k tokens")
        for name, m in table.items():
            acc, tok = PAPER[name]
            print(f"{name:<14} {m['acc']:>7.2f}% {m['acc_95'][0]:>6.1f}-{m['acc_95'][1]:.1f}% "
                  f"{m['mean_output_tokens']:>8.1f} {m['mean_output_tokens_cl100k']:>8.1f} "
                  f"{100 * m['copied_example']:>6.1f}% {100 * m['restated_number']:>7.1f}%   {acc:.2f}% / {tok:.2f}")
    print(f"\nresults: {run_dir / 'results.json'} ({clock.elapsed():.0f}s this invocation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
