"""The ``tale eval`` and ``tale report`` subcommands (`add_eval_parsers` plugs them into ``tale``).

``tale eval --dataset gsm8k-zero --methods vanilla,tale-ep,fixed:50 --model PATH --limit 100 --out RUN``
runs the methods on a local model (batched) or an API model (``--model openai:NAME`` or
``--base-url URL``, concurrent), streaming results to RUN/results/ so a killed run resumes where it
stopped, then writes and prints the report. ``tale report RUN`` rebuilds the report of a run folder.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .._argtypes import add_wait_argument
from .._argtypes import positive_int as _positive_int
from .._argtypes import temperature as _temperature
from .._cli_models import add_model_arguments, make_generator
from ..core.datasets import DATA_DIR_HELP, known_names

__all__ = ["add_eval_parsers", "make_generator"]

_DATASETS_HELP = (
    f"comma-separated: {known_names()} (read from --data-dir), "
    "a JSONL path, or hub:OWNER/NAME[:CONFIG]:SPLIT (needs the 'datasets' package and a connection)"
)
_METHODS_HELP = (
    "comma-separated: direct, vanilla, tale-ep, fixed:B, tale-pt, oracle (needs --search-file), be-concise, "
    "ccot:N, cod; for thinking models: think (unlimited thinking), think:B (a thinking budget of B tokens), "
    "think-tale (the TALE-estimated thinking budget), each through the model's thinking knob, or the prompt "
    "for a model without one (default: %(default)s)"
)
_COUNTERS = ("usage", "cl100k_base", "o200k_base")


def _report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prices", metavar="FILE",
                        help='JSON price table, USD per 1M tokens: {"MODEL": {"input": 0.15, "output": 0.6}} '
                             "(adds to / overrides the defaults)")
    parser.add_argument("--search-file", metavar="FILE",
                        help="a budget-search file (JSONL from the search): oracle budgets and the elasticity plot")
    parser.add_argument("--counter", choices=_COUNTERS, default="usage",
                        help="token counter for the report: 'usage' (the backend's recorded counts, default) or a "
                             "tiktoken encoding recounting the answer texts (cl100k_base = the paper's numbers)")


def add_eval_parsers(subparsers: Any) -> None:
    """Add the ``eval`` and ``report`` subcommands to the ``tale`` command's subparsers."""
    ev = subparsers.add_parser(
        "eval", help="evaluate methods (TALE-EP, vanilla CoT, baselines...) on math datasets",
        description="Run methods over datasets with a local or API model; results stream to RUN_DIR/results/ "
        "(rerun the same command to resume a killed run), then the report is written and printed.",
    )
    ev.add_argument("--dataset", required=True, help=_DATASETS_HELP)
    ev.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
    ev.add_argument("--fields", metavar="MAP",
                    help="field mapping for a JSONL path or hub dataset: question=Q,answer=A,options=O,"
                         "format=numeric|gsm8k|choice")
    ev.add_argument("--methods", default="direct,vanilla,tale-ep", help=_METHODS_HELP)
    add_model_arguments(ev)
    ev.add_argument("--estimator-model", metavar="MODEL", help="tale-ep: estimate budgets with this model instead "
                    "of the answering model (same forms as --model)")
    ev.add_argument("--estimator", metavar="NAME", help="tale-ep: 'learned' (the shipped learned estimator, no model "
                    "call), 'learned:PATH' (one fitted with `tale train estimator`) or 'zero-shot' (the paper's, "
                    "the default); a method can also name its own: tale-ep:learned")
    ev.add_argument("--limit", type=_positive_int, metavar="N", help="the first N valid questions of each dataset")
    ev.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (created; reused to resume)")
    ev.add_argument("--batch-size", type=_positive_int, default=16, metavar="N",
                    help="local models: questions per batched call (default %(default)s)")
    ev.add_argument("--concurrency", type=_positive_int, default=8, metavar="N",
                    help="API models: requests in flight (default %(default)s)")
    ev.add_argument("--paper", action="store_true",
                    help="reproduce the reference scripts exactly: their prompts and system message on every call, "
                         "the estimator reading the question as they quote it, MathBench arithmetic as cloze, no "
                         "budget floor and strict [[N]] parsing (BudgetPolicy.paper), local models prompted with "
                         "their raw 'User: ... Assistant:' text, and the paper's sampling (temperature 0.1, seed "
                         "1024, 1024 tokens) unless given; written into each results file and the report")
    ev.add_argument("--max-tokens", type=_positive_int, default=None, metavar="N",
                    help="cap on answer tokens (default 512; with --paper 1024, the paper's)")
    ev.add_argument("--temperature", type=_temperature, default=None,
                    help="sampling temperature (default: the backend's; local models decode greedily; with --paper "
                         "0.1, the paper's)")
    ev.add_argument("--seed", type=int, metavar="N", help="sampling seed (API models that support it, and sampled "
                    "local decoding; with --paper 1024, the paper's)")
    ev.add_argument("--thinking", default="auto", choices=["auto", "off", "openai", "vllm", "sglang", "llamacpp"],
                    help="API models: the thinking knob of the think methods: auto (OpenAI's reasoning models, by "
                         "name), off (the prompt carries the budget), openai, or the server at --base-url (vllm, "
                         "sglang, llamacpp: a thinking model served there; see docs/thinking_models.md). Their "
                         "output cap is the thinking allowance plus --max-tokens (default %(default)s)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_wait_argument(ev, "results file")
    ev.add_argument("--no-report", action="store_true", help="do not write and print the report at the end")
    _report_options(ev)
    ev.set_defaults(handler=_eval)

    rp = subparsers.add_parser(
        "report", help="write the report (Markdown table, JSON summary, plots) of an evaluation run",
        description="Read RUN_DIR/results/ and write report.md, summary.json, accuracy_tokens.png and, with a "
        "search file, elasticity.png into RUN_DIR; print the Markdown.",
    )
    rp.add_argument("run_dir", metavar="RUN_DIR")
    rp.add_argument("--no-plots", action="store_true", help="tables only")
    _report_options(rp)
    rp.set_defaults(handler=_report)


def _report_settings(args: argparse.Namespace) -> dict[str, Any]:
    from ..core.tokens import TiktokenCounter
    from .prices import PriceTable

    prices = PriceTable.load(args.prices) if args.prices else PriceTable()
    counter = None if args.counter == "usage" else TiktokenCounter(args.counter)
    return {"prices": prices, "counter": counter, "search_file": args.search_file}


def _print_report(report: Any) -> None:
    from .report import render_markdown

    print(render_markdown(report))
    for note in report.notes:
        if note.startswith("no price for model"):
            print(f"note: {note}", file=sys.stderr)
    written = ", ".join(os.path.basename(p) for p in report.files.values())
    print(f"Wrote {written} to {report.run_dir}", file=sys.stderr)


def _eval(args: argparse.Namespace) -> int:
    import asyncio

    from ..core.estimators import ZeroShotEstimator, get_estimator
    from .datasets import load_dataset
    from .harness import aevaluate, evaluate
    from .methods import OracleBudgets, parse_methods
    from .report import write_report

    methods = parse_methods(args.methods)
    settings = _report_settings(args)  # check --prices early, before any model call
    paper = args.paper
    if args.max_tokens is None:
        args.max_tokens = 1024 if paper else 512
    if paper and args.temperature is None:
        args.temperature = 0.1
    if paper and args.seed is None:
        args.seed = 1024
    datasets = [load_dataset(spec, fields=args.fields, limit=args.limit, root=args.data_dir)
                for spec in (s.strip() for s in args.dataset.split(",")) if spec]
    if not datasets:
        raise ValueError("--dataset names no dataset")
    oracle = OracleBudgets.from_file(args.search_file) if args.search_file else None
    generator, is_api = make_generator(args.model, base_url=args.base_url, api_key=args.api_key,
                                       api_key_env=args.api_key_env,
                                       device=args.device, batch_size=args.batch_size, seed=args.seed,
                                       temperature=args.temperature, paper=paper, purpose="evaluating a local model")
    if is_api and args.thinking != "auto":
        generator.thinking = {"off": False, "openai": True}.get(args.thinking, args.thinking)
    elif not is_api and args.thinking != "auto":
        raise ValueError(f"--thinking {args.thinking} is for API models; a local model's thinking knob is its chat "
                         "template's thinking block, found by itself")
    estimator = None
    if args.estimator and args.estimator_model:
        raise ValueError("pass --estimator or --estimator-model, not both (--estimator-model is the zero-shot "
                         "estimator on another model)")
    if args.estimator:
        estimator = get_estimator(args.estimator, generator, lenient=not paper)
    if args.estimator_model:
        local = args.estimator_model == "embedded" or os.path.isdir(args.estimator_model)
        estimator_generator, _ = make_generator(args.estimator_model, base_url=None if local else args.base_url,
                                                api_key=args.api_key, api_key_env=args.api_key_env, device=args.device,
                                                batch_size=args.batch_size, seed=args.seed,
                                                temperature=args.temperature, paper=paper)
        estimator = ZeroShotEstimator(estimator_generator, lenient=not paper)
    common: dict[str, Any] = {"max_tokens": args.max_tokens, "temperature": args.temperature, "estimator": estimator,
                              "oracle": oracle, "progress": "none" if args.no_progress else "auto",
                              "style": "paper" if paper else "default", "wait": args.wait}
    try:
        if is_api:
            results = asyncio.run(aevaluate(generator, datasets, methods, args.out, concurrency=args.concurrency,
                                            **common))
        else:
            results = evaluate(generator, datasets, methods, args.out, batch_size=args.batch_size, **common)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished questions are saved in {args.out}; rerun the same command to resume",
              file=sys.stderr)
        return 130
    for r in results:
        resumed = f" ({r.resumed} resumed)" if r.resumed else ""
        print(f"{r.dataset} {r.method}: {r.total} questions{resumed} -> {r.path}", file=sys.stderr)
    if not args.no_report:
        _print_report(write_report(args.out, **settings))
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    _print_report(write_report(args.run_dir, plots=not args.no_plots, **_report_settings(args)))
    return 0
