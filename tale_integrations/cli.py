"""The ``tale`` command.

``tale ask "QUESTION"`` answers with TALE-EP on the embedded SmolLM2-135M-Instruct model (or any
local model folder given with ``--model``) and prints the answer, the budget and the tokens used. The
budget comes from the learned estimator shipped in the package (no model call) unless
``--estimator zero-shot`` asks the model itself, as the paper does. ``--compare`` also answers with
vanilla chain-of-thought and with the other estimator, and prints every method's tokens, the
estimator's included.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from . import __version__
from ._argtypes import positive_int as _positive_int
from ._argtypes import temperature as _temperature
from ._cli_models import local_generator
from .core.budget import BudgetPolicy
from .core.errors import TaleError
from .core.estimators import get_estimator
from .core.learned import LearnedEstimator
from .core.pipeline import Mode, TalePipeline, TaleResult
from .core.prompts import QuestionFormat
from .eval.cli import add_eval_parsers
from .serve.cli import add_serve_parser
from .training.cli import add_training_parsers

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tale`` command."""
    parser = argparse.ArgumentParser(prog="tale", description="Token-budget-aware reasoning (TALE).")
    parser.add_argument("--version", action="version", version=f"tale-integrations {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ask = sub.add_parser(
        "ask",
        help="answer a question with TALE-EP on a local model",
        description="Estimate a token budget for the question, then answer within it (TALE-EP). "
        "Uses the embedded SmolLM2-135M-Instruct model unless --model is given.",
    )
    ask.add_argument("question", help="the question to answer")
    ask.add_argument("--model", metavar="PATH", help="a local Hugging Face model folder (default: the embedded model)")
    ask.add_argument("--adapter", metavar="PATH", help="a LoRA adapter folder (TALE-PT) to apply on top of the model")
    ask.add_argument("--enforce", action="store_true",
                     help="hold the answer to its budget while decoding (wrap up, answer, stop) instead of only asking")
    ask.add_argument("--budget", type=_positive_int, metavar="N", help="use this budget instead of estimating one")
    ask.add_argument("--estimator", default="learned", metavar="NAME",
                     help="where the budget comes from: 'learned' (default: the learned estimator shipped in the "
                     "package, no model call), 'zero-shot' (the paper's: ask the model itself) or 'learned:PATH' "
                     "(one fitted with `tale train estimator`)")
    ask.add_argument("--compare", action="store_true",
                     help="also answer with vanilla chain-of-thought and with the other estimator, and compare tokens")
    ask.add_argument(
        "--format", choices=[f.value for f in QuestionFormat if f is not QuestionFormat.MULTIPLE_CHOICE],
        default=QuestionFormat.CHAT.value,
        help="prompt format: 'chat' (free-form, default), 'gsm8k' (asks for a [[number]] answer) or 'cloze' "
             "(Q: ... then the trigger, the paper's MathBench arithmetic prompt)",
    )
    ask.add_argument("--max-tokens", type=_positive_int, default=512, metavar="N", help="hard cap on answer tokens (default 512)")
    ask.add_argument("--min-budget", type=_positive_int, default=BudgetPolicy().min_budget, metavar="N",
                     help="floor for estimated budgets (default %(default)s)")
    ask.add_argument("--temperature", type=_temperature, default=0.0, help="0 = greedy (default)")
    ask.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    ask.add_argument("--json", action="store_true", help="print the full results as JSON")
    ask.set_defaults(handler=_ask)
    add_serve_parser(sub)
    add_eval_parsers(sub)
    add_training_parsers(sub)
    return parser


def _usage_line(result: TaleResult) -> str:
    u = result.usage
    line = f"answer call {u.input_tokens} in / {u.output_tokens} out"
    if result.estimator_usage is not None:
        e = result.estimator_usage
        if e.total_tokens == 0:
            line = f"estimator {result.estimator}: no model call; " + line
        else:
            line = f"estimator call {e.input_tokens} in / {e.output_tokens} out; " + line
    return line


def _describe(title: str, result: TaleResult) -> list[str]:
    lines = [f"== {title} ==", result.text.strip() or "(empty answer)", ""]
    if result.answer is not None:
        lines.append(f"Extracted answer: {result.answer}")
    if result.budget is not None and result.budget.tokens is not None:
        b = result.budget
        if b.source == "fallback":
            origin = f"fallback: the estimator gave no usable number ({b.adjusted})"
        elif result.estimator:
            origin = f"estimated by {result.estimator}"
        else:
            origin = f"given ({b.source})"
        raw = f", raw estimate {b.raw}" if b.raw is not None and b.raw != b.tokens else ""
        adjusted = f", {b.adjusted}" if b.adjusted and b.source != "fallback" else ""
        lines.append(f"Budget: {b.tokens} tokens ({origin}{raw}{adjusted})")
    elif result.mode is Mode.TALE_EP and result.budget is not None:
        lines.append(f"Budget: none ({result.budget.adjusted}; answered with plain chain-of-thought)")
    truncated = " (hit the token cap)" if result.finish_reason == "length" else ""
    lines.append(f"Output tokens: {result.usage.output_tokens}{truncated}")
    lines.append(f"Tokens: {_usage_line(result)}; total {result.total_usage.total_tokens} [{result.usage.counter}]")
    return lines


def _ask(args: argparse.Namespace) -> int:
    generator = local_generator(args.model, purpose="`tale ask`", adapter=args.adapter, device=args.device,
                                temperature=args.temperature, enforce_budget=args.enforce)
    common: dict[str, Any] = {"format": args.format, "max_tokens": args.max_tokens}
    policy = BudgetPolicy(min_budget=args.min_budget, max_budget=max(args.min_budget, args.max_tokens),
                          fallback_budget=max(args.min_budget, min(128, args.max_tokens)))
    estimator = get_estimator(args.estimator, generator)  # a bad name fails before any model call
    runs: dict[str, tuple[str, TalePipeline]] = {}
    if args.budget is not None:
        runs["tale"] = (f"fixed budget {args.budget}", TalePipeline(generator, budget=args.budget, policy=policy,
                                                                     **common))
    else:
        runs["tale"] = (f"TALE-EP ({estimator.name})", TalePipeline(generator, mode=Mode.TALE_EP, estimator=estimator,
                                                                   policy=policy, **common))
    if args.compare:
        runs["vanilla"] = ("vanilla chain-of-thought", TalePipeline(generator, mode=Mode.VANILLA, **common))
        if args.budget is None:
            other = "zero-shot" if isinstance(estimator, LearnedEstimator) else "learned"
            other_estimator = get_estimator(other, generator)
            runs[f"tale_{other.replace('-', '_')}"] = (
                f"TALE-EP ({other_estimator.name})",
                TalePipeline(generator, mode=Mode.TALE_EP, estimator=other_estimator, policy=policy, **common))
    results = {key: pipeline.invoke(args.question) for key, (_, pipeline) in runs.items()}

    if args.json:
        print(json.dumps({k: v.to_dict() for k, v in results.items()}, indent=2))
        return 0
    lines = [f"Model: {results['tale'].model}"]
    for key, result in results.items():
        lines += [""] + _describe(runs[key][0], result)
    if args.compare:
        lines += ["", "== Tokens per method ==", "method | answer tokens | all tokens (estimator included)"]
        base = results["vanilla"].total_usage.total_tokens
        for key in ("vanilla", *(k for k in results if k != "vanilla")):
            r = results[key]
            total = r.total_usage.total_tokens
            ratio = f" ({total / base:.2f}x vanilla)" if base and key != "vanilla" else ""
            lines.append(f"{runs[key][0]} | {r.usage.output_tokens} | {total}{ratio}")
    print("\n".join(lines))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tale`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # warnings meant for the user (a record file read with lines left out) print as one plain line
    saved, warnings.formatwarning = warnings.formatwarning, lambda message, *_, **__: (
        f"tale {args.command}: warning: {message}\n")
    try:
        return args.handler(args)
    except (TaleError, ValueError, TypeError, OSError, ImportError) as exc:
        print(f"tale {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = saved


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
