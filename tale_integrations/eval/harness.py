"""The evaluation harness: run methods over datasets, stream results to resumable JSONL files.

Results go to ``RUN_DIR/results/<dataset>__<method>__<model>.jsonl``, one file per (dataset,
method, model), each a `core.records.RecordFile`: a header line naming the run's settings, then one
line per finished question, written and flushed as soon as its chunk returns. A killed run resumes
with nothing lost or repeated: the ids already in the file are not asked again. ``RUN_DIR/run.json``
records the datasets (with their malformed lines) and the files of the run.

Local models run batched (`evaluate`: one ``generate`` call per chunk of ``batch_size`` questions);
API models run concurrently (`aevaluate`: chunks in flight bounded by ``concurrency``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..core.answers import AnswerKind, answers_match, choices_match
from ..core.budget import BudgetPolicy
from ..core.checks import check_positive_int
from ..core.datasets import slug as _slug
from ..core.decision import RECORD_KEYS
from ..core.estimators import BudgetEstimator
from ..core.files import FileLock, atomic_write_json
from ..core.generation import Generator
from ..core.prompts import PROMPT_VERSION, PromptStyle
from ..core.records import RecordFile
from .datasets import Dataset, Example
from .methods import Method, MethodKind, MethodRunner, OracleBudgets, Outcome

__all__ = ["Progress", "RunResult", "aevaluate", "evaluate", "make_record", "result_path", "run_header"]

RESULTS_DIR = "results"
MANIFEST = "run.json"


def result_path(run_dir: str | Path, dataset: str, method: Method | str, model: str) -> Path:
    """Where the results of one (dataset, method, model) go."""
    name = method.name if isinstance(method, Method) else str(method)
    return Path(run_dir) / RESULTS_DIR / f"{_slug(dataset)}__{_slug(name)}__{_slug(model)}.jsonl"


def run_header(
    dataset: Dataset, method: Method, generator: Generator, *, max_tokens: int | None, temperature: float | None,
    runner: MethodRunner,
) -> dict[str, Any]:
    """What identifies one results file; resuming with different settings is refused."""
    header: dict[str, Any] = {
        "kind": "tale-eval",
        "dataset": dataset.name,
        "method": method.name,
        "label": method.label,
        "model": getattr(generator, "model_name", type(generator).__name__),
        "format": str(runner.format),
        "style": str(runner.style),
        "max_tokens": max_tokens,
        "temperature": temperature,
        "prompt_version": PROMPT_VERSION,
    }
    pipeline = runner.pipeline
    if method.kind is MethodKind.TALE_EP and pipeline is not None:
        header["estimator"] = pipeline.estimator.name
        header["estimator_model"] = runner.estimator_model
        header["policy"] = pipeline.policy.to_dict()
    if method.kind in (MethodKind.THINK, MethodKind.THINK_TALE):  # which knob, and the numbers behind it
        header["thinking"] = None if runner.thinking is None else runner.thinking.to_dict()
        header["thinking_policy"] = runner.thinking_policy.to_dict()  # set for these methods
        if method.kind is MethodKind.THINK_TALE:
            header["estimator"] = runner.estimator.name
            header["estimator_model"] = runner.estimator_model
            header["policy"] = runner.policy.to_dict()
    if method.kind is MethodKind.ORACLE and runner.oracle is not None:
        header["search_file"] = Path(runner.oracle.source).name
    return header


def is_answer_correct(example: Example, outcome: Outcome) -> bool:
    """Check an outcome against the gold (the paper's checking rules, `core.answers`): the numeric or the choice rule."""
    if example.kind is AnswerKind.CHOICE:
        return choices_match(outcome.answer, example.gold)
    return answers_match(outcome.answer, example.gold, text=outcome.text)


def make_record(example: Example, outcome: Outcome) -> dict[str, Any]:
    """One results line: the question, gold, answer, correctness, usage of every call, budget."""
    return {
        "id": example.id,
        "line": example.line,
        "question": example.question,
        "options": list(example.options) if example.options else None,
        "gold": example.gold,
        "kind": str(example.kind),
        "answer": outcome.answer,
        "correct": is_answer_correct(example, outcome),
        "text": outcome.text,
        "finish_reason": outcome.finish_reason,
        "model": outcome.model,
        "output_tokens": outcome.usage.output_tokens,
        # a thinking model's output apart: thinking, then the answer (output_tokens = the two together)
        "reasoning_tokens": outcome.usage.reasoning_tokens,
        "answer_tokens": outcome.usage.output_tokens - outcome.usage.reasoning_tokens,
        "input_tokens": outcome.usage.input_tokens,
        "counter": outcome.usage.counter,
        "usage": outcome.usage.to_dict(),
        # the budget record (core.decision.RECORD_KEYS), then which model estimated
        **{key: getattr(outcome, key) for key in RECORD_KEYS if key != "estimator_usage"},
        "estimator_usage": None if outcome.estimator_usage is None else outcome.estimator_usage.to_dict(),
        "estimator_model": outcome.estimator_model,
        "oracle_status": outcome.oracle_status,
        "messages": [dict(m) for m in outcome.messages],
        "reasoning": outcome.reasoning,
    }


class Progress:
    """A progress line: done/total, ETA, running accuracy and mean output tokens.

    Uses tqdm when installed (``backend="auto"``), else a plain line on ``stream`` at most every
    ``min_interval`` seconds; ``backend="none"`` shows nothing.
    """

    def __init__(self, total: int, *, done: Iterable[dict[str, Any]] = (), desc: str = "",
                 backend: str = "auto", stream: IO[str] | None = None, min_interval: float = 2.0) -> None:
        if backend not in ("auto", "tqdm", "plain", "none"):
            raise ValueError(f"progress backend must be auto, tqdm, plain or none, got {backend!r}")
        self.total, self.desc, self.stream = total, desc, stream if stream is not None else sys.stderr
        self.min_interval = min_interval
        done = list(done)
        self.count, self.correct = len(done), sum(bool(r.get("correct")) for r in done)
        self.tokens = sum(int(r.get("output_tokens") or 0) for r in done)
        self.start_count, self.start, self._last = self.count, time.monotonic(), float("-inf")
        self._bar = None
        if backend in ("auto", "tqdm"):
            try:
                from tqdm.auto import tqdm
            except ImportError:
                if backend == "tqdm":
                    raise
                backend = "plain"
            else:
                self._bar = tqdm(total=total, initial=self.count, desc=desc, file=self.stream, dynamic_ncols=True,
                                 unit="q")
                backend = "tqdm"
        self.backend = backend

    def stats(self) -> str:
        """``acc 75.0% tok 123.4`` over the questions done so far."""
        if not self.count:
            return "acc - tok -"
        return f"acc {self.correct / self.count:.1%} tok {self.tokens / self.count:.1f}"

    def eta(self) -> float | None:
        """Seconds left, from the rate of this session's questions; None before the first."""
        new = self.count - self.start_count
        if new <= 0:
            return None
        return (time.monotonic() - self.start) / new * max(0, self.total - self.count)

    def update(self, records: Sequence[dict[str, Any]]) -> None:
        """Count newly finished records."""
        self.count += len(records)
        self.correct += sum(bool(r.get("correct")) for r in records)
        self.tokens += sum(int(r.get("output_tokens") or 0) for r in records)
        if self._bar is not None:
            self._bar.update(len(records))
            self._bar.set_postfix_str(self.stats(), refresh=True)
        elif self.backend == "plain":
            now = time.monotonic()
            if now - self._last >= self.min_interval or self.count >= self.total:
                self._last = now
                self.stream.write(self.line() + "\n")
                self.stream.flush()

    def line(self) -> str:
        """The plain progress line."""
        eta = self.eta()
        left = "ETA -" if eta is None else f"ETA {int(eta) // 60}m{int(eta) % 60:02d}s"
        return f"{self.desc} {self.count}/{self.total} {self.stats()} {left}".strip()

    def close(self) -> None:
        """Finish the bar."""
        if self._bar is not None:
            self._bar.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """One (dataset, method, model) of a run: its file, how many questions it holds, how many are new."""

    dataset: str
    method: str
    model: str
    path: Path
    total: int
    resumed: int
    new: int


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _prepare(run_dir: str | Path, generator: Generator, datasets: Dataset | Sequence[Dataset],
             methods: Sequence[Method | str], oracle: OracleBudgets | None, log: Callable[[str], None]):
    datasets = [datasets] if isinstance(datasets, Dataset) else list(datasets)
    methods = [m if isinstance(m, Method) else Method.parse(m) for m in methods]
    if not datasets or not methods:
        raise ValueError("evaluate needs at least one dataset and one method")
    for ds in datasets:
        if note := ds.describe_malformed():
            log(f"warning: {note}")
        if not ds.examples:
            raise ValueError(f"dataset {ds.name!r} has no valid examples ({len(ds.malformed)} malformed lines)")
        if any(m.kind is MethodKind.ORACLE for m in methods):
            if oracle is None:
                raise ValueError("method 'oracle' needs a search file (--search-file FILE)")
            statuses = [oracle.lookup(ex)[1] for ex in ds.examples]
            if all(s == "missing" for s in statuses):
                raise ValueError(
                    f"the search file {oracle.source} covers none of the {len(statuses)} questions of {ds.name!r} "
                    "(matched by id or question text); run the search on this dataset first"
                )
            if missing := statuses.count("missing"):
                log(f"warning: oracle: {missing} question(s) of {ds.name!r} are not in {oracle.source}; "
                    "they are asked with vanilla CoT")
    _write_manifest(Path(run_dir), datasets, generator, oracle)
    return datasets, methods


def _write_manifest(run_dir: Path, datasets: list[Dataset], generator: Generator, oracle: OracleBudgets | None) -> None:
    """Add this run's datasets and model to ``run.json``. Several ``tale eval`` processes may share a
    folder (one per method or model), so the read-modify-write holds a `FileLock` (a brief wait,
    never an error) and the file is replaced in one step: no process loses another's entries."""
    path = run_dir / MANIFEST
    run_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(path, wait=True, what=f"the run manifest {path}"):
        try:
            manifest = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        except json.JSONDecodeError:
            manifest = {}
        manifest.setdefault("kind", "tale-eval-run")
        manifest.setdefault("datasets", {}).update({ds.name: ds.to_dict() for ds in datasets})
        models = set(manifest.get("models", [])) | {getattr(generator, "model_name", type(generator).__name__)}
        manifest["models"] = sorted(models)
        if oracle is not None:
            manifest["search_file"] = str(Path(oracle.source).resolve())
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        atomic_write_json(path, manifest)


@dataclass(slots=True)
class _Job:
    """One (dataset, method) of a run: its runner, its results file, what is left to ask, its progress."""

    dataset: Dataset
    method: Method
    runner: MethodRunner
    store: RecordFile
    pending: list[Example]
    done: list[dict[str, Any]]
    bar: Progress

    def write(self, chunk: list[Example], outcomes: list[Outcome]) -> None:
        """Append the chunk's records (flushed before the next chunk) and count them."""
        records = [make_record(ex, out) for ex, out in zip(chunk, outcomes, strict=True)]
        for record in records:
            self.store.append(record)
        self.bar.update(records)

    def result(self) -> RunResult:
        return RunResult(dataset=self.dataset.name, method=self.method.name, model=self.store.header["model"],
                         path=self.store.path, total=len(self.dataset.examples), resumed=len(self.done),
                         new=len(self.pending))


def _jobs(run_dir: str | Path, generator: Generator, datasets: Dataset | Sequence[Dataset],
          methods: Sequence[Method | str], *, max_tokens: int | None, temperature: float | None,
          estimator: BudgetEstimator | None, policy: BudgetPolicy | None, oracle: OracleBudgets | None,
          style: PromptStyle | str, progress: str, log: Callable[[str], None],
          wait: bool | float = False) -> Iterator[_Job]:
    """Check the run (before anything is asked), then open each (dataset, method) in turn: its results
    file is read (the resume state) when its turn comes."""
    datasets, methods = _prepare(run_dir, generator, datasets, methods, oracle, log)
    for ds in datasets:
        for method in methods:
            runner = MethodRunner(method, generator, format=ds.prompt_format(style), max_tokens=max_tokens,
                                  temperature=temperature, estimator=estimator, policy=policy, oracle=oracle,
                                  style=style)
            header = run_header(ds, method, generator, max_tokens=max_tokens, temperature=temperature, runner=runner)
            store = RecordFile(result_path(run_dir, ds.name, method, header["model"]), header, wait=wait)
            if store.recovery:
                log(f"warning: {store.recovery.describe()}; those questions are asked again")
            done = [store.records[ex.id] for ex in ds.examples if ex.id in store]
            yield _Job(dataset=ds, method=method, runner=runner, store=store,
                       pending=[ex for ex in ds.examples if ex.id not in store], done=done,
                       bar=Progress(len(ds.examples), done=done, desc=f"{ds.name} {method.name}", backend=progress))


def _chunks(items: list[Example], size: int) -> list[list[Example]]:
    check_positive_int("batch_size", size)
    return [items[i : i + size] for i in range(0, len(items), size)]


def evaluate(
    generator: Generator,
    datasets: Dataset | Sequence[Dataset],
    methods: Sequence[Method | str],
    run_dir: str | Path,
    *,
    batch_size: int = 16,
    max_tokens: int | None = 512,
    temperature: float | None = None,
    estimator: BudgetEstimator | None = None,
    policy: BudgetPolicy | None = None,
    oracle: OracleBudgets | None = None,
    style: PromptStyle | str = PromptStyle.DEFAULT,
    progress: str = "auto",
    log: Callable[[str], None] = _log,
    wait: bool | float = False,
) -> list[RunResult]:
    """Run every method on every dataset with a local (batched) generator, resuming a killed run.

    Args:
        generator: The answering model.
        datasets: One or more loaded `Dataset`.
        methods: `Method` values or names (``"vanilla"``, ``"fixed:50"``...).
        run_dir: The run folder (created if missing).
        batch_size: Questions per batched model call.
        max_tokens: Cap on each answer's output tokens.
        temperature: Sampling temperature (None: the generator's default).
        estimator: For ``tale-ep``: the estimator (default zero-shot on ``generator``).
        policy: `BudgetPolicy` for estimated budgets (default: the style's).
        style: `PromptStyle`: ``"paper"`` reproduces the reference scripts' prompts, system messages,
            estimator input and policy (`MethodRunner`); written into each results file's header.
        oracle: For ``oracle``: `OracleBudgets` from a search file.
        progress: ``"auto"`` (tqdm if installed), ``"tqdm"``, ``"plain"`` or ``"none"``.
        log: Where warnings go (default: stderr).
        wait: Another process writing one of the run's files: False raises `RunLockedError` at once,
            True waits for it, a number waits at most that many seconds.

    Returns:
        One `RunResult` per (dataset, method), in order.
    """
    results = []
    for job in _jobs(run_dir, generator, datasets, methods, max_tokens=max_tokens, temperature=temperature,
                     estimator=estimator, policy=policy, oracle=oracle, style=style, progress=progress, log=log,
                     wait=wait):
        try:
            for chunk in _chunks(job.pending, batch_size):
                job.write(chunk, job.runner.run(chunk))
        finally:
            job.bar.close()
            job.store.close()
        results.append(job.result())
    return results


async def aevaluate(
    generator: Generator,
    datasets: Dataset | Sequence[Dataset],
    methods: Sequence[Method | str],
    run_dir: str | Path,
    *,
    batch_size: int = 1,
    concurrency: int = 8,
    max_tokens: int | None = 512,
    temperature: float | None = None,
    estimator: BudgetEstimator | None = None,
    policy: BudgetPolicy | None = None,
    oracle: OracleBudgets | None = None,
    style: PromptStyle | str = PromptStyle.DEFAULT,
    progress: str = "auto",
    log: Callable[[str], None] = _log,
    wait: bool | float = False,
) -> list[RunResult]:
    """Async twin of `evaluate` for API models: at most ``concurrency`` chunks of ``batch_size`` in flight.

    With the default ``batch_size=1`` each in-flight task is one question (its estimator call, then
    its answer call), so ``concurrency`` bounds the requests sent at once. Results are written as each
    question finishes; if one request fails, the others are cancelled and the error is raised (what
    finished stays on disk).
    """
    check_positive_int("concurrency", concurrency)
    jobs = _jobs(run_dir, generator, datasets, methods, max_tokens=max_tokens, temperature=temperature,
                 estimator=estimator, policy=policy, oracle=oracle, style=style, progress=progress, log=log,
                 wait=wait)
    results = []
    for job in jobs:
        gate = asyncio.Semaphore(concurrency)

        async def one(chunk: list[Example], job: _Job = job) -> None:
            async with gate:
                outcomes = await job.runner.arun(chunk)
            job.write(chunk, outcomes)

        try:
            async with asyncio.TaskGroup() as group:
                for chunk in _chunks(job.pending, batch_size):
                    group.create_task(one(chunk))
        except BaseExceptionGroup as eg:
            raise eg.exceptions[0] from None
        finally:
            job.bar.close()
            job.store.close()
        results.append(job.result())
    return results
