"""The ``tale search`` and ``tale train {sft,dpo}`` commands (TALE-PT).

``tale search`` runs the optimal-budget search over a data set and streams the records to a
resumable JSONL file; ``tale train sft`` / ``tale train dpo`` train a LoRA adapter on them. Nothing
here imports torch until a command runs. `add_training_parsers` is wired into ``tale`` by
`tale_integrations.cli`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._argtypes import add_wait_argument
from .._argtypes import non_negative_int as _non_negative_int
from .._argtypes import positive_int as _positive_int
from .._cli_models import add_model_arguments, make_generator
from ..core.datasets import DATA_DIR_HELP
from .data import training_names

__all__ = ["add_training_parsers"]

_NAMED = f"a named data set ({training_names()})"


def _number(low: float, high: float | None = None, *, strict: bool = False):  # noqa: ANN202
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if (value <= low if strict else value < low) or (high is not None and value > high):
            bound = f"> {low}" if strict else f">= {low}"
            raise argparse.ArgumentTypeError(f"expected a number {bound}" + (f" and <= {high}" if high else "")
                                             + f", got {value}")
        return value

    return parse


def add_training_parsers(subparsers: Any) -> None:
    """Add ``search`` and ``train`` (with ``sft`` and ``dpo``) to the ``tale`` command's subparsers."""
    search = subparsers.add_parser(
        "search", help="search each question's optimal token budget (TALE-PT training data)",
        description="Answer each question with vanilla chain-of-thought, then halve the budget while the answer "
        "stays correct and gets shorter (the paper's greedy search). Records stream to a JSONL file; rerunning "
        "the same command resumes a killed search.",
    )
    search.add_argument("--dataset", required=True, metavar="NAME|PATH",
                        help=f"{_NAMED} or a JSONL file of question/answer lines")
    search.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
    add_model_arguments(search, model_help="a local model folder (default: the embedded model), or the served "
                        "model name with --base-url")
    search.add_argument("--out", required=True, metavar="FILE.jsonl", help="the search file (resumed if it exists)")
    search.add_argument("--limit", type=_positive_int, metavar="N", help="search only the first N selected questions")
    search.add_argument("--split", choices=["all", "train", "held-out"], default="all",
                        help="which side of the seeded hash split to search (default all)")
    search.add_argument("--seed", type=int, default=0, help="seed of the hash split and of sampling (default 0)")
    search.add_argument("--held-out", type=_number(0, 1), default=0.2, metavar="F",
                        help="held-out share of the hash split (default 0.2)")
    search.add_argument("--mode", choices=["greedy", "elasticity"], default="greedy",
                        help="greedy: accept a halved budget iff correct and shorter (the paper); elasticity: "
                        "iff correct")
    search.add_argument("--counter", choices=["usage", "cl100k", "hf"], default="usage",
                        help="how answer tokens are counted: the backend's reported usage (default), tiktoken "
                        "cl100k_base (the paper's), or the local model's tokenizer")
    search.add_argument("--max-tokens", type=_positive_int, default=1024, metavar="N",
                        help="output cap of every answer (default 1024, the paper's)")
    search.add_argument("--temperature", type=_number(0, 2), metavar="T",
                        help="sampling temperature (default: the backend's; the local backend is greedy)")
    search.add_argument("--samples", type=_positive_int, default=1, metavar="K",
                        help="search each question K times (ids QID#k), for more training data; needs "
                        "--temperature > 0")
    search.add_argument("--batch-size", type=_positive_int, default=16, metavar="N",
                        help="local model: prompts per forward pass; server: requests in flight (default 16)")
    search.add_argument("--attempts", type=_positive_int, default=1, metavar="K",
                        help="answers sampled per halved budget; accept if any is acceptable, keep the shortest "
                        "(default 1, the paper; needs --temperature > 0)")
    search.add_argument("--wave", type=_positive_int, default=256, metavar="N",
                        help="questions searched together; a kill loses at most one wave's unfinished work "
                        "(default 256)")
    search.add_argument("--quiet", action="store_true", help="no per-step progress lines")
    add_wait_argument(search, "search file")
    search.set_defaults(handler=_search)

    train = subparsers.add_parser(
        "train", help="train a TALE-PT LoRA adapter (SFT or DPO) on search results, or a learned budget estimator",
        description="LoRA fine-tuning on the budget-free prompt: SFT on the optimal-budget answers, or DPO with "
        "the vanilla answers as the rejected side. Rerunning the same command resumes a killed run.",
    )
    methods = train.add_subparsers(dest="train_method", required=True, metavar="METHOD")
    sft = methods.add_parser("sft", help="supervised fine-tuning on the optimal-budget answers",
                             description="LoRA SFT (paper defaults: 3 epochs, lr 1e-4, batch 16, weight decay 0.01, "
                             "r=8, alpha=32 on q_proj/v_proj); loss on the answer tokens only.")
    _add_train_arguments(sft, "SFT.jsonl")
    sft.set_defaults(handler=_train_sft)
    dpo = methods.add_parser("dpo", help="DPO: optimal-budget answer (chosen) over vanilla answer (rejected)",
                             description="LoRA DPO (paper defaults: 2 epochs, lr 3e-5, batch 16, weight decay 0.001, "
                             "beta 0.5, max grad norm 5.0); the reference is the base with the adapter disabled.")
    _add_train_arguments(dpo, "DPO.jsonl")
    dpo.add_argument("--beta", type=_number(0, strict=True), help="DPO beta (default 0.5)")
    dpo.set_defaults(handler=_train_dpo)
    _add_estimator_parser(methods)


def _add_estimator_parser(methods: Any) -> None:
    est = methods.add_parser(
        "estimator", help="fit a learned budget estimator (no model call at estimation time)",
        description="Fit a learned estimator (TF-IDF n-grams and question shape, ridge regression on log tokens, "
        "calibrated to a quantile by cross-validation) on (question, needed tokens) pairs: a data set's reference "
        "solutions, a search file's optimal budgets, or the correct answers of a vanilla evaluation. Prints its "
        "held-out quality beside a constant median. The shipped default is refitted byte for byte by "
        "`tale train estimator --dataset gsm8k-train --target reference --out DIR`.",
    )
    source = est.add_mutually_exclusive_group(required=True)
    source.add_argument("--search-file", metavar="S.jsonl", help="a search file: fit on each found optimal budget")
    source.add_argument("--dataset", metavar="NAME|PATH",
                        help=f"{_NAMED} or a JSONL file; see --target")
    source.add_argument("--results", metavar="R.jsonl",
                        help="the results file of a vanilla method written by `tale eval`: fit on its correct answers")
    est.add_argument("--target", choices=["reference", "vanilla-correct"], default="reference",
                     help="with --dataset: the reference solutions' token counts (default), or the correct answers "
                     "of a vanilla chain-of-thought run of --model on it (run, resumable, under OUT/vanilla)")
    est.add_argument("--data-dir", metavar="DIR", help=DATA_DIR_HELP)
    est.add_argument("--counter", metavar="ENCODING",
                     help="count targets with this tiktoken encoding (default cl100k_base for reference solutions, "
                     "the recorded counts for answers)")
    est.add_argument("--out", required=True, metavar="DIR", help="output folder: DIR/learned_estimator.json")
    est.add_argument("--quantile", type=_number(0.01, 0.99), metavar="Q",
                     help="the quantile of the needed tokens to predict (default 0.5)")
    est.add_argument("--ngram", type=_positive_int, metavar="N", help="longest word n-gram (default 2)")
    est.add_argument("--min-df", type=_positive_int, metavar="N", help="n-grams held by fewer questions are "
                     "dropped (default 3)")
    est.add_argument("--max-features", type=_positive_int, metavar="N", help="vocabulary cap (default 5000)")
    est.add_argument("--ridge", type=_number(0, strict=True), metavar="L", help="ridge penalty (default 3.0)")
    est.add_argument("--folds", type=_positive_int, metavar="K", help="cross-validation folds (default 5)")
    est.add_argument("--seed", type=int, help="seed of the fold assignment (default 0)")
    est.add_argument("--model", metavar="PATH", help="--target vanilla-correct: the model to run (default: the "
                     "embedded model)")
    est.add_argument("--limit", type=_positive_int, metavar="N", help="--target vanilla-correct: the first N questions")
    est.add_argument("--max-tokens", type=_positive_int, default=512, metavar="N",
                     help="--target vanilla-correct: the answers' output cap (default 512)")
    est.add_argument("--batch-size", type=_positive_int, default=16, metavar="N",
                     help="--target vanilla-correct: questions per batched call (default 16)")
    est.add_argument("--device", help="--target vanilla-correct: cpu, cuda, cuda:N")
    est.set_defaults(handler=_train_estimator)


def _add_train_arguments(parser: argparse.ArgumentParser, data_name: str) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar=data_name, help="a training file (JSONL records)")
    source.add_argument("--search-file", metavar="S.jsonl", help="a search file written by `tale search`")
    parser.add_argument("--model", metavar="PATH", help="the base model folder, the one searched with (default: the "
                        "embedded model)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: adapter, tale_pt.json, checkpoints (resumed if it holds this run)")
    parser.add_argument("--epochs", type=_positive_int, metavar="N")
    parser.add_argument("--lr", type=_number(0, strict=True), metavar="LR", help="peak learning rate")
    parser.add_argument("--batch-size", type=_positive_int, metavar="N", help="effective batch (default 16)")
    parser.add_argument("--micro-batch-size", type=_positive_int, metavar="N",
                        help="examples per forward pass per process (default 4); the rest is gradient accumulation")
    parser.add_argument("--weight-decay", type=_number(0), metavar="W")
    parser.add_argument("--max-grad-norm", type=_number(0, strict=True), metavar="N")
    parser.add_argument("--lr-scheduler", choices=["linear", "cosine", "constant"])
    parser.add_argument("--warmup-ratio", type=_number(0, 1), metavar="F")
    parser.add_argument("--lora-r", type=_positive_int, metavar="R")
    parser.add_argument("--lora-alpha", type=_positive_int, metavar="A")
    parser.add_argument("--lora-dropout", type=_number(0, 1), metavar="P")
    parser.add_argument("--target-modules", metavar="A,B", help="comma-separated module names (default q_proj,v_proj)")
    parser.add_argument("--max-length", type=_positive_int, metavar="N",
                        help="longest prompt + answer in tokens; longer examples are left out (default 1024)")
    parser.add_argument("--save-every", type=_non_negative_int, metavar="STEPS",
                        help="optimizer steps between checkpoints (default 50; 0 = none)")
    parser.add_argument("--keep-checkpoints", type=_non_negative_int, metavar="N")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--mixed-precision", choices=["auto", "no", "bf16", "fp16"],
                        help="default auto: bf16 on a CUDA GPU that supports it, else full precision")
    parser.add_argument("--gradient-checkpointing", action="store_true", default=None)
    parser.add_argument("--merge", action="store_true", help="also write merged weights to OUT/merged")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_wait_argument(parser, "output folder (--out)")


# -- search ----------------------------------------------------------------------------------------


class _StepReporter:
    """Wraps a generator to print one line per batched search step."""

    def __init__(self, generator: Any) -> None:
        self._generator, self._step = generator, 0
        self.model_name = getattr(generator, "model_name", type(generator).__name__)

    def generate(self, prompts: Sequence[Any], **kwargs: Any) -> Any:
        self._step += 1
        started = time.perf_counter()
        out = self._generator.generate(prompts, **kwargs)
        print(f"search step {self._step}: {len(prompts)} answers in {time.perf_counter() - started:.1f}s",
              file=sys.stderr, flush=True)
        return out

    async def agenerate(self, prompts: Sequence[Any], **kwargs: Any) -> Any:
        return await self._generator.agenerate(prompts, **kwargs)


def _generator(args: argparse.Namespace) -> Any:
    if args.base_url and not args.model:
        raise ValueError("--base-url needs --model NAME (the served model's name)")
    # one seed for every request would make the --samples copies (and --attempts answers) identical
    seed = args.seed if not args.base_url or (args.samples == 1 and args.attempts == 1) else None
    generator, _ = make_generator(args.model, base_url=args.base_url, api_key=args.api_key,
                                  api_key_env=args.api_key_env, device=args.device, batch_size=args.batch_size,
                                  seed=seed, max_concurrency=args.batch_size if args.base_url else None,
                                  purpose="`tale search` with a local model")
    return generator


def _counter(args: argparse.Namespace, generator: Any) -> Any:
    if args.counter == "usage":
        return None
    if args.counter == "cl100k":
        from ..core.tokens import TiktokenCounter

        return TiktokenCounter()
    if args.base_url:
        raise ValueError("--counter hf needs a local --model (with --base-url use 'usage' or 'cl100k')")
    return generator.token_counter()


def _search(args: argparse.Namespace) -> int:
    from ..core.search import SearchStatus, search_to_file
    from .data import budget_stats, load_questions, sample_items, select_split

    if args.samples > 1 and not args.temperature:
        raise ValueError(f"--samples {args.samples} needs --temperature > 0 (greedy answers would all be equal)")
    if args.attempts > 1 and not args.temperature:
        raise ValueError(f"--attempts {args.attempts} needs --temperature > 0 (greedy answers would all be equal)")
    questions = load_questions(args.dataset, data_dir=args.data_dir)
    selected = select_split(questions, args.split, seed=args.seed, held_out=args.held_out)
    if args.limit:
        selected = selected[: args.limit]
    if not selected:
        raise ValueError(f"--split {args.split} of {args.dataset} (seed {args.seed}, held-out {args.held_out}) selects "
                         "no question")
    if args.dataset == "gsm8k-zero" and args.split == "all":
        print("note: gsm8k-zero has no train split; pass --split train to keep a held-out part for evaluation",
              file=sys.stderr)
    generator = _generator(args)
    counter = _counter(args, generator)
    items = sample_items(selected, args.samples)
    print(f"searching {len(items)} questions ({args.split} split of {args.dataset}) with {generator.model_name} "
          f"into {args.out}", file=sys.stderr, flush=True)
    records = search_to_file(generator if args.quiet else _StepReporter(generator), items, args.out,
                             mode=args.mode, counter=counter, max_tokens=args.max_tokens, temperature=args.temperature,
                             wave=args.wave, attempts=args.attempts, wait=args.wait)
    counts = {str(s): sum(r.status is s for r in records) for s in SearchStatus}
    found = [r for r in records if r.status is SearchStatus.FOUND]
    line = f"{len(records)} searched: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    if found:
        b = budget_stats(r.optimal_budget for r in found)
        mean_vanilla = sum(r.vanilla_tokens for r in found) / len(found)
        mean_optimal = sum(r.optimal_tokens or 0 for r in found) / len(found)
        line += (f"; optimal budget median {b['median']} (min {b['min']}, max {b['max']}); answer tokens "
                 f"{mean_vanilla:.1f} -> {mean_optimal:.1f} on found")
    print(f"{line}; records in {args.out} [{records[0].counter if records else 'usage'} counts]")
    return 0


# -- train -----------------------------------------------------------------------------------------

_OVERRIDES = {
    "epochs": "epochs", "lr": "learning_rate", "batch_size": "batch_size", "micro_batch_size": "micro_batch_size",
    "weight_decay": "weight_decay", "max_grad_norm": "max_grad_norm", "lr_scheduler": "lr_scheduler",
    "warmup_ratio": "warmup_ratio", "lora_r": "lora_r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
    "max_length": "max_length", "save_every": "save_every", "keep_checkpoints": "keep_checkpoints", "seed": "seed",
    "mixed_precision": "mixed_precision", "gradient_checkpointing": "gradient_checkpointing", "beta": "beta",
}


def _data_path(args: argparse.Namespace) -> str:
    from .data import is_search_file

    flag, path = ("--search-file", args.search_file) if args.search_file else ("--data", args.data)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{flag} {path} does not exist")
    searched = is_search_file(path)
    if flag == "--search-file" and not searched:
        raise ValueError(f"--search-file {path} is not a search file (no tale-search header); pass a training file "
                         "with --data")
    if flag == "--data" and searched:
        raise ValueError(f"--data {path} is a search file; pass it with --search-file")
    return path


def _check_searched_model(path: str, model: str | None) -> None:
    """A note when the search file names another model than the one trained (TALE-PT trains the
    model whose own answers were searched); names can legitimately differ, so it is not an error."""
    from ..core.records import read_header

    header = read_header(path)
    if header is None or header.get("kind") != "tale-search":
        return
    searched = header.get("model")
    trained = Path(model).name if model else "SmolLM2-135M-Instruct"
    if searched and searched != trained:
        print(f"note: {path} was searched with {searched!r}, but --model is {trained!r}; TALE-PT trains the model "
              "whose answers were searched", file=sys.stderr)


def _config(cls: type, args: argparse.Namespace) -> Any:
    fields = {f for f in cls.__dataclass_fields__}
    values = {field: getattr(args, arg) for arg, field in _OVERRIDES.items()
              if field in fields and getattr(args, arg, None) is not None}
    if args.target_modules:
        values["target_modules"] = tuple(m.strip() for m in args.target_modules.split(",") if m.strip())
    return cls(**values)


def _train(args: argparse.Namespace, method: str) -> int:
    from .._optional import require

    require("peft", extra="train", purpose="`tale train`")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if method == "sft":
        from .data import load_sft_data as load
        from .sft import SFTConfig as Config
        from .sft import train_sft as train
    else:
        from .data import load_dpo_data as load
        from .dpo import DPOConfig as Config
        from .dpo import train_dpo as train
    path = _data_path(args)
    config = _config(Config, args)
    _check_searched_model(path, args.model)
    _, stats = load(path)
    print(f"{method} data from {path}: {stats.summary()}", file=sys.stderr, flush=True)
    result = train(args.model, path, args.out, config, merge=args.merge, progress=not args.quiet, wait=args.wait)
    if result.resumed_from == result.steps:
        state = "already complete"
    elif result.resumed_from:
        state = f"resumed at step {result.resumed_from}"
    else:
        state = "trained"
    loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
    print(f"TALE-PT {method} {state}: {result.steps} steps on {result.metadata['num_examples']} examples, final loss "
          f"{loss}; adapter in {result.out_dir} (load with HFGenerator({str(result.out_dir)!r}))"
          + (f"; merged weights in {result.out_dir / 'merged'}" if args.merge else ""))
    return 0


def _vanilla_results(args: argparse.Namespace) -> Path:
    """Run (or resume) vanilla chain-of-thought on the data set; returns the results file."""
    from ..eval.datasets import load_dataset
    from ..eval.harness import evaluate
    from .estimator import dataset_path

    path, name = dataset_path(args.dataset, args.data_dir)
    dataset = load_dataset(str(path), name=Path(name).with_suffix("").as_posix().replace("/", "-"), limit=args.limit)
    generator, _ = make_generator(args.model, device=args.device, batch_size=args.batch_size,
                                  purpose="`tale train estimator --target vanilla-correct`")
    [result] = evaluate(generator, dataset, ["vanilla"], Path(args.out) / "vanilla", batch_size=args.batch_size,
                        max_tokens=args.max_tokens)
    return result.path


def _train_estimator(args: argparse.Namespace) -> int:
    from ..core.learned import DEFAULT_ESTIMATOR_FILE, FitSettings
    from .estimator import fit_estimator, reference_pairs, search_pairs, vanilla_correct_pairs

    if args.dataset is None and args.target != "reference":
        raise ValueError("--target applies to --dataset only")
    if args.dataset is None and (args.model or args.limit):
        raise ValueError("--model and --limit apply to --dataset NAME --target vanilla-correct only")
    overrides = {"quantile": args.quantile, "ngram": args.ngram, "min_df": args.min_df,
                 "max_features": args.max_features, "ridge": args.ridge, "folds": args.folds, "seed": args.seed}
    settings = FitSettings(**{k: v for k, v in overrides.items() if v is not None})
    if args.search_file:
        pairs = search_pairs(args.search_file)
    elif args.results:
        pairs = vanilla_correct_pairs(args.results, counter=args.counter)
    elif args.target == "reference":
        pairs = reference_pairs(args.dataset, data_dir=args.data_dir, counter=args.counter or "cl100k_base")
    else:
        pairs = vanilla_correct_pairs(_vanilla_results(args), counter=args.counter)
    print(f"Fitting on {len(pairs.questions)} pairs: {pairs.kind} targets from {pairs.source} ({pairs.counter})",
          file=sys.stderr, flush=True)
    estimator = fit_estimator(pairs, settings=settings)
    path = estimator.save(Path(args.out) / DEFAULT_ESTIMATOR_FILE)
    quality = estimator.provenance["quality"]
    mine, const = quality["estimator"], quality["constant_median"]
    print(f"Held-out quality ({quality['method']}, quantile {quality['quantile']}):")
    print(f"  learned estimator:  Spearman {mine['spearman']}, within ±50% {100 * mine['within_50']:.1f}%, "
          f"median predicted/actual {mine['median_ratio']}")
    print(f"  constant median:    within ±50% {100 * const['within_50']:.1f}% (always {const['value']:g} tokens)")
    print(f"Wrote {path}; use it with estimator='learned:{path}' (or --estimator learned:{path})")
    return 0


def _train_sft(args: argparse.Namespace) -> int:
    return _train(args, "sft")


def _train_dpo(args: argparse.Namespace) -> int:
    return _train(args, "dpo")
