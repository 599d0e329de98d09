"""The learned estimator against the paper's zero-shot one and vanilla CoT, on the embedded model.

One run, side by side, through the evaluation harness (batched, resumable: rerun the same command to
continue a killed run):

1. Estimator quality, with no model: the shipped learned estimator's predictions for GSM8K test
   against the cl100k token counts of the reference solutions (calculator annotations removed),
   beside a constant median (GSM8K train's) and the zero-shot estimator's reading where it parses.
2. Methods on the embedded SmolLM2-135M-Instruct, greedy, one output cap for every row, on the first
   N GSM8K test and the first N GSM8K-Zero questions (none used for fitting): vanilla CoT, TALE-EP
   with the zero-shot estimator, TALE-EP with the learned one, the latter with ``enforce_budget=True``,
   and a fixed budget of 20, the policy's floor: the smallest budget any estimator can produce, so the
   most that asking with a budget can save on this model. ACC with 95% Wilson intervals, answer tokens,
   generated tokens (answer + estimator output, as the paper counts output) and all tokens (input and
   output of every call, the estimator's included), each as a ratio to vanilla; the accuracy difference to vanilla in standard
   errors of the (paired) difference; answers that copy the prompt's format example ("[[50]]") and
   answers whose number already stands in the question (GSM8K-Zero's questions contain their answer).
3. The same quality table on GSM8K-Zero, against the embedded model's correct vanilla answers.
4. Estimation time per question: the learned estimator against the zero-shot estimator's wall time.

    python benchmarks/learned_estimator.py [--limit 300] [--max-tokens 256] [--batch-size 32] [--out DIR]

The results are written to ``benchmarks/results/learned_estimator.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path

from tale_integrations.core.estimators import ZeroShotEstimator
from tale_integrations.core.learned import default_learned_estimator, prediction_quality
from tale_integrations.core.tokens import get_counter
from tale_integrations.eval import evaluate, load_dataset
from tale_integrations.eval.harness import result_path
from tale_integrations.training.estimator import reference_pairs

DATASETS = ("gsm8k", "gsm8k-zero")
PLAIN = ("vanilla", "tale-ep:zero-shot", "tale-ep:learned", "fixed:20")
ENFORCED = "tale-ep:learned"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _numbers(text: str) -> set[float]:
    out = set()
    for n in _NUMBER.findall(text):
        try:
            out.add(float(n.replace(",", "")))
        except ValueError:
            pass
    return out


def _read(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if "header" not in r]


def _total(r: dict) -> int:
    """Every token of every call: the answer's input and output, the estimator's input and output."""
    est = r.get("estimator_usage") or {}
    return r["input_tokens"] + r["output_tokens"] + est.get("input_tokens", 0) + est.get("output_tokens", 0)


def _generated(r: dict) -> int:
    """Generated tokens only (the paper counts output): the answer's and the estimator's output."""
    return r["output_tokens"] + (r.get("estimator_usage") or {}).get("output_tokens", 0)


def summarise(rows: list[dict], base: dict[str, dict] | None) -> dict:
    n = len(rows)
    k = sum(r["correct"] for r in rows)
    low, high = wilson(k, n)
    answers = [r.get("answer") for r in rows]
    copied = sum(a is not None and _numbers(a) == {50.0} and "[[50]]" in (r["text"] or "") for a, r in zip(answers, rows, strict=False))
    restated = sum(a is not None and bool(_numbers(a)) and _numbers(a) <= _numbers(r["question"])
                   for a, r in zip(answers, rows, strict=False))
    out = {
        "n": n, "acc": k / n, "acc_95": [low, high],
        "answer_tokens": statistics.mean(r["output_tokens"] for r in rows),
        "total_tokens": statistics.mean(_total(r) for r in rows),
        "generated_tokens": statistics.mean(_generated(r) for r in rows),
        "estimator_tokens": statistics.mean(_total(r) - r["input_tokens"] - r["output_tokens"] for r in rows),
        "hit_cap": sum(r["finish_reason"] == "length" for r in rows) / n,
        "copied_example": copied / n, "restated_number": restated / n,
        "budget_mean": statistics.mean(r["budget"] for r in rows) if all(r.get("budget") for r in rows) else None,
        "fallback": sum(r.get("budget_source") == "fallback" for r in rows) / n,
    }
    if base is not None:
        diffs = [int(r["correct"]) - int(base[r["id"]]["correct"]) for r in rows]
        mean = statistics.mean(diffs)
        se = statistics.stdev(diffs) / math.sqrt(n) if n > 1 else math.nan
        out["acc_diff"] = mean
        out["acc_diff_se"] = se
        out["acc_diff_in_se"] = mean / se if se else 0.0
        out["total_vs_vanilla"] = out["total_tokens"] / statistics.mean(_total(base[r["id"]]) for r in rows)
        out["generated_vs_vanilla"] = out["generated_tokens"] / statistics.mean(_generated(base[r["id"]]) for r in rows)
        out["answer_vs_vanilla"] = out["answer_tokens"] / statistics.mean(base[r["id"]]["output_tokens"] for r in rows)
    return out


def quality_rows(predicted: dict[str, float], actual: dict[str, float]) -> dict:
    ids = [i for i in actual if i in predicted]
    if not ids:
        return {"n": 0, "spearman": None, "within_50": None, "median_ratio": None}
    return prediction_quality([predicted[i] for i in ids], [actual[i] for i in ids])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=300, help="questions per data set (default 300)")
    parser.add_argument("--max-tokens", type=int, default=256, help="the output cap of every answer (default 256)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", help="run folder (default: a folder in the temp dir named after the settings)")
    parser.add_argument("--json", default="benchmarks/results/learned_estimator.json")
    args = parser.parse_args()
    out = Path(args.out or os.path.join(tempfile.gettempdir(), f"tale-learned-n{args.limit}-t{args.max_tokens}"))

    import torch

    from tale_integrations.backends.hf import HFGenerator

    learned = default_learned_estimator()
    cl100k = get_counter("cl100k_base")
    results: dict = {"settings": {"limit": args.limit, "max_tokens": args.max_tokens, "batch_size": args.batch_size,
                                  "temperature": "greedy", "estimator": learned.provenance}}

    # 1. Quality on GSM8K test, with no model.
    test_pairs = reference_pairs("gsm8k-test")
    train_median = statistics.median(reference_pairs("gsm8k").targets)
    start = time.perf_counter()
    predicted = learned.predict(test_pairs.questions)
    learned_seconds = (time.perf_counter() - start) / len(predicted)
    results["quality_gsm8k_test"] = {
        "learned": prediction_quality(predicted, test_pairs.targets),
        "constant_median": {**prediction_quality([train_median] * len(predicted), test_pairs.targets),
                            "value": train_median},
    }

    # 2. The methods on the embedded model.
    generator = HFGenerator(max_batch_size=args.batch_size).load()
    enforcing = HFGenerator.from_model(generator.model, generator.tokenizer, model_name=generator.model_name,
                                       enforce_budget=True, max_batch_size=args.batch_size)
    datasets = [load_dataset(name, limit=args.limit) for name in DATASETS]
    timings = {}
    for name, gen, methods, folder in (("plain", generator, PLAIN, out / "plain"),
                                       ("enforced", enforcing, [ENFORCED], out / "enforced")):
        for method in methods:
            start = time.perf_counter()
            [*done] = evaluate(gen, datasets, [method], folder, batch_size=args.batch_size,
                               max_tokens=args.max_tokens, progress="plain")
            timings[f"{method}{' (enforced)' if name == 'enforced' else ''}"] = {
                "seconds": time.perf_counter() - start, "new": sum(r.new for r in done)}

    # 4. Zero-shot estimator wall time per question, same model, same batches (GSM8K test questions).
    zero_shot = ZeroShotEstimator(generator)
    questions = [ex.question for ex in datasets[0].examples]
    start = time.perf_counter()
    for i in range(0, len(questions), args.batch_size):
        zero_shot.estimate(questions[i:i + args.batch_size])
    zero_shot_seconds = (time.perf_counter() - start) / len(questions)
    start = time.perf_counter()
    for i in range(0, len(questions), args.batch_size):
        learned.estimate(questions[i:i + args.batch_size])
    learned_batch_seconds = (time.perf_counter() - start) / len(questions)
    results["estimation_seconds_per_question"] = {
        "learned": learned_batch_seconds, "learned_1319_predict": learned_seconds, "zero_shot": zero_shot_seconds,
        "zero_shot_over_learned": zero_shot_seconds / learned_batch_seconds}

    model = generator.model_name
    table = {}
    for ds in datasets:
        rows = {}
        for label, folder, method in [("vanilla", "plain", "vanilla"), ("TALE-EP zero-shot", "plain", "tale-ep:zero-shot"),
                                      ("TALE-EP learned", "plain", "tale-ep:learned"),
                                      ("TALE-EP learned, enforced", "enforced", ENFORCED),
                                      ("fixed budget 20 (the policy's floor)", "plain", "fixed:20")]:
            rows[label] = _read(result_path(out / folder, ds.name, method, model))
        base = {r["id"]: r for r in rows["vanilla"]}
        table[ds.name] = {label: summarise(r, None if label == "vanilla" else base) for label, r in rows.items()}
        # 3. Quality tables: the zero-shot reading where it parses, against this data set's target.
        zs = {r["id"]: float(r["budget_raw"]) for r in rows["TALE-EP zero-shot"]
              if r.get("budget_source") != "fallback" and r.get("budget_raw")}
        if ds.name == "gsm8k":
            asked = {r["id"] for r in rows["vanilla"]}
            gold = {f"gsm8k:{i + 1}": t for i, t in enumerate(test_pairs.targets) if f"gsm8k:{i + 1}" in asked}
        else:
            gold = {r["id"]: float(cl100k.count(r["text"])) for r in rows["vanilla"]
                    if r["correct"] and r["finish_reason"] != "length" and r["text"].strip()}
        mine = dict(zip([r["id"] for r in rows["vanilla"]], learned.predict([r["question"] for r in rows["vanilla"]]), strict=False))
        target_median = train_median if ds.name == "gsm8k" else statistics.median(gold.values() or [0.0])
        results[f"quality_{ds.name}_subset"] = {
            "target": "reference solutions, cl100k" if ds.name == "gsm8k" else "embedded model's correct vanilla answers, cl100k",
            "learned": quality_rows(mine, gold),
            "constant_median": {**quality_rows({i: target_median for i in gold}, gold),
                                "value": target_median, "note": "GSM8K train's median" if ds.name == "gsm8k"
                                else "the median of these targets themselves (an oracle constant)"},
            "zero_shot_where_parsed": {**quality_rows(zs, gold), "parsed": len(zs), "of": len(rows["vanilla"])},
        }
    results["methods"] = table
    results["timings"] = timings
    results["machine"] = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
                          f"({torch.get_num_threads()} threads), Python {platform.python_version()}")
    results["command"] = (f"python benchmarks/learned_estimator.py --limit {args.limit} --max-tokens {args.max_tokens} "
                          f"--batch-size {args.batch_size}")

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"Machine: {results['machine']}\nCommand: {results['command']}\nRun folder: {out}\n")
    for key in [k for k in results if k.startswith("quality_")]:
        print(f"### {key}\n\n| estimator | n | Spearman | within ±50% | median ratio |\n|---|---:|---:|---:|---:|")
        for name, q in results[key].items():
            if isinstance(q, dict):
                within = "n/a" if q["within_50"] is None else f"{100 * q['within_50']:.1f}%"
                print(f"| {name} | {q['n']} | {q['spearman']} | {within} | {q['median_ratio']} |")
        print()
    for ds, rows in table.items():
        print(f"### {ds}, first {args.limit} questions, cap {args.max_tokens}\n")
        print("| method | ACC (95% CI) | answer tokens | generated (+ estimator's) | / vanilla | all tokens, in + out "
              "| / vanilla | ΔACC (SE of Δ) | copied [[50]] | number in question | hit cap |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label, s in rows.items():
            ratio = f"{s['total_vs_vanilla']:.2f}x" if "total_vs_vanilla" in s else "1.00x"
            generated = f"{s['generated_vs_vanilla']:.2f}x" if "generated_vs_vanilla" in s else "1.00x"
            diff = (f"{100 * s['acc_diff']:+.1f} pts ({100 * s['acc_diff_se']:.1f}; {s['acc_diff_in_se']:+.1f} SE)"
                    if "acc_diff" in s else "")
            print(f"| {label} | {100 * s['acc']:.1f}% ({100 * s['acc_95'][0]:.1f}–{100 * s['acc_95'][1]:.1f}) | "
                  f"{s['answer_tokens']:.1f} | {s['generated_tokens']:.1f} | {generated} | {s['total_tokens']:.1f} | "
                  f"{ratio} | {diff} | "
                  f"{100 * s['copied_example']:.1f}% | {100 * s['restated_number']:.1f}% | {100 * s['hit_cap']:.1f}% |")
        print()
    e = results["estimation_seconds_per_question"]
    print(f"Estimation per question: learned {1e3 * e['learned']:.3f} ms, zero-shot {1e3 * e['zero_shot']:.1f} ms "
          f"({e['zero_shot_over_learned']:.0f}x)")
    print(f"Wrote {args.json}")


if __name__ == "__main__":
    main()
