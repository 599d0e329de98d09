"""The whole TALE-PT loop on the embedded SmolLM2-135M-Instruct and GSM8K-Zero, on CPU.

1. split GSM8K-Zero by a seeded hash of the question (`split_by_hash`): a train side and a
   disjoint held-out side;
2. search the optimal budget of the train questions (vanilla CoT first; wrong answers are skipped).
   SmolLM2-135M answers few GSM8K-Zero questions correctly, so each question can be sampled
   ``--samples`` times at ``--temperature`` (one independent search per sample, ids ``QID#k``),
   keeping every sample whose search found a budget;
3. LoRA SFT on (prompt without budget -> answer under the optimal budget); with ``--dpo`` also DPO;
4. answer the held-out questions with vanilla CoT (base model) and with the TALE-PT model (the
   same budget-free prompt), greedy; report ACC and mean output tokens beside the paper's Table 5
   (Llama-3.1-8B-Instruct, GSM8K-Zero).

Every stage resumes: the search file, the training folders and the per-model answer files live
under ``runs/tale_pt_smollm2/seed-N/`` (gitignored), and rerunning the same command continues a
killed run. Results go to ``results.json`` there.

    python benchmarks/tale_pt_smollm2.py --seed 0             # full size (~1 h budget on 2 cores)
    python benchmarks/tale_pt_smollm2.py --questions 4 --max-tokens 16   # a smoke run of every stage
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from tale_integrations.core.answers import AnswerKind, answers_match, extract_answer
from tale_integrations.core.prompts import PROMPT_VERSION, answer_messages
from tale_integrations.core.records import RecordFile
from tale_integrations.core.search import SearchStatus, search_to_file
from tale_integrations.core.tokens import TiktokenCounter
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
        args.train_questions = args.eval_questions = args.questions
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
            correct = answers_match(extract_answer(g.text, AnswerKind.NUMERIC), it.gold, text=g.text)
            store.append({"id": it.id, "text": g.text, "tokens": g.usage.output_tokens, "correct": correct,
                          "finish_reason": g.finish_reason})
        print(f"    {generator.model_name}: {min(start + chunk, len(todo))}/{len(todo)} answered", flush=True)
    rows = [store.records[it.id] for it in items]
    cl100k = TiktokenCounter()
    n = len(rows)
    return {
        "questions": n,
        "acc": round(100 * sum(r["correct"] for r in rows) / n, 2),
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


def main() -> int:
    args = parse_args()
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
    evaluation = {}
    for name, path in models.items():
        generator = HFGenerator(path, max_batch_size=args.batch_size, device="cpu",
                                model_name=None if path is None else f"tale-pt-{path.parent.name}")
        slug = name.lower().replace(" ", "-")
        answers = run_dir / f"eval-{slug}.jsonl"
        evaluation[name] = clock.run(f"evaluate {name}", evaluate, generator, held, answers, args)

    results = {
        "benchmark": "tale_pt_smollm2", "seed": args.seed, "model": "SmolLM2-135M-Instruct (embedded)",
        "dataset": "gsm8k-zero", "split": {"held_out_share": args.held_out, "train_questions": len(train),
                                           "eval_questions": len(held)},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "search": search_summary, "training": training, "evaluation": evaluation,
        "paper_table5_gsm8k_zero_llama31_8b": {k: {"acc": a, "mean_output_tokens_cl100k": t}
                                               for k, (a, t) in PAPER.items()},
        "token_counters": {"mean_output_tokens": "SmolLM2 tokenizer (generated ids)",
                           "mean_output_tokens_cl100k": "tiktoken cl100k_base on the answer text (the paper's)"},
        "stage_seconds_this_invocation": clock.stages, "total_seconds_this_invocation": round(clock.elapsed(), 1),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__},
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    print(f"\n{'method':<14} {'ACC':>8} {'tokens':>8} {'cl100k':>8}   paper (Llama-3.1-8B): ACC / cl100k tokens")
    for name, m in evaluation.items():
        acc, tok = PAPER[name]
        print(f"{name:<14} {m['acc']:>7.2f}% {m['mean_output_tokens']:>8.1f} {m['mean_output_tokens_cl100k']:>8.1f}   "
              f"{acc:.2f}% / {tok:.2f}")
    print(f"\nresults: {run_dir / 'results.json'} ({clock.elapsed():.0f}s this invocation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
