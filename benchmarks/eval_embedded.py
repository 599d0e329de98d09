"""TALE-EP against direct answering, vanilla CoT and fixed budgets on the embedded model, side by side.

Runs each method on the first N GSM8K-Zero questions with the embedded SmolLM2-135M-Instruct through
the evaluation harness (batched, resumable: rerun the same command to continue a killed run), then
prints the report table twice: with the model's own token counts, and recounted with tiktoken
``cl100k_base`` as the paper counts. Ratios to vanilla CoT (tokens, wall time) are printed per method.
Last, it prints the section for benchmarks/README.md, with the `tale eval` command that reproduces
the paper's GPT-4o-mini table for users with an API key.

    python benchmarks/eval_embedded.py [--limit 100] [--max-tokens 256] [--batch-size 16] [--out DIR] [--threads N]
        [--json benchmarks/results/eval_embedded.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

from tale_integrations.core.tokens import TiktokenCounter
from tale_integrations.eval import evaluate, load_dataset, parse_methods, write_report
from tale_integrations.eval.report import build_report, paper_table, render_markdown

DEFAULT_METHODS = "direct,vanilla,tale-ep,fixed:25,fixed:50,fixed:100"

PAPER_COMMAND = """\
## Reproducing the paper's GPT-4o-mini table (needs an OpenAI API key)

The paper's Table (GPT-4o-mini, ACC / mean output tokens) is reproduced with the whole test sets
the shared data folder holds (GSM8K 1,319, GSM8K-Zero 2,978, MathBench-Arithmetic 300,
MathBench-Middle 150 questions; MathBench-High and -College are not in it) and the paper's
sampling (output cap 1024, temperature 0.1, seed 1024), all of which `--paper` sets along with the
scripts' prompts, system messages, estimator input and budget policy (docs/paper_mode.md):

```bash
export OPENAI_API_KEY=sk-...
tale eval --paper --model openai:gpt-4o-mini \\
  --dataset gsm8k,gsm8k-zero,mathbench-arithmetic,mathbench-middle \\
  --methods direct,vanilla,tale-ep --concurrency 8 \\
  --out runs/gpt-4o-mini-paper
tale report runs/gpt-4o-mini-paper --counter cl100k_base
```

The run streams every answer to `runs/gpt-4o-mini-paper/results/`; if it stops (rate limit, lost
connection, Ctrl-C), the same command resumes it without asking any finished question again.
`tale report --counter cl100k_base` recounts the answers with tiktoken `cl100k_base`, as the paper
counts tokens for every model; without it the table shows the provider-reported usage (gpt-4o-mini
counts with `o200k_base`). Expense is computed from the provider-reported usage of every call
(the TALE-EP estimator call included, and shown apart) and the default price table (gpt-4o-mini
$0.15 / $0.60 per 1M input / output tokens); pass `--prices FILE` to use your own. The paper's
numbers: vanilla CoT 81.35% / 318.10 tokens and TALE-EP 84.46% / 77.26 on GSM8K,
99.50% / 252.96 and 98.72% / 22.67 on GSM8K-Zero. Add `be-concise,ccot:100,cod,fixed:50` to
`--methods` for the baselines, and `oracle --search-file FILE` for the searched-budget upper bound.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=100, help="GSM8K-Zero questions (default 100)")
    parser.add_argument("--max-tokens", type=int, default=256, help="answer cap (default 256)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--out", help="run folder (default: a folder in the temp dir named after the settings)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 is often "
                        "faster on a busy shared machine)")
    parser.add_argument("--json", metavar="PATH", help="also write the settings, timings and both reports here")
    args = parser.parse_args()
    out = args.out or os.path.join(tempfile.gettempdir(), f"tale-eval-embedded-n{args.limit}-t{args.max_tokens}")

    import torch

    from tale_integrations.backends.hf import HFGenerator

    if args.threads:
        torch.set_num_threads(args.threads)

    generator = HFGenerator(max_batch_size=args.batch_size).load()
    dataset = load_dataset("gsm8k-zero", limit=args.limit)
    methods = parse_methods(args.methods)
    timings = {}
    for method in methods:
        start = time.perf_counter()
        [result] = evaluate(generator, dataset, [method], out, batch_size=args.batch_size, max_tokens=args.max_tokens)
        timings[method.name] = (time.perf_counter() - start, result.new)

    report = write_report(out)
    recounted = build_report(out, counter=TiktokenCounter("cl100k_base"))
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {generator.device}, "
          f"Python {platform.python_version()}")
    threads = f" --threads {args.threads}" if args.threads else ""
    print(f"Command: python benchmarks/eval_embedded.py --limit {args.limit} --max-tokens {args.max_tokens} "
          f"--batch-size {args.batch_size} --methods {args.methods}{threads}")
    print(f"Run folder: {out}\n")
    print(render_markdown(report))
    print("## Recounted with tiktoken cl100k_base (the paper's counter)\n")
    print("\n".join(paper_table(recounted.metrics)))
    print("\n## Side by side (ratios to vanilla CoT)\n")
    metrics = {m.method: m for m in report.metrics}
    base_tokens = metrics["vanilla"].output_tokens if "vanilla" in metrics else None
    base_time = timings.get("vanilla", (None, 0))
    print("| method | ACC | output tokens | tokens / vanilla | wall s (new questions) | time / vanilla |")
    print("|---|---:|---:|---:|---:|---:|")
    for method in methods:
        m = metrics[method.name]
        seconds, new = timings[method.name]
        tok_ratio = f"{m.output_tokens / base_tokens:.2f}x" if base_tokens else "n/a"
        time_ratio = f"{seconds / base_time[0]:.2f}x" if base_time[0] and base_time[1] and new else "n/a"
        print(f"| {m.label} | {100 * m.accuracy:.1f}% | {m.output_tokens:.1f} | {tok_ratio} | {seconds:.1f} ({new}) "
              f"| {time_ratio} |")
    print("\n" + PAPER_COMMAND)
    if args.json:
        figures = {
            "benchmark": "eval_embedded", "dataset": "gsm8k-zero", "limit": args.limit, "max_tokens": args.max_tokens,
            "batch_size": args.batch_size, "methods": args.methods, "style": "default",
            "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                        "platform": platform.platform()},
            "wall_seconds": {name: {"seconds": round(s, 1), "new_questions": n} for name, (s, n) in timings.items()},
            "metrics": [m.to_dict() for m in report.metrics],
            "metrics_cl100k": [m.to_dict() for m in recounted.metrics],
        }
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
