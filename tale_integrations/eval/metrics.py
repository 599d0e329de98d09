"""Metrics over the results of one (dataset, method, model), from its JSONL records.

- ACC, with a seeded percentile-bootstrap 95% interval.
- Mean output tokens of the answering call, with the counter named: the usage counter recorded by
  the backend (``"hf:<model>"``, ``"reported"``...), or a `TokenCounter` that recounts the answer
  texts (``cl100k_base`` for the paper's numbers).
- Expense per question (USD) from the recorded usage and a `PriceTable`, for the answer call and the
  estimator call apart and together; n/a (None) with a note when a model has no price.
- Token reduction vs vanilla CoT (set by `add_reductions`), budget adherence (share of answers within
  their budget, mean absolute and signed relative deviation), truncation and empty-answer rates,
  and E³ = ACC² / mean output tokens (ACC as a fraction).
- Thinking and answer tokens apart (a thinking model's output tokens are both together): the mean
  reasoning tokens the backend reported and the mean of the rest. Where a thinking knob carried the
  budget (``budget_via == "thinking"``), adherence compares the thinking tokens with the budget.
- Degenerate answers, beside ACC, for numeric questions: answers that copy the format line's example
  (``[[50]]``), and answers whose number already stands in the question (GSM8K-Zero's questions hold
  their own answer, so restating a number can score without any reasoning).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.answers import answers_match, numbers_in
from ..core.prompts import NUMERIC_FORMAT_EXAMPLE
from ..core.tokens import TokenCounter
from .prices import PriceTable, missing_price_message

__all__ = [
    "MethodMetrics", "add_reductions", "bootstrap_interval", "copies_format_example", "e3", "expense",
    "output_tokens", "restates_question", "summarize",
]


def bootstrap_interval(
    values: Sequence[float], *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values`` (seeded, so reports are repeatable).

    Returns (nan, nan) for no values.
    """
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError("resamples must be positive and confidence between 0 and 1")
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    low = means[max(0, math.floor(tail * resamples))]
    high = means[min(resamples - 1, math.ceil((1 - tail) * resamples) - 1)]
    return low, high


def e3(accuracy: float, tokens: float) -> float | None:
    """E³ = ACC² / mean output tokens (ACC in [0, 1]); None when there are no tokens."""
    return accuracy**2 / tokens if tokens > 0 else None


def copies_format_example(answer: str | None) -> bool:
    """True when a numeric answer is the format line's example value (``Answer: [[50]]``)."""
    return answer is not None and answers_match(answer, NUMERIC_FORMAT_EXAMPLE)


def restates_question(answer: str | None, question: str) -> bool:
    """True when a numeric answer equals a number written in the question itself."""
    return answer is not None and any(answers_match(answer, n) for n in numbers_in(question))


def output_tokens(record: Mapping[str, Any], counter: TokenCounter | None = None) -> int:
    """The answering call's output tokens: as recorded, or recounted on the answer text by ``counter``."""
    return counter.count(record.get("text") or "") if counter is not None else int(record.get("output_tokens") or 0)


def expense(records: Sequence[Mapping[str, Any]], prices: PriceTable) -> tuple[float | None, float | None, set[str]]:
    """Mean USD per question of the answer calls and of the estimator calls, and the unpriced models.

    The estimator call is priced at its own model (``estimator_model``) when recorded, else at the
    answering model. A part is None when a model it needs has no price; the estimator part is 0.0
    when no estimator ran.
    """
    missing: set[str] = set()
    answer = estimator = 0.0
    for r in records:
        price = prices.lookup(r.get("model"))
        if price is None:
            missing.add(str(r.get("model")))
        else:
            answer += price.cost(r.get("usage") or {})
        if r.get("estimator_usage"):
            est_model = r.get("estimator_model") or r.get("model")
            est_price = prices.lookup(est_model)
            if est_price is None:
                missing.add(str(est_model))
            else:
                estimator += est_price.cost(r["estimator_usage"])
    n = max(1, len(records))
    answer_models = {str(r.get("model")) for r in records}
    estimator_models = {str(r.get("estimator_model") or r.get("model")) for r in records if r.get("estimator_usage")}
    return (None if missing & answer_models else answer / n,
            None if missing & estimator_models else estimator / n, missing)


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodMetrics:
    """Every metric of one (dataset, method, model).

    Attributes:
        dataset, method, label, model: What was run (``method`` is the canonical name, ``label`` the
            table label).
        n: Questions scored.
        accuracy, accuracy_low, accuracy_high: ACC and its 95% bootstrap interval (fractions).
        output_tokens: Mean output tokens of the answering call, by ``counter``.
        counter: Which counter produced the token figures.
        input_tokens: Mean input tokens of the answering call (recorded usage).
        estimator_input_tokens, estimator_output_tokens: Mean tokens of the estimator call (None
            when no estimator ran).
        expense, expense_answer, expense_estimator: Mean USD per question, all calls / answer call /
            estimator call; None when a price is missing.
        token_reduction: 1 - tokens / vanilla CoT tokens on the same dataset and model (None without a
            vanilla run).
        budget_n: Answers that had a budget in their prompt.
        within_budget: Share of those with output tokens <= budget.
        budget_abs_deviation, budget_signed_deviation: Mean |tokens - budget| / budget, and the mean of
            (tokens - budget) / budget (positive: over budget).
        truncation_rate: Share that hit ``max_tokens`` (finish reason ``length``).
        empty_rate: Share with no extractable answer.
        copied_example_rate, restated_rate: For numeric questions, the share of answers equal to the
            format example's value (`copies_format_example`) and the share equal to a number in the
            question (`restates_question`); None for other formats.
        e3: ACC² / output tokens.
        reasoning_tokens, answer_tokens: Mean thinking tokens of the answering call (as the backend
            reported them; part of ``output_tokens``) and mean output tokens besides them; by the
            recorded usage, whatever ``counter`` is.
        thinking_n: Answers whose budget went through a thinking knob.
        oracle: For the oracle method, how many questions had each search status.
        notes: Messages for the report (unpriced models...).
    """

    dataset: str
    method: str
    label: str
    model: str
    n: int
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    output_tokens: float
    counter: str
    input_tokens: float
    estimator_input_tokens: float | None
    estimator_output_tokens: float | None
    expense: float | None
    expense_answer: float | None
    expense_estimator: float | None
    token_reduction: float | None
    budget_n: int
    within_budget: float | None
    budget_abs_deviation: float | None
    budget_signed_deviation: float | None
    truncation_rate: float
    empty_rate: float
    e3: float | None
    copied_example_rate: float | None = None
    restated_rate: float | None = None
    reasoning_tokens: float = 0.0
    answer_tokens: float = 0.0
    thinking_n: int = 0
    oracle: dict[str, int] | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable; NaN becomes None)."""
        d = dataclasses.asdict(self)
        d["notes"] = list(self.notes)
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarize(
    records: Sequence[Mapping[str, Any]],
    header: Mapping[str, Any],
    *,
    prices: PriceTable | None = None,
    counter: TokenCounter | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> MethodMetrics:
    """Metrics of one results file (its header and records)."""
    prices = prices if prices is not None else PriceTable()
    records = list(records)
    correct = [1.0 if r.get("correct") else 0.0 for r in records]
    tokens = [output_tokens(r, counter) for r in records]
    accuracy = _mean(correct)
    low, high = bootstrap_interval(correct, resamples=resamples, seed=seed)
    mean_tokens = _mean(tokens)
    if counter is not None:
        counter_name = counter.name
    else:
        labels = {str(r.get("counter") or "unknown") for r in records}
        counter_name = labels.pop() if len(labels) == 1 else ("mixed" if labels else "none")
    est = [r["estimator_usage"] for r in records if r.get("estimator_usage")]
    answer_cost, estimator_cost, missing = expense(records, prices)
    notes = tuple(missing_price_message(m) for m in sorted(missing))
    reasoning = [int(r.get("reasoning_tokens") or (r.get("usage") or {}).get("reasoning_tokens") or 0) for r in records]
    recorded = [int(r.get("output_tokens") or 0) for r in records]
    thinking = [r.get("budget_via") == "thinking" for r in records]
    # a knob bounds the thinking, the prompt the whole output
    budgeted = [(th if knob else t, int(r["budget"]))
                for r, t, th, knob in zip(records, tokens, reasoning, thinking, strict=True) if r.get("budget")]
    numeric = header.get("format", "gsm8k") == "gsm8k"
    statuses: dict[str, int] | None = None
    if header.get("method") == "oracle":
        statuses = {}
        for r in records:
            key = str(r.get("oracle_status"))
            statuses[key] = statuses.get(key, 0) + 1
    return MethodMetrics(
        dataset=str(header.get("dataset")), method=str(header.get("method")),
        label=str(header.get("label") or header.get("method")), model=str(header.get("model")), n=len(records),
        accuracy=accuracy, accuracy_low=low, accuracy_high=high, output_tokens=mean_tokens, counter=counter_name,
        input_tokens=_mean([int(r.get("input_tokens") or 0) for r in records]),
        estimator_input_tokens=_mean([int(u.get("input_tokens") or 0) for u in est]) if est else None,
        estimator_output_tokens=_mean([int(u.get("output_tokens") or 0) for u in est]) if est else None,
        expense=None if answer_cost is None or estimator_cost is None else answer_cost + estimator_cost,
        expense_answer=answer_cost, expense_estimator=estimator_cost,
        token_reduction=None,
        budget_n=len(budgeted),
        within_budget=_mean([1.0 if t <= b else 0.0 for t, b in budgeted]) if budgeted else None,
        budget_abs_deviation=_mean([abs(t - b) / b for t, b in budgeted]) if budgeted else None,
        budget_signed_deviation=_mean([(t - b) / b for t, b in budgeted]) if budgeted else None,
        truncation_rate=_mean([1.0 if r.get("finish_reason") == "length" else 0.0 for r in records]),
        empty_rate=_mean([1.0 if r.get("answer") is None else 0.0 for r in records]),
        e3=e3(accuracy, mean_tokens) if records else None,
        copied_example_rate=_mean([float(copies_format_example(r.get("answer"))) for r in records])
        if numeric and records else None,
        restated_rate=_mean([float(restates_question(r.get("answer"), str(r.get("question") or ""))) for r in records])
        if numeric and records else None,
        reasoning_tokens=_mean(reasoning) if records else 0.0,
        answer_tokens=_mean([o - r for o, r in zip(recorded, reasoning, strict=True)]) if records else 0.0,
        thinking_n=sum(thinking),
        oracle=statuses, notes=notes,
    )


def add_reductions(metrics: Sequence[MethodMetrics]) -> list[MethodMetrics]:
    """Fill ``token_reduction`` vs the vanilla CoT run of the same dataset, model and counter."""
    vanilla = {(m.dataset, m.model, m.counter): m.output_tokens for m in metrics if m.method == "vanilla"}
    out = []
    for m in metrics:
        base = vanilla.get((m.dataset, m.model, m.counter))
        reduction = 1 - m.output_tokens / base if base and not math.isnan(m.output_tokens) else None
        out.append(dataclasses.replace(m, token_reduction=reduction))
    return out
