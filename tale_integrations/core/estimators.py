"""Budget estimators: where a question's raw token budget comes from.

A `BudgetEstimator` turns a batch of questions into one `Estimate` each: the raw number (None when
there is none), the estimator's reply text, and the usage of the estimator's own call. The
`BudgetPolicy` then scales and clamps it; estimators never clamp.

Writing your own: any object with a ``name`` attribute and ``estimate(questions)`` /
``aestimate(questions)`` methods returning ``list[Estimate]`` (one per question, in order) is an
estimator. `FunctionEstimator` wraps a plain ``question -> int | None`` function.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .budget import parse_budget
from .checks import check_int, check_positive_int, is_int
from .errors import EstimatorError
from .generation import Generation, Generator, Usage
from .prompts import EstimationPrompt, estimation_messages

__all__ = [
    "ESTIMATOR_NAMES",
    "BudgetEstimator",
    "Estimate",
    "EstimatorError",
    "FixedEstimator",
    "FunctionEstimator",
    "ZeroShotEstimator",
    "get_estimator",
    "is_zero_shot",
]


def _questions(questions: Sequence[str]) -> list[str]:
    if isinstance(questions, (str, bytes)) or not isinstance(questions, Sequence):
        raise TypeError(f"questions must be a list of strings, got {type(questions).__name__}")
    return list(questions)


@dataclass(frozen=True, slots=True, kw_only=True)
class Estimate:
    """One raw budget estimate.

    Attributes:
        raw: The estimated number of tokens, or None when the estimator gave no usable number.
        reply: The estimator's reply text (empty for estimators that do not call a model).
        usage: Token usage of the estimator's own call (zero for estimators that do not call a model).
        error: Why ``raw`` is None, when known.
        crashed: The estimator raised instead of replying (`failed`); the budget then records
            ``"estimator failed"`` rather than ``"parse failed"``.
    """

    raw: int | None
    reply: str = ""
    usage: Usage = field(default_factory=lambda: Usage(counter="none"))
    error: str | None = None
    crashed: bool = False

    @classmethod
    def failed(cls, exc: BaseException) -> Estimate:
        """The estimate standing in for an estimator that raised ``exc``."""
        return cls(raw=None, error=f"estimator failed: {exc!r}", crashed=True)

    def __post_init__(self) -> None:
        check_int("Estimate.raw", self.raw, low=0, optional=True)


@runtime_checkable
class BudgetEstimator(Protocol):
    """The estimator protocol: one `Estimate` per question, in order, sync and async."""

    name: str

    def estimate(self, questions: Sequence[str]) -> list[Estimate]: ...

    async def aestimate(self, questions: Sequence[str]) -> list[Estimate]: ...


class ZeroShotEstimator:
    """The paper's zero-shot estimator: ask a model for ``[[budget]]`` and parse the reply.

    Args:
        generator: Any `Generator` (it may be the answering model itself, as in the paper).
        prompt: `EstimationPrompt` variant; ``"scripts"`` (default) or ``"figure"``.
        max_tokens: Cap on the estimator's reply. The expected reply is a few tokens; the cap bounds
            the cost when a model rambles. Default 64.
        temperature: Sampling temperature for the estimator call (None: the generator's default).
        lenient: Accept ``[[ 40 ]]``, ``[[1,000]]`` and ``Budget: 40`` when no ``[[40]]`` is present.
    """

    def __init__(
        self,
        generator: Generator,
        *,
        prompt: EstimationPrompt | str = EstimationPrompt.SCRIPTS,
        max_tokens: int = 64,
        temperature: float | None = None,
        lenient: bool = True,
    ) -> None:
        if not callable(getattr(generator, "generate", None)) or not callable(getattr(generator, "agenerate", None)):
            raise TypeError(
                f"generator must be a Generator (with generate and agenerate), got {type(generator).__name__}"
            )
        check_positive_int("max_tokens", max_tokens)
        self.generator = generator
        self.prompt = EstimationPrompt(prompt)
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.lenient = lenient
        self.name = f"zero-shot:{getattr(generator, 'model_name', type(generator).__name__)}"

    def messages(self, question: str) -> list[dict[str, str]]:
        """The estimation chat for ``question``."""
        return estimation_messages(question, variant=self.prompt)

    def _read(self, generations: Sequence[Generation], n: int) -> list[Estimate]:
        if len(generations) != n:
            raise EstimatorError(f"{self.name}: the generator returned {len(generations)} replies for {n} questions")
        out = []
        for g in generations:
            raw = parse_budget(g.text, lenient=self.lenient)
            error = None if raw is not None else "no [[budget]] in the estimator's reply"
            out.append(Estimate(raw=raw, reply=g.text, usage=g.usage, error=error))
        return out

    def estimate(self, questions: Sequence[str]) -> list[Estimate]:
        """Estimate budgets for ``questions`` in one batched call."""
        prompts = [self.messages(q) for q in _questions(questions)]
        gens = self.generator.generate(prompts, max_tokens=self.max_tokens, temperature=self.temperature)
        return self._read(gens, len(prompts))

    async def aestimate(self, questions: Sequence[str]) -> list[Estimate]:
        """Async twin of `estimate`."""
        prompts = [self.messages(q) for q in _questions(questions)]
        gens = await self.generator.agenerate(prompts, max_tokens=self.max_tokens, temperature=self.temperature)
        return self._read(gens, len(prompts))


class FixedEstimator:
    """The same budget for every question (the paper's fixed-budget ablation).

    Args:
        budget: The budget; a positive int.
    """

    def __init__(self, budget: int) -> None:
        check_positive_int("budget", budget)
        self.budget = budget
        self.name = f"fixed:{budget}"

    def estimate(self, questions: Sequence[str]) -> list[Estimate]:
        """One `Estimate` of ``budget`` per question."""
        return [Estimate(raw=self.budget) for _ in _questions(questions)]

    async def aestimate(self, questions: Sequence[str]) -> list[Estimate]:
        """Async twin of `estimate`."""
        return self.estimate(questions)


class FunctionEstimator:
    """An estimator over a function ``question -> int | None`` (a heuristic or a learned model).

    Args:
        fn: Returns the raw budget, or None when it has none.
        name: Name recorded with each budget.
    """

    def __init__(self, fn: Callable[[str], Any], *, name: str = "function") -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name

    def _one(self, value: Any) -> Estimate:
        if value is None:
            return Estimate(raw=None, error=f"{self.name} returned None")
        if not is_int(value):
            raise EstimatorError(f"{self.name} must return an int or None, got {type(value).__name__}")
        if value < 0:
            return Estimate(raw=None, error=f"{self.name} returned a negative budget ({value})")
        return Estimate(raw=value)

    def estimate(self, questions: Sequence[str]) -> list[Estimate]:
        """Call the function once per question."""
        return [self._one(self.fn(q)) for q in _questions(questions)]

    async def aestimate(self, questions: Sequence[str]) -> list[Estimate]:
        """Async twin of `estimate` (the function runs in a worker thread)."""
        values = await asyncio.gather(*(asyncio.to_thread(self.fn, q) for q in _questions(questions)))
        return [self._one(v) for v in values]


#: The names `get_estimator` reads (``"learned:PATH"`` and ``"fixed:N"`` take a value).
ESTIMATOR_NAMES = ("learned", "learned:PATH", "zero-shot", "fixed:N")


def is_zero_shot(spec: object) -> bool:
    """Whether ``spec`` is the name of the paper's zero-shot estimator (``"zero-shot"``), which an
    integration builds on its own model rather than through `get_estimator`."""
    return isinstance(spec, str) and spec.strip().lower() in ("zero-shot", "zeroshot")


def get_estimator(
    spec: BudgetEstimator | str, generator: Generator | None = None, *, lenient: bool = True
) -> BudgetEstimator:
    """An estimator from its name, the one spelling every integration accepts.

    - ``"learned"``: the learned estimator shipped in the package (no model call, zero tokens);
    - ``"learned:PATH"``: a learned estimator fitted with ``tale train estimator`` (a file or its folder);
    - ``"zero-shot"``: the paper's zero-shot estimator on ``generator`` (the answering model);
    - ``"fixed:N"``: the same budget N for every question.

    An object that already is an estimator is returned as it is. ``lenient`` is the zero-shot
    estimator's parsing (`BudgetPolicy.lenient_parse`).

    Raises:
        ValueError: an unknown name, or ``"zero-shot"`` without a generator to ask.
    """
    if not isinstance(spec, str):
        if isinstance(spec, BudgetEstimator):
            return spec
        raise TypeError(f"estimator must be a BudgetEstimator or one of {', '.join(ESTIMATOR_NAMES)}; "
                        f"got {type(spec).__name__}")
    head, sep, tail = spec.strip().partition(":")
    head = head.lower()
    if head == "learned":
        from .learned import LearnedEstimator, default_learned_estimator

        return LearnedEstimator.load(tail) if sep and tail else default_learned_estimator()
    if is_zero_shot(spec):
        if generator is None:
            raise ValueError("estimator='zero-shot' needs a model to ask; pass the generator, or use "
                             "estimator='learned' (no model call)")
        return ZeroShotEstimator(generator, lenient=lenient)
    if head == "fixed" and sep:
        try:
            return FixedEstimator(int(tail))
        except ValueError:
            raise ValueError(f"estimator={spec!r}: write fixed:N with N a positive integer") from None
    raise ValueError(f"unknown estimator {spec!r}; choose from {', '.join(ESTIMATOR_NAMES)}")
