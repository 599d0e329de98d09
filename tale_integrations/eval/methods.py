"""The methods an evaluation compares, each runnable on any `Generator`.

Names (`MethodKind`), parsed from strings such as ``"fixed:50"``:

- ``direct``: the paper's direct-answer prompt (no reasoning).
- ``vanilla``: chain-of-thought, ``Let's think step by step:``.
- ``tale-ep``: estimate a budget per question (any `BudgetEstimator`; default the paper's zero-shot
  estimator on the answering model), then the budgeted prompt. ``tale-ep:learned``,
  ``tale-ep:zero-shot`` and ``tale-ep:learned:PATH`` name the estimator in the method itself, so one
  run can compare estimators (`core.estimators.get_estimator`).
- ``fixed:B``: the budgeted prompt with the same budget B for every question.
- ``tale-pt``: a TALE-PT checkpoint asked with the vanilla prompt and no budget (the same prompt as
  ``vanilla``, labelled apart so both can sit in one table).
- ``oracle``: the searched optimal budget of each question (`OracleBudgets`, from a search file).
- ``be-concise``, ``ccot:N``, ``cod``: prompting baselines (``core.prompts.baseline_messages``).
- Thinking models (`core.thinking`): ``think`` (unlimited thinking: the engine's own), ``think:B`` (a
  thinking budget of B tokens for every question) and ``think-tale`` (the TALE-estimated budget;
  ``think-tale:learned`` names the estimator, as for ``tale-ep``). The budget goes to the model's
  thinking knob and the question is asked with the vanilla prompt; a generator whose model is not a
  thinking model (or whose knob cannot honour the budget) gets the budget in the prompt instead, as
  ``vanilla`` / ``fixed:B`` / ``tale-ep`` would, and the record says so (``budget_via``). Generators
  with a knob: `backends.openai.OpenAIGenerator` (reasoning models, or ``thinking="vllm"``...) and
  `backends.hf.HFGenerator` on a chat template with a thinking block (``thinking_budgets``).
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Generator as PyGenerator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.answers import extract_answer
from ..core.budget import Budget, BudgetPolicy
from ..core.checks import check_positive_int
from ..core.decision import BudgetRecord, decide_budget
from ..core.estimators import BudgetEstimator, ZeroShotEstimator, get_estimator
from ..core.flows import adrive, drive
from ..core.generation import Generation, Generator, Usage
from ..core.pipeline import Mode, TalePipeline, TaleResult
from ..core.prompts import (
    SCRIPTS_SYSTEM_PROMPT,
    PromptStyle,
    QuestionFormat,
    answer_messages,
    baseline_messages,
    estimator_input,
)
from ..core.search import SearchRecord, SearchStatus, load_records
from ..core.thinking import Engine, ThinkingKnob, ThinkingModel, ThinkingPolicy, find_thinking_model, thinking_knob
from .datasets import Example

__all__ = ["Method", "MethodKind", "MethodRunner", "OracleBudgets", "Outcome", "parse_methods", "thinking_row"]

class MethodKind(enum.StrEnum):
    """The kinds of method; ``fixed`` and ``ccot`` take a number (``fixed:50``, ``ccot:100``)."""

    DIRECT = "direct"
    VANILLA = "vanilla"
    TALE_EP = "tale-ep"
    FIXED = "fixed"
    TALE_PT = "tale-pt"
    ORACLE = "oracle"
    BE_CONCISE = "be-concise"
    CCOT = "ccot"
    COD = "cod"
    THINK = "think"
    THINK_TALE = "think-tale"


_PARAM = {MethodKind.FIXED: "a budget in tokens", MethodKind.CCOT: "a length in words"}
#: Methods that take an estimator's name (``tale-ep:learned``), and those whose number is optional.
_NAMED = (MethodKind.TALE_EP, MethodKind.THINK_TALE)
_THINKING = (MethodKind.THINK, MethodKind.THINK_TALE)
_LABELS = {
    MethodKind.DIRECT: "Direct", MethodKind.VANILLA: "Vanilla CoT", MethodKind.TALE_EP: "TALE-EP",
    MethodKind.FIXED: "Fixed B={n}", MethodKind.TALE_PT: "TALE-PT", MethodKind.ORACLE: "Oracle budget",
    MethodKind.BE_CONCISE: "Be concise", MethodKind.CCOT: "CCoT-{n}", MethodKind.COD: "Chain of Draft",
    MethodKind.THINK: "Thinking (unlimited)", MethodKind.THINK_TALE: "Thinking TALE",
}
_MODES = {MethodKind.DIRECT: Mode.DIRECT, MethodKind.VANILLA: Mode.VANILLA, MethodKind.TALE_PT: Mode.VANILLA,
          MethodKind.ORACLE: Mode.VANILLA, MethodKind.TALE_EP: Mode.TALE_EP, MethodKind.FIXED: Mode.FIXED}


@dataclass(frozen=True, slots=True)
class Method:
    """A method and its number, if it takes one (``Method(MethodKind.FIXED, 50)`` is ``fixed:50``), or
    its estimator's name for ``tale-ep`` (``Method(MethodKind.TALE_EP, "learned")`` is ``tale-ep:learned``)."""

    kind: MethodKind
    param: int | str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", MethodKind(self.kind))
        if self.kind in _NAMED and self.param is not None:
            from ..core.estimators import ESTIMATOR_NAMES

            name = self.param.split(":", 1)[0].lower() if isinstance(self.param, str) else None
            if name not in ("learned", "zero-shot", "fixed"):
                raise ValueError(f"method {self.kind.value!r} takes an estimator name ({', '.join(ESTIMATOR_NAMES)}), "
                                 f"got {self.kind.value}:{self.param}")
        elif self.kind is MethodKind.THINK and self.param is not None:
            check_positive_int("B in think:B", self.param, hint=" (method 'think' takes a thinking budget in tokens)")
        elif self.kind in _PARAM:
            kind = self.kind.value
            check_positive_int(f"N in {kind}:N", self.param, hint=f" (method {kind!r} needs {_PARAM[self.kind]})")
        elif self.param is not None:
            raise ValueError(f"method {self.kind.value!r} takes no number, got {self.kind.value}:{self.param}")

    @classmethod
    def parse(cls, text: str) -> Method:
        """Read ``"vanilla"``, ``"fixed:50"``, ``"ccot:100"``... (case-insensitive)."""
        if not isinstance(text, str):
            raise TypeError(f"method must be a str, got {type(text).__name__}")
        head, sep, tail = text.strip().partition(":")
        head = head.lower()
        aliases = {"cot": "vanilla", "tale": "tale-ep", "chain-of-draft": "cod", "concise": "be-concise"}
        head = aliases.get(head, head)
        try:
            kind = MethodKind(head)
        except ValueError:
            allowed = ", ".join(k.value + (":N" if k in _PARAM else "[:B]" if k is MethodKind.THINK else "")
                                for k in MethodKind)
            raise ValueError(f"unknown method {text!r}; choose from {allowed}") from None
        if not sep:
            return cls(kind)
        if kind in _NAMED:
            return cls(kind, tail.strip().lower() if not tail.strip().lower().startswith("learned:") else tail.strip())
        try:
            number = int(tail)
        except ValueError:
            raise ValueError(f"bad number in method {text!r}: write {kind.value}:N with N a positive integer") from None
        return cls(kind, number)

    @property
    def name(self) -> str:
        """The canonical string form (``"fixed:50"``)."""
        return self.kind.value if self.param is None else f"{self.kind.value}:{self.param}"

    @property
    def label(self) -> str:
        """A label for tables and plots (``"Fixed B=50"``, ``"TALE-EP (learned)"``)."""
        if self.kind in _NAMED and self.param is not None:
            return f"{_LABELS[self.kind].format(n='')} ({self.param})"
        if self.kind is MethodKind.THINK and self.param is not None:
            return f"Thinking B={self.param}"
        return _LABELS[self.kind].format(n=self.param)

    def __str__(self) -> str:
        return self.name


def parse_methods(text: str | Iterable[str]) -> list[Method]:
    """Read a comma-separated list (or an iterable) of method names; duplicates are refused."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    methods = [Method.parse(p) for p in parts if str(p).strip()]
    if not methods:
        raise ValueError("no method given; e.g. --methods vanilla,tale-ep,fixed:50")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method listed twice in {','.join(names)}")
    return methods


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What one method produced for one question (the answering call, and the estimator's if any)."""

    text: str
    answer: str | None
    usage: Usage
    finish_reason: str
    model: str
    messages: tuple[dict[str, str], ...]
    # the budget record (`core.decision.RECORD_KEYS`, as every integration writes it), then the estimator's model
    budget: int | None = None
    budget_raw: int | None = None
    budget_source: str | None = None
    budget_adjusted: str | None = None
    estimator: str | None = None
    estimator_model: str | None = None
    estimator_reply: str | None = None
    estimator_error: str | None = None
    estimator_usage: Usage | None = None
    budget_via: str | None = None
    thinking: dict[str, Any] | None = None
    oracle_status: str | None = None
    reasoning: str | None = None


class OracleBudgets:
    """Per-question optimal budgets from a search file (the oracle method).

    A question is matched by id, else by its text. Questions whose search found no budget
    (``no_budget``, ``vanilla_wrong``) or that the file lacks (``missing``) are asked with vanilla CoT.
    """

    def __init__(self, records: Iterable[SearchRecord], *, source: str = "") -> None:
        self.source = source
        self.records = list(records)
        self._by_id = {r.id: r for r in self.records}
        self._by_question = {r.question: r for r in self.records}

    @classmethod
    def from_file(cls, path: str) -> OracleBudgets:
        """Read a search file written by ``core.search.search_to_file``."""
        return cls(load_records(str(path)), source=str(path))

    def lookup(self, example: Example) -> tuple[int | None, str]:
        """The optimal budget (None when there is none) and the search status (or ``"missing"``)."""
        record = self._by_id.get(example.id) or self._by_question.get(example.question)
        if record is None:
            return None, "missing"
        return (record.optimal_budget if record.status is SearchStatus.FOUND else None), str(record.status)


def _estimator_model(estimator: Any) -> str | None:
    generator = getattr(estimator, "generator", None)
    return getattr(generator, "model_name", None)


def _takes(function: Any, name: str) -> bool:
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def thinking_row(generator: Any) -> ThinkingModel | None:
    """The knob-table row (`core.thinking`) of an evaluation's generator, or None: not a thinking model.

    A generator says it itself: ``generator.thinking`` is its `ThinkingModel` (`OpenAIGenerator`), or
    its ``generate`` takes ``thinking_budgets`` and it has ``thinking_markers`` (`HFGenerator` on a chat
    template with a thinking block: the local row).
    """
    row = getattr(generator, "thinking", None)
    if isinstance(row, ThinkingModel):
        return row
    if _takes(getattr(generator, "generate", None), "thinking_budgets") and \
            getattr(generator, "thinking_markers", None) is not None:
        return find_thinking_model("", Engine.HF)
    return None


def _local_reserve(generator: Any) -> int:
    """A local model's own answer reserve after a thinking block (`ThinkingEnforcement.answer_reserve`), or 0."""
    thinking = getattr(getattr(generator, "settings", None), "thinking", None)
    reserve = getattr(thinking, "answer_reserve", 0)
    return reserve if isinstance(reserve, int) else 0


@dataclass(frozen=True, slots=True)
class _Estimate:
    questions: list[str]


@dataclass(frozen=True, slots=True)
class _Think:
    prompts: list[list[dict[str, str]]]
    knobs: list[ThinkingKnob | None]


class MethodRunner:
    """Runs one method on batches of examples of one dataset with one generator.

    Args:
        method: The `Method` (or its name).
        generator: The answering model.
        format: `QuestionFormat` of the dataset (``gsm8k`` or ``multiple_choice``).
        max_tokens: Cap on the answer's output tokens.
        temperature: Sampling temperature (None: the generator's default).
        estimator: For ``tale-ep``: any `BudgetEstimator` (default zero-shot on ``generator``).
        policy: `BudgetPolicy` for estimated budgets (default ``BudgetPolicy()``, or ``BudgetPolicy.paper()``
            in paper style).
        oracle: For ``oracle``: the `OracleBudgets`.
        style: `PromptStyle` of TALE's own methods (direct, vanilla, tale-ep, fixed, tale-pt, oracle):
            ``"paper"`` reproduces the reference scripts (`core.pipeline.TalePipeline`). The prompting
            baselines (be-concise, ccot, cod) are not the scripts' and are sent as they are in both.
        thinking_policy: For the thinking methods: `core.thinking.ThinkingPolicy`; default one whose
            answer reserve (output tokens above the thinking allowance) is ``max_tokens`` (default 1024),
            and on a local model at least twice its own `ThinkingEnforcement.answer_reserve` (its cap
            must hold the block's end marker and that reserve).
    """

    def __init__(
        self,
        method: Method | str,
        generator: Generator,
        *,
        format: QuestionFormat | str = QuestionFormat.GSM8K,
        max_tokens: int | None = 512,
        temperature: float | None = None,
        estimator: BudgetEstimator | None = None,
        policy: BudgetPolicy | None = None,
        oracle: OracleBudgets | None = None,
        style: PromptStyle | str = PromptStyle.DEFAULT,
        thinking_policy: ThinkingPolicy | None = None,
    ) -> None:
        self.method = method if isinstance(method, Method) else Method.parse(method)
        self.style = PromptStyle(style)
        if policy is None and self.style is PromptStyle.PAPER:
            policy = BudgetPolicy.paper()
        self.policy = policy or BudgetPolicy()
        self.thinking: ThinkingModel | None = None
        self.thinking_policy = thinking_policy
        self.generator = generator
        self.format = QuestionFormat(format)
        self.max_tokens = max_tokens
        self.temperature = temperature
        kind = self.method.kind
        if kind is MethodKind.ORACLE and oracle is None:
            raise ValueError("method 'oracle' needs the per-question budgets of a search file (--search-file FILE)")
        self.oracle = oracle
        self.pipeline: TalePipeline | None = None
        if kind is MethodKind.TALE_EP and self.method.param is not None:
            estimator = get_estimator(str(self.method.param), generator,
                                      lenient=policy.lenient_parse if policy is not None else True)
        if kind in _THINKING:
            self.thinking = thinking_row(generator)
            if self.thinking_policy is None:
                local = 2 * _local_reserve(generator) if self.thinking is not None and \
                    self.thinking.engine is Engine.HF else 0
                self.thinking_policy = ThinkingPolicy(answer_reserve=max(max_tokens or 1024, local))
            if kind is MethodKind.THINK_TALE and estimator is None:
                estimator = ZeroShotEstimator(generator, lenient=self.policy.lenient_parse)
            self.estimator = estimator if kind is MethodKind.THINK_TALE else None
        if kind is MethodKind.THINK_TALE and self.method.param is not None:
            self.estimator = get_estimator(str(self.method.param), generator, lenient=self.policy.lenient_parse)
        if kind in _MODES:
            self.pipeline = TalePipeline(
                generator, mode=_MODES[kind], budget=self.method.param if kind is MethodKind.FIXED else None,
                estimator=estimator if kind is MethodKind.TALE_EP else None, policy=policy, format=self.format,
                max_tokens=max_tokens, temperature=temperature, style=self.style,
            )
        if self.pipeline is not None:
            self.estimator = self.pipeline.estimator
        elif kind not in _THINKING:
            self.estimator = None
        self.estimator_model = _estimator_model(self.estimator)

    # -- requests -----------------------------------------------------------------------------

    def _items(self, examples: Sequence[Example]) -> tuple[list[dict[str, Any]], list[str | None]]:
        items, statuses = [], []
        for ex in examples:
            item: dict[str, Any] = {"question": ex.question, "options": list(ex.options) if ex.options else None}
            status = None
            if self.oracle is not None and self.method.kind is MethodKind.ORACLE:
                budget, status = self.oracle.lookup(ex)
                if budget is not None:
                    item["budget"] = budget
            items.append(item)
            statuses.append(status)
        return items, statuses

    def _baseline_prompts(self, examples: Sequence[Example]) -> list[list[dict[str, str]]]:
        return [
            baseline_messages(self.method.kind.value, ex.question, format=self.format, options=ex.options,
                              words=self.method.param)
            for ex in examples
        ]

    # -- results ------------------------------------------------------------------------------

    def _from_result(self, result: TaleResult, status: str | None) -> Outcome:
        return Outcome(
            text=result.text, answer=result.answer, usage=result.usage, finish_reason=result.finish_reason,
            model=result.model, messages=tuple(dict(m) for m in result.messages),
            # the budget record under core.decision.RECORD_KEYS, the estimator's usage kept a `Usage`
            **result.record.to_dict(usage=lambda usage: usage),
            estimator_model=self.estimator_model if result.estimator else None, oracle_status=status,
        )

    def _from_generation(self, example: Example, prompt: list[dict[str, str]], gen: Generation) -> Outcome:
        return Outcome(
            text=gen.text, answer=extract_answer(gen.text, example.kind), usage=gen.usage,
            finish_reason=gen.finish_reason, model=gen.model, messages=tuple(prompt),
        )

    def _settings(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "temperature": self.temperature}

    # -- thinking methods: the budget through the knob, written once as a flow (`core.flows`) ---------

    def _knob(self, budget: Budget | None) -> ThinkingKnob | None:
        row = self.thinking
        if row is None:
            return None
        own = getattr(self.generator, "max_tokens", None)  # an API generator's default cap, if it has one
        limit = own if isinstance(own, int) and not isinstance(own, bool) else None
        return thinking_knob(row, budget, model=self.generator.model_name, policy=self.thinking_policy, limit=limit)

    def _think_flow(self, examples: Sequence[Example]) -> PyGenerator[Any, Any, list[Outcome]]:
        kind, estimates = self.method.kind, [None] * len(examples)
        if kind is MethodKind.THINK_TALE:
            estimates = yield _Estimate([estimator_input(ex.question, format=self.format, options=ex.options,
                                                         style=self.style) for ex in examples])
            if not isinstance(estimates, list) or len(estimates) != len(examples):
                raise ValueError(f"the budget estimator returned {estimates!r} for {len(examples)} questions")
        name = getattr(self.estimator, "name", None)
        budgets: list[Budget | None] = []
        for est in estimates:
            if kind is MethodKind.THINK_TALE:
                budgets.append(decide_budget(self.policy, estimate=est, estimator=name))
            else:
                budgets.append(None if self.method.param is None else self.policy.fixed(int(self.method.param)))
        knobs = [self._knob(b) for b in budgets]
        system = SCRIPTS_SYSTEM_PROMPT if self.style is PromptStyle.PAPER else None
        prompts = [answer_messages(ex.question, format=self.format, options=ex.options, system_prompt=system,
                                   budget=None if (k is not None and k.applied) or b is None else b.tokens)
                   for ex, b, k in zip(examples, budgets, knobs, strict=True)]
        generations = yield _Think(prompts, knobs)
        outcomes = []
        for ex, prompt, gen, budget, knob, est in zip(examples, prompts, generations, budgets, knobs, estimates,
                                                      strict=True):
            record = BudgetRecord.of(budget, name if est is not None else None, est, thinking=knob)
            outcomes.append(Outcome(
                text=gen.text, answer=extract_answer(gen.text, ex.kind), usage=gen.usage,
                finish_reason=gen.finish_reason, model=gen.model, messages=tuple(prompt), reasoning=gen.reasoning,
                **record.to_dict(usage=lambda usage: usage),
                estimator_model=self.estimator_model if est is not None else None,
            ))
        return outcomes

    def _think_call(self, request: _Think) -> tuple[list[Any], dict[str, Any]]:
        """The prompts and keyword arguments of the answer call: each row's knob where one applies."""
        settings: dict[str, Any] = {"temperature": self.temperature}
        applied = [k is not None and k.applied for k in request.knobs]
        if self.thinking is None or not any(applied):
            return request.prompts, {**settings, "max_tokens": self.max_tokens}
        if self.thinking.engine is Engine.HF:  # the local backend: budgets and caps per row
            rows = list(zip(request.knobs, applied, strict=True))
            return request.prompts, {
                **settings, "thinking_budgets": [k.budget if a else None for k, a in rows],
                "max_tokens": [(k.max_tokens or self.max_tokens) if a else self.max_tokens for k, a in rows]}
        # OpenAIGenerator: the knobs as decided here; rows without one keep the run's cap
        return request.prompts, {**settings, "max_tokens": self.max_tokens, "thinking_budgets": request.knobs}

    def _think_answer(self, request: _Estimate | _Think) -> list[Any]:
        if isinstance(request, _Estimate):
            return self.estimator.estimate(request.questions)
        prompts, kwargs = self._think_call(request)
        return self.generator.generate(prompts, **kwargs)

    async def _athink_answer(self, request: _Estimate | _Think) -> list[Any]:
        if isinstance(request, _Estimate):
            return await self.estimator.aestimate(request.questions)
        prompts, kwargs = self._think_call(request)
        return await self.generator.agenerate(prompts, **kwargs)

    def run(self, examples: Sequence[Example]) -> list[Outcome]:
        """Answer ``examples`` (one batched estimator call, if any, and one batched answer call)."""
        if not examples:
            return []
        if self.method.kind in _THINKING:
            return drive(self._think_flow(examples), self._think_answer)
        if self.pipeline is not None:
            items, statuses = self._items(examples)
            return [self._from_result(r, s) for r, s in zip(self.pipeline.batch(items), statuses, strict=True)]
        prompts = self._baseline_prompts(examples)
        gens = self.generator.generate(prompts, **self._settings())
        return [self._from_generation(ex, p, g) for ex, p, g in zip(examples, prompts, gens, strict=True)]

    async def arun(self, examples: Sequence[Example]) -> list[Outcome]:
        """Async twin of `run`."""
        if not examples:
            return []
        if self.method.kind in _THINKING:
            return await adrive(self._think_flow(examples), self._athink_answer)
        if self.pipeline is not None:
            items, statuses = self._items(examples)
            results = await self.pipeline.abatch(items)
            return [self._from_result(r, s) for r, s in zip(results, statuses, strict=True)]
        prompts = self._baseline_prompts(examples)
        gens = await self.generator.agenerate(prompts, **self._settings())
        return [self._from_generation(ex, p, g) for ex, p, g in zip(examples, prompts, gens, strict=True)]
