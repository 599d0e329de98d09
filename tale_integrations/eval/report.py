"""Reports of an evaluation run: a Markdown table in the paper's layout, a JSON summary and plots.

`build_report` reads every results file of a run folder and computes the metrics; `render_markdown`
writes the paper's table (per dataset: ACC / output tokens / expense for each method, and the
average) followed by a detailed table per dataset; `write_report` saves ``report.md``,
``summary.json``, ``accuracy_tokens.png`` and, given a search file, ``elasticity.png``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..core.records import read_records, warn_recovered
from ..core.search import load_records
from ..core.tokens import TokenCounter
from .harness import MANIFEST, RESULTS_DIR
from .metrics import MethodMetrics, add_reductions, summarize
from .plots import method_order, plot_accuracy_tokens, plot_elasticity
from .prices import PRICES_AS_OF, PriceTable

__all__ = ["Report", "ResultsFile", "build_report", "load_results", "paper_table", "render_markdown", "write_report"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultsFile:
    """One results file: its header and its records (one per question id)."""

    path: Path
    header: dict[str, Any]
    records: list[dict[str, Any]]


def load_results(run_dir: str | os.PathLike[str]) -> list[ResultsFile]:
    """Read the results files of a run folder (`core.records.read_records`: records deduplicated by id,
    unusable lines left out with a `RecoveredFileWarning`; files of other kinds are skipped)."""
    folder = Path(run_dir) / RESULTS_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no {RESULTS_DIR}/ inside); run `tale eval` first")
    files = []
    for path in sorted(folder.glob("*.jsonl")):
        try:
            read = read_records(path, kind="tale-eval", what="results file")
        except ValueError:  # not a results file (or one cut while its run started): not part of the report
            continue
        warn_recovered(read.recovery)
        files.append(ResultsFile(path=path, header=read.header, records=list(read.records.values())))
    if not files:
        raise FileNotFoundError(f"no results files in {folder}; run `tale eval` first")
    return files


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """The metrics of a run and what the report says around them."""

    run_dir: Path
    metrics: list[MethodMetrics]
    counter: str
    notes: list[str] = field(default_factory=list)
    datasets: dict[str, Any] = field(default_factory=dict)
    search_file: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    style: str = "default"

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary."""
        return {
            "run_dir": str(self.run_dir), "style": self.style, "counter": self.counter, "prices_as_of": PRICES_AS_OF,
            "expense_unit": "USD per question", "metrics": [m.to_dict() for m in self.metrics],
            "datasets": self.datasets, "search_file": self.search_file, "notes": self.notes, "files": self.files,
        }


def build_report(
    run_dir: str | os.PathLike[str],
    *,
    prices: PriceTable | None = None,
    counter: TokenCounter | None = None,
    search_file: str | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> Report:
    """Compute the metrics of every (dataset, method, model) in a run folder."""
    run_dir = Path(run_dir)
    files = load_results(run_dir)
    metrics = [summarize(f.records, f.header, prices=prices, counter=counter, resamples=resamples, seed=seed)
               for f in files if f.records]
    metrics = add_reductions(sorted(metrics, key=lambda m: (m.model, m.dataset, method_order(m.method))))
    manifest: dict[str, Any] = {}
    if (run_dir / MANIFEST).is_file():
        try:
            manifest = json.loads((run_dir / MANIFEST).read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            manifest = {}
    notes = list(dict.fromkeys(n for m in metrics for n in m.notes))
    for name, info in manifest.get("datasets", {}).items():
        bad = info.get("malformed") or []
        if bad:
            shown = "; ".join(f"line {b['line']}: {b['reason']}" for b in bad[:5])
            more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
            notes.append(f"{name}: {len(bad)} malformed line(s) skipped in {info.get('source')} ({shown}{more})")
    for m in metrics:
        if m.oracle and set(m.oracle) != {"found"}:
            parts = ", ".join(f"{k} {v}" for k, v in sorted(m.oracle.items()))
            notes.append(f"{m.dataset} oracle: search status per question: {parts} (all but 'found' asked with "
                         "vanilla CoT)")
    counters = list(dict.fromkeys(m.counter for m in metrics))
    search = search_file or manifest.get("search_file")
    styles = sorted({str(f.header.get("style", "default")) for f in files if f.records})
    return Report(run_dir=run_dir, metrics=metrics, counter=", ".join(counters) or "none", notes=notes,
                  datasets=manifest.get("datasets", {}), search_file=search, style=", ".join(styles) or "default")


def _pct(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.2f}%"


def _num(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _usd(x: float | None) -> str:
    return "n/a" if x is None else f"${1000 * x:.4f}"


def _cell(m: MethodMetrics | None) -> str:
    return "–" if m is None else f"{_pct(m.accuracy)} / {_num(m.output_tokens)} / {_usd(m.expense)}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "l") -> list[str]:
    sep = ["---"] + ["---:" if align == "r" else "---"] * (len(header) - 1)
    return ["| " + " | ".join(row) + " |" for row in [list(header), sep, *rows]]


def paper_table(metrics: Sequence[MethodMetrics]) -> list[str]:
    """The paper's layout as Markdown lines: a row per dataset, ACC / tokens / expense per method, the average."""
    datasets = list(dict.fromkeys(m.dataset for m in metrics))
    methods = sorted({m.method for m in metrics}, key=method_order)
    labels = {m.method: m.label for m in metrics}
    by = {(m.dataset, m.method): m for m in metrics}
    rows = [[d] + [_cell(by.get((d, meth))) for meth in methods] for d in datasets]
    if len(datasets) > 1:
        avg = []
        for meth in methods:
            ms = [by[(d, meth)] for d in datasets if (d, meth) in by]
            acc = sum(m.accuracy for m in ms) / len(ms)
            tok = sum(m.output_tokens for m in ms) / len(ms)
            exp = None if any(m.expense is None for m in ms) else sum(m.expense for m in ms) / len(ms)
            avg.append(f"{_pct(acc)} / {_num(tok)} / {_usd(exp)}")
        rows.append(["**average**"] + avg)
    return _table(["Dataset"] + [labels[m] for m in methods], rows)


def _detail_table(metrics: list[MethodMetrics]) -> list[str]:
    header = ["Method", "ACC [95% CI]", "Output tokens", "Thinking / answer tokens", "Tokens vs vanilla",
              "Estimator tokens in/out",
              "Expense $/1k q (answer + estimator)", "Within budget", "Mean rel. dev. (abs / signed)",
              "Truncated", "Empty", "Copied [[50]]", "Number in question", "E³ ×10³"]
    rows = []
    for m in metrics:
        est = "–" if m.estimator_input_tokens is None else \
            f"{_num(m.estimator_input_tokens, 1)} / {_num(m.estimator_output_tokens, 1)}"
        expense = _usd(m.expense) if m.expense_estimator in (None, 0.0) else \
            f"{_usd(m.expense)} ({_usd(m.expense_answer)} + {_usd(m.expense_estimator)})"
        reduction = "baseline" if m.method == "vanilla" else "–" if m.token_reduction is None else \
            f"{0.0 - 100 * m.token_reduction + 0.0:+.1f}%"
        budget = "–" if m.within_budget is None else f"{_pct(m.within_budget)} of {m.budget_n}"
        dev = "–" if m.budget_abs_deviation is None else \
            f"{_num(m.budget_abs_deviation)} / {m.budget_signed_deviation:+.2f}"
        knob = f" (knob: {m.thinking_n})" if m.thinking_n else ""
        split = "–" if not m.reasoning_tokens and not m.thinking_n else \
            f"{_num(m.reasoning_tokens)} / {_num(m.answer_tokens)}{knob}"
        rows.append([
            m.label, f"{_pct(m.accuracy)} [{_pct(m.accuracy_low)}, {_pct(m.accuracy_high)}]", _num(m.output_tokens),
            split, reduction, est, expense, budget, dev, _pct(m.truncation_rate), _pct(m.empty_rate),
            "–" if m.copied_example_rate is None else _pct(m.copied_example_rate),
            "–" if m.restated_rate is None else _pct(m.restated_rate),
            "n/a" if m.e3 is None else f"{1000 * m.e3:.3f}",
        ])
    return _table(header, rows)


_STYLE_LINES = {
    "default": "Prompt style: default (the paper's prompt strings, with this project's budget policy and "
               "estimator input; `tale eval --paper` reproduces the reference scripts).",
    "paper": "Prompt style: **paper** (the reference scripts reproduced: their prompts and system message on "
             "every call, the estimator quoting the question as they do, MathBench arithmetic as cloze, no budget "
             "floor, strict `[[N]]` parsing; a reply without one is asked with plain CoT).",
}


def render_markdown(report: Report) -> str:
    """The report as Markdown: the paper-layout table, then one detailed table per dataset."""
    lines = [f"# TALE evaluation: `{report.run_dir.name}`", ""]
    lines += [_STYLE_LINES.get(report.style, f"Prompt style: {report.style}."), ""]
    lines += [
        f"Tokens: mean output tokens of the answering call, counted by `{report.counter}`. "
        f"Expense: USD per 1,000 questions over all calls (estimator included), from recorded usage and "
        f"the price table (defaults as of {PRICES_AS_OF}; override with `--prices FILE`). "
        "ACC intervals: 95% percentile bootstrap (1,000 resamples, seeded). "
        "Copied [[50]]: numeric answers equal to the format line's example; number in question: numeric "
        "answers equal to a number the question already states (on GSM8K-Zero these can score without reasoning). "
        "Thinking / answer tokens: a thinking model's output split as its backend reported it (the thinking "
        "tokens are part of the output tokens); \"knob: n\" counts the answers whose budget went through the "
        "model's thinking knob (`core.thinking`) rather than the prompt, and their budget adherence compares "
        "the thinking tokens with the budget.",
        "",
    ]
    for model in dict.fromkeys(m.model for m in report.metrics):
        ms = [m for m in report.metrics if m.model == model]
        lines += [f"## Model `{model}`", "", "ACC / output tokens / expense ($ per 1k questions):", ""]
        lines += paper_table(ms) + [""]
        for dataset in dict.fromkeys(m.dataset for m in ms):
            here = [m for m in ms if m.dataset == dataset]
            lines += [f"### {dataset} (n = {max(m.n for m in here)})", ""] + _detail_table(here) + [""]
    if report.files.get("accuracy_tokens"):
        lines += [f"![accuracy vs output tokens]({Path(report.files['accuracy_tokens']).name})", ""]
    if report.files.get("elasticity"):
        lines += [f"![token elasticity]({Path(report.files['elasticity']).name})", ""]
    if report.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in report.notes] + [""]
    return "\n".join(lines)


def write_report(
    run_dir: str | os.PathLike[str],
    *,
    prices: PriceTable | None = None,
    counter: TokenCounter | None = None,
    search_file: str | None = None,
    plots: bool = True,
) -> Report:
    """Build the report and write ``report.md``, ``summary.json`` and the plots into the run folder."""
    report = build_report(run_dir, prices=prices, counter=counter, search_file=search_file)
    files: dict[str, str] = {}
    notes = list(report.notes)
    if plots:
        try:
            from .._optional import require

            require("matplotlib", extra="eval", purpose="the evaluation plots")
        except ImportError as exc:
            notes.append(f"plots skipped: {exc}")
            plots = False
    if plots:
        files["accuracy_tokens"] = str(_save_plot(plot_accuracy_tokens, report.metrics,
                                                  report.run_dir / "accuracy_tokens.png"))
        if report.search_file:
            if Path(report.search_file).is_file():
                records = load_records(report.search_file)
                try:
                    files["elasticity"] = str(_save_plot(plot_elasticity, records, report.run_dir / "elasticity.png"))
                except ValueError as exc:
                    notes.append(f"elasticity plot skipped: {exc}")
            else:
                notes.append(f"elasticity plot skipped: search file {report.search_file} not found")
    files["markdown"] = str(report.run_dir / "report.md")
    files["summary"] = str(report.run_dir / "summary.json")
    report = dataclasses.replace(report, notes=notes, files=files)
    atomic_write_text(files["markdown"], render_markdown(report))
    atomic_write_json(files["summary"], report.to_dict())
    return report


def _save_plot(plot: Callable[[Any, Path], Path], data: Any, path: Path) -> Path:
    """Draw ``plot(data, ...)`` in a scratch folder outside the run, then put the PNG in place in one
    step (`core.files.atomic_write_bytes`): a report cut short never leaves a half-written image."""
    with tempfile.TemporaryDirectory(prefix="tale-plot-") as scratch:
        drawn = plot(data, Path(scratch) / path.name)
        return atomic_write_bytes(path, drawn.read_bytes())
